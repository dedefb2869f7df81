"""One view of a zip's bytes: what its central directory lists is what a sequential reader sees.

Readers disagree on zips that are not laid out as writers lay them out: Python's ``zipfile``
and Java's ``ZipFile`` trust the central directory and tolerate bytes before, between and
after entries; TorchServe's ``ZipInputStream`` walks local headers from offset 0 and never
reads the central directory; ``tar`` reads a tar header at offset 0. So a zip is read only
when it has one meaning for all of them: entries in central-directory order, each local
header agreeing with its record, contiguous from offset 0 to the central directory, then
the end records and an optional short comment up to the end of the file, and no tar header
at its start. Only headers are read (a seek and a small read per entry), never data.
"""

from __future__ import annotations

import struct
import tarfile
import zipfile
from dataclasses import dataclass
from typing import BinaryIO

from mlflow_archive_plugin.errors import UnsafeArchiveError

_LOCAL = struct.Struct("<4s2B4HL2L2H")
_END = struct.Struct("<4s4H2LH")
_LOCATOR = struct.Struct("<4sLQL")
_END64_SIZE = 56
_CENTRAL_SIZE = 46
_LOCAL_SIGNATURE = b"PK\x03\x04"
_END_SIGNATURE = b"PK\x05\x06"
_LOCATOR_SIGNATURE = b"PK\x06\x07"
_DESCRIPTOR_SIGNATURE = b"PK\x07\x08"
_SIGNATURES = (b"PK\x01\x02", _LOCAL_SIGNATURE, _END_SIGNATURE, b"PK\x06\x06",
               _LOCATOR_SIGNATURE)
_DATA_DESCRIPTOR = 0x08
_ZIP64_SENTINEL = 0xFFFFFFFF
# Real writers write no comment or a line of text; a longer one is room to hide a second view.
MAX_COMMENT_BYTES = 4096


@dataclass(frozen=True)
class EndRecord:
    """Where a zip's end-of-central-directory record is, and what it says."""

    position: int  # of the record that ends the central directory (zip64 record if any)
    end: int  # first byte after the record and its comment
    cd_offset: int
    cd_size: int
    count: int
    comment: bytes


def _refuse(what: str, reason: str) -> None:
    raise UnsafeArchiveError(f"refused {what}: {reason}; the archive means different things "
                             "to different zip and tar readers, so it is unsafe")


def find_end_record(source: BinaryIO) -> EndRecord | None:
    """The end record zipfile would use (the last one in the file's last 64 KiB), or None."""
    size = source.seek(0, 2)
    start = max(0, size - _END.size - 0xFFFF)
    source.seek(start)
    tail = source.read()
    if tail[-_END.size:-_END.size + 4] == _END_SIGNATURE and tail[-2:] == b"\0\0":
        at = len(tail) - _END.size
    else:
        at = tail.rfind(_END_SIGNATURE)
        if at < 0 or len(tail) - at < _END.size:
            return None
    fields = _END.unpack_from(tail, at)
    count, cd_size, cd_offset, comment_length = fields[4], fields[5], fields[6], fields[7]
    position = start + at
    comment = tail[at + _END.size:at + _END.size + comment_length]
    if at >= _LOCATOR.size and tail[at - _LOCATOR.size:at - _LOCATOR.size + 4] == \
            _LOCATOR_SIGNATURE:
        record = _end64(source, position - _LOCATOR.size)
        if record is None:
            return None
        position, count, cd_size, cd_offset = record
    return EndRecord(position, start + at + _END.size + len(comment), cd_offset, cd_size,
                     count, comment)


def _end64(source: BinaryIO, locator_at: int) -> tuple[int, int, int, int] | None:
    """The zip64 end record zipfile reads: 56 bytes right before its locator, which must
    point at it."""
    source.seek(locator_at)
    _, _, offset, _ = _LOCATOR.unpack(source.read(_LOCATOR.size))
    at = locator_at - _END64_SIZE
    if at < 0:
        return None
    source.seek(at)
    raw = source.read(_END64_SIZE)
    if raw[:4] != b"PK\x06\x06":
        return None
    if offset != at or struct.unpack_from("<Q", raw, 4)[0] != _END64_SIZE - 12:
        _refuse("zip archive", "its zip64 end record is not where its locator says")
    count, cd_size, cd_offset = struct.unpack_from("<3Q", raw, 32)
    return at, count, cd_size, cd_offset


def is_tar_header(block: bytes) -> bool:
    """Whether ``block`` (a file's first 512 bytes) is a header ``tar`` would read."""
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def check_zip(source: BinaryIO, archive: zipfile.ZipFile) -> dict[int, str]:
    """Refuse a zip that readers could see differently; return, by index in the central
    directory, the entries whose local header disagrees with it (damage, reported per entry).
    """
    source.seek(0)
    if is_tar_header(source.read(tarfile.BLOCKSIZE)):
        _refuse("zip archive", "it starts with a tar header, so tar reads other files from it")
    end = find_end_record(source)
    size = source.seek(0, 2)
    if end is None:
        _refuse("zip archive", "no end-of-central-directory record where zipfile found one")
    if end.end != size:
        _refuse("zip archive", f"{size - end.end} bytes after its end-of-central-directory "
                               "record, which zip readers skip")
    if len(end.comment) > MAX_COMMENT_BYTES or any(s in end.comment for s in _SIGNATURES):
        _refuse("zip archive", f"its comment is longer than {MAX_COMMENT_BYTES} bytes or holds "
                               "zip records")
    infos = archive.infolist()
    listed = sum(_CENTRAL_SIZE + len(_raw_name(info)) + len(info.extra) + len(info.comment)
                 for info in infos)
    if end.cd_offset + end.cd_size != end.position or listed != end.cd_size \
            or len(infos) != end.count:
        _refuse("zip archive", "its central directory is not where, as long or as many "
                               "entries as its end record says (bytes before the first entry?)")
    return _walk_local_headers(source, infos, end.cd_offset)


