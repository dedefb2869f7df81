"""``mlflow_archive_plugin.torchserve``: the drop-in ``torch-model-archiver``, on its own.

What it must do beyond matching the real tool (``tests/torchserve`` compares the two):
refuse bad input before writing anything, name both files when two would share an archive
name, store weights instead of deflating them, never give a zip entry a data descriptor
(TorchServe's ``ZipInputStream`` rejects STORED entries that have one), publish the output
atomically, and run any number of times at once without a shared staging folder.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from mlflow_archive_plugin.storage.containers.folder import FolderWriter
from mlflow_archive_plugin.storage.containers.tar import TarWriter
from mlflow_archive_plugin.storage.containers.zip import ZipWriter
from mlflow_archive_plugin.torchserve import (
    ModelArchiverConfig,
    ModelArchiverError,
    generate_model_archive,
)

MANIFEST = "MAR-INF/MANIFEST.json"
WEIGHTS_SIZE = 300 * 1024
BIN = Path(sys.executable).parent


class Model:
    """Small inputs: random (incompressible) weights, a handler, compressible text."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.weights = root / "model.pt"
        self.handler = root / "handler.py"
        self.notes = root / "notes.txt"
        self.export = root / "export"
        self.weights.write_bytes(os.urandom(WEIGHTS_SIZE))
        self.handler.write_text("def handle(data, context):\n    return data\n")
        self.notes.write_text("a compressible line of text\n" * 2000)
        self.export.mkdir()

    def config(self, name: str = "mymodel", **overrides) -> ModelArchiverConfig:
        fields = dict(model_name=name, handler=str(self.handler), version="1.0",
                      serialized_file=str(self.weights), extra_files=str(self.notes),
                      export_path=str(self.export))
        fields.update(overrides)
        return ModelArchiverConfig(**fields)

    def args(self, name: str = "mymodel", *extra: str) -> list[str]:
        return [f"--model-name={name}", "--version", "1.0", "--handler", str(self.handler),
                "--serialized-file", str(self.weights), "--extra-files", str(self.notes),
                "--export-path", str(self.export), *extra]


