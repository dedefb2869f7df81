"""Formats: the layouts (native, MLSteam, TorchServe, BentoML, portable) with the files they copy
into archives, and detection of a layout in one place. Never imports the MLflow side.
"""

from __future__ import annotations

from pathlib import Path

from mlflow_archive_plugin.errors import UnsupportedError
from mlflow_archive_plugin.formats.base import Entry, Layout
from mlflow_archive_plugin.formats.bentoml import BentomlLayout
from mlflow_archive_plugin.formats.mar import MarLayout
from mlflow_archive_plugin.formats.mlarchive import MlarchiveLayout
from mlflow_archive_plugin.formats.mlflow import MlflowLayout
from mlflow_archive_plugin.formats.portable import PortableLayout

# Detection tries them in this order: our own metadata document first (a portable package's
# and an MLSteam package's before the native layout, which takes any), then foreign manifests.
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (PortableLayout(), MlarchiveLayout(), MlflowLayout(), MarLayout(),
                   BentomlLayout())
}


def get_layout(name: str) -> Layout:
    """The layout called ``name``."""
    if name not in LAYOUTS:
        raise UnsupportedError(f"unknown format {name!r}; choose one of: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def detect_layout(names: set[str], root: Path) -> Layout:
    """The layout of an extracted archive, or a one-line error naming what is readable."""
    for layout in LAYOUTS.values():
        if layout.detect(names, root):
            return layout
    raise UnsupportedError(
        "the archive holds no mlflow-archive.json and no manifest of a format this plugin "
        "reads (MAR-INF/MANIFEST.json for TorchServe, model.yaml for BentoML, manifest.json "
        "for MLSteam); it is not a "
        "model archive"
    )


__all__ = ["LAYOUTS", "Entry", "Layout", "detect_layout", "get_layout"]
