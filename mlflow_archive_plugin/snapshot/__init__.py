"""The shared shape: a Snapshot (an MLflow model's files plus its registry entry) and its document.

Every other part reads or writes this shape; it imports nothing of the package but ``errors``.
"""

from mlflow_archive_plugin.snapshot.document import (
    DOCUMENT_FORMAT,
    EXPORT_NOTE_NAME,
    METADATA_NAME,
    SCHEMA_VERSION,
    Lineage,
    LoggedModelInfo,
    ModelVersionInfo,
    RegisteredModelInfo,
    RunInfo,
    Snapshot,
)
from mlflow_archive_plugin.snapshot.metrics import METRICS_NAME, is_metrics_name
from mlflow_archive_plugin.snapshot.records import FileRecord, safe_entry_name

__all__ = [
    "DOCUMENT_FORMAT",
    "EXPORT_NOTE_NAME",
    "METADATA_NAME",
    "METRICS_NAME",
    "SCHEMA_VERSION",
    "FileRecord",
    "Lineage",
    "LoggedModelInfo",
    "ModelVersionInfo",
    "RegisteredModelInfo",
    "RunInfo",
    "Snapshot",
    "is_metrics_name",
    "safe_entry_name",
]
