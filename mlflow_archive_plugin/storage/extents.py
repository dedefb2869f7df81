"""Model files read where they lie inside an archive, instead of extracted to disk first.

A zip entry that is stored (not deflated) and a member of an uncompressed tar are one run of
bytes in the archive file. Reading an archive for import, such entries past a size are not
written out: the extraction folder gets a sparse placeholder of the right size, and the
:class:`Extent` says where the bytes are and what sha256 they must have (measured by
``inspect``, listed in ``checksum.txt`` for an import, which does not read them up front).
What reads model files takes them from there: the pickle scanner through
:func:`open_model_file`, the upload to a server's artifact proxy through :class:`UploadBody`,
which checks the sha256 as the bytes are sent. Anything else first calls :func:`materialize`,
which fills the placeholders in and checks them the same way. The same size rule
(:func:`stays_in_place`) picks the files an export streams from a server.
"""

from __future__ import annotations

import hashlib
import io
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mlflow_archive_plugin.errors import IntegrityError
from mlflow_archive_plugin.snapshot import is_metrics_name
from mlflow_archive_plugin.storage.integrity import CHUNK_SIZE, Sha256Behind

# Entries at least this large are left in place, unless their suffix marks a document that
# a layout reads from the extracted folder.
IN_PLACE_MIN_BYTES = 1024 * 1024
_DOCUMENT_SUFFIXES = frozenset({".json", ".yaml", ".yml", ".txt", ".md", ".py", ".cfg", ".toml",
                                ".sig"})


def stays_in_place(name: str, size: int) -> bool:
    """Whether a model file of this name and size is read where it lies (in the archive on
    import, on the server on export) rather than copied to disk first."""
    return (size >= IN_PLACE_MIN_BYTES
            and PurePosixPath(name).suffix.lower() not in _DOCUMENT_SUFFIXES
            and PurePosixPath(name).name != "MLmodel"
            and not is_metrics_name(PurePosixPath(name).name))


@dataclass(frozen=True)
class Extent:
    """``size`` bytes of one model file at ``offset`` in the local file ``path``, and the
    SHA-256 they must have (and the CRC-32 their zip entry gives, which zipfile would check
    had it read them)."""

    path: str
    offset: int
    size: int
    sha256: str
    crc32: int | None = None


class _ExtentRaw(io.RawIOBase):
    """A read-only, seekable view of one extent."""

    def __init__(self, extent: Extent) -> None:
        self._extent = extent
        self._fd = os.open(extent.path, os.O_RDONLY)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def take(self, count: int) -> bytes:
        """Up to ``count`` bytes from the current position, as one new bytes object."""
        count = min(count, self._extent.size - self._pos)
        if count <= 0:
            return b""
        data = os.pread(self._fd, count, self._extent.offset + self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.take(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._extent.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def make_placeholder(path: Path, size: int) -> None:
    """A sparse file of ``size`` bytes standing for a file read elsewhere: it takes no disk
    space, and reading it gives zeros, so whatever reads model files looks it up first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("xb") as placeholder:
        placeholder.truncate(size)


def open_extent(extent: Extent) -> io.BufferedReader:
    """The extent's bytes as a seekable binary file."""
    return io.BufferedReader(_ExtentRaw(extent), CHUNK_SIZE)


def open_model_file(path: Path, extents: Mapping[Path, Extent] | None) -> io.BufferedIOBase:
    """``path`` for reading: from the archive where it was left in place, else from disk."""
    extent = (extents or {}).get(path.resolve())
    return open_extent(extent) if extent is not None else path.open("rb")


def materialize(extents: dict[Path, Extent]) -> None:
    """Fill every placeholder in with its bytes (checked against the verified hash), for
    work that reads the extracted files themselves: decrypting, checking a signature,
    keeping a foreign archive's files."""
    for path, extent in list(extents.items()):
        digest, crc = hashlib.sha256(), 0
        with open_extent(extent) as source, path.open("r+b") as sink:
            while chunk := source.read(CHUNK_SIZE):
                digest.update(chunk)
                crc = zlib.crc32(chunk, crc)
                sink.write(chunk)
        _check(path.name, extent, digest.hexdigest(), crc)
        del extents[path]


class UploadBody:
    """An extent as an HTTP request body: read in whatever sizes the client asks for, read
    from disk and hashed a MiB at a time, and checked against the verified hash at the end.
    A file changed between verification and upload fails the upload (and so the import)."""

    def __init__(self, extent: Extent, label: str) -> None:
        self._extent = extent
        self._label = label
        self._raw = _ExtentRaw(extent)
        self._digest = Sha256Behind()  # hashes each MiB while the client sends it
        self._crc = 0
        self._buffer = memoryview(b"")
        self._sent = 0
        # Why the body stopped short, for the caller: HTTP clients wrap what read() raises.
        self.error: IntegrityError | None = None

    def __len__(self) -> int:
        return self._extent.size - self._sent

    def tell(self) -> int:
        return self._sent

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes; ``b""`` at the end, once the hash has been checked."""
        if not self._buffer:
            chunk = self._raw.take(CHUNK_SIZE)
            if not chunk:
                try:
                    _check(self._label, self._extent, self._digest.hexdigest(), self._crc)
                except IntegrityError as exc:
                    self.error = exc
                    raise
                return b""
            self._digest.update(chunk)
            self._crc = zlib.crc32(chunk, self._crc)
            self._buffer = memoryview(chunk)
        take = len(self._buffer) if size is None or size < 0 else min(size, len(self._buffer))
        data, self._buffer = bytes(self._buffer[:take]), self._buffer[take:]
        self._sent += len(data)
        return data

    def close(self) -> None:
        self._raw.close()
        self._digest.close()


def _check(label: str, extent: Extent, digest: str, crc: int) -> None:
    """Refuse bytes whose SHA-256 is not the expected one (from checksum.txt for an entry
    import left unread, measured for one verified in place) or whose CRC-32 is not the zip's."""
    if digest != extent.sha256 or extent.crc32 not in (None, crc):
        raise IntegrityError(
            f"{label}: its bytes in {extent.path} differ from checksum.txt or from the "
            "CRC-32 of its zip entry (damaged, or changed since it was read); nothing was "
            "registered, export or download the archive again",
            [f"{label}: content differs from checksum.txt or its CRC-32"],
        )
