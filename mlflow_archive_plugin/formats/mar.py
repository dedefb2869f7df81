"""TorchServe ``.mar``: an MLflow model TorchServe can serve, or a foreign ``.mar`` read back.

An exported ``.mar`` holds ``MAR-INF/MANIFEST.json``, a generated handler that serves the
MLflow model under ``model/`` through ``mlflow.pyfunc``, the model's pinned
``requirements.txt``, and the shared metadata and checksums. A ``.mar`` made by
``torch-model-archiver`` has no metadata document: its manifest becomes ``torchserve.*`` tags.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import CorruptArchiveError, UnsupportedError
from mlflow_archive_plugin.formats.base import Entry, Layout
from mlflow_archive_plugin.formats.mlflow import model_files
from mlflow_archive_plugin.snapshot import (
    METADATA_NAME,
    METRICS_NAME,
    LoggedModelInfo,
    ModelVersionInfo,
    RegisteredModelInfo,
    Snapshot,
)
from mlflow_archive_plugin.torchserve.archiver import (
    MANIFEST_PATH,
    MODEL_NAME_PATTERN,
    ModelArchiverConfig,
    ModelArchiverError,
    archiver_version,
    generate_manifest,
    plan_files,
    render_manifest,
)
from mlflow_archive_plugin.trust.parsing import load_json

HANDLER_NAME = "mlflow_handler.py"
REQUIREMENTS_NAME = "requirements.txt"
TAG_PREFIX = "torchserve."
# TorchServe writes a manifest of a few hundred bytes; a megabyte leaves room for any other tool.
MAX_MANIFEST_BYTES = 1024**2
# Options a user may give to replace or extend the generated parts.
OPTIONS = ("handler", "model_file", "serialized_file", "extra_files", "config_file",
           "requirements_file")
_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_\-.]+")
_HANDLER_SOURCE = Path(__file__).resolve().parent / "mar_handler.py"


def torchserve_name(snapshot: Snapshot) -> str:
    """The model's name made valid for TorchServe (letters, digits, ``_-.``, alphanumeric first)."""
    name = _INVALID_NAME_CHARS.sub("_", snapshot.display_name).lstrip("_-.")
    return name if name and MODEL_NAME_PATTERN.match(name) else "model"


