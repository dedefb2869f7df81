"""The pickle scanner finds pickles by their bytes, whatever they are called and wherever they are.

Each hostile archive is the hand-written base archive of ``test_hostile`` plus one file that
would call ``os.system`` when unpickled, hidden another way: a misleading name or none, inside
a torch-style zip, inside a zip inside a zip, as a protocol 0 text pickle, gzip-compressed, or
as a large stored entry that import leaves in the archive. ``--scan strict`` must refuse each
with one line naming the file, before anything is registered, and change nothing; ``inspect``
must list it. Nothing here unpickles anything.
"""
# ruff: noqa: F811  (test_hostile's fixtures are imported, then requested by name)

from __future__ import annotations

import contextlib
import gzip
import io
import json
import stat
import struct
import zipfile
from pathlib import Path

import pytest
from conftest import assert_user_error, cli, register_iris_model, registry_census
from test_hostile import (  # noqa: F401  (fixtures are used by name)
    EMPTY_REGISTRY,
    MIB,
    Member,
    base_archive,
    base_members,
    sandbox,
    sealed,
    template_registry,
)

from mlflow_archive_plugin import export_model, import_archive, inspect_archive
from mlflow_archive_plugin.errors import UnsafeArchiveError
from mlflow_archive_plugin.snapshot import METADATA_NAME
from mlflow_archive_plugin.storage.extents import stays_in_place
from mlflow_archive_plugin.storage.integrity import FileRecord
from mlflow_archive_plugin.trust.scanning import enforce, scan_pickles


def os_system(command: str = "touch /tmp/mlflow-archive-bytes-ran", protocol: int = 2) -> bytes:
    """PROTO, GLOBAL os.system, the command, TUPLE1, REDUCE, STOP: written, never loaded."""
    text = command.encode()
    return (b"\x80" + bytes([protocol]) + b"cos\nsystem\nX" + struct.pack("<I", len(text))
            + text + b"\x85R.")


# Protocol 0: no PROTO header, nothing but text opcodes.
TEXT_PICKLE = b"cos\nsystem\n(S'touch /tmp/mlflow-archive-bytes-ran'\ntR."


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as handle:
        for name, data in entries.items():
            handle.writestr(name, data)
    return buffer.getvalue()


def torch_style(data_pkl: bytes) -> bytes:
    """What ``torch.save`` writes, laid out by hand: no torch needed."""
    return zip_bytes({"archive/data.pkl": data_pkl, "archive/byteorder": b"little",
                      "archive/data/0": bytes(range(64)), "archive/version": b"3\n"})


def with_files(base: list[Member], extra: dict[str, bytes]) -> list[Member]:
    """The base members plus ``extra``, listed in the metadata's file list and sealed."""
    members = []
    for member in base:
        if member.name == METADATA_NAME:
            document = json.loads(member.data)
            document["files"] += [FileRecord.of_bytes(name, data).to_dict()
                                  for name, data in extra.items()]
            member = Member(member.name, json.dumps(document).encode())
        members.append(member)
    return sealed(members + [Member(name, data) for name, data in extra.items()])