@pytest.fixture
def model(tmp_path) -> Model:
    return Model(tmp_path)


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def zip_contents(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def ordered_keys(raw: bytes) -> list:
    return json.loads(raw, object_pairs_hook=lambda pairs: pairs)


# --------------------------------------------------------------------------- output


def test_default_archive_is_a_mar_at_the_export_path(model):
    out = generate_model_archive(model.config())
    assert out == model.export / "mymodel.mar"
    assert sorted(zip_contents(out)) == sorted([MANIFEST, "handler.py", "model.pt", "notes.txt"])
    assert zip_contents(out)["model.pt"] == model.weights.read_bytes()


def test_returns_the_output_path_of_each_format(model):
    for fmt, name in (("default", "a.mar"), ("zip-store", "b.mar"), ("tgz", "c.tar.gz"),
                      ("no-archive", "d")):
        out = generate_model_archive(model.config(name.split(".")[0], archive_format=fmt))
        assert out == model.export / name and out.exists()


def test_builtin_handler_is_named_not_copied(model):
    out = generate_model_archive(model.config(handler="image_classifier"))
    contents = zip_contents(out)
    assert "image_classifier.py" not in contents and "handler.py" not in contents
    assert json.loads(contents[MANIFEST])["model"]["handler"] == "image_classifier"


def test_extra_folder_lands_at_the_root_without_pycache_or_hidden_folders(model):
    folder = model.root / "extras"
    for rel in ("labels.txt", ".env", "sub/deep.txt", "__pycache__/x.pyc",
                "sub/__pycache__/y.pyc", ".git/config"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(os.urandom(32))
    out = generate_model_archive(model.config(extra_files=str(folder)))
    extra = set(zip_contents(out)) - {MANIFEST, "handler.py", "model.pt"}
    assert extra == {"labels.txt", ".env", "sub/deep.txt"}


# --------------------------------------------------------------------------- manifest


def test_manifest_keys_in_the_original_order(model):
    requirements = model.root / "requirements.txt"
    requirements.write_text("numpy\n")
    config_file = model.root / "config.yaml"
    config_file.write_text("batchSize: 2\n")
    model_file = model.root / "net.py"
    model_file.write_text("class Net: pass\n")
    out = generate_model_archive(model.config(
        model_file=str(model_file), requirements_file=str(requirements),
        config_file=str(config_file)))
    manifest = ordered_keys(zip_contents(out)[MANIFEST])
    assert [key for key, _ in manifest] == ["createdOn", "runtime", "model", "archiverVersion"]
    assert [key for key, _ in dict(manifest)["model"]] == [
        "modelName", "serializedFile", "handler", "modelFile", "modelVersion",
        "requirementsFile", "configFile"]
    assert dict(dict(manifest)["model"]) == {
        "modelName": "mymodel", "serializedFile": "model.pt", "handler": "handler.py",
        "modelFile": "net.py", "modelVersion": "1.0", "requirementsFile": "requirements.txt",
        "configFile": "config.yaml"}


def test_manifest_leaves_out_empty_keys(model):
    out = generate_model_archive(model.config(serialized_file=None, extra_files=None))
    manifest = json.loads(zip_contents(out)[MANIFEST])
    assert manifest["runtime"] == "python"
    assert manifest["model"] == {"modelName": "mymodel", "handler": "handler.py",
                                 "modelVersion": "1.0"}


def test_manifest_is_the_last_entry(model):
    with zipfile.ZipFile(generate_model_archive(model.config())) as archive:
        assert archive.namelist()[-1] == MANIFEST


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("name", ["m", "Model1", "9lives", "a_b-c.d", "resnet-18_v2.1"])
def test_model_names_matching_the_pattern_are_accepted(model, name):
    assert generate_model_archive(model.config(name)).name == f"{name}.mar"


@pytest.mark.parametrize("name", ["-bad", "_bad", ".bad", "has space", "a/b", "a$b", "",
                                  "ünicode"])
def test_model_names_outside_the_pattern_are_refused(model, name):
    with pytest.raises(ModelArchiverError, match=r"model name .* not allowed"):
        generate_model_archive(model.config(name))
    assert listing(model.export) == []


def test_missing_handler_file_is_named(model):
    missing = model.root / "nowhere" / "my_handler.py"
    with pytest.raises(ModelArchiverError, match=re.escape(str(missing))):
        generate_model_archive(model.config(handler=str(missing)))
    assert listing(model.export) == []


def test_missing_handler_module_for_module_function_is_named(model):
    missing = model.root / "absent_handler"
    with pytest.raises(ModelArchiverError, match=re.escape(f"{missing}.py")):
        generate_model_archive(model.config(handler=f"{missing}:handle"))
    assert listing(model.export) == []


def test_missing_serialized_file_is_named(model):
    missing = model.root / "gone.pt"
    with pytest.raises(ModelArchiverError, match=re.escape(str(missing))):
        generate_model_archive(model.config(serialized_file=str(missing)))
    assert listing(model.export) == []


def test_missing_export_path_is_refused_and_not_created(model):
    export = model.root / "no" / "such" / "dir"
    with pytest.raises(ModelArchiverError, match="export path"):
        generate_model_archive(model.config(export_path=str(export)))
    assert not (model.root / "no").exists()


@pytest.mark.parametrize("fmt", ["default", "zip-store", "tgz"])
def test_existing_output_without_force_is_refused_and_left_unchanged(model, fmt):
    ext = ".tar.gz" if fmt == "tgz" else ".mar"
    existing = model.export / f"mymodel{ext}"
    existing.write_bytes(b"previous archive bytes")
    with pytest.raises(ModelArchiverError, match="already exists"):
        generate_model_archive(model.config(archive_format=fmt))
    assert existing.read_bytes() == b"previous archive bytes"
    assert listing(model.export) == [existing.name]


def test_existing_folder_without_force_is_refused_and_left_unchanged(model):
    folder = model.export / "mymodel"
    folder.mkdir()
    (folder / "old.txt").write_bytes(b"old")
    with pytest.raises(ModelArchiverError, match="already exists"):
        generate_model_archive(model.config(archive_format="no-archive"))
    assert listing(model.export) == ["mymodel", "mymodel/old.txt"]


def test_force_replaces_an_existing_archive(model):
    existing = model.export / "mymodel.mar"
    existing.write_bytes(b"previous archive bytes")
    generate_model_archive(model.config(force=True))
    assert zip_contents(existing)["model.pt"] == model.weights.read_bytes()
    assert listing(model.export) == ["mymodel.mar"]


def test_force_replaces_a_no_archive_folder_instead_of_copying_over_it(model):
    folder = model.export / "mymodel"
    (folder / "sub").mkdir(parents=True)
    (folder / "stale.txt").write_bytes(b"from the previous run")
    (folder / "sub" / "stale.bin").write_bytes(b"from the previous run")
    generate_model_archive(model.config(archive_format="no-archive", force=True))
    assert listing(folder) == ["MAR-INF", MANIFEST, "handler.py", "model.pt", "notes.txt"]
    assert listing(model.export) == ["mymodel", *(f"mymodel/{p}" for p in listing(folder))]


def test_two_extra_files_with_the_same_name_are_refused_naming_both(model):
    first, second = model.root / "a" / "labels.txt", model.root / "b" / "labels.txt"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(os.urandom(16))
    with pytest.raises(ModelArchiverError) as caught:
        generate_model_archive(model.config(extra_files=f"{first},{second}"))
    assert str(first) in str(caught.value) and str(second) in str(caught.value)
    assert listing(model.export) == []


def test_extra_file_named_like_the_handler_is_refused(model):
    other = model.root / "elsewhere" / "handler.py"
    other.parent.mkdir()
    other.write_text("# a different handler.py\n")
    with pytest.raises(ModelArchiverError) as caught:
        generate_model_archive(model.config(extra_files=str(other)))
    assert str(other) in str(caught.value) and str(model.handler) in str(caught.value)
    assert listing(model.export) == []


def test_extra_folder_file_clashing_with_the_weights_is_refused(model):
    folder = model.root / "extras"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"not the weights")
    with pytest.raises(ModelArchiverError, match="model.pt"):
        generate_model_archive(model.config(extra_files=str(folder)))
    assert listing(model.export) == []


def test_extra_file_that_would_replace_the_manifest_is_refused(model):
    folder = model.root / "extras"
    (folder / "MAR-INF").mkdir(parents=True)
    (folder / "MAR-INF" / "MANIFEST.json").write_text("{}")
    with pytest.raises(ModelArchiverError, match="MANIFEST"):
        generate_model_archive(model.config(extra_files=str(folder)))
    assert listing(model.export) == []


def test_missing_extra_file_is_named(model):
    missing = model.root / "absent.txt"
    with pytest.raises(ModelArchiverError, match=re.escape(str(missing))):
        generate_model_archive(model.config(extra_files=f"{model.notes},{missing}"))
    assert listing(model.export) == []


@pytest.mark.parametrize("fmt", ["default", "zip-store", "tgz", "no-archive"])
def test_failure_while_writing_leaves_no_output_and_no_scraps(model, fmt, monkeypatch):
    def disk_full(self, arcname, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    # The manifest goes in last, through add_bytes: the disk "fills" after every file.
    for writer in (ZipWriter, TarWriter, FolderWriter):
        monkeypatch.setattr(writer, "add_bytes", disk_full)
    with pytest.raises(OSError, match="No space left"):
        generate_model_archive(model.config(archive_format=fmt))
    assert listing(model.export) == []


def test_failure_while_writing_with_force_keeps_the_previous_archive(model):
    existing = model.export / "mymodel.mar"
    existing.write_bytes(b"previous archive bytes")
    # /proc/self/mem passes every check (a "regular file") but fails to read.
    with pytest.raises(OSError):
        generate_model_archive(model.config(force=True,
                                            extra_files=f"{model.notes},/proc/self/mem"))
    assert existing.read_bytes() == b"previous archive bytes"
    assert listing(model.export) == ["mymodel.mar"]


# --------------------------------------------------------------------------- zip layout


def local_headers(path: Path) -> dict[str, dict]:
    """Each entry's local file header, parsed from the raw bytes (what ZipInputStream reads)."""
    headers = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        for info in archive.infolist():
            raw.seek(info.header_offset)
            (signature, _version, flags, method, _time, _date, crc, compressed, size,
             name_len, extra_len) = struct.unpack("<4sHHHHHIIIHH", raw.read(30))
            assert signature == b"PK\x03\x04", info.filename
            name = raw.read(name_len).decode("utf-8")
            extra = raw.read(extra_len)
            zip64 = {}
            offset = 0
            while offset + 4 <= len(extra):
                tag, length = struct.unpack("<HH", extra[offset:offset + 4])
                if tag == 0x0001:
                    values = extra[offset + 4:offset + 4 + length]
                    if size == 0xFFFFFFFF:
                        zip64["size"], values = struct.unpack("<Q", values[:8])[0], values[8:]
                    if compressed == 0xFFFFFFFF:
                        zip64["compressed"] = struct.unpack("<Q", values[:8])[0]
                offset += 4 + length
            headers[name] = {
                "flags": flags, "method": method, "crc": crc,
                "compressed": zip64.get("compressed", compressed),
                "size": zip64.get("size", size), "zip64": bool(zip64), "info": info,
            }
    return headers


def test_incompressible_weights_are_stored(model):
    headers = local_headers(generate_model_archive(model.config()))
    assert headers["model.pt"]["method"] == zipfile.ZIP_STORED
    assert headers["model.pt"]["size"] == WEIGHTS_SIZE


def test_compressible_text_is_deflated(model):
    headers = local_headers(generate_model_archive(model.config()))
    for name in ("notes.txt", "handler.py", MANIFEST):
        assert headers[name]["method"] == zipfile.ZIP_DEFLATED, name
    assert headers["notes.txt"]["compressed"] < headers["notes.txt"]["size"] // 10


def test_zip_store_stores_everything(model):
    headers = local_headers(generate_model_archive(model.config(archive_format="zip-store")))
    assert {name: h["method"] for name, h in headers.items()} == dict.fromkeys(
        [MANIFEST, "handler.py", "model.pt", "notes.txt"], zipfile.ZIP_STORED)


@pytest.mark.parametrize("fmt", ["default", "zip-store"])
def test_no_entry_has_a_data_descriptor(model, fmt):
    empty = model.root / "empty.txt"
    empty.write_bytes(b"")
    out = generate_model_archive(model.config(archive_format=fmt,
                                              extra_files=f"{model.notes},{empty}"))
    with zipfile.ZipFile(out) as archive:
        assert [i.filename for i in archive.infolist() if i.flag_bits & 0x08] == []
    assert [name for name, h in local_headers(out).items() if h["flags"] & 0x08] == []


@pytest.mark.parametrize("fmt", ["default", "zip-store"])
def test_local_headers_carry_crc_and_sizes(model, fmt):
    out = generate_model_archive(model.config(archive_format=fmt))
    headers = local_headers(out)
    for name, header in headers.items():
        info = header["info"]
        assert (header["crc"], header["compressed"], header["size"]) == (
            info.CRC, info.compress_size, info.file_size), name
        assert header["size"] > 0 and header["crc"] != 0, name
        if header["method"] == zipfile.ZIP_STORED:
            assert header["compressed"] == header["size"], name


def test_zip64_sizes_go_in_the_local_header(model, monkeypatch):
    """ZIP64 without writing 4 GiB: zipfile's threshold lowered to 64 KiB.

    An entry past the threshold needs the ZIP64 extra in its local header with its real
    sizes, which zipfile writes only if the size is declared before the data streams in
    (otherwise it raises "File size too large"). A real 4.1 GiB sparse file takes 20-30 s.
    """
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 64 * 1024)
    out = generate_model_archive(model.config())
    header = local_headers(out)["model.pt"]
    assert header["zip64"] and header["flags"] & 0x08 == 0
    assert header["size"] == header["compressed"] == WEIGHTS_SIZE
    monkeypatch.undo()
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None
        assert archive.read("model.pt") == model.weights.read_bytes()


# --------------------------------------------------------------------------- tgz


def test_tgz_entries_sit_under_the_model_name(model):
    out = generate_model_archive(model.config(archive_format="tgz"))
    with tarfile.open(out, "r:gz") as archive:
        names = archive.getnames()
        manifest = archive.extractfile("mymodel/" + MANIFEST).read()
    assert sorted(names) == sorted(f"mymodel/{n}" for n in
                                   ("handler.py", "model.pt", "notes.txt", MANIFEST))
    assert json.loads(manifest)["model"]["modelName"] == "mymodel"


def test_no_archive_is_a_folder_named_after_the_model(model):
    out = generate_model_archive(model.config(archive_format="no-archive"))
    assert out == model.export / "mymodel"
    assert listing(out) == ["MAR-INF", MANIFEST, "handler.py", "model.pt", "notes.txt"]
    assert (out / "model.pt").read_bytes() == model.weights.read_bytes()


# --------------------------------------------------------------------------- concurrency


def test_same_model_name_archived_by_threads_at_once(model):
    """The real tool stages in /tmp/<model-name>: two runs with one name trample each other."""
    exports = [model.root / f"export-{i}" for i in range(4)]
    weights = []
    for i, export in enumerate(exports):
        export.mkdir()
        weights.append(model.root / f"w{i}" / "model.pt")
        weights[-1].parent.mkdir()
        weights[-1].write_bytes(os.urandom(2 * 1024 * 1024))
    barrier = threading.Barrier(len(exports))
    errors: list[BaseException] = []

    def archive(i: int) -> None:
        barrier.wait()
        try:
            generate_model_archive(model.config(export_path=str(exports[i]),
                                                serialized_file=str(weights[i])))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=archive, args=(i,)) for i in range(len(exports))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for export, weight in zip(exports, weights, strict=True):
        assert zip_contents(export / "mymodel.mar")["model.pt"] == weight.read_bytes()


