"""The Snapshot: an MLflow model's files plus everything needed to recreate its registry entry.

Export builds one from MLflow; import builds one from an archive. Its metadata document,
``mlflow-archive.json``, is versioned by ``schema_version``: readers accept any version up to
their own and ignore keys they do not know, so newer minor additions stay readable.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import CorruptArchiveError, UnsafeArchiveError
from mlflow_archive_plugin.snapshot.metrics import check_point, check_summary, latest_of
from mlflow_archive_plugin.snapshot.records import FileRecord, safe_entry_name

METADATA_NAME = "mlflow-archive.json"
# Facts about one export, not about the model (when, by which plugin and MLflow): a file of
# their own, which the archive's digest leaves out, so two exports of the same version have
# one digest (and import recognises the second).
EXPORT_NOTE_NAME = "mlflow-archive-export.json"
_EXPORT_FACTS = ("exported_at", "plugin_version", "mlflow_version")
# Version 2: a run's metric history may sit in its own file (``metric_history``).
# Version 3: the export facts sit in EXPORT_NOTE_NAME, outside the digest.
SCHEMA_VERSION = 3
DOCUMENT_FORMAT = "mlflow-archive"


@dataclass
class RegisteredModelInfo:
    """The registered model a version belongs to; ``aliases`` maps alias to version."""

    name: str
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    creation_timestamp: int | None = None
    last_updated_timestamp: int | None = None


@dataclass
class ModelVersionInfo:
    """One registered model version as the source registry had it."""

    version: str
    description: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    current_stage: str | None = None
    status: str | None = None
    creation_timestamp: int | None = None
    last_updated_timestamp: int | None = None
    user_id: str | None = None
    source: str | None = None
    run_id: str | None = None
    run_link: str | None = None


@dataclass
class LoggedModelInfo:
    """The MLflow 3 LoggedModel; ``metrics`` are points with key, value, step, timestamp."""

    model_id: str
    name: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    model_type: str | None = None
    status: str | None = None
    creation_timestamp: int | None = None
    last_updated_timestamp: int | None = None
    experiment_id: str | None = None
    source_run_id: str | None = None
    run_output_step: int | None = None


@dataclass
class RunInfo:
    """The source run; ``metrics`` maps each key to its full history of points, or, when
    the history is in its own file (see ``snapshot.metrics``), is empty and
    ``metric_history`` summarises that file."""

    run_id: str
    run_name: str | None = None
    experiment_id: str | None = None
    experiment_name: str | None = None
    status: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    user_id: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    metric_history: dict[str, Any] | None = None
    # "active" or "deleted": import deletes the recreated run of a deleted one.
    lifecycle_stage: str | None = None
    # The experiment's tags, its description (``mlflow.note.content``) among them.
    experiment_tags: dict[str, str] = field(default_factory=dict)
    # Each ``mlflow.log_input`` dataset: name, digest, source_type, source, schema, profile
    # (text, the last two optional) and its input ``tags`` (``mlflow.data.context`` among them).
    datasets: list[dict[str, Any]] = field(default_factory=list)
    # The LoggedModels the run took as inputs (``LoggedModelInput``), by source model id.
    model_inputs: list[str] = field(default_factory=list)
    # The runs above a nested run, its parent first, each with its history inline (parents
    # are recreated so that ``mlflow.parentRunId`` points at a run on the target).
    parents: list[RunInfo] = field(default_factory=list)

    def __post_init__(self) -> None:
        # read from a document, the parents are objects: make them runs, refusing a parent
        # that nests parents of its own (the chain is flat in the document)
        parents = []
        for parent in self.parents:
            if isinstance(parent, dict):
                if parent.get("parents"):
                    raise TypeError("a parent run lists parents of its own")
                parent = _build(RunInfo, parent)
            parents.append(parent)
        self.parents = parents

    def latest_metrics(self) -> dict[str, dict[str, Any]]:
        """Each key's latest point (value, step, timestamp) and its count of ``points``."""
        if self.metric_history is not None:
            return dict(self.metric_history["keys"])
        latest = {}
        for key, history in self.metrics.items():
            if history:
                latest[key] = {**latest_of(history), "points": len(history)}
        return latest


