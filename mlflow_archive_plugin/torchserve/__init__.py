"""The TorchServe drop-in: ``mlflow-model-archiver``, a ``torch-model-archiver`` of its own.

Imports the bytes part (containers, locations) only; the ``.mar`` layout of MLflow models is in
``formats.mar``, which uses this part.

``ModelArchiverConfig`` and ``generate_model_archive`` take the same fields and produce the
same archives as ``model_archiver``'s, without its shared staging folder and with clear
errors where it would overwrite one file with another.
"""

from mlflow_archive_plugin.torchserve.archiver import (
    ModelArchiverConfig,
    ModelArchiverError,
    generate_manifest,
    generate_model_archive,
)

__all__ = [
    "ModelArchiverConfig",
    "ModelArchiverError",
    "generate_manifest",
    "generate_model_archive",
]
