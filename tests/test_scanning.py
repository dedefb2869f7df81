"""Pickle scanning: which files are pickle-based and what each would import, never loading one.

Every malicious pickle here is built as bytes (by hand, or by ``pickle.dumps`` of an object
whose ``__reduce__`` names the payload; pickling records the call, it does not make it).
No test unpickles anything. picklescan is imported at module level on purpose: without it
this module fails to import, so the tests fail instead of being skipped.
"""

from __future__ import annotations

import collections
import importlib
import io
import logging
import os
import pickle
import random
import struct
import sys
import time
import zipfile
from pathlib import Path

import cloudpickle
import joblib
import numpy as np
import picklescan.scanner  # noqa: F401  (a hard requirement of these tests, see above)
import pytest
from sklearn.linear_model import LogisticRegression

from mlflow_archive_plugin.errors import UnsafeArchiveError, UnsupportedError
from mlflow_archive_plugin.trust.scanning import (
    INSTALL_HINT,
    SCAN_MODES,
    PickleFinding,
    enforce,
    find_pickle_files,
    scan_pickles,
)

# --------------------------------------------------------------------------- crafting pickles


class Reduces:
    """Pickles as ``func(*args)``: the call is written into the bytes, not made."""

    def __init__(self, func, *args) -> None:
        self.func = func
        self.args = args

    def __reduce__(self):
        return (self.func, self.args)


def call_pickle(module: str, name: str, arg: str, protocol: int = 2) -> bytes:
    """Hand-assembled pickle that would call ``module.name(arg)``: PROTO, GLOBAL, REDUCE."""
    text = arg.encode()
    return (
        b"\x80"
        + bytes([protocol])
        + b"c"
        + f"{module}\n{name}\n".encode()
        + b"X"
        + struct.pack("<I", len(text))
        + text
        + b"\x85R."  # TUPLE1, REDUCE, STOP
    )


