"""The tar family: tar, tar.gz, tar.xz, tar.bz2, written and read as streams (no seeking)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mlflow_archive_plugin.errors import CorruptArchiveError, UnsafeArchiveError
from mlflow_archive_plugin.storage.containers.base import (
    ContainerReader,
    ContainerWriter,
    GuardedStream,
    Listed,
    ProgressCallback,
    safe_entry_name,
)
from mlflow_archive_plugin.storage.containers.xz import XzWriter
from mlflow_archive_plugin.storage.containers.zipview import zip_view_span
from mlflow_archive_plugin.storage.integrity import CHUNK_SIZE, FileRecord

_STREAM_ERRORS = (
    tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError,
    NotImplementedError,
)


class _HashingReader:
    """A read-through wrapper that hashes and counts what ``tarfile.addfile`` pulls."""

    def __init__(self, source: BinaryIO, on_bytes: ProgressCallback) -> None:
        self._source = source
        self._on_bytes = on_bytes
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(size if size and size > 0 else CHUNK_SIZE)
        self.digest.update(chunk)
        self.size += len(chunk)
        if self._on_bytes is not None and chunk:
            self._on_bytes(len(chunk))
        return chunk


class TarWriter(ContainerWriter):
    """Writes a PAX tar stream, optionally compressed (``compression`` in '', gz, xz, bz2).

    xz goes through :class:`XzWriter`, which stores incompressible data (weights) in the .xz
    stream instead of running LZMA over it, so a tar.xz of weights is written at copy speed.
    """

    def __init__(self, target: BinaryIO, compression: str = "") -> None:
        self._xz = XzWriter(target) if compression == "xz" else None
        mode = "w|" if compression in ("", "xz") else f"w|{compression}"
        self._tar = tarfile.open(  # noqa: SIM115 - closed by close()
            fileobj=target if self._xz is None else self._xz, mode=mode,
            format=tarfile.PAX_FORMAT,
        )

    def add_file(self, arcname: str, src: Path, on_bytes: ProgressCallback = None) -> FileRecord:
        status = src.stat()
        info = tarfile.TarInfo(arcname)
        info.size = status.st_size
        info.mtime = int(status.st_mtime)
        info.mode = 0o644
        with src.open("rb") as source:
            reader = _HashingReader(source, on_bytes)
            self._tar.addfile(info, reader)
        if reader.size != info.size:
            raise CorruptArchiveError(f"{src} changed size while it was being archived; retry")
        return FileRecord(arcname, reader.size, reader.digest.hexdigest())

    def add_bytes(self, arcname: str, data: bytes) -> FileRecord:
        info = tarfile.TarInfo(arcname)
        info.size = len(data)
        info.mtime = int(time.time())
        info.mode = 0o644
        self._tar.addfile(info, io.BytesIO(data))
        return FileRecord.of_bytes(arcname, data)

    def close(self) -> None:
        self._tar.close()
        if self._xz is not None:
            self._xz.close()  # after the tar's end blocks: the last block, index and footer


_DECOMPRESSORS = {
    "tar": lambda raw: raw,
    "tar.gz": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    "tar.xz": lambda raw: lzma.LZMAFile(raw, "rb"),  # noqa: SIM115 - closed with the tar
    "tar.bz2": lambda raw: bz2.BZ2File(raw, "rb"),
}
_BLOCK = tarfile.BLOCKSIZE
# tarfile reads at most one record ahead of the header it parses; keep comfortably more.
_TAIL_KEPT = 16 * tarfile.RECORDSIZE


class _TailKeeper:
    """A read-through wrapper remembering how much was read and the last bytes of it."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.position = 0
        self.tail = bytearray()

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(size)
        self.position += len(chunk)
        self.tail += chunk
        del self.tail[:-_TAIL_KEPT]
        return chunk