def test_same_model_name_archived_by_processes_at_once(model):
    exports = [model.root / "export-a", model.root / "export-b"]
    procs = []
    for i, export in enumerate(exports):
        export.mkdir()
        weight = model.root / f"w{i}" / "model.pt"
        weight.parent.mkdir()
        weight.write_bytes(os.urandom(8 * 1024 * 1024))
        args = [*model.args("mymodel"), "--export-path", str(export),
                "--serialized-file", str(weight)]
        procs.append((subprocess.Popen([str(script("mlflow-model-archiver")), *args],
                                       stderr=subprocess.PIPE, text=True), export, weight))
    for proc, export, weight in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        contents = zip_contents(export / "mymodel.mar")
        assert contents["model.pt"] == weight.read_bytes()
        assert json.loads(contents[MANIFEST])["model"]["modelName"] == "mymodel"


# --------------------------------------------------------------------------- command line


def script(name: str) -> Path:
    path = BIN / name
    assert path.exists(), f"console script {name} is not installed next to {sys.executable}"
    return path


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, timeout=120,
                          check=False)


COMMANDS = {
    "mlflow-model-archiver": ("mlflow-model-archiver",),
    "mlflow-archive model-archiver": ("mlflow-archive", "model-archiver"),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_writes_the_archive(model, command):
    exe, *sub = COMMANDS[command]
    proc = run_cli(str(script(exe)), *sub, *model.args(), cwd=model.root)
    assert proc.returncode == 0, proc.stderr
    contents = zip_contents(model.export / "mymodel.mar")
    assert contents["model.pt"] == model.weights.read_bytes()
    assert json.loads(contents[MANIFEST])["model"]["modelName"] == "mymodel"


@pytest.mark.parametrize("command", COMMANDS)
def test_cli_takes_the_short_flags(model, command):
    exe, *sub = COMMANDS[command]
    requirements = model.root / "requirements.txt"
    requirements.write_text("numpy\n")
    (model.export / "mymodel.tar.gz").write_bytes(b"old")
    proc = run_cli(str(script(exe)), *sub, "--model-name", "mymodel", "-v", "2.0",
                   "--handler", "image_classifier", "-r", str(requirements), "-f",
                   "--archive-format", "tgz", "--export-path", str(model.export),
                   cwd=model.root)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(model.export / "mymodel.tar.gz") as archive:
        manifest = json.loads(archive.extractfile("mymodel/" + MANIFEST).read())
    assert manifest["model"]["modelVersion"] == "2.0"
    assert manifest["model"]["requirementsFile"] == "requirements.txt"


def test_cli_export_path_defaults_to_the_working_directory(model):
    proc = run_cli(str(script("mlflow-model-archiver")), "--model-name", "here", "-v", "1",
                   "--handler", str(model.handler), cwd=model.export)
    assert proc.returncode == 0, proc.stderr
    assert listing(model.export) == ["here.mar"]


def bad_inputs(model: Model) -> dict[str, list[str]]:
    (model.export / "exists.mar").write_bytes(b"x")
    twin = model.root / "other" / "notes.txt"
    twin.parent.mkdir(exist_ok=True)
    twin.write_text("same name\n")
    return {
        "invalid name": model.args("-bad"),
        "missing handler": [*model.args(), "--handler", str(model.root / "nope.py")],
        "missing export path": [*model.args(), "--export-path", str(model.root / "nope")],
        "existing output": model.args("exists"),
        "name clash": [*model.args(), "--extra-files", f"{model.notes},{twin}"],
        "unreadable input": [*model.args(), "--extra-files", "/proc/self/mem"],
    }


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", ["invalid name", "missing handler", "missing export path",
                                  "existing output", "name clash", "unreadable input"])
