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

The package root is the face (this file, ``api``, ``cli``, ``errors``, ``progress``); each folder
beside it is one part, described in its ``__init__`` and in ARCHITECTURE.md.
"""

import importlib
import importlib.abc
import importlib.util
import sys

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
from mlflow_archive_plugin.mlflow_side.bulk import BulkResult, export_registry, import_registry
from mlflow_archive_plugin.plugins.flavor import ArchiveModel, load_model, log_model, save_model

__version__ = "0.1.0"

# Modules that lived at the package root before the package was split into parts. Their old
# names keep importing (the entry points of installs made before, ``loader_module`` in
# MLmodel files logged before, pickles naming them) for this release; new code uses the new.
MOVED_MODULES = {
    "archive": "storage.pipeline",
    "archive_pyfunc": "plugins.pyfunc",
    "artifact_repo": "plugins.artifact_repo",
    "bulk": "mlflow_side.bulk",
    "containers": "storage.containers",
    "crypto": "trust.crypto",
    "deployment": "plugins.deployment",
    "extents": "storage.extents",
    "flavor": "plugins.flavor",
    "integrity": "storage.integrity",
    "layouts": "formats",
    "location": "storage.location",
    "materialize": "mlflow_side.materialize",
    "mlflow_source": "mlflow_side.source",
    "mlsteam": "formats.mlsteam",
    "parsing": "trust.parsing",
    "registry": "mlflow_side.registry",
    "scanning": "trust.scanning",
    "served": "mlflow_side.served",
    "signing": "trust.signing",
    "templates": "formats",  # held only portable_predict.py, which formats holds now
    "torchserve.mlflow_handler": "formats.mar_handler",
    "tracking": "mlflow_side.tracking",
}


class _OldNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves a moved module's old name (and its submodules') to the module at its new name."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102 - importlib protocol
        new = self.new_name(fullname)
        return None if new is None else importlib.util.spec_from_loader(fullname, self)

    @staticmethod
    def new_name(fullname: str) -> str | None:
        """The module's current name, or None when ``fullname`` is not an old name."""
        prefix = __name__ + "."
        if not fullname.startswith(prefix):
            return None
        rest = fullname[len(prefix):]
        for old, new in MOVED_MODULES.items():
            if rest == old or rest.startswith(old + "."):
                return prefix + new + rest[len(old):]
        return None

    def create_module(self, spec):  # noqa: D102 - importlib protocol
        return importlib.import_module(self.new_name(spec.name))

    def exec_module(self, module):  # noqa: D102 - the module ran under its new name
        pass


# First in line: otherwise the path finder would load a second copy of a moved package's
# submodule (``containers.zip``) under its old name.
if not any(isinstance(finder, _OldNames) for finder in sys.meta_path):
    sys.meta_path.insert(0, _OldNames())

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