def write_stored_zip(path: Path, members: list[Member]) -> Path:
    """Every member stored as it is, so that large ones stay in the archive on import."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as handle:
        for member in members:
            info = zipfile.ZipInfo(member.name, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            handle.writestr(info, member.data)
    return path


LARGE_NAME = "model/artifacts/blob"
LARGE_PICKLE = os_system("echo " + "x" * (MIB + 1024))

HIDDEN = {
    "safetensors-name": ("model/weights.safetensors", os_system()),
    "text-name": ("model/model.txt", os_system()),
    "no-extension": ("model/state", os_system()),
    "torch-zip": ("model/data/model.pt", torch_style(os_system())),
    "zip-in-zip": ("model/data/bundle.zip",
                   zip_bytes({"inner/ckpt.bin": torch_style(os_system()), "README": b"hi"})),
    "protocol-0": ("model/config.cfg", TEXT_PICKLE),
    "gzip": ("model/model.joblib", gzip.compress(os_system())),
}


def hostile_archive(sandbox, case: str) -> tuple[Path, str]:
    if case == "large-stored":
        assert stays_in_place(LARGE_NAME, len(LARGE_PICKLE))
        members = with_files(sandbox.base, {LARGE_NAME: LARGE_PICKLE})
        return write_stored_zip(sandbox.archives / "large.zip", members), LARGE_NAME
    name, data = HIDDEN[case]
    return sandbox.pack("zip", with_files(sandbox.base, {name: data})), name


CASES = [*HIDDEN, "large-stored"]


# --------------------------------------------------------------------------- import, strict


@pytest.mark.parametrize("case", CASES)
def test_strict_import_refuses_a_pickle_hidden_by_its_bytes(sandbox, case):
    path, name = hostile_archive(sandbox, case)
    with sandbox.unchanged(), pytest.raises(UnsafeArchiveError) as caught:
        import_archive(path, tracking_uri=sandbox.registry_uri, scan="strict")
    message = str(caught.value)
    assert "\n" not in message
    assert f"{name}" in message and "os.system" in message, message
    assert registry_census(sandbox.registry_uri) == EMPTY_REGISTRY
    assert not Path("/tmp/mlflow-archive-bytes-ran").exists()


@pytest.mark.parametrize("case", CASES)
def test_inspect_lists_the_hidden_pickle_and_its_dangerous_global(sandbox, case):
    path, name = hostile_archive(sandbox, case)
    pickles = {entry["path"]: entry for entry in inspect_archive(path).pickles}
    assert name in pickles, sorted(pickles)
    assert pickles[name]["dangerous"] == ["os.system"]


def test_cli_strict_import_refuses_a_torch_zip_with_one_error_line(sandbox):
    path, name = hostile_archive(sandbox, "torch-zip")
    with sandbox.unchanged():
        proc = cli("import", str(path), "--tracking-uri", sandbox.registry_uri,
                   "--scan", "strict", cwd=sandbox.cwd)
    line = assert_user_error(proc)
    assert f"{name} (archive/data.pkl) imports os.system" in line
    assert registry_census(sandbox.registry_uri) == EMPTY_REGISTRY


def test_the_large_pickle_is_left_in_the_archive_and_read_from_there(sandbox):
    path, name = hostile_archive(sandbox, "large-stored")
    with pytest.raises(UnsafeArchiveError, match=f"{name} imports os.system"):
        import_archive(path, tracking_uri=sandbox.registry_uri, scan="strict")


# --------------------------------------------------------------------------- false positives


def test_a_file_that_merely_starts_like_a_pickle_is_not_reported(tmp_path):
    # 0x80 0x02 (PROTO 2), then bytes that are no opcode: unpickling fails before anything
    # is imported, so the file is harmless and no line claims otherwise.
    (tmp_path / "model").mkdir()
    (tmp_path / "model/header.bin").write_bytes(b"\x80\x02" + bytes(range(0xF0, 0x100)) * 64)
    (tmp_path / "model/notes.txt").write_bytes(b"Note. Install with pip.\n")
    findings = scan_pickles(tmp_path)
    assert findings == []
    assert enforce(findings, "warn") == []


def test_the_base_archive_with_random_weights_passes_strict(sandbox):
    path = sandbox.pack("zip", sealed(sandbox.base))
    result = import_archive(path, tracking_uri=sandbox.registry_uri, scan="strict")
    assert result.warnings == []
    assert inspect_archive(path).pickles == []


def test_random_binaries_and_zips_of_them_are_not_reported(tmp_path):
    import random

    rng = random.Random(15)
    (tmp_path / "model").mkdir()
    for i in range(40):
        (tmp_path / f"model/blob{i}.bin").write_bytes(rng.randbytes(4096))
    (tmp_path / "model/code.zip").write_bytes(zip_bytes({"a.py": b"x = 1\n",
                                                         "w": rng.randbytes(4096)}))
    assert scan_pickles(tmp_path) == []


def test_mlmodel_named_pickle_that_is_no_readable_pickle_is_not_proven(tmp_path):
    # The sklearn flavor unpickles model.pkl whatever it holds; lz4 cannot be decompressed
    # here, so its content is unknown and strict refuses it.
    (tmp_path / "model").mkdir()
    (tmp_path / "model/MLmodel").write_text(
        "flavors:\n  sklearn:\n    pickled_model: model.pkl\n    serialization_format: pickle\n")
    (tmp_path / "model/model.pkl").write_bytes(b"\x04\x22\x4d\x18" + bytes(64))
    (finding,) = scan_pickles(tmp_path)
    assert finding.path == "model/model.pkl"
    assert "lz4" in finding.error
    with pytest.raises(UnsafeArchiveError, match="model/model.pkl could not be scanned"):
        enforce([finding], "strict")


def test_zip_nesting_is_bounded(tmp_path):
    nested = torch_style(os_system())
    for _ in range(5):
        nested = zip_bytes({"next.zip": nested})
    (tmp_path / "deep.zip").write_bytes(nested)
    (finding,) = scan_pickles(tmp_path)
    assert "nested more than" in finding.error
    with pytest.raises(UnsafeArchiveError, match="deep.zip"):
        enforce([finding], "strict")


def test_a_deflated_bomb_inside_a_zip_is_not_inflated(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as handle, \
            handle.open("zeros", "w", force_zip64=True) as sink:
        for _ in range(1100):
            sink.write(bytes(MIB))
    (tmp_path / "bomb.pt").write_bytes(buffer.getvalue())
    (finding,) = scan_pickles(tmp_path)
    assert "scan budget" in finding.error


# --------------------------------------------------------------------------- a real model


@pytest.fixture(scope="module")
def real_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real-sklearn")
    uri = f"sqlite:///{folder / 'source.db'}"
    register_iris_model(uri, "bytes-iris")
    return export_model("models:/bytes-iris/1", folder / "iris.zip", tracking_uri=uri).location


def test_a_real_mlflow3_sklearn_model_passes_strict(real_model, tmp_path):
    target = f"sqlite:///{tmp_path / 'target.db'}"
    with contextlib.chdir(tmp_path):
        result = import_archive(real_model, tracking_uri=target, scan="strict")
    assert (result.name, result.version) == ("bytes-iris", "1")
    assert inspect_archive(real_model).pickles == []