def _raw_name(info: zipfile.ZipInfo) -> bytes:
    return info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")


def _walk_local_headers(source: BinaryIO, infos: list[zipfile.ZipInfo],
                        cd_offset: int) -> dict[int, str]:
    """Walk the local headers as a sequential reader does, from offset 0: each must start
    where the one before ended, and the central directory where the last one ended."""
    problems: dict[int, str] = {}
    position, previous = 0, None
    for index, info in enumerate(infos):
        name = info.orig_filename
        if info.header_offset != position:
            if previous is None:
                reason = f"{info.header_offset} bytes before it that no entry describes"
            elif info.header_offset < position:
                reason = f"its local header lies inside the bytes of {previous!r}"
            else:
                reason = (f"{info.header_offset - position} bytes between it and {previous!r} "
                          "that no entry describes")
            _refuse(f"archive entry {name!r}", reason)
        position, problem = _entry_end(source, info)
        if problem:
            problems[index] = f"{name}: {problem}; the archive is damaged"
        previous = name
    if position != cd_offset:
        where = "runs into" if position > cd_offset else f"{cd_offset - position} bytes before"
        last = f"archive entry {previous!r}" if previous else "zip archive"
        _refuse(last, f"its data {where} the central directory")
    return problems


def _entry_end(source: BinaryIO, info: zipfile.ZipInfo) -> tuple[int, str]:
    """Where the entry (local header, data, descriptor) ends, and how its local header
    disagrees with its central directory record ('' if it does not)."""
    source.seek(info.header_offset)
    fixed = source.read(_LOCAL.size)
    if len(fixed) < _LOCAL.size:
        _refuse(f"archive entry {info.orig_filename!r}", "its local header is cut off")
    sig, _, _, flags, method, _, _, crc, csize, usize, name_length, extra_length = \
        _LOCAL.unpack(fixed)
    variable = source.read(name_length + extra_length)
    data_end = info.header_offset + _LOCAL.size + name_length + extra_length + \
        info.compress_size
    usize, csize = _zip64_sizes(variable[name_length:], usize, csize)
    described = flags & _DATA_DESCRIPTOR
    unknown = described and crc == csize == usize == 0
    if sig != _LOCAL_SIGNATURE:
        problem = "no local header where the central directory says"
    elif variable[:name_length] != _raw_name(info):
        problem = "its local header names another file"
    elif (flags, method) != (info.flag_bits, info.compress_type):
        problem = "its local header's flags or method differ from the central directory's"
    elif unknown and method == zipfile.ZIP_STORED:
        problem = "stored with its size in a data descriptor, which streaming readers refuse"
    elif not unknown and (crc, csize, usize) != (info.CRC, info.compress_size, info.file_size):
        problem = "its local header's size or CRC differs from the central directory's"
    else:
        problem = ""
    if not described:
        return data_end, problem
    length = _descriptor_length(source, data_end, info)
    if length is None:
        return data_end, problem or "its data descriptor differs from the central directory"
    return data_end + length, problem


def _zip64_sizes(extra: bytes, usize: int, csize: int) -> tuple[int, int]:
    """The sizes a local header gives once its zip64 extra field replaces the sentinels."""
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<2H", extra, at)
        if kind == 1:
            values = list(struct.unpack_from(f"<{length // 8}Q", extra, at + 4))
            if usize == _ZIP64_SENTINEL and values:
                usize = values.pop(0)
            if csize == _ZIP64_SENTINEL and values:
                csize = values.pop(0)
        at += 4 + length
    return usize, csize


def _descriptor_length(source: BinaryIO, at: int, info: zipfile.ZipInfo) -> int | None:
    """The length of the data descriptor at ``at`` (with or without its signature, 32- or
    64-bit sizes) that repeats the central directory's CRC and sizes, or None."""
    source.seek(at)
    raw = source.read(24)
    expected = (info.CRC, info.compress_size, info.file_size)
    for signed in (True, False):
        body = raw[4:] if signed and raw[:4] == _DESCRIPTOR_SIGNATURE else raw
        if signed and body is raw:
            continue
        for fmt in ("<3L", "<L2Q"):
            if len(body) >= struct.calcsize(fmt) and struct.unpack_from(fmt, body) == expected:
                return struct.calcsize(fmt) + (4 if signed else 0)
    return None


def zip_view_span(source: BinaryIO) -> tuple[int, int] | None:
    """The bytes (start, end) a zip reader would take for a zip in ``source`` (a tar's file):
    from the first local header its central directory lists to the end of its end record, or
    None if no zip reader would find a zip with an entry it could open."""
    try:
        source.seek(0)
        with zipfile.ZipFile(source) as archive:
            infos = archive.infolist()
            if not infos:
                return None
            source.seek(infos[0].header_offset)
            if source.read(4) != _LOCAL_SIGNATURE:
                return None
        end = find_end_record(source)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error, UnsafeArchiveError):
        return None
    if end is None:
        return None
    return min(info.header_offset for info in infos), end.end