class MarLayout(Layout):
    """TorchServe's model archive; ``zip`` gives ``<name>.mar``, ``tar.gz`` a ``<name>/`` prefix."""

    name = "mar"
    default_container = "zip"
    containers = ("zip", "tar.gz", "folder")

    def extension(self, container) -> str:
        return ".mar" if container.name == "zip" else container.extension

    def entry_prefix(self, snapshot: Snapshot, container) -> str:
        return f"{torchserve_name(snapshot)}/" if container.name == "tar.gz" else ""

    def file_stem(self, snapshot: Snapshot) -> str:
        return torchserve_name(snapshot)

    def plan(self, snapshot: Snapshot, options: dict[str, Any] | None = None) -> list[Entry]:
        options = dict(options or {})
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise UnsupportedError(f"unknown .mar option {unknown[0]!r}; choose from: "
                                   f"{', '.join(OPTIONS)}")
        snapshot.layout = self.name
        snapshot.model_path = "model"
        entries = [
            Entry(f"model/{path.relative_to(snapshot.model_dir).as_posix()}", source=path)
            for path in model_files(snapshot.model_dir)
        ]
        config = self._config(snapshot, options)
        user_files = self._user_files(config, options)
        if "handler" not in options:
            entries.append(Entry(HANDLER_NAME, source=_HANDLER_SOURCE))
        requirements = snapshot.model_dir / REQUIREMENTS_NAME
        if "requirements_file" not in options and requirements.is_file():
            entries.append(Entry(REQUIREMENTS_NAME, source=requirements))
        taken = {entry.arcname.casefold(): entry.arcname for entry in entries}
        for arcname, source in user_files.items():
            if arcname.casefold() in taken or arcname.casefold().startswith("model/"):
                raise UnsupportedError(
                    f"{source} would be archived as {arcname!r}, which the .mar already holds; "
                    "rename it"
                )
            entries.append(Entry(arcname, source=source))
        for reserved in (METADATA_NAME, METRICS_NAME, "checksum.txt"):
            if reserved.casefold() in {entry.arcname.casefold() for entry in entries}:
                raise UnsupportedError(f"an extra file is named {reserved}, which the plugin "
                                       "writes itself; rename it")
        manifest = generate_manifest(config)
        created = _created_ms(snapshot)
        if created is not None:  # the model's time, not the export's: same version, same bytes
            manifest["createdOn"] = (datetime.datetime.fromtimestamp(created / 1000, datetime.UTC)
                                     .strftime("%d/%m/%Y %H:%M:%S"))
        entries.append(Entry(MANIFEST_PATH, data=render_manifest(manifest)))
        return entries

    @staticmethod
    def _config(snapshot: Snapshot, options: dict[str, Any]) -> ModelArchiverConfig:
        version = snapshot.model_version.version if snapshot.model_version else "1.0"
        has_requirements = (snapshot.model_dir / REQUIREMENTS_NAME).is_file()
        return ModelArchiverConfig(
            model_name=torchserve_name(snapshot),
            handler=str(options.get("handler") or HANDLER_NAME),
            version=str(version),
            serialized_file=options.get("serialized_file"),
            model_file=options.get("model_file"),
            extra_files=_comma_list(options.get("extra_files")),
            requirements_file=options.get("requirements_file")
            or (REQUIREMENTS_NAME if has_requirements else None),
            config_file=options.get("config_file"),
        )

    @staticmethod
    def _user_files(config: ModelArchiverConfig, options: dict[str, Any]) -> dict[str, Path]:
        """The files the user asked for, found and checked as torch-model-archiver would."""
        user = ModelArchiverConfig(
            model_name=config.model_name,
            handler=config.handler if "handler" in options else "base_handler",
            version=config.version,
            serialized_file=config.serialized_file,
            model_file=config.model_file,
            extra_files=config.extra_files,
            requirements_file=options.get("requirements_file"),
            config_file=config.config_file,
        )
        try:
            return plan_files(user)
        except ModelArchiverError as exc:
            raise UnsupportedError(str(exc)) from exc

    def detect(self, names: set[str], root: Path) -> bool:
        return MANIFEST_PATH in names and METADATA_NAME not in names

    def read(self, root: Path) -> Snapshot:
        """A foreign ``.mar``: its manifest as the registry entry, its files as the model."""
        manifest = read_manifest(root / MANIFEST_PATH)
        model = manifest["model"]
        name, version = model["modelName"], model["modelVersion"]
        tags = {f"{TAG_PREFIX}{key}": str(value) for key, value in model.items()
                if isinstance(value, (str, int, float))}
        for key in ("runtime", "createdOn", "archiverVersion"):
            if manifest.get(key) is not None:
                tags[f"{TAG_PREFIX}{key}"] = str(manifest[key])
        handler = model.get("handler", "")
        description = (f"TorchServe model archive {name} version {version}"
                       + (f", handler {handler}" if handler else "")
                       + "; imported by mlflow-archive-plugin.")
        return Snapshot(
            model_dir=root,
            mlmodel={},
            registered_model=RegisteredModelInfo(name=name),
            model_version=ModelVersionInfo(version=version, description=description, tags=tags),
            logged_model=LoggedModelInfo(model_id="", name=name, tags=dict(tags)),
            layout=self.name,
            foreign_manifest=manifest,
        )


def _created_ms(snapshot: Snapshot) -> int | None:
    """When the registry says the model was made: the version's, the LoggedModel's, or the
    run's start time, in epoch milliseconds."""
    for value in (snapshot.model_version and snapshot.model_version.creation_timestamp,
                  snapshot.logged_model and snapshot.logged_model.creation_timestamp,
                  snapshot.run and snapshot.run.start_time):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _comma_list(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return ",".join(str(item) for item in value)


def read_manifest(path: Path) -> dict[str, Any]:
    """``MAR-INF/MANIFEST.json``, checked for what TorchServe itself requires."""
    if not path.is_file():
        raise CorruptArchiveError(f"the archive has no {MANIFEST_PATH}, so it is not a .mar; "
                                  "make it with torch-model-archiver or mlflow-archive")
    manifest = load_json(path.read_bytes(), what=MANIFEST_PATH, max_bytes=MAX_MANIFEST_BYTES)
    model = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(model, dict):
        raise CorruptArchiveError(f"{MANIFEST_PATH} has no 'model' object; archive the model "
                                  "again")
    for key in ("modelName", "modelVersion"):
        if not isinstance(model.get(key), str) or not model[key]:
            raise CorruptArchiveError(f"{MANIFEST_PATH} lacks model.{key}, which TorchServe "
                                      "requires; archive the model again with --version")
    if not MODEL_NAME_PATTERN.match(model["modelName"]):
        raise CorruptArchiveError(
            f"{MANIFEST_PATH} names the model {model['modelName']!r}, which TorchServe "
            f"refuses (it must match {MODEL_NAME_PATTERN.pattern})"
        )
    return manifest


__all__ = ["HANDLER_NAME", "MarLayout", "archiver_version", "read_manifest", "torchserve_name"]
