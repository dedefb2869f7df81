"""Archives as MLflow's loaders and the entry points open them: copied from any location,
extracted through the safe reader and verified against their checksums before anything of
them is used.

The flavor (saving an archive as a model, loading one back), ``materialize`` and the pyfunc
wrapper all open archives here, so that each refuses what the others refuse.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_archive_plugin.errors import IntegrityError, SourceNotFoundError, UnsupportedError
from mlflow_archive_plugin.snapshot import METADATA_NAME, Snapshot
from mlflow_archive_plugin.storage.integrity import CHECKSUM_NAME, hash_stream
from mlflow_archive_plugin.storage.location import Location, remote_errors, resolve
from mlflow_archive_plugin.storage.pipeline import (
    archive_digest,
    metadata_problems,
    read_snapshot,
    scan_archive,
)


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
