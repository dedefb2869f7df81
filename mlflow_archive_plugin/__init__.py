"""Portable, self-verifying archives of MLflow models, and lossless import back into a registry.

The public API is four verbs::

    from mlflow_archive_plugin import export_model, import_archive, inspect_archive, verify_archive

    result = export_model("models:/iris/3", "exports/")
    imported = import_archive(result.location, tracking_uri="http://127.0.0.1:5000")
"""

from mlflow_archive_plugin.api import (
    ArchiveInfo,
    ExportResult,
    ImportResult,
    ReadLimits,
    VerifyReport,
    export_model,
    import_archive,
    inspect_archive,
    verify_archive,
)
from mlflow_archive_plugin.errors import ArchiveError

__version__ = "0.1.0"

__all__ = [
    "ArchiveError",
    "ArchiveInfo",
    "ExportResult",
    "ImportResult",
    "ReadLimits",
    "VerifyReport",
    "__version__",
    "export_model",
    "import_archive",
    "inspect_archive",
    "verify_archive",
]
