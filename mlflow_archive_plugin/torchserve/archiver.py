"""A drop-in for ``torch-model-archiver``: the same config, flags, manifest and outputs.

Everything is checked before anything is written, files stream from where they are into
the archive (no shared ``/tmp/<model-name>`` staging), and the archive appears under its
final name only once complete. Where the original silently lets one extra file overwrite
another, this one names both and stops.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mlflow_archive_plugin.errors import ArchiveError, UnsafeArchiveError
from mlflow_archive_plugin.storage.containers import get_container
from mlflow_archive_plugin.storage.containers.base import collision_key, safe_entry_name
from mlflow_archive_plugin.storage.containers.zip import ZipWriter
from mlflow_archive_plugin.storage.location import publish_file, publish_folder, resolve

logger = logging.getLogger(__name__)

MANIFEST_PATH = "MAR-INF/MANIFEST.json"
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
RUNTIMES = ("python", "python3", "LSP")
ARCHIVE_FORMATS = ("default", "tgz", "no-archive", "zip-store")
EXTENSIONS = {"default": ".mar", "zip-store": ".mar", "tgz": ".tar.gz", "no-archive": ""}
# Handlers TorchServe ships: named in the manifest, never copied into the archive.
BUILTIN_HANDLERS = (
    "base_handler", "text_classifier", "image_classifier", "object_detector",
    "image_segmenter", "dali_image_classifier", "vllm_handler", "trt_llm_handler",
)
_LSP_BUILTIN_HANDLERS = ("BaseHandler", "TorchScriptHandler")
# Folders torch-model-archiver leaves out wherever they appear under an extra-files folder.
_SKIPPED_DIRS = ("__MACOSX", "__pycache__")


class ModelArchiverError(ArchiveError):
    """An archiving request that cannot be carried out; the message says how to fix it."""


@dataclass
class ModelArchiverConfig:
    """What to archive, field for field as ``model_archiver.ModelArchiverConfig``.

    ``export_path`` defaults to the working directory when the config is made (the
    original takes it once, when its module is imported).
    """

    model_name: str
    handler: str
    version: str
    serialized_file: str | None = None
    model_file: str | None = None
    extra_files: str | None = None
    runtime: str = "python"
    export_path: str = field(default_factory=os.getcwd)
    archive_format: Literal["default", "tgz", "no-archive", "zip-store"] = "default"
    force: bool = False
    requirements_file: str | None = None
    config_file: str | None = None


def archiver_version() -> str:
    """The value written as ``archiverVersion``: this plugin's version."""
    from mlflow_archive_plugin import __version__

    return __version__


def generate_manifest(config: ModelArchiverConfig) -> dict:
    """``MAR-INF/MANIFEST.json`` for ``config``: the original's keys, order and empty-key rules."""
    model: dict[str, str] = {"modelName": config.model_name}
    if config.serialized_file:
        model["serializedFile"] = os.path.basename(config.serialized_file)
    model["handler"] = os.path.basename(config.handler)
    if config.model_file:
        model["modelFile"] = config.model_file.split("/")[-1]
    if config.version:
        model["modelVersion"] = config.version
    if config.requirements_file:
        model["requirementsFile"] = config.requirements_file.split("/")[-1]
    if config.config_file:
        model["configFile"] = os.path.basename(config.config_file)
    return {
        "createdOn": datetime.datetime.now().strftime("%d/%m/%Y %H:%M:%S"),
        "runtime": config.runtime,
        "model": model,
        "archiverVersion": archiver_version(),
    }


def render_manifest(manifest: dict) -> bytes:
    """The manifest as the original writes it (two-space indented JSON)."""
    return json.dumps(manifest, indent=2).encode("utf-8")


def export_file(config: ModelArchiverConfig) -> Path:
    """Where ``config``'s archive goes: ``<export_path>/<model_name><extension>``."""
    return Path(config.export_path or os.getcwd(), config.model_name
                + EXTENSIONS[config.archive_format])


