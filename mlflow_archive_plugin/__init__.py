"""Portable, self-verifying archives of MLflow models, and lossless import back into a registry.

The public API is four verbs::

    from mlflow_archive_plugin import export_model, import_archive, inspect_archive, verify_archive

    result = export_model("models:/iris/3", "exports/")
    imported = import_archive(result.location, tracking_uri="http://127.0.0.1:5000")

and a flavor, ``mlflow_archive``, that logs any archive as an MLflow model kept byte for byte::

    info = mlflow_archive_plugin.log_model("iris.mar", name="iris-mar")
    mlflow.pyfunc.load_model(info.model_uri).predict(...)
    mlflow_archive_plugin.load_model(info.model_uri).extract("unpacked/")

Importing the package does not import MLflow (it takes seconds); the functions that need it
import it when called.
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
from mlflow_archive_plugin.bulk import BulkResult, export_registry, import_registry
from mlflow_archive_plugin.errors import ArchiveError
from mlflow_archive_plugin.flavor import ArchiveModel, load_model, log_model, save_model

__version__ = "0.1.0"

__all__ = [
    "ArchiveError",
    "ArchiveInfo",
    "ArchiveModel",
    "BulkResult",
    "ExportResult",
    "ImportResult",
    "ReadLimits",
    "VerifyReport",
    "__version__",
    "export_model",
    "export_registry",
    "import_archive",
    "import_registry",
    "inspect_archive",
    "load_model",
    "log_model",
    "save_model",
    "verify_archive",
]