def torch_style_zip(data_pkl: bytes) -> bytes:
    """A zip laid out like ``torch.save`` writes it, with ``archive/data.pkl`` inside."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", bytes(range(64)))
        zf.writestr("archive/version", "3\n")
        zf.writestr("archive/.data/serialization_id", "1234567890")
    return buffer.getvalue()


def write(root: Path, rel: str, data: bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def by_path(findings: list[PickleFinding]) -> dict[str, PickleFinding]:
    return {finding.path: finding for finding in findings}


OS_SYSTEM = call_pickle("os", "system", "echo hi")


# --------------------------------------------------------------------------- finding files


def test_finds_pickles_by_suffix_and_by_content(tmp_path):
    write(tmp_path, "model/model.pkl", pickle.dumps(collections.OrderedDict(a=1)))
    write(tmp_path, "model/data/weights.pth", torch_style_zip(OS_SYSTEM))
    write(tmp_path, "model/data/state", pickle.dumps({"a": 1}, protocol=5))  # header only
    write(tmp_path, "model/data/checkpoint", torch_style_zip(OS_SYSTEM))  # zip, no suffix
    write(tmp_path, "model/legacy.SAV", b"(dp0\n.")  # protocol 0: parses to STOP
    for suffix in (".pickle", ".joblib", ".dill", ".pt", ".bin", ".ckpt", ".cloudpickle"):
        write(tmp_path, f"model/other/x{suffix}", pickle.dumps([1]))

    assert find_pickle_files(tmp_path) == sorted(
        [
            "model/data/checkpoint",
            "model/data/state",
            "model/data/weights.pth",
            "model/legacy.SAV",
            "model/model.pkl",
            *(
                f"model/other/x{s}"
                for s in (".bin", ".ckpt", ".cloudpickle", ".dill", ".joblib", ".pickle", ".pt")
            ),
        ]
    )


def test_non_pickle_files_are_not_listed(tmp_path):
    rng = random.Random(7)
    noise = bytes(rng.randrange(256) for _ in range(4096))
    assert not noise.startswith((b"\x80", b"PK", b"\x93NUMPY"))
    write(tmp_path, "mlflow-archive.json", b'{"schema_version": 1}')
    write(tmp_path, "checksum.txt", b"0" * 64 + b"  model/MLmodel\n")
    write(tmp_path, "model/MLmodel", b"flavors:\n  python_function: {}\n")
    write(tmp_path, "model/noise.dat", noise)
    write(tmp_path, "model/empty", b"")
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("code/util.py", "x = 1\n")
        zf.writestr("readme.txt", "hello")
    write(tmp_path, "model/code.zip", plain.getvalue())

    assert find_pickle_files(tmp_path) == []
    assert scan_pickles(tmp_path) == []


def test_numpy_files_count_only_when_they_hold_objects(tmp_path):
    (tmp_path / "model").mkdir()
    np.save(tmp_path / "model/floats.npy", np.arange(5.0))
    np.save(tmp_path / "model/objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "model/floats.npz", a=np.arange(3))
    np.savez(tmp_path / "model/objects.npz", a=np.array([None, "x"], dtype=object))
    # numpy.load(allow_pickle=True) unpickles a .npy that lacks the NumPy magic.
    write(tmp_path, "model/fake.npy", b"(lp0\n.")

    assert find_pickle_files(tmp_path) == [
        "model/fake.npy",
        "model/objects.npy",
        "model/objects.npz",
    ]
    findings = by_path(scan_pickles(tmp_path))
    assert "numpy.ndarray" in findings["model/objects.npy"].globals
    assert "numpy.ndarray" in findings["model/objects.npz"].globals
    assert not any(f.dangerous or f.error for f in findings.values())


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks need privileges on Windows")
def test_symlinks_are_neither_followed_nor_listed(tmp_path):
    outside = tmp_path / "outside"
    write(outside, "evil.pkl", OS_SYSTEM)
    root = tmp_path / "root"
    write(root, "model/model.pkl", pickle.dumps(collections.OrderedDict()))
    (root / "model/link.pkl").symlink_to(outside / "evil.pkl")
    (root / "model/linkdir").symlink_to(outside, target_is_directory=True)

    assert find_pickle_files(root) == ["model/model.pkl"]
    finding = scan_pickles(root, ["model/link.pkl"])[0]
    assert finding.error == "not a regular file"
    assert finding.globals == []


# --------------------------------------------------------------------------- what a pickle imports


def test_benign_pickle_lists_its_globals(tmp_path):
    write(tmp_path, "model/model.pkl", pickle.dumps(collections.OrderedDict(a=1)))
    write(tmp_path, "model/array.pkl", pickle.dumps(np.arange(3)))

    findings = by_path(scan_pickles(tmp_path))
    model = findings["model/model.pkl"]
    assert model == PickleFinding("model/model.pkl", globals=["collections.OrderedDict"])
    assert not model.flagged
    array = findings["model/array.pkl"]
    assert "numpy.ndarray" in array.globals
    assert any(g.endswith("multiarray._reconstruct") for g in array.globals)
    assert array.dangerous == array.suspicious == []
    assert array.error is None

    lines = enforce([model, array], "strict")
    assert lines[0] == "model/model.pkl: imports collections.OrderedDict"
    assert lines[1] == ("model/array.pkl: imports " + ", ".join(sorted(array.globals)))


def test_sklearn_model_is_listed_as_suspicious_not_dangerous(tmp_path):
    model = LogisticRegression().fit(np.array([[0.0], [1.0]]), [0, 1])
    write(tmp_path, "model/model.pkl", pickle.dumps(model))

    (finding,) = scan_pickles(tmp_path)
    sk = "sklearn.linear_model._logistic.LogisticRegression"
    assert sk in finding.globals
    assert finding.dangerous == []
    # picklescan allows only a handful of numpy/torch/collections names; every other class
    # (every sklearn estimator) is "suspicious", so strict mode refuses it.
    assert finding.suspicious == [sk]
    (line,) = enforce([finding], "warn")
    assert line.startswith(f"model/model.pkl: imports {sk}") or f", {sk}" in line
    assert "DANGEROUS" not in line
    with pytest.raises(UnsafeArchiveError, match="does not know to be safe"):
        enforce([finding], "strict")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(OS_SYSTEM, "os.system", id="os.system-by-hand"),
        pytest.param(pickle.dumps(Reduces(os.system, "echo hi")), "posix.system", id="posix"),
        pytest.param(
            pickle.dumps(Reduces(importlib.import_module, "os"), protocol=4),
            "importlib.import_module",
            id="importlib.import_module",
        ),
        pytest.param(
            call_pickle("importlib", "import_module", "os", protocol=2),
            "importlib.import_module",
            id="importlib-by-hand",
        ),
        pytest.param(
            pickle.dumps(Reduces(eval, "1+1"), protocol=3), "builtins.eval", id="builtins.eval"
        ),
        pytest.param(
            call_pickle("__builtin__", "eval", "1+1"), "__builtin__.eval", id="__builtin__.eval"
        ),
        pytest.param(pickle.dumps(Reduces(open, "/tmp/x", "w"), protocol=2), "io.open", id="open"),
        pytest.param(
            pickle.dumps(Reduces(__import__, "os"), protocol=5),
            "builtins.__import__",
            id="builtins.__import__",
        ),
    ],
)
def test_code_running_globals_are_dangerous(tmp_path, data, expected):
    write(tmp_path, "model/evil.pkl", data)

    (finding,) = scan_pickles(tmp_path)
    assert finding.path == "model/evil.pkl"
    assert finding.dangerous == [expected]
    assert finding.error is None
    assert enforce([finding], "warn") == [f"model/evil.pkl: DANGEROUS imports {expected}"]


def test_torch_style_zip_with_dangerous_data_pkl(tmp_path):
    write(tmp_path, "model/data/model.pth", torch_style_zip(OS_SYSTEM))
    write(tmp_path, "model/data/blob", torch_style_zip(OS_SYSTEM))
    benign = pickle.dumps(collections.OrderedDict(w=1), protocol=2)
    write(tmp_path, "model/data/ok.pt", torch_style_zip(benign))

    findings = by_path(scan_pickles(tmp_path))
    assert sorted(findings) == ["model/data/blob", "model/data/model.pth", "model/data/ok.pt"]
    for path in ("model/data/model.pth", "model/data/blob"):
        assert findings[path].dangerous == ["os.system"]
        assert findings[path].error is None
    assert findings["model/data/ok.pt"].globals == ["collections.OrderedDict"]
    assert not findings["model/data/ok.pt"].flagged


def test_cloudpickled_code_is_dangerous(tmp_path):
    class LocalModel:  # defined here, so cloudpickle stores its code by value
        def predict(self, x):
            return x

    write(tmp_path, "model/python_model.pkl", cloudpickle.dumps(LocalModel()))

    (finding,) = scan_pickles(tmp_path)
    assert "cloudpickle.cloudpickle._make_function" in finding.dangerous


# --------------------------------------------------------------------------- unreadable input


def test_truncated_pickles_are_errors_and_strict_refuses(tmp_path):
    full = pickle.dumps(collections.OrderedDict(a=[1, 2, 3]))
    write(tmp_path, "model/cut_after_global.pkl", full[:-4])
    write(tmp_path, "model/cut_after_reduce.pkl", OS_SYSTEM[:-1])
    # Cut before any import: unpickling fails before anything could run, so it is no pickle.
    write(tmp_path, "model/cut_early.pkl", pickle.dumps({"a": [1, 2, 3]})[:-4])
    write(tmp_path, "model/not_a_pickle.pkl", b'{"json": true}')

    findings = by_path(scan_pickles(tmp_path))
    assert set(findings) == {"model/cut_after_global.pkl", "model/cut_after_reduce.pkl"}
    for finding in findings.values():
        assert finding.error, finding
        assert "\n" not in finding.error
    assert findings["model/cut_after_global.pkl"].globals == ["collections.OrderedDict"]
    assert findings["model/cut_after_reduce.pkl"].dangerous == ["os.system"]

    lines = enforce(findings.values(), "warn")
    assert lines[0].startswith("model/cut_after_global.pkl: imports collections.OrderedDict; ")
    assert "not fully scanned: " in lines[0]
    with pytest.raises(UnsafeArchiveError) as caught:
        enforce(findings.values(), "strict")
    message = str(caught.value)
    assert "model/cut_after_reduce.pkl imports os.system" in message
    assert "(and 2 more problems)" in message


def test_joblib_with_raw_arrays_is_not_fully_scanned(tmp_path):
    # joblib writes array bytes between pickle opcodes; the scanner stops there, so what
    # follows is unverified and reported as such.
    (tmp_path / "model").mkdir()
    joblib.dump({"w": np.arange(50.0)}, tmp_path / "model/model.joblib")

    (finding,) = scan_pickles(tmp_path)
    assert "joblib.numpy_pickle.NumpyArrayWrapper" in finding.globals
    assert finding.error


def test_explicit_paths_are_confined_to_the_root(tmp_path):
    root = tmp_path / "root"
    write(root, "model/a.pkl", pickle.dumps(collections.OrderedDict()))
    write(root, "model/b.pkl", OS_SYSTEM)
    write(tmp_path, "evil.pkl", OS_SYSTEM)

    findings = scan_pickles(root, ["model/a.pkl", "../evil.pkl", "model/missing.pkl"])
    assert [f.path for f in findings] == ["model/a.pkl", "../evil.pkl", "model/missing.pkl"]
    assert findings[0].globals == ["collections.OrderedDict"]
    assert findings[1] == PickleFinding("../evil.pkl", error="path is outside the scanned folder")
    assert findings[2].error == "not a regular file"


# --------------------------------------------------------------------------- modes


def test_strict_refuses_naming_the_first_dangerous_file(tmp_path):
    write(tmp_path, "model/a_model.pkl", pickle.dumps(collections.OrderedDict(a=1)))
    write(tmp_path, "model/b_odd.pkl", pickle.dumps(Reduces(collections.Counter, "ab")))
    write(tmp_path, "model/c_evil.pkl", OS_SYSTEM)
    write(tmp_path, "model/d_worse.pkl", call_pickle("builtins", "exec", "pass"))
    findings = scan_pickles(tmp_path)

    with pytest.raises(UnsafeArchiveError) as caught:
        enforce(findings, "strict")
    message = str(caught.value)
    assert "\n" not in message
    assert message == (
        "--scan strict refused the archive: model/c_evil.pkl imports os.system, which can run "
        "code when loaded (and 2 more problems); inspect it with `mlflow-archive inspect`; "
        "import with --scan warn only if you trust its source"
    )


def test_warn_returns_one_line_per_file_and_does_not_raise(tmp_path):
    write(tmp_path, "model/model.pkl", pickle.dumps(collections.OrderedDict(a=1)))
    write(tmp_path, "model/evil.pkl", OS_SYSTEM)
    write(tmp_path, "model/empty.pkl", pickle.dumps({"a": 1}))
    findings = scan_pickles(tmp_path)

    assert enforce(findings, "warn") == [
        "model/empty.pkl: imports no globals",
        "model/evil.pkl: DANGEROUS imports os.system",
        "model/model.pkl: imports collections.OrderedDict",
    ]
    assert enforce(findings, "off") == []
    assert enforce([], "strict") == []


def test_unknown_mode_is_refused():
    assert SCAN_MODES == ("off", "warn", "strict")
    with pytest.raises(UnsupportedError, match="off, warn, strict"):
        enforce([], "paranoid")


def test_without_picklescan_files_are_listed_and_strict_refuses(tmp_path, monkeypatch):
    write(tmp_path, "model/model.pkl", pickle.dumps(collections.OrderedDict(a=1)))
    write(tmp_path, "model/data/model.pth", torch_style_zip(OS_SYSTEM))
    write(tmp_path, "model/MLmodel", b"flavors: {}\n")
    # None in sys.modules makes the import fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "picklescan", None)
    monkeypatch.setitem(sys.modules, "picklescan.scanner", None)

    findings = scan_pickles(tmp_path)
    assert findings == [
        PickleFinding("model/data/model.pth", error=INSTALL_HINT, inside=["archive/data.pkl"]),
        PickleFinding("model/model.pkl", error=INSTALL_HINT),
    ]
    assert enforce(findings, "warn")[1] == f"model/model.pkl: not fully scanned: {INSTALL_HINT}"
    with pytest.raises(UnsafeArchiveError) as caught:
        enforce(findings, "strict")
    assert "pip install 'mlflow-archive-plugin[scan]'" in str(caught.value)
    assert "model/data/model.pth (archive/data.pkl) could not be scanned" in str(caught.value)


# --------------------------------------------------------------------------- safety and quiet


def test_nothing_in_the_archive_is_executed(tmp_path):
    markers = [tmp_path / f"marker{i}" for i in range(4)]
    write(tmp_path, "model/open.pkl", pickle.dumps(Reduces(open, str(markers[0]), "w")))
    write(tmp_path, "model/system.pkl", pickle.dumps(Reduces(os.system, f"touch {markers[1]}")))
    code = f"open({str(markers[2])!r}, 'w').close()"
    write(tmp_path, "model/exec.pkl", pickle.dumps(Reduces(exec, code), protocol=4))
    write(
        tmp_path,
        "model/data/model.pth",
        torch_style_zip(pickle.dumps(Reduces(open, str(markers[3]), "w"), protocol=2)),
    )

    findings = scan_pickles(tmp_path)
    enforce(findings, "warn")
    with pytest.raises(UnsafeArchiveError):
        enforce(findings, "strict")

    assert [f.path for f in findings if f.dangerous] == [
        "model/data/model.pth",
        "model/exec.pkl",
        "model/open.pkl",
        "model/system.pkl",
    ]
    assert not any(marker.exists() for marker in markers)


def test_scanning_prints_nothing_and_restores_logging(tmp_path, capfd):
    write(tmp_path, "model/evil.pkl", OS_SYSTEM)
    write(tmp_path, "model/cut.pkl", pickle.dumps(collections.OrderedDict(a=1))[:-3])
    root_output = io.StringIO()
    handler = logging.StreamHandler(root_output)
    logging.getLogger().addHandler(handler)
    logger = logging.getLogger("picklescan")
    before = (logger.level, logger.propagate, list(logger.handlers))
    try:
        findings = scan_pickles(tmp_path)
    finally:
        logging.getLogger().removeHandler(handler)

    assert [bool(f.error) for f in findings] == [True, False]
    assert root_output.getvalue() == ""
    assert capfd.readouterr() == ("", "")
    assert (logger.level, logger.propagate, list(logger.handlers)) == before


def test_scanning_a_large_tree_is_quick(tmp_path):
    for i in range(200):
        write(tmp_path, f"model/artifacts/{i:03}.json", b"{}")
        write(tmp_path, f"model/artifacts/{i:03}.pkl", pickle.dumps(collections.OrderedDict()))
    started = time.monotonic()
    findings = scan_pickles(tmp_path)
    assert len(findings) == 200
    assert time.monotonic() - started < 20
