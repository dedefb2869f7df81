"""The container interface: how entries are packed into bytes, independent of what they mean.

A writer streams named entries into one target and hashes each while writing it; a reader
yields the regular-file entries of an archive in stream order and refuses any entry whose
name could escape an extraction folder, before anything is written.
"""

from __future__ import annotations

import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from mlflow_archive_plugin.errors import CorruptArchiveError, UnsafeArchiveError
from mlflow_archive_plugin.integrity import FileRecord

ProgressCallback = Callable[[int], None] | None

_DRIVE = re.compile(r"^[A-Za-z]:")
# File systems refuse longer segments (NAME_MAX); the name bound leaves room under PATH_MAX
# for the temporary folder an archive is extracted into.
MAX_SEGMENT_BYTES = 255
MAX_NAME_BYTES = 1024


def safe_entry_name(raw: str) -> str:
    """Normalise an archive entry name, refusing any that could escape the destination.

    A leading ``./`` (as tar writes) is dropped; absolute paths, ``..`` or empty segments,
    backslashes, drive letters and NUL bytes are refused with a one-line reason.
    """
    name = raw
    while name.startswith("./"):
        name = name[2:]
    reason = None
    if not name:
        reason = "empty name"
    elif "\x00" in name:
        reason = "NUL byte in name"
    elif "\\" in name:
        reason = "backslash in name"
    elif name.startswith("/"):
        reason = "absolute path"
    elif _DRIVE.match(name):
        reason = "drive letter"
    elif any(part in ("", ".", "..") for part in name.rstrip("/").split("/")):
        reason = "'..', '.' or empty path segment"
    elif len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        reason = f"name longer than {MAX_NAME_BYTES} bytes"
    elif any(len(part.encode("utf-8", "surrogateescape")) > MAX_SEGMENT_BYTES
             for part in name.split("/")):
        reason = f"a path segment longer than {MAX_SEGMENT_BYTES} bytes"
    if reason is not None:
        error = UnsafeArchiveError(
            f"refused archive entry {raw!r}: {reason}; the archive is unsafe"
        )
        error.reason = reason
        raise error
    return name


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
