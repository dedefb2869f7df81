"""The container interface: how entries are packed into bytes, independent of what they mean.

A writer streams named entries into one target and hashes each while writing it; a reader
yields the regular-file entries of an archive in stream order and refuses any entry whose
name could escape an extraction folder, before anything is written.
"""

from __future__ import annotations

import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mlflow_archive_plugin.errors import CorruptArchiveError
from mlflow_archive_plugin.snapshot.records import FileRecord

# Entry-name rules belong to the shared shape; the containers apply them to every entry.
from mlflow_archive_plugin.snapshot.records import safe_entry_name as safe_entry_name

ProgressCallback = Callable[[int], None] | None


@dataclass(frozen=True)
class Listed:
    """One entry of an archive's listing: its name, the size its header declares, and
    whether it is stored as it is (so that a reader may leave it in place)."""

    name: str
    size: int
    stored: bool = False



def collision_key(name: str) -> str:
    """The key under which two names would land on the same file on some file system."""
    return unicodedata.normalize("NFC", name).casefold()


class ContainerWriter(AbstractContextManager, ABC):
    """Streams entries into one archive; each ``add_*`` returns the entry's size and SHA-256."""

    @abstractmethod
    def add_file(self, arcname: str, src: Path, on_bytes: ProgressCallback = None) -> FileRecord:
        """Stream the local file ``src`` into the archive as ``arcname``."""

    @abstractmethod
    def add_bytes(self, arcname: str, data: bytes) -> FileRecord:
        """Write generated ``data`` into the archive as ``arcname``."""

    @abstractmethod
    def close(self) -> None:
        """Finish the archive (central directory, end-of-stream markers)."""

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


class ContainerReader(AbstractContextManager, ABC):
    """Yields ``(name, stream)`` for every regular file, in archive order, names made safe."""

    @abstractmethod
    def entries(self) -> Iterator[tuple[str, BinaryIO]]:
        """Each regular-file entry with a stream of its bytes; directories are skipped."""

    def listing(self) -> list[Listed] | None:
        """Every regular-file entry's name (as the archive writes it) and declared size,
        known before any entry is read, or None where the container can only tell them as it
        is read (a compressed tar). The names are not checked here: ``entries`` refuses an
        unsafe one as it comes to it."""
        return None

    def close(self) -> None:
        """Release the underlying file."""

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


class GuardedStream:
    """A member's stream whose read errors (bad CRC, broken compression, early end) become
    one :class:`CorruptArchiveError` naming the member."""

    def __init__(self, stream: BinaryIO, name: str, errors: tuple[type[BaseException], ...],
                 problem: str, offset: int | None = None, size: int | None = None) -> None:
        self._stream = stream
        self._name = name
        self._errors = errors
        self._problem = problem
        # Where the member's bytes lie, as they are, in the archive file (a stored zip entry,
        # a plain tar's member), and how many they are; None when they are compressed.
        self.offset = offset
        self.size = size

    def read(self, size: int = -1) -> bytes:
        """Read like the wrapped stream, naming the member on failure."""
        try:
            return self._stream.read(size)
        except self._errors as exc:
            raise CorruptArchiveError(f"{self._name}: {self._problem} ({exc})") from exc
