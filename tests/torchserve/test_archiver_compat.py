"""``mlflow-model-archiver`` against the real ``torch-model-archiver`` 0.12.0.

Both tools get the same flags for the same inputs and write to different export paths; the
outputs must hold the same files (names and bytes) and the same ``MAR-INF/MANIFEST.json``
apart from ``createdOn`` (a timestamp) and ``archiverVersion`` (each tool's own version).
Inputs the real tool refuses must be refused by ours too, with one ``error:`` line.

Runs only where the real tool is installed (``MLFLOW_ARCHIVE_COMPAT=torchserve``). The real
tool stages files in ``$TMPDIR/<model-name>``; every run here gets its own ``TMPDIR`` and model
names are unique, so this suite cannot clash with another run of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import uuid
import zipfile
from pathlib import Path

import pytest

from mlflow_archive_plugin.torchserve import (
    ModelArchiverConfig,
    ModelArchiverError,
    generate_model_archive,
)

FORMATS = ("default", "zip-store", "tgz", "no-archive")
HANDLERS = ("file", "module:function", "builtin")
MANIFEST = "MAR-INF/MANIFEST.json"
VOLATILE_KEYS = ("createdOn", "archiverVersion")
EXTENSIONS = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}


def find_tool(name: str) -> str:
    """``name`` from this interpreter's bin folder or PATH; the suite cannot run without it."""
    bindir = os.path.dirname(sys.executable)
    found = shutil.which(name, path=os.pathsep.join([bindir, os.environ.get("PATH", "")]))
    if found is None:
        pytest.fail(
            f"{name} is not installed next to {sys.executable} nor on PATH; the TorchServe "
            "compatibility suite needs it (pip install torch-model-archiver==0.12.0)",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="module")
def real_tool() -> str:
    return find_tool("torch-model-archiver")


@pytest.fixture(scope="module")
def our_tool() -> str:
    return find_tool("mlflow-model-archiver")


def run(tool: str, args: list[str], tmpdir: Path) -> subprocess.CompletedProcess:
    """Run an archiver with its own TMPDIR (the real one stages in $TMPDIR/<model-name>)."""
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------- inputs


