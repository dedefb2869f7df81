"""Folder: an unpacked archive, the same entries as files under one directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mlflow_archive_plugin.errors import UnsafeArchiveError
from mlflow_archive_plugin.storage.containers.base import (
    ContainerReader,
    ContainerWriter,
    Listed,
    ProgressCallback,
    safe_entry_name,
)
from mlflow_archive_plugin.storage.integrity import FileRecord, copy_and_hash


class FolderWriter(ContainerWriter):
    """Writes entries as files under ``root`` (a fresh directory made by the publisher)."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def _target(self, arcname: str) -> Path:
        target = self._root / safe_entry_name(arcname)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def add_file(self, arcname: str, src: Path, on_bytes: ProgressCallback = None) -> FileRecord:
        with src.open("rb") as source, self._target(arcname).open("xb") as sink:
            size, digest = copy_and_hash(source, sink, on_bytes)
        return FileRecord(arcname, size, digest)

    def add_bytes(self, arcname: str, data: bytes) -> FileRecord:
        self._target(arcname).write_bytes(data)
        return FileRecord.of_bytes(arcname, data)

    def close(self) -> None:
        """Nothing to finish: every file is complete when written."""


class FolderReader(ContainerReader):
    """Yields every regular file under ``root`` in sorted order; refuses links and specials."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def listing(self) -> list[Listed]:
        """Every regular file below the root (links and special files are left to
        ``entries``, which refuses them)."""
        found = []
        for dirpath, _dirnames, filenames in os.walk(self._root):
            for filename in filenames:
                path = Path(dirpath, filename)
                if path.is_file() and not path.is_symlink():
                    found.append(Listed(path.relative_to(self._root).as_posix(),
                                        path.stat().st_size))
        return found

    def entries(self) -> Iterator[tuple[str, BinaryIO]]:
        for dirpath, dirnames, filenames in os.walk(self._root):
            dirnames.sort()
            for entry in [*dirnames, *filenames]:
                path = Path(dirpath, entry)
                if path.is_symlink():
                    rel = path.relative_to(self._root).as_posix()
                    raise UnsafeArchiveError(
                        f"refused archive entry {rel!r}: symbolic link; the archive is unsafe"
                    )
            for filename in sorted(filenames):
                path = Path(dirpath, filename)
                name = safe_entry_name(path.relative_to(self._root).as_posix())
                if not path.is_file():
                    raise UnsafeArchiveError(
                        f"refused archive entry {name!r}: special file; the archive is unsafe"
                    )
                with path.open("rb") as stream:
                    yield name, stream

