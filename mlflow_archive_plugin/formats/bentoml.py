"""BentoML ``.bentomodel``: an MLflow model as ``bentoml.mlflow`` stores it, or BentoML's own.

An exported archive is laid out as BentoML's model store keeps a model saved with
``bentoml.mlflow.import_model``: ``model.yaml`` at the root and the MLflow model under
``mlflow_model/``, so ``bentoml.models.import_model(path)`` takes it as it is and
``bentoml.mlflow.load_model(tag)`` loads it. The shared metadata document and checksums sit
beside them, so importing it back into MLflow loses nothing. An archive BentoML wrote has no
metadata document: with module ``bentoml.mlflow`` its inner MLflow model is registered;
any other module is kept whole as an archive-backed version.
"""

from __future__ import annotations

import datetime
import json
import platform
import posixpath
import re
from pathlib import Path
from typing import Any

import yaml

from mlflow_archive_plugin.errors import CorruptArchiveError, UnsupportedError
from mlflow_archive_plugin.formats.base import Entry, Layout
from mlflow_archive_plugin.formats.mlflow import model_files
from mlflow_archive_plugin.snapshot import (
    METADATA_NAME,
    LoggedModelInfo,
    ModelVersionInfo,
    RegisteredModelInfo,
    Snapshot,
)
from mlflow_archive_plugin.trust.parsing import load_mlmodel, load_yaml

MODEL_YAML = "model.yaml"
MLFLOW_MODULE = "bentoml.mlflow"
MODEL_DIR = "mlflow_model"
TAG_PREFIX = "bentoml."
# A BentoML label kept as a tag on import; exported again, it is that label once more.
LABEL_TAG_PREFIX = f"{TAG_PREFIX}label."
# The plugin's own tags on an imported version (digest, source ids and times) describe the
# import, not the model: as labels they would only be mangled (a digest cut to 63 characters).
PLUGIN_TAG_PREFIX = "mlflow_archive."
# Tags holding an MLSteam package's hook files, kept by an import of a hand-written package.
HOOK_TAG_PREFIX = "mlsteam.hook."
# What MLflow accepts in a tag key (letters, digits, "_-. :/", no "//", "./" or "/" at the end).
_TAG_KEY_REFUSED = re.compile(r"[^\w.\- :/]")
_TAG_KEY_MAX = 250
# MLflow keeps a model version tag value of up to 100,000 characters.
_TAG_VALUE_MAX = 100_000
# BentoML's rule for a tag's name and version.
TAG_PATTERN = re.compile(r"^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$")
TAG_MAX = 63
# Keys BentoML cannot load a model.yaml without. A model made with bentoml.models.create has
# an empty module, which BentoML writes and imports, so only that one may be empty.
REQUIRED_KEYS = ("name", "version", "module", "creation_time")
_MAY_BE_EMPTY = ("module",)
# The BentoML release whose model.yaml this layout writes (api_version v1).
BENTOML_VERSION = "1.4.39"
_EXTENSIONS = {"tar.xz": ".bentomodel", "tar.gz": ".gz", "tar.bz2": ".bz2", "tar": ".tar",
               "zip": ".zip", "folder": ""}


def bentoml_tag_part(value: str, what: str) -> str:
    """``value`` made valid as a BentoML tag name or version: lower case, ``-._`` inside."""
    part = re.sub(r"[^a-z0-9._-]+", "-", value.lower())[:TAG_MAX].strip("-._")
    if not TAG_PATTERN.match(part):
        raise UnsupportedError(
            f"the model's {what} {value!r} cannot be made a valid BentoML tag {what} "
            "(letters and digits needed); register it under another name"
        )
    return part


