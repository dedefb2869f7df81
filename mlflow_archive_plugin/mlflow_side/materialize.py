"""Turn any archive into an MLflow model directory that MLflow itself can load.

MLflow's loaders (``mlflow.pyfunc.load_model``, ``mlflow models serve``, the deployments
target's ``predict``) want a local model directory with an ``MLmodel`` file. An archive that
wraps an MLflow model gives that model back as it was logged; an archive that does not (a
``.mar`` from torch-model-archiver, a BentoML model of another framework) becomes a model of
the plugin's ``mlflow_archive`` flavor holding the archive. Either way the archive is read
through the safe reader and checked against its checksums first, and the model appears at
its destination only once it is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from mlflow_archive_plugin.errors import (
    ArchiveError,
    CorruptArchiveError,
    EncryptionError,
)
from mlflow_archive_plugin.mlflow_side.archives import open_verified
from mlflow_archive_plugin.storage.location import Location, fetched, resolve
from mlflow_archive_plugin.storage.pipeline import ARCHIVE_EXTENSIONS


def is_archive_name(path: str | os.PathLike) -> bool:
    """Whether ``path`` (a local path or URL) is named like an archive file, by its extension
    alone: cheap enough to decide, for every path MLflow asks about, whether to open it."""
    name = os.fspath(path).rstrip("/").rsplit("/", 1)[-1].lower()
    return any(name.endswith(ext) and len(name) > len(ext) for ext in ARCHIVE_EXTENSIONS)


def materialize(url: str | os.PathLike | Location, dst: str | os.PathLike, *,
                storage_options: dict | None = None) -> Path:
    """Read the archive at ``url`` (local path or fsspec URL, any layout and container),
    verify it, and leave at ``dst`` an MLflow model directory; return ``dst``.

    The model is the MLflow model the archive wraps (the first one, for an archive of
    several), byte for byte; otherwise an ``mlflow_archive`` flavor model holding the
    archive. ``dst`` must not exist or be an empty folder. Any failure is a one-line
    :class:`~mlflow_archive_plugin.errors.ArchiveError` and leaves nothing at ``dst``.
    An already resolved :class:`~mlflow_archive_plugin.storage.location.Location` is taken as it is.
    """
    target = Path(dst).absolute()
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise ArchiveError(f"{target} already exists and is not an empty folder; "
                           "choose a new destination for the model")
    location = url if isinstance(url, Location) else resolve(url, storage_options)
    target.parent.mkdir(parents=True, exist_ok=True)
    building = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        with fetched(location) as local:
            _build(local, building)
        if target.exists():
            target.rmdir()
        os.replace(building, target)
    except ArchiveError:
        raise
    except Exception as exc:  # noqa: BLE001 - MLflow and the file system raise their own kinds
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArchiveError(f"cannot read {location.url} as a model: {detail}") from exc
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def _build(location: Location, into: Path) -> None:
    """Extract and verify the (local) archive, then write the model at ``into``."""
    with tempfile.TemporaryDirectory(prefix="mlflow-archive-materialize-") as scratch:
        root = Path(scratch, "archive")
        root.mkdir()
        snapshot = open_verified(location, root, name=location.url).snapshot
        if snapshot.encryption is not None:
            raise EncryptionError(
                f"{location.url} holds encrypted model files, which MLflow cannot load; "
                "import it with `mlflow-archive import --key-file ...` and load the version"
            )
        if not snapshot.is_foreign:
            if not (snapshot.model_dir / "MLmodel").is_file():
                raise CorruptArchiveError(f"{location.url} has no {snapshot.model_path}/MLmodel, "
                                          "so it holds no MLflow model")
            shutil.move(snapshot.model_dir, into)
            return
        _save_flavor_model(location, into)


def _save_flavor_model(location: Location, into: Path) -> None:
    """An ``mlflow_archive`` flavor model holding the (local, already verified) archive; the
    flavor adds the python_function flavor where the archive can predict."""
    from mlflow_archive_plugin.plugins import flavor

    flavor.save_model(location.path, str(into))
