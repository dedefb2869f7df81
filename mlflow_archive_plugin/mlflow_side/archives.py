"""Archives as MLflow's loaders and the entry points open them: copied from any location,
extracted through the safe reader and verified against their checksums before anything of
them is used.

The flavor (saving an archive as a model, loading one back), ``materialize`` and the pyfunc
wrapper all open archives here, so that each refuses what the others refuse.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import IntegrityError, SourceNotFoundError, UnsupportedError
from mlflow_archive_plugin.formats import LAYOUTS, get_layout
from mlflow_archive_plugin.snapshot import METADATA_NAME, Snapshot
from mlflow_archive_plugin.storage.integrity import CHECKSUM_NAME, hash_stream
from mlflow_archive_plugin.storage.location import Location, remote_errors, resolve
from mlflow_archive_plugin.storage.pipeline import (
    ARCHIVE_EXTENSIONS,
    archive_digest,
    container_named,
    metadata_problems,
    pick_container,
    read_snapshot,
    scan_archive,
    write_archive,
)

# Archive file names that choose a layout other than the native one.
_LAYOUT_OF_EXTENSION = {".mar": "mar", ".bentomodel": "bentoml", ".mlarchive": "mlarchive"}


@dataclass
class Opened:
    """An archive extracted and verified: what it holds and what identifies it."""

    snapshot: Snapshot
    container: str
    digest: str | None
    members: list[str]
    has_document: bool


def open_verified(location: Location | str | os.PathLike, into: Path, *,
                  name: str = "") -> Opened:
    """Extract the archive at ``location`` into the empty folder ``into`` and read it; refuse
    it (:class:`IntegrityError`, one line) unless every file matches ``checksum.txt`` and the
    metadata agrees with the files. ``name`` (the archive's URL) starts the messages of a
    reader's refusal; a failed verification says ``<name or "archive"> failed verification``.
    """
    if not isinstance(location, Location):
        location = resolve(location)
    scanned = scan_archive(location, extract_to=into, show_progress=False)
    try:
        snapshot = read_snapshot(into, scanned)
    except IntegrityError as exc:
        if not name:
            raise
        raise IntegrityError(f"{name}: {exc}", exc.problems) from exc
    problems = metadata_problems(snapshot, scanned)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise IntegrityError(f"{name or 'archive'} failed verification: {problems[0]}{more}",
                             problems)
    return Opened(snapshot=snapshot, container=scanned.container,
                  digest=archive_digest(scanned), members=sorted(scanned.records),
                  has_document=METADATA_NAME in scanned.records)


def extract_verified(stored: Path, digest: str, into: Path) -> None:
    """Extract the stored archive into the empty folder ``into`` through the plugin's reader,
    refusing it unless every file matches its ``checksum.txt`` and the content digest is the
    one recorded when it was saved. On failure ``into`` may hold files; the caller removes
    them."""
    scanned = scan_archive(resolve(stored), extract_to=into)
    problems = (scanned.integrity_problems() if CHECKSUM_NAME in scanned.records
                else list(scanned.problems))
    found = archive_digest(scanned)
    if digest and found != digest:
        problems.append(f"{stored.name}: its content digest is {found}, not {digest} as when "
                        "it was saved, so it was altered")
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise IntegrityError(f"the stored archive failed verification: {problems[0]}{more}; "
                             "log the model again from a good copy", problems)


def archive_members(path: str | os.PathLike) -> list[str]:
    """The member names of the archive at ``path``, as the safe reader lays them out."""
    return sorted(scan_archive(resolve(path)).records)


def file_identity(path: Path) -> dict[str, Any]:
    """``{"size": ..., "sha256": ...}`` of the file at ``path``, read once."""
    with path.open("rb") as handle:
        size, sha256 = hash_stream(handle)
    return {"size": size, "sha256": sha256}


def copy_archive(archive: str | os.PathLike | Location, target: Path,
                 storage_options: dict | None = None) -> str:
    """Copy the archive at ``archive`` (a path, fsspec URL or resolved location; a local
    folder archive file for file) to ``target``; return its URL. A missing source or a
    remote folder is one line."""
    location = archive if isinstance(archive, Location) else resolve(archive, storage_options)
    if location.is_local:
        if not os.path.exists(location.path):
            raise SourceNotFoundError(f"{location.url} does not exist; check the path or URL")
        if os.path.isdir(location.path):
            # Links are copied as links, so the reader sees them and refuses them.
            shutil.copytree(location.path, target, symlinks=True)
        else:
            shutil.copyfile(location.path, target)
        return location.url
    with remote_errors(location, "read"):
        if not location.fs.exists(location.path):
            raise SourceNotFoundError(f"{location.url} does not exist; check the path or URL")
        if location.fs.isdir(location.path):
            raise UnsupportedError(f"{location.url} is a remote folder; download it or pack it "
                                   "as a zip first")
        location.fs.get_file(location.path, str(target))
    return location.url


def archive_location(archive: str | os.PathLike, storage_options: dict | None = None
                     ) -> Location:
    """The archive at ``archive`` (a path or fsspec URL) as a resolved location."""
    return resolve(archive, storage_options)


# --------------------------------------------------------------------------- writing


FORMATS: tuple[str, ...] = tuple(LAYOUTS)


def format_containers() -> dict[str, tuple[str, ...]]:
    """Each format and the containers it can be packed in."""
    return {name: tuple(layout.containers) for name, layout in LAYOUTS.items()}


def default_container(format: str) -> str:
    """The container a format is packed in when none is asked for."""
    return get_layout(format).default_container


def check_format(format: str, container: str | None = None) -> None:
    """Refuse, in one line, an unknown format or container, or a container the format
    cannot be packed in (:class:`UnsupportedError`)."""
    layout = get_layout(format)
    if container is not None:
        pick_container(layout, container)


def archive_stem(file_name: str) -> str:
    """``file_name`` without its archive extension (``model`` for ``model.tar.gz``)."""
    lowered = file_name.lower()
    for extension in ARCHIVE_EXTENSIONS:
        if lowered.endswith(extension):
            return file_name[:-len(extension)] or "model"
    return file_name or "model"


def write_model_folder(model_dir: Path, location: Location, *, force: bool, name: str) -> None:
    """Write the plain MLflow model folder ``model_dir`` as an archive at ``location``, in the
    layout and container its file name asks for (``.mar``, ``.bentomodel``, ``.mlarchive``,
    else the native layout; ``.zip``, ``.tar.gz`` ...); a container the layout cannot use is
    refused in one line naming the file name to use."""
    from mlflow_archive_plugin.mlflow_side.source import read_model_folder

    file_name = posixpath.basename(location.path)
    lowered = file_name.lower()
    layout = get_layout(next((layout for ext, layout in _LAYOUT_OF_EXTENSION.items()
                              if lowered.endswith(ext)), "mlflow"))
    asked = container_named(lowered, layout) or layout.default_container
    try:
        container = pick_container(layout, asked)
    except UnsupportedError:
        suggested = archive_stem(file_name) + layout.extension(pick_container(layout, None))
        raise UnsupportedError(f"a {layout.name} archive cannot be a {asked} file; "
                               f"name it {suggested}") from None
    write_archive(read_model_folder(model_dir, location.url, name=name), layout, container,
                  location, force=force, show_progress=False)