class TarReader(ContainerReader):
    """Reads a tar stream (decompressing as ``container`` says); refuses links and special
    members, a stream that ends without tar's end-of-archive zero blocks, and a file that a
    zip reader would open as a zip (unless that zip is the bytes of one member, as a torch
    file stored in a plain tar is)."""

    def __init__(self, source: BinaryIO, container: str = "tar") -> None:
        self._plain = container == "tar"
        self._zip_span = zip_view_span(source)
        source.seek(0)
        if self._zip_span is not None and not self._plain:
            _refuse_polyglot()
        # Where each member's bytes lie in a plain tar's file: a zip found must be in one.
        self._member_spans: list[tuple[int, int]] = []
        self._listing = _plain_listing(source) if self._plain else None
        try:
            self._data = _TailKeeper(_DECOMPRESSORS[container](source))
            self._tar = tarfile.open(fileobj=self._data, mode="r|")  # noqa: SIM115
        except _STREAM_ERRORS as exc:
            raise CorruptArchiveError(
                f"the tar archive is truncated or damaged ({exc}); export it again"
            ) from exc

    def listing(self) -> list[Listed] | None:
        """A plain tar's regular members, from their headers alone (seeking over the data);
        None for a compressed tar, which would have to be decompressed to list it."""
        return self._listing

    def entries(self) -> Iterator[tuple[str, BinaryIO]]:
        members = iter(self._tar)
        last = None
        while True:
            try:
                member = next(members)
            except StopIteration:
                self._check_end(last)
                self._check_zip_inside_a_member()
                return
            except _STREAM_ERRORS as exc:
                raise CorruptArchiveError(
                    f"the tar archive is truncated or damaged ({exc}); export it again"
                ) from exc
            last = member.name
            if member.isdir() and member.name.strip("/") in ("", "."):
                continue  # the "./" entry GNU tar writes for the archive root
            name = safe_entry_name(member.name)
            if member.isdir():
                continue
            if not member.isreg():
                kind = "link" if (member.issym() or member.islnk()) else "special file"
                raise UnsafeArchiveError(
                    f"refused archive entry {member.name!r}: {kind}; the archive is unsafe"
                )
            stream = self._tar.extractfile(member)
            # In an uncompressed tar a member's bytes are one run in the file (sparse members
            # aside).
            offset = member.offset_data if self._plain and not member.issparse() else None
            if offset is not None:
                self._member_spans.append((offset, offset + member.size))
            yield name, GuardedStream(stream, name, _STREAM_ERRORS, "archive truncated or damaged",
                                      offset, member.size)

    def _check_zip_inside_a_member(self) -> None:
        span = self._zip_span
        if span is not None and not any(start <= span[0] and span[1] <= end
                                        for start, end in self._member_spans):
            _refuse_polyglot()

    def _check_end(self, last: str | None) -> None:
        """tarfile takes a bad or missing header after the first member for the end of the
        archive; only zero blocks to the end of the stream really are one."""
        try:
            while chunk := self._data.read(tarfile.RECORDSIZE):
                if chunk.count(0) != len(chunk):
                    break
        except _STREAM_ERRORS as exc:
            raise CorruptArchiveError(
                f"the tar archive is truncated or damaged ({exc}); export it again"
            ) from exc
        already_read = self._data.position - len(self._data.tail)
        end = bytes(self._data.tail[max(0, self._tar.offset - already_read):])
        if len(end) < _BLOCK or end.count(0) != len(end):
            after = f" after {last!r}" if last else ""
            raise CorruptArchiveError(
                f"the tar archive is truncated or damaged{after}: it does not end with tar's "
                "end-of-archive blocks; export it again"
            )

    def close(self) -> None:
        self._tar.close()


def _plain_listing(source: BinaryIO) -> list[Listed] | None:
    """The members of the plain tar ``source`` by their headers, read by seeking from one to
    the next; None unless that walk ends in tar's end-of-archive zero blocks at the end of the
    file (a damaged tar is left to the stream reader, which names what is wrong)."""
    listed: list[Listed] = []
    try:
        end = source.seek(0, 2)
        source.seek(0)
        with tarfile.open(fileobj=source, mode="r:") as archive:
            for member in archive:
                if member.isreg():
                    listed.append(Listed(member.name, member.size, True))
            offset = archive.offset
        if end - offset > _LISTING_TAIL_MAX or end - offset < _BLOCK:
            return None
        source.seek(offset)
        tail = source.read(end - offset)
        return listed if tail.count(0) == len(tail) else None
    except _STREAM_ERRORS:
        return None
    finally:
        source.seek(0)


# Zero blocks a tar may end with past its last member (GNU tar pads to 10 KiB records).
_LISTING_TAIL_MAX = 1024**2


def _refuse_polyglot() -> None:
    raise UnsafeArchiveError(
        "refused tar archive: it is also a zip (a central directory at its end lists entries "
        "a zip reader would extract instead), so it means different things to tar and zip "
        "readers; the archive is unsafe"
    )