def plan_files(config: ModelArchiverConfig) -> dict[str, Path]:
    """Every file to archive, by its name in the archive, checked to exist and not to clash."""
    planned: dict[str, Path] = {}
    keys: dict[str, str] = {}

    def add(arcname: str, source: Path, what: str) -> None:
        try:
            safe_entry_name(arcname)
        except UnsafeArchiveError as exc:
            raise ModelArchiverError(
                f"{what} {source} cannot be archived as {arcname!r}: {exc.reason or exc}, "
                "which TorchServe and unzip tools would misplace; rename it"
            ) from exc
        key = collision_key(arcname)
        if key in keys:
            other = keys[key]
            clash = ("would both be archived as " + repr(arcname)
                     + " (torch-model-archiver would silently keep only one)") if other == arcname \
                else (f"would be archived as {arcname!r} and {other!r}, which differ only in "
                      "case or Unicode form and overwrite each other when extracted on macOS "
                      "or Windows")
            raise ModelArchiverError(f"{what} {source} and {planned[other]} {clash}; "
                                     "rename one of them")
        keys[key] = arcname
        planned[arcname] = source

    for what, value in (("model file", config.model_file),
                        ("serialized file", config.serialized_file)):
        if value:
            source = _existing_file(value, what.replace(" ", "-"))
            add(source.name, source, what)
    handler = _handler_file(config)
    if handler is not None:
        add(handler.name, handler, "handler")
    for arcname, source in _extra_files(config.extra_files):
        add(arcname, source, "extra file")
    for what, value in (("requirements file", config.requirements_file),
                        ("config file", config.config_file)):
        if value:
            source = _existing_file(value, what.replace(" ", "-"))
            add(source.name, source, what)
    if collision_key(MANIFEST_PATH) in keys:
        raise ModelArchiverError(
            f"an extra file would be archived as {MANIFEST_PATH}, which the archiver writes; "
            "remove it from --extra-files"
        )
    return planned


def _existing_file(value: str, flag: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ModelArchiverError(f"--{flag} {value} does not exist or is not a file; "
                                 "check the path")
    return path


def _handler_file(config: ModelArchiverConfig) -> Path | None:
    """The handler file to copy, or None for a handler TorchServe ships."""
    handler = config.handler
    if config.runtime in ("python", "python3"):
        if handler in BUILTIN_HANDLERS:
            return None
        path = handler.split(":", 1)[0] if ":" in handler and not _is_file(handler) else handler
        if not path.endswith(".py"):
            path += ".py"
    else:
        if handler in _LSP_BUILTIN_HANDLERS:
            return None
        path = handler.split(":", 1)[0]
        if not path.endswith((".so", ".dylib")):
            path += ".dylib" if os.uname().sysname == "Darwin" else ".so"
    if not Path(path).is_file():
        builtins = ", ".join(BUILTIN_HANDLERS)
        raise ModelArchiverError(
            f"--handler {handler}: {path} does not exist; give a handler file or one of "
            f"TorchServe's built-in handlers ({builtins})"
        )
    return Path(path)


def _is_file(value: str) -> bool:
    return Path(value).is_file()


def _extra_files(extra: str | None) -> list[tuple[str, Path]]:
    """``--extra-files`` expanded as torch-model-archiver does: files by their base name, a
    folder's contents at the archive root, wildcards expanded."""
    if not extra:
        return []
    found: list[tuple[str, Path]] = []
    for raw in extra.split(","):
        pattern = raw.strip()
        if not pattern:
            continue
        wildcard = any(char in pattern for char in "*?") or ("[" in pattern and "]" in pattern)
        if not wildcard and not Path(pattern).exists():
            raise ModelArchiverError(f"--extra-files {pattern} does not exist; check the path")
        matches = sorted(glob.glob(pattern))
        if wildcard and not matches:
            logger.warning("--extra-files pattern %r matches no file", pattern)
        for match in matches:
            path = Path(match)
            if path.is_file():
                found.append((path.name, path))
            elif path.is_dir():
                found.extend(_folder_files(path))
            else:
                raise ModelArchiverError(f"--extra-files {match} is not a file or folder")
    return found


def _folder_files(folder: Path) -> list[tuple[str, Path]]:
    """A folder's files, links followed as torch-model-archiver's copy follows them (each
    real folder once, so a link loop ends)."""
    files = []
    seen = {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        kept = []
        for name in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, name))
            if name in _SKIPPED_DIRS or name.startswith(".") or real in seen:
                continue
            seen.add(real)
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(filenames):
            path = Path(dirpath, name)
            files.append((path.relative_to(folder).as_posix(), path))
    return files