@dataclass
class Lineage:
    """Where the model came from; every URI here has had its credentials removed."""

    model_uri: str | None = None
    source_tracking_uri: str | None = None
    source_registry_uri: str | None = None
    artifact_uri: str | None = None
    exported_at: str | None = None
    plugin_version: str | None = None
    mlflow_version: str | None = None


@dataclass
class Snapshot:
    """A model's files (``model_dir``, local) and its registry metadata."""

    model_dir: Path
    mlmodel: dict[str, Any]
    lineage: Lineage = field(default_factory=Lineage)
    registered_model: RegisteredModelInfo | None = None
    model_version: ModelVersionInfo | None = None
    logged_model: LoggedModelInfo | None = None
    run: RunInfo | None = None
    layout: str = "mlflow"
    model_path: str = "model"
    files: list[FileRecord] = field(default_factory=list)
    # Set when the archive was not written by this plugin (a .mar from torch-model-archiver):
    # the consumer's own manifest, from which the registry entry was guessed.
    foreign_manifest: dict[str, Any] | None = None
    # Every model of an archive that holds several (an MLSteam package), this one first;
    # empty for an archive of one model, whose document then has no "models" list.
    bundle: list[Snapshot] = field(default_factory=list)
    # How the model files are encrypted (scheme, key fingerprint), when they are.
    encryption: dict[str, Any] | None = None
    # Export only, never in the document: where the encrypted copies of model_dir's files are.
    sealed_dir: Path | None = None
    # Export only, never in the document: model files not downloaded yet. Each path in
    # model_dir is a placeholder of the file's size; the archive writer streams the file from
    # the server instead (see ``served.py``).
    deferred: dict[Path, Any] = field(default_factory=dict)
    # Never in the document: the file of the run's metric history (``run.metric_history``),
    # written by export, found beside the document by import.
    metrics_file: Path | None = None
    # Import only, never in the document: what reading the archive could not keep, one line
    # each, reported with the import's warnings.
    warnings: list[str] = field(default_factory=list)

    @property
    def members(self) -> list[Snapshot]:
        """The models the archive holds: the bundle, or this snapshot alone."""
        return self.bundle or [self]

    @property
    def is_foreign(self) -> bool:
        """Whether the snapshot was read from another tool's archive, not from our metadata."""
        return self.foreign_manifest is not None

    @property
    def display_name(self) -> str:
        """The name a person knows the model by, for file names and messages."""
        if self.registered_model is not None:
            return self.registered_model.name
        if self.logged_model is not None and self.logged_model.name:
            return self.logged_model.name
        return "model"

    def to_document(self) -> dict[str, Any]:
        """The ``mlflow-archive.json`` document (without the model files themselves).

        An archive of several models describes the first at the top level, as an archive of
        one does (so a reader that knows one model per archive reads that one), and lists
        all of them under ``models``.
        """
        document = {
            "format": DOCUMENT_FORMAT,
            "schema_version": SCHEMA_VERSION,
            **self._model_document(),
            "files": [record.to_dict() for record in self.files],
        }
        if self.bundle:
            document["models"] = [member._model_document() for member in self.bundle]
        if self.encryption is not None:
            document["encryption"] = self.encryption
        return document

    def _model_document(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "model_path": self.model_path,
            "registered_model": _as_dict(self.registered_model),
            "model_version": _as_dict(self.model_version),
            "logged_model": _as_dict(self.logged_model),
            "run": _as_dict(self.run),
            "mlmodel": self.mlmodel,
            "lineage": {key: value for key, value in dataclasses.asdict(self.lineage).items()
                        if key not in _EXPORT_FACTS},
        }

    def to_json(self) -> bytes:
        """The document as UTF-8 JSON, indented so a person can read it."""
        return (json.dumps(self.to_document(), indent=2, default=str) + "\n").encode("utf-8")

    def export_note(self) -> bytes:
        """``mlflow-archive-export.json``: when this export was made, and by what."""
        facts = {key: getattr(self.lineage, key) for key in _EXPORT_FACTS}
        return (json.dumps(facts, indent=2) + "\n").encode("utf-8")

    def read_export_note(self, document: Any) -> None:
        """Take the export facts from a parsed ``mlflow-archive-export.json``."""
        if not isinstance(document, dict):
            raise _malformed(f"{EXPORT_NOTE_NAME} is not an object")
        for member in self.members:
            for key in _EXPORT_FACTS:
                value = document.get(key)
                if value is not None and not isinstance(value, str):
                    raise _malformed(f"{EXPORT_NOTE_NAME}: {key!r} is not text")
                if value is not None:
                    setattr(member.lineage, key, value)

    @classmethod
    def from_json(cls, data: bytes, model_dir: Path, *,
                  load: Callable[[bytes], Any] | None = None) -> Snapshot:
        """Parse and validate a metadata document; any defect is a one-line error.

        ``load`` parses the bytes; the readers of archives pass the bounded JSON loader of
        ``trust.parsing`` (this part imports nothing but ``errors``). Without it the standard
        parser runs, and a document nested past its recursion limit is still one line.
        """
        if load is not None:
            document = load(data)
        else:
            try:
                document = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise _malformed(f"not valid JSON ({exc})") from exc
            except RecursionError:
                raise UnsafeArchiveError(
                    f"refused {METADATA_NAME}: JSON nests deeper than Python's parser allows "
                    f"({sys.getrecursionlimit()} levels); the archive is unsafe") from None
        if not isinstance(document, dict):
            raise _malformed("the top level is not an object")
        return cls.from_document(document, model_dir)

    @classmethod
    def from_document(cls, document: dict[str, Any], model_dir: Path) -> Snapshot:
        """Build a snapshot from a parsed document, checking the fields import relies on."""
        version = document.get("schema_version")
        if document.get("format") != DOCUMENT_FORMAT:
            raise _malformed(f"'format' is not {DOCUMENT_FORMAT!r}")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise _malformed("'schema_version' is not a positive integer")
        if version > SCHEMA_VERSION:
            raise CorruptArchiveError(
                f"{METADATA_NAME} has schema_version {version}, newer than this plugin reads "
                f"({SCHEMA_VERSION}); upgrade mlflow-archive-plugin"
            )
        snapshot = cls._from_model_document(document, model_dir)
        try:
            snapshot.files = [FileRecord(str(f["path"]), int(f["size"]), str(f["sha256"]))
                              for f in document.get("files", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise _malformed(f"a field has the wrong shape ({exc})") from exc
        members = document.get("models")
        if members is not None:
            if not isinstance(members, list) or not members \
                    or not all(isinstance(member, dict) for member in members):
                raise _malformed("'models' is not a list of model objects")
            snapshot.bundle = [cls._from_model_document(member, model_dir)
                               for member in members]
        encryption = document.get("encryption")
        if encryption is not None:
            if not isinstance(encryption, dict) \
                    or not all(isinstance(value, str) for value in encryption.values()):
                raise _malformed("'encryption' is not an object of text values")
            snapshot.encryption = encryption
        return snapshot

    @classmethod
    def _from_model_document(cls, document: dict[str, Any], model_dir: Path) -> Snapshot:
        """One model's fields (the top level of a document, or an entry of its ``models``)."""
        mlmodel = document.get("mlmodel")
        if not isinstance(mlmodel, dict):
            raise _malformed("'mlmodel' is missing or not an object")
        model_path = document.get("model_path", "model")
        if not isinstance(model_path, str) or not model_path:
            raise _malformed("'model_path' is not a path")
        try:
            model_path = safe_entry_name(model_path).rstrip("/")
        except UnsafeArchiveError as exc:
            # A hostile model_path would make import upload files from outside the archive.
            raise UnsafeArchiveError(
                f"{METADATA_NAME} names model_path {model_path!r}, outside the archive; "
                "the archive is unsafe"
            ) from exc
        try:
            snapshot = cls(
                model_dir=model_dir,
                mlmodel=mlmodel,
                lineage=_build(Lineage, document.get("lineage")) or Lineage(),
                registered_model=_build(RegisteredModelInfo, document.get("registered_model")),
                model_version=_build(ModelVersionInfo, document.get("model_version")),
                logged_model=_build(LoggedModelInfo, document.get("logged_model")),
                run=_build(RunInfo, document.get("run")),
                layout=str(document.get("layout", "mlflow")),
                model_path=model_path,
            )
            _check_values(snapshot)
        except (KeyError, TypeError, ValueError) as exc:
            raise _malformed(f"a field has the wrong shape ({exc})") from exc
        if snapshot.run is not None and snapshot.run.metric_history is not None:
            snapshot.metrics_file = model_dir / snapshot.run.metric_history["path"]
        return snapshot


def _check_values(snapshot: Snapshot) -> None:
    """Import replays these into MLflow; a wrong type must fail here, before anything exists."""
    runs = [snapshot.run, *snapshot.run.parents] if snapshot.run is not None else []
    for section in (snapshot.registered_model, snapshot.model_version, snapshot.logged_model,
                    *runs):
        for field_name in ("tags", "params", "experiment_tags"):
            values = getattr(section, field_name, None) or {}
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
                raise TypeError(f"{type(section).__name__}.{field_name} must map text to text")
    for run in runs:
        if not all(isinstance(model_id, str) for model_id in run.model_inputs):
            raise TypeError("run model_inputs must be model ids")
        for dataset in run.datasets:
            _check_dataset(dataset)
        if run.metric_history is not None:
            if run is not snapshot.run:
                raise TypeError("a parent run's metric history must be inline")
            check_summary(run.metric_history)
        for key, history in run.metrics.items():
            if not isinstance(history, list):
                raise TypeError(f"run metric {key!r} history is not a list")
            for point in history:
                check_point(point)
    if snapshot.logged_model is not None:
        for point in snapshot.logged_model.metrics:
            check_point(point)
            if not isinstance(point.get("key"), str):
                raise TypeError("a logged-model metric point has no text 'key'")


def _check_dataset(dataset: Any) -> None:
    if not isinstance(dataset, dict):
        raise TypeError("a run dataset is not an object")
    for key in ("name", "digest", "source_type", "source"):
        if not isinstance(dataset.get(key), str):
            raise TypeError(f"a run dataset's {key!r} is not text")
    for key in ("schema", "profile"):
        if dataset.get(key) is not None and not isinstance(dataset[key], str):
            raise TypeError(f"a run dataset's {key!r} is not text")
    tags = dataset.get("tags", {})
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in tags.items()):
        raise TypeError("a run dataset's tags must map text to text")


def _as_dict(section: Any) -> dict[str, Any] | None:
    return None if section is None else dataclasses.asdict(section)


def _build(cls: type, data: Any) -> Any:
    """An instance of the dataclass ``cls`` from ``data``, ignoring unknown keys."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} section is not an object")
    known = {f.name: f for f in dataclasses.fields(cls)}
    values = {key: value for key, value in data.items() if key in known}
    for key, spec in known.items():
        value = values.get(key)
        if value is None:
            continue
        expected = _container_type(spec.type)
        if expected is not None and not isinstance(value, expected):
            raise TypeError(f"{cls.__name__}.{key} should be a {expected.__name__}")
    return cls(**values)


def _container_type(annotation: Any) -> type | None:
    text = str(annotation)
    if text.startswith("dict"):
        return dict
    if text.startswith("list"):
        return list
    return None


def _malformed(reason: str) -> CorruptArchiveError:
    return CorruptArchiveError(
        f"{METADATA_NAME} is malformed: {reason}; the archive is damaged or not from this plugin"
    )
