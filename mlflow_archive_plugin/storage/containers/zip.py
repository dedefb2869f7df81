"""Zip: the default container. Each file is stored or deflated by what a sample of it does."""

from __future__ import annotations

import lzma
import stat
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mlflow_archive_plugin.errors import CorruptArchiveError, UnsafeArchiveError
from mlflow_archive_plugin.storage.containers import zipview
from mlflow_archive_plugin.storage.containers.base import (
    ContainerReader,
    ContainerWriter,
    GuardedStream,
    Listed,
    ProgressCallback,
    safe_entry_name,
)
from mlflow_archive_plugin.storage.integrity import FileRecord, copy_and_hash

_SAMPLE = 256 * 1024
# Deflate only when a sample shrinks by at least this much: weights rarely do, and storing
# them is many times faster than deflating them to the same size.
_WORTH_DEFLATING = 0.9
_MIN_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# Besides bad CRCs and broken deflate data, zipfile raises RuntimeError for encrypted entries,
# NotImplementedError for unknown methods or flags, and UnicodeDecodeError (a ValueError) for
# names flagged UTF-8 that are not.
_READ_ERRORS = (
    zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError,
    ValueError, lzma.LZMAError,
)


def _compression_for(sample: bytes) -> int:
    """Deflate what a sample of the file shows to be worth it; store the rest."""
    if len(sample) < 512:
        return zipfile.ZIP_DEFLATED
    shrunk = len(zlib.compress(sample, 1))
    return zipfile.ZIP_DEFLATED if shrunk < _WORTH_DEFLATING * len(sample) else zipfile.ZIP_STORED


class _Prefixed:
    """A stream whose first bytes were already read (``head``): read gives them back first."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes, the head's first."""
        head = self._head
        if not head:
            return self._rest.read(size)
        if 0 <= size < len(head):
            self._head = head[size:]
            return head[:size]
        self._head = b""
        return head + self._rest.read(-1 if size < 0 else size - len(head))


def _zip_time(seconds: float) -> tuple[int, int, int, int, int, int]:
    return max(time.localtime(seconds)[:6], _MIN_ZIP_TIME)


class ZipWriter(ContainerWriter):
    """Writes a zip (ZIP64 when needed) to a seekable binary stream.

    The stream is seekable, so every entry's sizes and CRC go into its local header and no
    entry carries a data descriptor: Java's ``ZipInputStream`` (TorchServe) refuses STORED
    entries that do. ``store_only`` stores every file uncompressed.
    """

    def __init__(self, target: BinaryIO, *, store_only: bool = False) -> None:
        self._zip = zipfile.ZipFile(target, "w", allowZip64=True)
        self._store_only = store_only

    def add_file(self, arcname: str, src: Path, on_bytes: ProgressCallback = None) -> FileRecord:
        info = zipfile.ZipInfo(arcname, _zip_time(src.stat().st_mtime))
        info.file_size = src.stat().st_size
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        # One open: the sample that decides the compression is the file's first bytes, so a
        # file streamed from a server is requested once.
        with src.open("rb") as source:
            head = source.read(_SAMPLE)
            info.compress_type = (zipfile.ZIP_STORED if self._store_only
                                  else _compression_for(head))
            with self._zip.open(info, "w") as sink:
                size, digest = copy_and_hash(_Prefixed(head, source), sink, on_bytes)
        return FileRecord(arcname, size, digest)

    def add_bytes(self, arcname: str, data: bytes) -> FileRecord:
        info = zipfile.ZipInfo(arcname, _zip_time(time.time()))
        info.compress_type = zipfile.ZIP_STORED if self._store_only else zipfile.ZIP_DEFLATED
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        self._zip.writestr(info, data)
        return FileRecord.of_bytes(arcname, data)

    def close(self) -> None:
        self._zip.close()


class ZipReader(ContainerReader):
    """Reads a zip from a seekable binary stream; refuses symlink and unsafe entries, and a
    zip other readers would see differently (see ``zipview``), before any entry is read."""

    def __init__(self, source: BinaryIO) -> None:
        try:
            self._zip = zipfile.ZipFile(source)
        except _READ_ERRORS as exc:
            raise CorruptArchiveError(
                f"the zip archive is truncated or damaged ({exc}); export it again"
            ) from exc
        try:
            self._damaged = zipview.check_zip(source, self._zip)
        except BaseException:
            self._zip.close()
            raise

    def listing(self) -> list[Listed]:
        """The central directory's regular files, before any entry is read."""
        return [Listed(info.orig_filename, info.file_size,
                       info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1)
                for info in self._zip.infolist() if not info.is_dir()]

    def entries(self) -> Iterator[tuple[str, BinaryIO]]:
        for index, info in enumerate(self._zip.infolist()):
            # zipfile cuts filename at a NUL byte; orig_filename keeps what the archive says.
            raw = info.orig_filename
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UnsafeArchiveError(
                    f"refused archive entry {raw!r}: symbolic link; the archive is unsafe"
                )
            name = safe_entry_name(raw)
            if info.is_dir():
                continue
            if index in self._damaged:
                yield name, _Unreadable(CorruptArchiveError(self._damaged[index]))
                continue
            try:
                stream = self._zip.open(info)
            except _READ_ERRORS as exc:
                # Fail on read, not here: raising inside the generator would end it, and
                # verify would never see the entries after this one.
                yield name, _Unreadable(CorruptArchiveError(f"{name}: damaged zip entry ({exc})"))
                continue
            stored = info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1
            # ZipExtFile notes where the entry's data begins once past its local header.
            offset = getattr(stream, "_orig_compress_start", None) if stored else None
            with stream:
                entry = _EntryStream(stream, name, _READ_ERRORS, "damaged zip entry",
                                     offset, info.file_size)
                entry.crc32 = info.CRC
                yield name, entry

    def close(self) -> None:
        self._zip.close()


class _EntryStream(GuardedStream):
    """A zip entry's stream that, at its end, refuses compressed data that stopped short of
    the entry's compressed size: zipfile ignores the rest, a streaming reader (TorchServe's)
    would read the next local header from there. ``crc32`` is the central directory's, for
    whoever reads the entry's bytes from the archive file without zipfile."""

    crc32: int | None = None

    def read(self, size: int = -1) -> bytes:
        """Read like the entry's stream; at the end, check nothing was left unread."""
        data = super().read(size)
        if not data and size != 0:
            raw = self._stream
            decompressor = getattr(raw, "_decompressor", None)
            if getattr(raw, "_compress_left", 0) or getattr(decompressor, "unused_data", b""):
                raise UnsafeArchiveError(
                    f"refused archive entry {self._name!r}: its compressed data ends before "
                    "its compressed size, leaving bytes a streaming reader would take for "
                    "another entry; the archive is unsafe"
                )
        return data


class _Unreadable:
    """The stream of an entry that could not be opened: reading it raises why."""

    def __init__(self, error: CorruptArchiveError) -> None:
        self._error = error

    def read(self, size: int = -1) -> bytes:
        raise self._error