def validate(config: ModelArchiverConfig) -> None:
    """The original's checks, plus the ones it leaves to a traceback, before anything is read."""
    if not isinstance(config.model_name, str) or not MODEL_NAME_PATTERN.match(config.model_name):
        raise ModelArchiverError(
            f"model name {config.model_name!r} is not allowed; it must match "
            f"{MODEL_NAME_PATTERN.pattern} (letters, digits, '_', '-', '.')"
        )
    if not config.version:
        raise ModelArchiverError("a model version is required; pass --version, e.g. 1.0")
    if not config.handler:
        raise ModelArchiverError("a handler is required; pass --handler FILE or a built-in name")
    if config.runtime not in RUNTIMES:
        raise ModelArchiverError(
            f"runtime {config.runtime!r} is unknown; choose one of: {', '.join(RUNTIMES)}"
        )
    if config.archive_format not in ARCHIVE_FORMATS:
        raise ModelArchiverError(
            f"archive format {config.archive_format!r} is unknown; choose one of: "
            f"{', '.join(ARCHIVE_FORMATS)}"
        )
    export_path = config.export_path or os.getcwd()
    if not os.path.isdir(export_path):
        raise ModelArchiverError(
            f"export path {export_path} is not a directory; create it or point --export-path "
            "at an existing directory"
        )
    target = export_file(config)
    if os.path.lexists(target) and not config.force:
        raise ModelArchiverError(
            f"{target} already exists; pass --force (-f) to overwrite it"
        )


def build_parser(prog: str = "mlflow-model-archiver") -> argparse.ArgumentParser:
    """The original's flags, short options and defaults."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Package a model for TorchServe as torch-model-archiver does: "
        "<model-name>.mar, <model-name>.tar.gz or a <model-name>/ folder.",
    )
    parser.add_argument("--model-name", required=True,
                        help="Model name; the archive is named <model-name>.mar.")
    parser.add_argument("--serialized-file", help="Weights file (.pt, .pth, .onnx ...).")
    parser.add_argument("--model-file", help="Python file with the model's class (eager mode).")
    parser.add_argument("--handler", required=True,
                        help="Handler file (handler.py or handler:function) or a TorchServe "
                             "built-in handler name.")
    parser.add_argument("--extra-files",
                        help="Comma-separated files, folders or wildcards to include.")
    parser.add_argument("--runtime", default="python", choices=RUNTIMES,
                        help='Language the handler runs in (default: "python").')
    parser.add_argument("--export-path", default=os.getcwd(),
                        help="Folder to write the archive to (default: working directory).")
    parser.add_argument("--archive-format", default="default", choices=ARCHIVE_FORMATS,
                        help="default: <name>.mar (zip); tgz: <name>.tar.gz with a <name>/ "
                             "prefix; no-archive: a <name>/ folder; zip-store: <name>.mar, "
                             "nothing compressed.")
    parser.add_argument("-f", "--force", action="store_true",
                        help="Replace an existing archive of the same name.")
    parser.add_argument("-v", "--version", required=True, help="The model's version.")
    parser.add_argument("-r", "--requirements-file",
                        help="requirements.txt with the model's Python dependencies.")
    parser.add_argument("-c", "--config-file", help="YAML model configuration (batch size ...).")
    return parser


def parse_args(argv: Sequence[str] | None = None,
               prog: str = "mlflow-model-archiver") -> ModelArchiverConfig:
    """A config from command-line flags (``sys.argv`` when ``argv`` is None)."""
    args = build_parser(prog).parse_args(argv)
    return ModelArchiverConfig(
        model_name=args.model_name,
        handler=args.handler,
        version=args.version,
        serialized_file=args.serialized_file,
        model_file=args.model_file,
        extra_files=args.extra_files,
        runtime=args.runtime,
        export_path=args.export_path,
        archive_format=args.archive_format,
        force=args.force,
        requirements_file=args.requirements_file,
        config_file=args.config_file,
    )


def generate_model_archive(config: ModelArchiverConfig | None = None) -> Path:
    """Archive ``config`` (or the command line's flags when None) and return the output path.

    Raises :class:`ModelArchiverError`, having written nothing, when an input is missing or
    invalid or the output exists without ``force``.
    """
    if config is None:
        config = parse_args()
    validate(config)
    files = plan_files(config)
    manifest = render_manifest(generate_manifest(config))
    target = export_file(config)
    write_mar(target, files, manifest, config.archive_format, config.model_name, config.force)
    return target


def write_mar(target: Path, files: dict[str, Path], manifest: bytes, archive_format: str,
              model_name: str, force: bool) -> None:
    """Write ``files`` and the manifest last, as the original orders them, atomically."""
    location = resolve(str(target))
    if archive_format == "no-archive":
        container = get_container("folder")
        prefix = ""
    elif archive_format == "tgz":
        container = get_container("tar.gz")
        prefix = f"{model_name}/"
    else:
        container = None
        prefix = ""
    publisher = publish_folder if archive_format == "no-archive" else publish_file
    with publisher(location, force) as sink:
        writer = (ZipWriter(sink, store_only=archive_format == "zip-store")
                  if container is None else container.open_writer(sink))
        with writer:
            for arcname, source in files.items():
                writer.add_file(prefix + arcname, source)
            writer.add_bytes(prefix + MANIFEST_PATH, manifest)