def test_cli_bad_input_is_one_error_line_and_exit_1(model, command, case):
    exe, *sub = COMMANDS[command]
    args = bad_inputs(model)[case]
    before = listing(model.export)
    proc = run_cli(str(script(exe)), *sub, *args, cwd=model.root)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert listing(model.export) == before


@pytest.mark.parametrize("archive_format", ["default", "tgz", "no-archive"])
@pytest.mark.parametrize("filename", ["a\\b.txt", "c:notes.txt"])
def test_a_name_unzip_tools_would_misplace_is_refused_before_writing(model, filename,
                                                                      archive_format):
    odd = model.root / filename
    odd.write_text("legal on Linux\n")
    before = listing(model.export)
    proc = run_cli(str(script("mlflow-model-archiver")),
                   *model.args(), "--extra-files", str(odd), "--archive-format", archive_format,
                   cwd=model.root)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 1
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("error: ") and filename in proc.stderr
    assert listing(model.export) == before


def test_generate_model_archive_without_config_parses_sys_argv(model, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["mlflow-model-archiver", *model.args("fromargv"),
                                      "--archive-format", "zip-store"])
    out = generate_model_archive(None)
    assert out == model.export / "fromargv.mar"
    with zipfile.ZipFile(out) as archive:
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
        assert json.loads(archive.read(MANIFEST))["model"]["modelName"] == "fromargv"
