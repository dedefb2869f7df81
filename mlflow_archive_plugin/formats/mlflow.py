"""The native layout: the MLflow model directory under ``model/``, lossless by construction."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import CorruptArchiveError, UnsafeArchiveError, UnsupportedError
from mlflow_archive_plugin.formats.base import Entry, Layout, read_metadata
from mlflow_archive_plugin.snapshot import METADATA_NAME, Snapshot
from mlflow_archive_plugin.trust.parsing import load_yaml

_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def model_files(model_dir: Path) -> list[Path]:
    """Every regular file under an MLflow model directory, in a stable order."""
    return sorted((p for p in model_dir.rglob("*") if p.is_file()), key=lambda p: p.as_posix())


class MlflowLayout(Layout):
    """``model/`` holds the MLflow model exactly as logged; the metadata document says the rest."""

    name = "mlflow"
    default_container = "zip"
    containers = ("zip", "tar", "tar.gz", "tar.xz", "tar.bz2", "folder")

    def plan(self, snapshot: Snapshot, options: dict[str, Any] | None = None) -> list[Entry]:
        if options:
            raise UnsupportedError(
                f"the mlflow format takes no options (got {', '.join(sorted(options))})"
            )
        snapshot.layout = self.name
        snapshot.model_path = "model"
        return [
            Entry(f"model/{path.relative_to(snapshot.model_dir).as_posix()}", source=path)
            for path in model_files(snapshot.model_dir)
        ]

    def file_stem(self, snapshot: Snapshot) -> str:
        if snapshot.model_version is not None:
            stem = f"{snapshot.display_name}-v{snapshot.model_version.version}"
        elif snapshot.logged_model is not None:
            stem = f"{snapshot.display_name}-{snapshot.logged_model.model_id}"
        else:
            stem = snapshot.display_name
        return _UNSAFE_FILE_CHARS.sub("_", stem).strip("._") or "model"

    def detect(self, names: set[str], root: Path) -> bool:
        return METADATA_NAME in names

    def read(self, root: Path) -> Snapshot:
        snapshot = read_metadata(root)
        snapshot.model_dir = root / snapshot.model_path
        resolved = snapshot.model_dir.resolve()
        if resolved != root.resolve() and root.resolve() not in resolved.parents:
            raise UnsafeArchiveError(
                f"model_path {snapshot.model_path!r} leads outside the archive; it is unsafe"
            )
        if not (snapshot.model_dir / "MLmodel").is_file():
            raise CorruptArchiveError(
                f"the archive has no {snapshot.model_path}/MLmodel, so it holds no MLflow model"
            )
        check_mlmodels(root, snapshot)
        return snapshot

    def check(self, root: Path, snapshot: Snapshot, *, run: bool = False) -> list[str]:
        """Every MLmodel parses within the limits of :func:`load_yaml`."""
        try:
            check_mlmodels(root, snapshot)
        except (CorruptArchiveError, UnsafeArchiveError) as exc:
            return [str(exc)]
        return []


def check_mlmodels(root: Path, snapshot: Snapshot) -> None:
    """Parse each model's ``MLmodel`` within the limits of :func:`load_yaml` (size, nesting,
    aliases and what they expand to), so that a file MLflow would later load cannot exhaust
    the machine: refused in one line naming it. The registry entry comes from the metadata
    document; this only proves the file is plain, bounded YAML."""
    for member in snapshot.members:
        path = root / member.model_path / "MLmodel"
        if path.is_file():
            load_yaml(path.read_bytes(), what=f"{member.model_path}/MLmodel")
