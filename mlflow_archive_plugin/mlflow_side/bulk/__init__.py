"""Whole registries: one archive per model version plus an index, and back into a registry.

``export_registry`` writes every version of the chosen registered models as an archive in one
folder (local or any fsspec URL) and, last, ``registry-index.json``: the models, their
descriptions and aliases, and for each version its archive's file name and digest. The index
is published atomically once everything it names is in place, so a folder holds either no
index or a complete one. ``import_registry`` reads that index and recreates each model's
versions in their original numeric order (10 after 9), then points the aliases at the
versions made from the versions they named.

Both are idempotent: a re-run exports only versions whose archive is missing, damaged or out
of date, and imports only versions the target does not hold yet (recognised by the archive
digest that every import leaves on its version). A model that fails is reported and the
others carry on; the result lists every failure, one line each.

Models go in parallel (``workers`` threads), the versions of one model one after another.
Registering a version points MLflow's process-global tracking URI at the target (see
:func:`~mlflow_archive_plugin.mlflow_side.tracking.global_tracking_uri`); threads
swapping it to and fro would race, so a bulk run points it, and the environment variables the
workers set, at the one value every worker wants before the threads start and restores them
when the run ends.
Every swap a worker makes then writes the value that is already there.
"""
from __future__ import annotations

from mlflow_archive_plugin.mlflow_side.bulk.common import (
    INDEX_FORMAT,
    INDEX_NAME,
    INDEX_SCHEMA_VERSION,
    PLACEHOLDER_SOURCE,
    PLACEHOLDER_TAG,
    BulkResult,
    Failure,
    Reporter,
    VersionOutcome,
    default_workers,
)
from mlflow_archive_plugin.mlflow_side.bulk.exporting import archive_file_name, export_registry
from mlflow_archive_plugin.mlflow_side.bulk.importing import import_registry

__all__ = [
    "BulkResult",
    "Failure",
    "INDEX_FORMAT",
    "INDEX_NAME",
    "INDEX_SCHEMA_VERSION",
    "PLACEHOLDER_SOURCE",
    "PLACEHOLDER_TAG",
    "Reporter",
    "VersionOutcome",
    "archive_file_name",
    "default_workers",
    "export_registry",
    "import_registry",
]
