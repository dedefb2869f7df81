"""Streaming SHA-256 and ``checksum.txt`` in ``sha256sum`` text format.

``checksum.txt`` lists every other file of an archive, so ``sha256sum -c checksum.txt`` in an
extracted archive verifies it without the plugin. Its own digest is the archive's *content
digest*: it covers every file transitively and is the same whatever container holds them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

from mlflow_archive_plugin.errors import CorruptArchiveError
from mlflow_archive_plugin.snapshot.document import EXPORT_NOTE_NAME
from mlflow_archive_plugin.snapshot.records import FileRecord

CHECKSUM_NAME = "checksum.txt"
# A signature of checksum.txt: the one file beside it that checksum.txt cannot list.
CHECKSUM_SIGNATURE_NAME = "checksum.sig"
CHUNK_SIZE = 1024 * 1024

_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def copy_and_hash(src: BinaryIO, dst: BinaryIO, on_bytes=None) -> tuple[int, str]:
    """Copy ``src`` to ``dst`` in chunks, returning the byte count and hex SHA-256.

    ``on_bytes`` is called with each chunk's length, for progress reporting. Past the first
    chunk the hash runs on a helper thread, a chunk behind the copy: hashing and writing
    (zip's CRC, compression, the kernel's copy) then share the machine's cores instead of
    taking turns on one.
    """
    chunk = src.read(CHUNK_SIZE)
    digest: Any = Sha256Behind() if len(chunk) == CHUNK_SIZE else hashlib.sha256()
    size = 0
    try:
        while chunk:
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
            chunk = src.read(CHUNK_SIZE)
        return size, digest.hexdigest()
    finally:
        if isinstance(digest, Sha256Behind):
            digest.close()


class Sha256Behind:
    """SHA-256 of chunks given in order, computed on one helper thread.

    ``hashlib`` releases the GIL on large buffers, so the hash of one chunk runs while the
    caller writes it and reads the next; at most one chunk waits, so memory stays flat.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mlflow-archive-sha256")
        self._pending: Future | None = None

    def update(self, chunk: bytes) -> None:
        """Queue ``chunk`` after the previous one (waiting for that one to be hashed)."""
        self._wait()
        self._pending = self._pool.submit(self._digest.update, chunk)

    def hexdigest(self) -> str:
        """The hex SHA-256 of every chunk given so far."""
        self._wait()
        return self._digest.hexdigest()

    def close(self) -> None:
        """Stop the helper thread."""
        self._pool.shutdown(wait=True)

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None


def hash_stream(src: BinaryIO) -> tuple[int, str]:
    """The byte count and hex SHA-256 of a stream, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def render_checksums(records: Iterable[FileRecord]) -> bytes:
    """``checksum.txt`` for ``records``: one ``<sha256>  <path>`` line each, sorted by path."""
    lines = []
    for record in sorted(records, key=lambda r: r.path):
        if any(char in record.path for char in "\n\r\\"):
            # sha256sum escapes such names, which other readers do not undo; refuse them.
            raise CorruptArchiveError(
                f"file name {record.path!r} cannot be listed in {CHECKSUM_NAME}; rename it"
            )
        lines.append(f"{record.sha256}  {record.path}\n")
    return "".join(lines).encode("utf-8")


def parse_checksums(data: bytes) -> dict[str, str]:
    """Parse ``checksum.txt`` into ``{path: sha256}``; a malformed line is a corrupt archive."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptArchiveError(
            f"{CHECKSUM_NAME} is not UTF-8 text; the archive is damaged"
        ) from exc
    result: dict[str, str] = {}
    # Only "\n" ends a line: file names may hold other characters str.splitlines() splits on.
    for number, raw_line in enumerate(text.split("\n"), start=1):
        line = raw_line.removesuffix("\r")
        if not line.strip():
            continue
        match = _LINE.match(line)
        if match is None:
            raise CorruptArchiveError(
                f"{CHECKSUM_NAME} line {number} is not '<sha256>  <path>'; the archive is damaged"
            )
        digest, path = match.groups()
        if path in result:
            raise CorruptArchiveError(
                f"{CHECKSUM_NAME} lists {path!r} twice; the archive is damaged"
            )
        result[path] = digest
    return result


def content_digest(checksum_bytes: bytes) -> str:
    """The archive's content digest: SHA-256 of its ``checksum.txt`` without the line of
    ``mlflow-archive-export.json`` (when, and by what, it was exported), so that exporting
    the same model twice gives one digest. By hand:
    ``grep -v '  mlflow-archive-export.json$' checksum.txt | sha256sum``."""
    kept = b"".join(line for line in checksum_bytes.splitlines(keepends=True)
                    if line.rstrip(b"\r\n").partition(b"  ")[2] != _EXPORT_NOTE)
    return hashlib.sha256(kept).hexdigest()


_EXPORT_NOTE = EXPORT_NOTE_NAME.encode("utf-8")


def compare(expected: Mapping[str, str], actual: Mapping[str, FileRecord]) -> list[str]:
    """Every difference between ``checksum.txt`` and the files found, one line each.

    ``actual`` maps each file found in the archive (other than ``checksum.txt``) to its record.
    """
    problems = []
    for path, digest in sorted(expected.items()):
        record = actual.get(path)
        if record is None:
            problems.append(f"{path}: missing (listed in {CHECKSUM_NAME})")
        elif record.sha256 != digest:
            problems.append(f"{path}: content differs from {CHECKSUM_NAME}")
    for path in sorted(set(actual) - set(expected)):
        problems.append(f"{path}: extra file not listed in {CHECKSUM_NAME}")
    return problems
