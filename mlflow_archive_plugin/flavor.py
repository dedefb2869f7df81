"""The ``mlflow_archive`` flavor: an MLflow model that holds an archive byte for byte.

A foreign archive (a ``.mar`` from torch-model-archiver) has no MLflow model inside, so
import stores it as one of these: ``archive/<file>`` is the archive exactly as it came,
``files/`` its extracted files for browsing, and the MLmodel's flavor entry records the
layout, the container, a summary of the consumer's manifest and the content digest.
Exporting such a model in its own layout gives the stored archive back unchanged.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.location import Location

FLAVOR_NAME = "mlflow_archive"
ARCHIVE_DIR = "archive"
FILES_DIR = "files"


def save_archive_model(
    location: Location,
    container: str,
    extracted: Path,
    path: Path,
    *,
    layout: str,
    manifest: dict[str, Any],
    digest: str,
) -> dict[str, Any]:
    """Write an MLflow model at ``path`` holding the archive at ``location`` (extracted at
    ``extracted``, whose files are moved) and return its MLmodel as a dict."""
    from mlflow.models import Model

    from mlflow_archive_plugin import __version__

    files = path / FILES_DIR
    files.mkdir(parents=True)
    for child in extracted.iterdir():
        shutil.move(child, files / child.name)
    name = os.path.basename(location.path.rstrip("/")) or "archive"
    if container == "folder":
        stored = FILES_DIR  # the folder is its files; keeping it twice would add nothing
    else:
        stored = f"{ARCHIVE_DIR}/{name}"
        (path / ARCHIVE_DIR).mkdir()
        location.fs.get_file(location.path, str(path / stored))
    model = Model()
    model.add_flavor(
        FLAVOR_NAME,
        layout=layout,
        container=container,
        archive=stored,
        file_name=name,
        files=FILES_DIR,
        digest=digest,
        manifest=manifest,
        plugin_version=__version__,
    )
    model.save(str(path / "MLmodel"))
    return model.to_dict()


def stored_archive(model_dir: Path, mlmodel: dict[str, Any]) -> tuple[dict[str, Any], Path] | None:
    """The flavor entry and the stored archive of a model saved by :func:`save_archive_model`."""
    flavor = (mlmodel.get("flavors") or {}).get(FLAVOR_NAME)
    if not isinstance(flavor, dict) or not isinstance(flavor.get("archive"), str):
        return None
    stored = (model_dir / flavor["archive"]).resolve()
    if model_dir.resolve() not in stored.parents or not stored.exists():
        return None
    return flavor, stored

