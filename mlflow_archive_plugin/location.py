"""Where archives live: any fsspec URL or local path, read safely and published atomically.

An archive appears under its final name only when it is complete: local files and folders are
written under a hidden temporary name in the same directory and renamed; remote files are built
in a local temporary file and uploaded in one piece (object stores commit an upload only when it
finishes), to a temporary name first where the file system can rename.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from mlflow_archive_plugin.containers import detect_container
from mlflow_archive_plugin.errors import (
    ArchiveError,
    DestinationExistsError,
    NotAnArchiveError,
    SourceNotFoundError,
    UnsupportedError,
)

# Object stores make an upload visible only once it has completed, so no rename is needed.
_ATOMIC_UPLOAD_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}


@dataclass(frozen=True)
class Location:
    """A resolved location: the URL as given, its file system and the path within it."""

    url: str
    fs: Any
    path: str

    @property
    def is_local(self) -> bool:
        """Whether the location is on the local file system."""
        return isinstance(self.fs, LocalFileSystem)

    def child(self, name: str) -> Location:
        """The location of ``name`` inside this one, used as a folder."""
        joined = f"{self.path.rstrip('/')}/{name}"
        url = joined if self.is_local else self.fs.unstrip_protocol(joined)
        return Location(url, self.fs, joined)


def resolve(url: str | os.PathLike, storage_options: dict | None = None) -> Location:
    """Resolve a local path or fsspec URL; an unknown protocol is a one-line error."""
    text = os.fspath(url)
    try:
        fs, path = fsspec.core.url_to_fs(text, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise UnsupportedError(f"cannot open {text!r}: {exc}") from exc
    if isinstance(fs, LocalFileSystem):
        path = os.path.abspath(os.path.expanduser(text))
    return Location(text, fs, path)


def is_folder_target(location: Location, raw: str) -> bool:
    """Whether an export destination names a folder to put a derived file name in."""
    if raw.endswith(("/", os.sep)):
        return True
    try:
        return bool(location.fs.isdir(location.path))
    except OSError:
        return False


def _exists(location: Location) -> bool:
    try:
        return bool(location.fs.exists(location.path))
    except OSError as exc:
        raise ArchiveError(f"cannot reach {location.url}: {exc}") from exc


def refuse_existing(location: Location, force: bool) -> None:
    if not force and _exists(location):
        raise DestinationExistsError(
            f"{location.url} already exists; pass --force (force=True) to replace it"
        )


def _temporary_sibling(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.partial-{uuid.uuid4().hex[:12]}")


def _replace_local(tmp: str, final: str) -> None:
    """Move ``tmp`` over ``final``, which may be an existing file or folder (force)."""
    if not os.path.lexists(final):
        os.replace(tmp, final)
        return
    doomed = _temporary_sibling(final)
    os.replace(final, doomed)
    try:
        os.replace(tmp, final)
    except OSError:
        os.replace(doomed, final)
        raise
    if os.path.isdir(doomed) and not os.path.islink(doomed):
        shutil.rmtree(doomed, ignore_errors=True)
    else:
        os.unlink(doomed)


@contextlib.contextmanager
def publish_file(location: Location, force: bool = False) -> Iterator[BinaryIO]:
    """A seekable binary stream whose bytes appear at ``location`` only if the block succeeds."""
    refuse_existing(location, force)
    if location.is_local:
        os.makedirs(os.path.dirname(location.path), exist_ok=True)
        tmp = _temporary_sibling(location.path)
        try:
            with open(tmp, "xb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            _replace_local(tmp, location.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return
    with tempfile.TemporaryDirectory(prefix="mlflow-archive-") as scratch:
        local = os.path.join(scratch, "archive")
        with open(local, "wb") as handle:
            yield handle
        _upload(local, location)


def _upload(local: str, location: Location) -> None:
    fs = location.fs
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    try:
        if protocol in _ATOMIC_UPLOAD_PROTOCOLS:
            fs.put_file(local, location.path)
            return
        tmp = _temporary_sibling(location.path)
        try:
            fs.put_file(local, tmp)
            fs.mv(tmp, location.path)
        finally:
            with contextlib.suppress(OSError, FileNotFoundError):
                if fs.exists(tmp):
                    fs.rm(tmp)
    except (OSError, PermissionError) as exc:
        raise ArchiveError(f"cannot write {location.url}: {exc}") from exc


@contextlib.contextmanager
def publish_folder(location: Location, force: bool = False) -> Iterator[Path]:
    """A fresh local directory that becomes ``location`` only if the block succeeds."""
    if not location.is_local:
        raise UnsupportedError(
            f"folder archives can only be written to local paths, not {location.url}; "
            "choose a file container such as zip"
        )
    refuse_existing(location, force)
    os.makedirs(os.path.dirname(location.path), exist_ok=True)
    tmp = _temporary_sibling(location.path)
    os.mkdir(tmp)
    try:
        yield Path(tmp)
        _replace_local(tmp, location.path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def open_source(location: Location) -> Iterator[tuple[str, BinaryIO | Path]]:
    """The container name and a readable source: a stream for files, a path for folders."""
    if location.is_local and os.path.isdir(location.path):
        yield "folder", Path(location.path)
        return
    try:
        if not location.fs.exists(location.path):
            raise SourceNotFoundError(f"{location.url} does not exist; check the path or URL")
        if location.fs.isdir(location.path):
            raise UnsupportedError(
                f"{location.url} is a remote folder; download it or pack it as a zip first"
            )
        handle = location.fs.open(location.path, "rb")
    except (PermissionError, OSError) as exc:
        raise ArchiveError(f"cannot read {location.url}: {exc}") from exc
    with handle:
        head = handle.read(512)
        handle.seek(0)
        try:
            container = detect_container(head)
        except NotAnArchiveError as exc:
            raise NotAnArchiveError(f"{location.url} is {exc}") from exc
        yield container, handle