def _label(value: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", value)[:TAG_MAX].strip("-._")
    return cleaned or "x"


def _labels(tags: dict[str, str]) -> dict[str, str]:
    """The labels of a version with ``tags``: BentoML labels kept by an import come back
    under their own keys; the other ``bentoml.*`` tags (model.yaml's fields) and the plugin's
    own tags are no labels."""
    labels = {}
    for key, value in tags.items():
        if key.startswith(LABEL_TAG_PREFIX):
            key = key.removeprefix(LABEL_TAG_PREFIX)
        elif key.startswith((TAG_PREFIX, PLUGIN_TAG_PREFIX, HOOK_TAG_PREFIX)):
            continue  # (an MLSteam hook's source is no label; it stays in mlflow_tags)
        labels[_label(key)] = _label(value)
    return labels


def _tag(snapshot: Snapshot) -> tuple[str, str]:
    name = bentoml_tag_part(snapshot.display_name, "name")
    if snapshot.model_version is not None:
        version = bentoml_tag_part(f"v{snapshot.model_version.version}", "version")
    elif snapshot.logged_model is not None and snapshot.logged_model.model_id:
        version = bentoml_tag_part(snapshot.logged_model.model_id, "version")
    else:
        version = "v1"
    return name, version


def _creation_time(snapshot: Snapshot) -> str:
    millis = None
    if snapshot.model_version is not None:
        millis = snapshot.model_version.creation_timestamp
    if millis is None and snapshot.logged_model is not None:
        millis = snapshot.logged_model.creation_timestamp
    moment = (datetime.datetime.fromtimestamp(millis / 1000, datetime.UTC) if millis
              else datetime.datetime.now(datetime.UTC))
    return moment.isoformat()


def model_yaml(snapshot: Snapshot) -> dict[str, Any]:
    """The ``model.yaml`` of ``snapshot``, mapped from the registry as documented."""
    name, version = _tag(snapshot)
    tags: dict[str, str] = {}
    if snapshot.registered_model is not None:
        tags.update(snapshot.registered_model.tags)
    if snapshot.model_version is not None:
        tags.update(snapshot.model_version.tags)
    labels = _labels(tags)
    metadata: dict[str, Any] = {
        "mlflow_registered_model": snapshot.registered_model.name
        if snapshot.registered_model else None,
        "mlflow_model_version": snapshot.model_version.version
        if snapshot.model_version else None,
        "mlflow_model_id": snapshot.logged_model.model_id if snapshot.logged_model else None,
        "mlflow_run_id": snapshot.run.run_id if snapshot.run else None,
        "description": snapshot.model_version.description if snapshot.model_version else None,
        "params": dict(snapshot.run.params) if snapshot.run else {},
        "metrics": _latest_metrics(snapshot),
    }
    if labels != tags:
        metadata["mlflow_tags"] = tags  # labels are not the tags as they are: keep those
    return {
        "name": name,
        "version": version,
        "module": MLFLOW_MODULE,
        "labels": labels,
        "options": {},
        "metadata": {key: value for key, value in metadata.items() if value not in (None, {})},
        "context": {
            "framework_name": "mlflow",
            "framework_versions": {"mlflow": str(snapshot.mlmodel.get("mlflow_version", ""))},
            "bentoml_version": BENTOML_VERSION,
            "python_version": platform.python_version(),
        },
        "signatures": {"predict": {"batchable": False}},
        "api_version": "v1",
        "creation_time": _creation_time(snapshot),
    }


def _latest_metrics(snapshot: Snapshot) -> dict[str, float]:
    if snapshot.run is None:
        return {}
    return {key: float(point["value"])
            for key, point in snapshot.run.latest_metrics().items()}


class BentomlLayout(Layout):
    """``model.yaml`` + ``mlflow_model/``; ``.bentomodel`` (tar.xz) by default."""

    name = "bentoml"
    default_container = "tar.xz"
    containers = ("tar.xz", "tar.gz", "tar.bz2", "tar", "zip", "folder")
    extra_extensions = {".xz": "tar.xz"}

    def extension(self, container) -> str:
        return _EXTENSIONS[container.name]

    def file_stem(self, snapshot: Snapshot) -> str:
        name, version = _tag(snapshot)
        return f"{name}-{version}"

    def plan(self, snapshot: Snapshot, options: dict[str, Any] | None = None) -> list[Entry]:
        if options:
            raise UnsupportedError(
                f"the bentoml format takes no options (got {', '.join(sorted(options))})"
            )
        snapshot.layout = self.name
        snapshot.model_path = MODEL_DIR
        document = yaml.safe_dump(model_yaml(snapshot), sort_keys=False, allow_unicode=True)
        return [
            Entry(MODEL_YAML, data=document.encode("utf-8")),
            *(Entry(f"{MODEL_DIR}/{path.relative_to(snapshot.model_dir).as_posix()}",
                    source=path) for path in model_files(snapshot.model_dir)),
        ]

    def detect(self, names: set[str], root: Path) -> bool:
        return MODEL_YAML in names and METADATA_NAME not in names

    def read(self, root: Path) -> Snapshot:
        """A model BentoML exported: ``bentoml.mlflow`` models give their MLflow model."""
        document = read_model_yaml(root / MODEL_YAML)
        name, version = str(document["name"]), str(document["version"])
        tags = _foreign_tags(document)
        module = str(document["module"])
        description = (f"BentoML model {name}:{version} (module {module or 'none'}), created "
                       f"{document['creation_time']}; imported by mlflow-archive-plugin.")
        inner = root / MODEL_DIR / "MLmodel"
        wraps_mlflow = module == MLFLOW_MODULE and inner.is_file()
        snapshot = Snapshot(
            model_dir=root / MODEL_DIR if wraps_mlflow else root,
            mlmodel=_read_mlmodel(inner) if wraps_mlflow else {},
            registered_model=RegisteredModelInfo(name=name),
            model_version=ModelVersionInfo(version=version, description=description, tags=tags),
            logged_model=LoggedModelInfo(model_id="", name=name, tags=dict(tags)),
            layout=self.name,
            model_path=MODEL_DIR if wraps_mlflow else ".",
            foreign_manifest=None if wraps_mlflow else document,
        )
        return snapshot


def _foreign_tags(document: dict[str, Any]) -> dict[str, str]:
    tags = {f"{TAG_PREFIX}{key}": str(document[key])
            for key in ("name", "version", "module", "creation_time", "api_version")
            if document.get(key) is not None}
    labels = {str(key): str(value) for key, value in (document.get("labels") or {}).items()}
    for key, value in labels.items():
        tags[_label_tag_key(key)] = value
    if any(_label_tag_key(key) != LABEL_TAG_PREFIX + key for key in labels):
        # BentoML takes any text as a label key, MLflow not as a tag key: keep them whole.
        tags[f"{TAG_PREFIX}labels"] = _json_tag(labels)
    if document.get("metadata"):
        tags[f"{TAG_PREFIX}metadata"] = _json_tag(document["metadata"])
    if document.get("context"):
        tags[f"{TAG_PREFIX}context"] = _json_tag(document["context"])
    return tags


def _json_tag(value: Any) -> str:
    """``value`` as a JSON tag value, whole: a cut JSON text would be no JSON at all. Past
    what a registry keeps in one tag, the tag says so instead of holding half a document."""
    text = json.dumps(value, default=str)
    if len(text) > _TAG_VALUE_MAX:
        return json.dumps({"mlflow_archive.omitted": f"{len(text)} characters of JSON, more "
                           f"than the {_TAG_VALUE_MAX} a model version tag holds; see "
                           "model.yaml in the archive"})
    return text


def _label_tag_key(label: str) -> str:
    """The tag key a BentoML label is kept under, made valid for MLflow."""
    key = LABEL_TAG_PREFIX + _TAG_KEY_REFUSED.sub("_", label)
    if posixpath.normpath(key) != key:
        key = key.replace("/", "_")
    return key[:_TAG_KEY_MAX]


def _read_mlmodel(path: Path) -> dict[str, Any]:
    return load_mlmodel(path.read_bytes(), what=f"{MODEL_DIR}/MLmodel")


def read_model_yaml(path: Path) -> dict[str, Any]:
    """``model.yaml``, checked for what BentoML itself needs before registering anything."""
    if not path.is_file():
        raise CorruptArchiveError(f"the archive has no {MODEL_YAML}, so it is not a BentoML "
                                  "model; export it with bentoml or mlflow-archive")
    document = load_yaml(path.read_bytes(), what=MODEL_YAML)
    if not isinstance(document, dict):
        raise CorruptArchiveError(f"{MODEL_YAML} is not a YAML mapping; export the model again")
    missing = [key for key in REQUIRED_KEYS if document.get(key) is None
               or (document[key] == "" and key not in _MAY_BE_EMPTY)]
    if missing:
        raise CorruptArchiveError(f"{MODEL_YAML} lacks {', '.join(missing)}, which BentoML "
                                  "requires; export the model again")
    for key in ("name", "version"):
        value = str(document[key])
        if not TAG_PATTERN.match(value) or len(value) > TAG_MAX:
            raise CorruptArchiveError(f"{MODEL_YAML} has {key} {value!r}, not a valid BentoML "
                                      "tag part (lower-case letters, digits, '-._')")
    created = document["creation_time"]
    if isinstance(created, str):
        try:
            created = datetime.datetime.fromisoformat(created)
        except ValueError as exc:
            raise CorruptArchiveError(f"{MODEL_YAML} creation_time {created!r} is not an ISO "
                                      "8601 time") from exc
    if not isinstance(created, datetime.datetime):
        raise CorruptArchiveError(f"{MODEL_YAML} creation_time {created!r} is not an ISO 8601 "
                                  "time with a timezone; export the model again")
    if created.tzinfo is None:
        raise CorruptArchiveError(f"{MODEL_YAML} creation_time {document['creation_time']!s} "
                                  "has no timezone, which BentoML refuses; add one (+00:00)")
    labels = document.get("labels")
    if labels is not None and not isinstance(labels, dict):
        raise CorruptArchiveError(f"{MODEL_YAML} labels is not a mapping")
    return document


__all__ = ["BentomlLayout", "bentoml_tag_part", "model_yaml", "read_model_yaml"]