class Inputs:
    """A model's files laid out as a user would hand them to the archiver."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.serialized = root / "weights" / "model.pt"
        self.model_file = root / "model.py"
        self.handler = root / "handlers" / "my_handler.py"
        self.requirements = root / "requirements.txt"
        self.config = root / "model-config.yaml"
        self.extras = root / "extras"
        self.notes = root / "notes.txt"
        self.vocab = root / "vocab.json"
        self.data = root / "data"

    def write(self) -> Inputs:
        rnd = os.urandom
        files = {
            self.serialized: rnd(96 * 1024),
            self.model_file: b"import torch\n\nclass Net(torch.nn.Module):\n    pass\n",
            self.handler: b"def handle(data, context):\n    return data\n",
            self.requirements: b"numpy>=1.24\n",
            self.config: b"minWorkers: 1\nbatchSize: 4\n",
            self.notes: b"plain extra file\n" * 50,
            self.vocab: json.dumps({"a": 1, "b": 2}).encode(),
            # A folder: its contents land at the archive root, subfolders kept, hidden
            # files kept, __pycache__ and hidden folders left out (at any depth).
            self.extras / "labels.txt": b"cat\ndog\n",
            self.extras / ".env": b"HIDDEN_FILE=kept\n",
            self.extras / "sub" / "deep.bin": rnd(4096),
            self.extras / "sub" / "sub2" / "deeper.txt": b"two levels down\n",
            self.extras / "sub" / "__pycache__" / "deep.cpython-311.pyc": rnd(64),
            self.extras / "__pycache__" / "mod.cpython-311.pyc": rnd(64),
            self.extras / ".hidden" / "secret.txt": b"left out\n",
            # A wildcard: data/*.csv matches the csv files only.
            self.data / "a.csv": b"x,y\n1,2\n",
            self.data / "b.csv": rnd(300),
            self.data / "c.tsv": b"not matched\n",
        }
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (self.extras / "empty").mkdir()
        return self

    def handler_arg(self, kind: str) -> str:
        if kind == "file":
            return str(self.handler)
        if kind == "module:function":
            return f"{self.handler.with_suffix('')}:handle"
        return "image_classifier"

    def args(self, name: str, handler: str, fmt: str, export: Path) -> list[str]:
        extra = ",".join(
            [str(self.notes), str(self.vocab), str(self.extras), str(self.data / "*.csv")]
        )
        return [
            "--model-name",
            name,
            "--version",
            "1.0",
            "--serialized-file",
            str(self.serialized),
            "--model-file",
            str(self.model_file),
            "--handler",
            self.handler_arg(handler),
            "--extra-files",
            extra,
            "--requirements-file",
            str(self.requirements),
            "--config-file",
            str(self.config),
            "--archive-format",
            fmt,
            "--export-path",
            str(export),
        ]

    def config_for(
        self, name: str, handler: str, fmt: str, export: Path, **overrides
    ) -> ModelArchiverConfig:
        extra = ",".join(
            [str(self.notes), str(self.vocab), str(self.extras), str(self.data / "*.csv")]
        )
        fields = dict(
            model_name=name,
            version="1.0",
            serialized_file=str(self.serialized),
            model_file=str(self.model_file),
            handler=self.handler_arg(handler),
            extra_files=extra,
            requirements_file=str(self.requirements),
            config_file=str(self.config),
            archive_format=fmt,
            export_path=str(export),
        )
        fields.update(overrides)
        return ModelArchiverConfig(**fields)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    return Inputs(tmp_path_factory.mktemp("inputs")).write()


# --------------------------------------------------------------------------- outputs


class Output:
    """One archiver's output read back: every entry's name and bytes, in archive terms."""

    def __init__(self, path: Path, fmt: str, name: str) -> None:
        self.path = path
        self.fmt = fmt
        self.name = name
        self.prefix = f"{name}/" if fmt == "tgz" else ""
        self.names: list[str] = []  # as listed, duplicates kept (files only)
        self.dirs: list[str] = []  # tar directory members, no-archive folders
        self.contents: dict[str, bytes] = {}
        if fmt in ("default", "zip-store"):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    target = self.dirs if info.is_dir() else self.names
                    target.append(info.filename)
                    if not info.is_dir():
                        self.contents[info.filename] = archive.read(info)
        elif fmt == "tgz":
            with tarfile.open(path, "r:gz") as archive:
                for member in archive.getmembers():
                    if member.isdir():
                        self.dirs.append(member.name)
                        continue
                    assert member.isfile(), f"{path}: {member.name} is not a regular file"
                    self.names.append(member.name)
                    self.contents[member.name] = archive.extractfile(member).read()
        else:
            for dirpath, dirnames, filenames in os.walk(path):
                for dirname in dirnames:
                    self.dirs.append(Path(dirpath, dirname).relative_to(path).as_posix())
                for filename in filenames:
                    rel = Path(dirpath, filename).relative_to(path).as_posix()
                    self.names.append(rel)
                    self.contents[rel] = Path(dirpath, filename).read_bytes()

    def manifest_text(self) -> str:
        return self.contents[self.prefix + MANIFEST].decode("utf-8")

    def manifest_pairs(self) -> list:
        """The manifest as nested (key, value) lists: equal only if keys come in the same order."""
        return json.loads(self.manifest_text(), object_pairs_hook=lambda pairs: list(pairs))

    def payload(self) -> dict[str, bytes]:
        return {
            name: data for name, data in self.contents.items() if name != self.prefix + MANIFEST
        }


@pytest.fixture(scope="module")
def outputs(inputs, real_tool, our_tool, tmp_path_factory):
    """(real, ours) for a format and handler kind, built once per module."""
    built: dict[tuple[str, str, str], tuple[Output, Output]] = {}

    def build(fmt: str, handler: str, via: str = "cli") -> tuple[Output, Output]:
        key = (fmt, handler, via)
        if key not in built:
            name = unique_name("compat")
            work = tmp_path_factory.mktemp(f"{fmt}-{handler.replace(':', '-')}-{via}")
            real_dir, our_dir = work / "real", work / "ours"
            real_dir.mkdir()
            our_dir.mkdir()
            real = run(real_tool, inputs.args(name, handler, fmt, real_dir), work / "tmp-real")
            assert real.returncode == 0, f"torch-model-archiver failed:\n{real.stderr}"
            if via == "cli":
                ours = run(our_tool, inputs.args(name, handler, fmt, our_dir), work / "tmp-ours")
                assert ours.returncode == 0, f"mlflow-model-archiver failed:\n{ours.stderr}"
            else:
                generate_model_archive(inputs.config_for(name, handler, fmt, our_dir))
            target = name + EXTENSIONS[fmt]
            built[key] = (Output(real_dir / target, fmt, name), Output(our_dir / target, fmt, name))
        return built[key]

    return build


matrix = pytest.mark.parametrize("handler", HANDLERS)
formats = pytest.mark.parametrize("fmt", FORMATS)


# --------------------------------------------------------------------------- same archives


@formats
@matrix
def test_same_file_names(outputs, fmt, handler):
    real, ours = outputs(fmt, handler)
    assert sorted(ours.names) == sorted(real.names)


@formats
@matrix
def test_same_bytes_in_every_file(outputs, fmt, handler):
    real, ours = outputs(fmt, handler)
    real_payload, our_payload = real.payload(), ours.payload()
    assert real_payload.keys() == our_payload.keys()
    differing = [name for name in real_payload if real_payload[name] != our_payload[name]]
    assert differing == []


@formats
@matrix
def test_same_manifest_apart_from_time_and_archiver_version(outputs, fmt, handler):
    real, ours = outputs(fmt, handler)
    real_manifest = json.loads(real.manifest_text())
    our_manifest = json.loads(ours.manifest_text())
    for key in VOLATILE_KEYS:
        assert key in real_manifest and key in our_manifest
        del real_manifest[key], our_manifest[key]
    assert our_manifest == real_manifest


@formats
@matrix
def test_same_manifest_key_order(outputs, fmt, handler):
    real, ours = outputs(fmt, handler)

    def order(pairs: list) -> list:
        return [(key, order(value) if isinstance(value, list) else None) for key, value in pairs]

    assert order(ours.manifest_pairs()) == order(real.manifest_pairs())


@formats
@matrix
def test_manifest_rendered_the_same_way(outputs, fmt, handler):
    """Same text, indentation included, once the two volatile values are blanked."""
    real, ours = outputs(fmt, handler)

    def blank(text: str) -> str:
        for key in VOLATILE_KEYS:
            text = re.sub(rf'("{key}": )"[^"]*"', r'\1"?"', text)
        return text

    assert blank(ours.manifest_text()) == blank(real.manifest_text())


@formats
def test_created_on_uses_the_same_format(outputs, fmt):
    real, ours = outputs(fmt, "file")
    stamp = re.compile(r"^\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2}$")
    assert stamp.match(json.loads(real.manifest_text())["createdOn"])
    assert stamp.match(json.loads(ours.manifest_text())["createdOn"])


@pytest.mark.parametrize("fmt", ("tgz", "no-archive"))
def test_same_folders(outputs, fmt):
    """tgz directory members and no-archive folders: the same set (empty ones left out)."""
    real, ours = outputs(fmt, "file")
    assert sorted(ours.dirs) == sorted(real.dirs)


@formats
def test_api_writes_what_the_cli_writes(outputs, fmt):
    real, ours = outputs(fmt, "file", via="api")
    assert sorted(ours.names) == sorted(real.names)
    assert ours.payload() == real.payload()


# The comparison only means something if the inputs exercise the real tool's rules; these
# pin what the real tool does with them, so a change in either tool shows up as a failure.


@formats
def test_inputs_exercise_folder_wildcard_and_exclusions(outputs, fmt):
    real, ours = outputs(fmt, "file")
    p = real.prefix
    expected_in = {
        "model.pt",
        "model.py",
        "my_handler.py",
        "requirements.txt",
        "model-config.yaml",
        "notes.txt",
        "vocab.json",
        "labels.txt",
        ".env",
        "sub/deep.bin",
        "sub/sub2/deeper.txt",
        "a.csv",
        "b.csv",
        MANIFEST,
    }
    assert {p + name for name in expected_in} <= set(real.names)
    left_out = [
        name
        for name in real.names
        if "__pycache__" in name or ".hidden" in name or name.endswith("c.tsv")
    ]
    assert left_out == []
    assert sorted(ours.names) == sorted(real.names)


@formats
def test_builtin_handler_is_not_copied(outputs, fmt):
    real, ours = outputs(fmt, "builtin")
    for output in (real, ours):
        assert not any(name.endswith("my_handler.py") for name in output.names)
        assert json.loads(output.manifest_text())["model"]["handler"] == "image_classifier"


@formats
def test_module_function_handler_copies_the_module(outputs, fmt):
    real, ours = outputs(fmt, "module:function")
    for output in (real, ours):
        assert output.prefix + "my_handler.py" in output.names
        assert json.loads(output.manifest_text())["model"]["handler"] == "my_handler:handle"


def test_tgz_entries_sit_under_the_model_name(outputs):
    real, ours = outputs("tgz", "file")
    for output in (real, ours):
        assert all(name.startswith(f"{output.name}/") for name in output.names + output.dirs)


def archive_both(real_tool, our_tool, tmp_path, args: list[str], fmt: str = "default",
                 name: str | None = None) -> tuple[Output, Output]:
    """Run both tools with ``args`` plus a fresh model name and export path each."""
    name = name or unique_name("pair")
    outputs = []
    for who, tool in (("real", real_tool), ("ours", our_tool)):
        export = tmp_path / who
        export.mkdir()
        proc = run(tool, [f"--model-name={name}", "--archive-format", fmt,
                          "--export-path", str(export), *args], tmp_path / f"tmp-{who}")
        assert proc.returncode == 0, f"{tool} failed:\n{proc.stderr}"
        outputs.append(Output(export / (name + EXTENSIONS[fmt]), fmt, name))
    return outputs[0], outputs[1]


def assert_same_archive(real: Output, ours: Output) -> None:
    assert sorted(ours.names) == sorted(real.names)
    assert ours.payload() == real.payload()
    real_manifest, our_manifest = (json.loads(o.manifest_text()) for o in (real, ours))
    for key in VOLATILE_KEYS:
        del real_manifest[key], our_manifest[key]
    assert our_manifest == real_manifest


@pytest.mark.parametrize("runtime, handler", [
    ("python3", "handlers/my_handler.py"),
    ("LSP", "handlers/libhandler:handle"),
    ("LSP", "TorchScriptHandler"),
])
def test_same_archive_for_other_runtimes(inputs, real_tool, our_tool, tmp_path, runtime,
                                         handler):
    """LSP handlers are shared libraries: ``dir/lib`` means ``dir/lib.so`` on Linux."""
    (inputs.root / "handlers" / "libhandler.so").write_bytes(os.urandom(2048))
    real, ours = archive_both(real_tool, our_tool, tmp_path, [
        "--version", "2", "--runtime", runtime, "--handler", str(inputs.root / handler)
        if "/" in handler else handler, "--serialized-file", str(inputs.serialized)])
    assert_same_archive(real, ours)
    assert json.loads(ours.manifest_text())["runtime"] == runtime


def test_same_archive_from_relative_paths(inputs, real_tool, our_tool, tmp_path, monkeypatch):
    """Paths as a user types them, relative to the working directory, folder with a '/'."""
    monkeypatch.chdir(inputs.root)
    real, ours = archive_both(real_tool, our_tool, tmp_path, [
        "--version", "1.0", "--handler", "handlers/my_handler",
        "--serialized-file", "./weights/model.pt", "--model-file", "model.py",
        "--extra-files", "extras/,data/*.csv,notes.txt", "-r", "requirements.txt",
        "-c", "./model-config.yaml"], fmt="no-archive")
    assert_same_archive(real, ours)


def test_same_archive_with_a_symlinked_folder_in_an_extra_folder(inputs, real_tool, our_tool,
                                                                 tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "tokenizer.json").write_bytes(os.urandom(128))
    folder = tmp_path / "extras"
    folder.mkdir()
    (folder / "labels.txt").write_bytes(b"cat\n")
    (folder / "tokenizer").symlink_to(shared, target_is_directory=True)
    real, ours = archive_both(real_tool, our_tool, tmp_path, [
        "--version", "1.0", "--handler", "image_classifier", "--extra-files", str(folder)])
    assert "tokenizer/tokenizer.json" in real.names
    assert_same_archive(real, ours)


# --------------------------------------------------------------------------- same refusals


def minimal_args(inputs: Inputs, name: str, export: Path) -> list[str]:
    return [
        f"--model-name={name}",
        "--version",
        "1.0",
        "--handler",
        str(inputs.handler),
        "--serialized-file",
        str(inputs.serialized),
        "--export-path",
        str(export),
    ]


def assert_refused_by_real(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode != 0, f"torch-model-archiver accepted it:\n{proc.stderr}"
    assert "ModelArchiverError" in proc.stderr, proc.stderr


def assert_one_error_line(proc: subprocess.CompletedProcess) -> None:
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_invalid_model_name_refused_by_both(inputs, real_tool, our_tool, tmp_path):
    real_dir, our_dir = tmp_path / "real", tmp_path / "ours"
    real_dir.mkdir()
    our_dir.mkdir()
    real = run(real_tool, minimal_args(inputs, "-bad", real_dir), tmp_path / "tmp-real")
    ours = run(our_tool, minimal_args(inputs, "-bad", our_dir), tmp_path / "tmp-ours")
    assert_refused_by_real(real)
    assert_one_error_line(ours)
    assert listing(real_dir) == [] and listing(our_dir) == []
    with pytest.raises(ModelArchiverError):
        generate_model_archive(
            ModelArchiverConfig(
                model_name="-bad",
                handler=str(inputs.handler),
                version="1.0",
                export_path=str(our_dir),
            )
        )
    assert listing(our_dir) == []


def test_missing_export_path_refused_by_both(inputs, real_tool, our_tool, tmp_path):
    name = unique_name("noexport")
    real = run(
        real_tool, minimal_args(inputs, name, tmp_path / "real" / "missing"), tmp_path / "tmp-real"
    )
    ours = run(
        our_tool, minimal_args(inputs, name, tmp_path / "ours" / "missing"), tmp_path / "tmp-ours"
    )
    assert_refused_by_real(real)
    assert_one_error_line(ours)
    assert not (tmp_path / "real").exists() and not (tmp_path / "ours").exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_existing_output_without_force_refused_by_both(inputs, real_tool, our_tool, tmp_path, fmt):
    name = unique_name("exists")
    results = {}
    for who, tool in (("real", real_tool), ("ours", our_tool)):
        export = tmp_path / who
        export.mkdir()
        target = export / (name + EXTENSIONS[fmt])
        if fmt == "no-archive":
            target.mkdir()
            (target / "keep.txt").write_bytes(b"already here")
        else:
            target.write_bytes(b"already here")
        args = [*minimal_args(inputs, name, export), "--archive-format", fmt]
        results[who] = run(tool, args, tmp_path / f"tmp-{who}")
        assert listing(export) == (
            [target.name, f"{target.name}/keep.txt"] if fmt == "no-archive" else [target.name]
        )
        kept = target / "keep.txt" if fmt == "no-archive" else target
        assert kept.read_bytes() == b"already here"
    assert_refused_by_real(results["real"])
    assert_one_error_line(results["ours"])


@pytest.mark.parametrize("fmt", ("default", "tgz"))
def test_existing_output_with_force_replaced_by_both(inputs, real_tool, our_tool, tmp_path, fmt):
    name = unique_name("force")
    outputs = {}
    for who, tool in (("real", real_tool), ("ours", our_tool)):
        export = tmp_path / who
        export.mkdir()
        target = export / (name + EXTENSIONS[fmt])
        target.write_bytes(b"stale")
        args = [*minimal_args(inputs, name, export), "--archive-format", fmt, "--force"]
        proc = run(tool, args, tmp_path / f"tmp-{who}")
        assert proc.returncode == 0, proc.stderr
        outputs[who] = Output(target, fmt, name)
    assert sorted(outputs["ours"].names) == sorted(outputs["real"].names)
    assert outputs["ours"].payload() == outputs["real"].payload()
