"""Find the pickles in an extracted archive by their bytes, and list the globals each imports.

Loading a pickle can run any code its author chose, so ``inspect`` and ``import`` report what
every pickle in a model would import before anyone loads it. Nothing here unpickles or runs
archive content, and names never decide: every regular file below the root is read, whatever
it is called, and counts as a pickle by what its bytes are:

- **A pickle stream**, read from byte 0 by this module's own opcode walker, which follows the
  unpickler's rules (opcode table, argument sizes, the stack and its marks, memo lookups) and
  stops where the unpickler would stop. The stream is a pickle when it reaches ``STOP``, or when
  it imports a global (``GLOBAL``, ``INST``, ``STACK_GLOBAL``, a registered extension code)
  before it stops being valid: the unpickler would have made that import before failing. Bytes
  that stop being a pickle before importing anything cannot run code when unpickled, so a file
  that merely starts with ``0x80`` (or any other opcode) is not reported. After a ``STOP`` the
  bytes that follow are read as further pickles (``torch``'s legacy format, ``pickle.load``
  called twice), while they keep being pickles.
- **A NumPy ``.npy`` array of object dtype** (the pickle after its header).
- **A zip** (its local-header magic at byte 0 or an end record that ``zipfile`` accepts), such as
  torch's ``model.pt`` with ``archive/data.pkl``, an ``.npz`` or a zip inside a zip: every member
  is read the same way, up to :data:`MAX_DEPTH` levels and :data:`MAX_MEMBERS` members.
- **A gzip, bzip2, xz, lzma or zlib stream** (what ``joblib`` and pyfunc's ``python_model``
  compression write), decompressed as it is read, its content read the same way.

Globals are rated with `picklescan <https://github.com/mmaitre314/picklescan>`_'s lists of
safe and dangerous names (the ``scan`` extra) plus :data:`_ALSO_DANGEROUS`; anything on
neither list is "suspicious". Files that an ``MLmodel`` says its flavor unpickles
(:func:`named_pickles`) must be proven pickles: if their bytes are none the scanner can read
(lz4-compressed joblib, say), they are reported as not fully scanned.

All reading is streaming and bounded: argument payloads (array bytes) are skipped, not read,
walks stop after :data:`MAX_OPCODES` opcodes, decompression after :data:`MAX_INFLATED_BYTES`;
a file that hits a bound is reported as not fully scanned, so ``--scan strict`` refuses it.
Not covered: bytes a loader reads at an offset of its own choosing (joblib's raw arrays between
pickle opcodes make a joblib file "not fully scanned"), tar files and lz4 inside the archive.

Typical use::

    findings = scan_pickles(extracted_root)
    for line in enforce(findings, "warn"):
        print(line)
"""

from __future__ import annotations

import bz2
import codecs
import copyreg
import gzip
import io
import lzma
import os
import pickle
import pickletools
import re
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from mlflow_archive_plugin.errors import CorruptArchiveError, UnsafeArchiveError, UnsupportedError
from mlflow_archive_plugin.storage.extents import Extent, open_model_file
from mlflow_archive_plugin.trust.parsing import load_yaml

__all__ = [
    "INSTALL_HINT",
    "MAX_DEPTH",
    "MAX_INFLATED_BYTES",
    "MAX_MEMBERS",
    "MAX_OPCODES",
    "SCAN_MODES",
    "PickleFinding",
    "enforce",
    "find_pickle_files",
    "named_pickles",
    "scan_pickles",
]

SCAN_MODES = ("off", "warn", "strict")
"""Accepted values of ``--scan``: skip scanning, report findings, or refuse unsafe archives."""

INSTALL_HINT = "picklescan is not installed; pip install 'mlflow-archive-plugin[scan]'"
"""The ``error`` of every finding when the scanner library is missing."""

MAX_DEPTH = 3
"""How many containers (zip, compressed stream) deep a file is read; deeper is not scanned."""
MAX_MEMBERS = 10_000
"""Zip members read per file of the archive, all nesting levels together."""
MAX_OPCODES = 5_000_000
"""Pickle opcodes walked per file of the archive."""
MAX_INFLATED_BYTES = 1024 * 1024 * 1024
"""Bytes decompressed per file of the archive (compressed zip members, gzip and the like)."""

_MAX_STACK = 1_000_000  # items on the simulated unpickler stack (and marks)
_MAX_MEMO = 500_000  # memo entries tracked (to resolve STACK_GLOBAL's names)
_MAX_NAME = 512  # longest string kept as a possible module or global name
_MAX_LINE = 64 * 1024  # longest text argument (protocol 0)
_MAX_CENTRAL_DIRECTORY = 8 * 1024 * 1024  # of a zip inside the archive, before zipfile reads it
_MAX_SPOOLED = 256 * 1024 * 1024  # a compressed zip inside a zip is copied to a temporary file
_MAX_MLMODEL = 1024 * 1024
_CHUNK = 1024 * 1024

_NOT_SCANNABLE_PREFIX = "not fully scanned: "

# picklescan 1.0.5 rates these only "suspicious" (they are not on its allowlist), yet each
# one imports arbitrary modules, builds code from bytes or opens arbitrary files, just like
# globals it does call dangerous. "*" means every name in the module and its submodules.
_ALSO_DANGEROUS: dict[str, str | frozenset[str]] = {
    "importlib": "*",
    "builtins": frozenset({"__import__"}),
    "__builtin__": frozenset({"__import__"}),
    "marshal": frozenset({"loads"}),
    # pickle records builtins.open as io.open, which picklescan does not list.
    "io": frozenset({"open", "open_code", "FileIO"}),
    "_io": frozenset({"open", "open_code"}),
    "codecs": frozenset({"open"}),
    "types": frozenset({"FunctionType"}),
    "dill._dill": frozenset({"_create_code", "_create_function", "_import_module", "_eval_repr"}),
    "dill.dill": frozenset({"_create_code", "_create_function", "_import_module", "_eval_repr"}),
}

# A global whose module or name is computed while unpickling (the result of a call): it can
# be anything, so it is rated dangerous.
COMPUTED_GLOBAL = ("<computed at load time>", "<computed at load time>")


@dataclass
class PickleFinding:
    """What one pickle-based file would import when loaded.

    ``path`` is relative to the scanned root, in POSIX form. ``globals`` holds every
    ``"module.name"`` the file imports, sorted; ``dangerous`` and ``suspicious`` are the
    subsets rated as able to run code and as not known to be safe. ``error`` is set when
    (part of) the file could not be scanned, so its list may be incomplete. ``inside`` names
    the pickles found within a zip or compressed file (``archive/data.pkl``), and ``loader``
    says which ``MLmodel`` flavor unpickles the file, when one does.
    """

    path: str
    globals: list[str] = field(default_factory=list)
    dangerous: list[str] = field(default_factory=list)
    suspicious: list[str] = field(default_factory=list)
    error: str | None = None
    inside: list[str] = field(default_factory=list)
    loader: str | None = None

    @property
    def flagged(self) -> bool:
        """True when strict mode would refuse this file."""
        return bool(self.dangerous or self.suspicious or self.error)

    @property
    def label(self) -> str:
        """The path, with the pickles inside it when it is a container."""
        return f"{self.path} ({', '.join(self.inside)})" if self.inside else self.path


# --------------------------------------------------------------------------- streams


class _Window(io.RawIOBase):
    """``size`` bytes at ``offset`` of a seekable file, as a seekable file of their own."""

    def __init__(self, base: IO[bytes], offset: int, size: int) -> None:
        self._base, self._offset, self._size, self._pos = base, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._size - self._pos)
        if count <= 0:
            return 0
        self._base.seek(self._offset + self._pos)
        data = self._base.read(count)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


class _Inflating(io.RawIOBase):
    """A zlib stream (joblib's ``zlib`` compression), decompressed as it is read."""

    def __init__(self, base: IO[bytes]) -> None:
        self._base = base
        self._inflater = zlib.decompressobj()
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._inflater.eof:
            if not self._pending:
                self._pending = self._base.read(64 * 1024)
                if not self._pending:
                    raise EOFError("the zlib stream ends early")
            data = self._inflater.decompress(self._pending, len(buffer))
            self._pending = self._inflater.unconsumed_tail
            if data:
                buffer[:len(data)] = data
                return len(data)
        return 0


def _decompressing(head: bytes, stream: IO[bytes]) -> tuple[str, IO[bytes]] | None:
    """A decompressing view of ``stream`` when ``head`` starts a compressed stream."""
    if head.startswith(b"\x1f\x8b\x08"):
        return "gzip", gzip.GzipFile(fileobj=stream, mode="rb")
    if re.match(rb"BZh[1-9]1AY&SY", head):
        return "bzip2", bz2.BZ2File(stream)
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz", lzma.LZMAFile(stream, format=lzma.FORMAT_XZ)
    if head.startswith(b"\x5d\x00\x00"):
        return "lzma", lzma.LZMAFile(stream, format=lzma.FORMAT_ALONE)
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return "zlib", io.BufferedReader(_Inflating(stream), _CHUNK)
    return None


# --------------------------------------------------------------------------- one file


class _Unscannable(Exception):
    """Part of a file cannot be read to the end: the message says why."""


class _NotPickle(Exception):
    """The bytes stop being a pickle here; the unpickler would fail at the same point."""


class _Scan:
    """What reading one file of the archive found, all its containers included."""

    def __init__(self) -> None:
        self.globals: set[tuple[str, str]] = set()
        self.inside: list[str] = []
        self.problems: list[str] = []
        self.pickle = False  # some part of the file is a pickle (or might be)
        self.opcodes = 0
        self.inflated = 0
        self.members = 0

    def unscannable(self, where: str, why: str) -> None:
        self.pickle = True
        self.problems.append(f"{where}: {why}" if where else why)

    def found(self, where: str) -> None:
        self.pickle = True
        if where and where not in self.inside:
            self.inside.append(where)

    def count_inflated(self, size: int) -> None:
        self.inflated += size
        if self.inflated > MAX_INFLATED_BYTES:
            raise _Unscannable(f"decompresses to more than {MAX_INFLATED_BYTES} bytes")


class _Reader:
    """The reads the opcode walker needs, on a stream that may or may not seek cheaply."""

    def __init__(self, stream: IO[bytes], scan: _Scan, size: int | None, seeks: bool) -> None:
        self.stream, self.scan, self.size, self.seeks = stream, scan, size, seeks

    def peek(self) -> bytes:
        return self.stream.peek(1)[:1]

    def tell(self) -> int:
        return self.stream.tell()

    def read(self, count: int) -> bytes:
        data = self.stream.read(count)
        if not self.seeks:
            self.scan.count_inflated(len(data))
        if len(data) < count:
            raise _Truncated()
        return data

    def line(self) -> bytes:
        data = self.stream.readline(_MAX_LINE + 1)
        if not self.seeks:
            self.scan.count_inflated(len(data))
        if not data.endswith(b"\n"):
            if len(data) > _MAX_LINE:
                raise _Unscannable(f"a text argument is longer than {_MAX_LINE} bytes")
            raise _Truncated()
        return data[:-1]

    def skip(self, count: int) -> None:
        if self.seeks and self.size is not None:
            if self.tell() + count > self.size:
                raise _Truncated()
            self.stream.seek(count, os.SEEK_CUR)
            return
        while count > 0:
            step = min(count, _CHUNK)
            self.read(step)
            count -= step


class _Truncated(Exception):
    """The stream ends inside an opcode."""


def _read_file(path: Path, extents: Mapping[Path, Extent] | None) -> _Scan:
    scan = _Scan()
    extent = (extents or {}).get(path.resolve())
    size = extent.size if extent is not None else path.stat().st_size
    with open_model_file(path, extents) as stream:
        _read_stream(stream, size, "", 0, scan, seeks=True)
    return scan


def _read_stream(stream: IO[bytes], size: int | None, where: str, depth: int, scan: _Scan,
                 *, seeks: bool) -> None:
    """Read one stream (a file, a zip member, a decompressed stream) for pickles."""
    try:
        head = stream.peek(16)[:16]
        if head.startswith(b"PK\x03\x04") or (seeks and _has_zip_end(stream)):
            _read_zip(stream, size, where, depth, scan, seeks=seeks)
            if head.startswith(b"PK\x03\x04"):
                # At byte 0 a zip's local header is a PERSID opcode, which a plain unpickler
                # refuses and torch's rejects for a string id: nothing there is unpickled.
                return
        if head.startswith(b"\x93NUMPY"):
            _read_npy(stream, where, scan, seeks=seeks, size=size)
            return
        if head.startswith(b"\x04\x22\x4d\x18"):
            scan.unscannable(where, "lz4-compressed (joblib unpickles it), which the scanner "
                                    "cannot decompress")
            return
        compressed = _decompressing(head, stream)
        if compressed is not None and _read_compressed(*compressed, where, depth, scan):
            return
        if compressed is not None:
            stream.seek(0)
        _read_pickles(_Reader(stream, scan, size, seeks), where, scan)
    except _Unscannable as exc:
        scan.unscannable(where, str(exc))
    except (OSError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError,
            lzma.LZMAError, zlib.error, ValueError) as exc:
        # A member that cannot be opened or decompressed is unverified, not a crash.
        scan.unscannable(where, f"cannot be read: {_one_line(exc)}")


def _has_zip_end(stream: IO[bytes]) -> bool:
    position = stream.tell()
    try:
        return zipfile.is_zipfile(stream)
    finally:
        stream.seek(position)


def _read_compressed(kind: str, stream: IO[bytes], where: str, depth: int, scan: _Scan) -> bool:
    """Read a decompressed stream; False when it does not decompress at all (then the raw
    bytes are read instead)."""
    try:
        stream.peek(1)
    except (OSError, EOFError, lzma.LZMAError, zlib.error):
        return False
    if depth >= MAX_DEPTH:
        scan.unscannable(where, f"{kind} data nested more than {MAX_DEPTH} levels deep")
        return True
    label = f"{where}, {kind}-compressed" if where else f"{kind}-compressed"
    _read_stream(stream, None, label, depth + 1, scan, seeks=False)
    return True


def _read_npy(stream: IO[bytes], where: str, scan: _Scan, *, seeks: bool,
              size: int | None) -> None:
    from numpy.lib import format as npy_format

    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            _shape, _order, dtype = npy_format.read_array_header_1_0(stream)
        else:
            _shape, _order, dtype = npy_format.read_array_header_2_0(stream)
    except ValueError:
        return  # numpy.load raises on such a header before it unpickles anything
    if dtype.hasobject:
        scan.found(where)
        _read_pickles(_Reader(stream, scan, size, seeks), where, scan, first_is_pickle=True)


# --------------------------------------------------------------------------- zip


def _read_zip(stream: IO[bytes], size: int | None, where: str, depth: int, scan: _Scan,
              *, seeks: bool) -> None:
    if depth >= MAX_DEPTH:
        raise _Unscannable(f"a zip nested more than {MAX_DEPTH} levels deep")
    if not seeks:
        # zipfile seeks back and forth; a decompressing stream would start over each time.
        with tempfile.TemporaryFile() as spooled:
            _spool(stream, spooled, scan)
            spooled.seek(0)
            _read_zip(spooled, None, where, depth, scan, seeks=True)
        return
    _check_central_directory(stream)
    try:
        archive = zipfile.ZipFile(stream)
    except zipfile.BadZipFile:
        return  # no zip reader opens it, so none loads a member from it
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            scan.members += 1
            if scan.members > MAX_MEMBERS:
                raise _Unscannable(f"holds more than {MAX_MEMBERS} zip members")
            _read_member(stream, archive, info, where, depth, scan)


def _read_member(stream: IO[bytes], archive: zipfile.ZipFile, info: zipfile.ZipInfo,
                 where: str, depth: int, scan: _Scan) -> None:
    label = f"{where}/{info.filename}" if where else info.filename
    if info.flag_bits & 0x1:
        scan.unscannable(label, "an encrypted zip member")
        return
    if info.compress_type == zipfile.ZIP_STORED:
        offset = _member_data_offset(stream, info)
        member = io.BufferedReader(_Window(stream, offset, info.compress_size), _CHUNK)
        _read_stream(member, info.compress_size, label, depth + 1, scan, seeks=True)
        return
    if info.file_size > MAX_INFLATED_BYTES - scan.inflated:
        scan.unscannable(label, f"decompresses to {info.file_size} bytes, more than the scan "
                                f"budget of {MAX_INFLATED_BYTES}")
        return
    with archive.open(info) as member:
        _read_stream(member, info.file_size, label, depth + 1, scan, seeks=False)


def _member_data_offset(stream: IO[bytes], info: zipfile.ZipInfo) -> int:
    stream.seek(info.header_offset)
    header = stream.read(30)
    if len(header) < 30 or not header.startswith(b"PK\x03\x04"):
        raise zipfile.BadZipFile(f"no local header for {info.filename!r}")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


def _check_central_directory(stream: IO[bytes]) -> None:
    """Refuse a zip whose central directory would take more memory to list than allowed."""
    end = stream.seek(0, os.SEEK_END)
    tail_start = max(0, end - (65535 + 22))
    stream.seek(tail_start)
    tail = stream.read(end - tail_start)
    stream.seek(0)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 22:
        return  # zipfile will refuse it
    entries, cd_size = struct.unpack("<HI", tail[at + 10:at + 16])
    locator = tail[at - 20:at] if at >= 20 else b""
    if locator.startswith(b"PK\x06\x07"):
        (record_offset,) = struct.unpack("<Q", locator[8:16])
        stream.seek(record_offset)
        record = stream.read(56)
        stream.seek(0)
        if record.startswith(b"PK\x06\x06") and len(record) == 56:
            entries, cd_size = struct.unpack("<QQ", record[32:48])
    if entries > MAX_MEMBERS or cd_size > _MAX_CENTRAL_DIRECTORY:
        raise _Unscannable(f"a zip of {entries} members ({cd_size} bytes of central directory) "
                           f"is more than the scanner lists ({MAX_MEMBERS} members)")


def _spool(source: IO[bytes], sink: IO[bytes], scan: _Scan) -> None:
    copied = 0
    while chunk := source.read(_CHUNK):
        copied += len(chunk)
        scan.count_inflated(len(chunk))
        if copied > _MAX_SPOOLED:
            raise _Unscannable(f"a compressed zip inside is larger than {_MAX_SPOOLED} bytes")
        sink.write(chunk)


# --------------------------------------------------------------------------- opcodes


_MARK = pickletools.markobject
_OPS = {op.code.encode("latin-1"): op for op in pickletools.opcodes}
_STRINGS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE",
                      "BINUNICODE", "BINUNICODE8"})
_CALLS = frozenset({"REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST", "GLOBAL",
                    "STACK_GLOBAL", "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"})
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"})
_MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_NAME = re.compile(r"[^\W\d]\w*(?:\.[^\W\d]\w*)*\Z")


class _Value:
    """A stack or memo entry that is not a string the walker kept."""

    def __init__(self, what: str) -> None:
        self.what = what


_OTHER = _Value("not a string")
_COMPUTED = _Value("computed while unpickling")
_FORGOTTEN = _Value("memoized past the scan budget")


def _read_pickles(reader: _Reader, where: str, scan: _Scan, first_is_pickle: bool = False
                  ) -> None:
    """Walk the pickles at the reader's position, one after another while they are pickles.

    A walk that fails counts only when the bytes were known to be a pickle (an object array's)
    or imported something first: otherwise they are not a pickle, and unpickling them fails
    before anything could run.
    """
    known = first_is_pickle
    while True:
        walk = _Walk(reader, scan)
        try:
            walk.run()
        except _NotPickle as exc:
            problem: str | None = f"not a valid pickle: {exc}"
        except _Truncated:
            problem = f"the pickle is cut short at byte {reader.tell()}"
        except _Unscannable as exc:
            problem, known = str(exc), True
        else:
            problem = None
        scan.globals |= walk.globals
        if problem is not None:
            if known or walk.imported:
                scan.found(where)
                scan.unscannable(where, problem)
            return
        scan.found(where)
        known = False
        if not reader.peek():
            return


class _Walk:
    """One pickle, opcode by opcode, with the unpickler's stack rules: what it imports."""

    def __init__(self, reader: _Reader, scan: _Scan) -> None:
        self.reader, self.scan = reader, scan
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.memo_full = False  # past _MAX_MEMO: MEMOIZE's index is no longer known
        self.globals: set[tuple[str, str]] = set()
        self.imported = False
        self.opcodes = 0

    def run(self) -> None:
        while True:
            code = self.reader.read(1)
            op = _OPS.get(code)
            if op is None:
                raise _NotPickle(f"byte 0x{code.hex()} at {self.reader.tell() - 1} is no opcode")
            self.opcodes += 1
            self.scan.opcodes += 1
            if self.scan.opcodes > MAX_OPCODES:
                raise _Unscannable(f"more than {MAX_OPCODES} pickle opcodes")
            value = self._argument(op)
            if op.name == "STOP":
                self._pop(1)
                return
            self._apply(op, value)

    # ---- arguments

    def _argument(self, op: pickletools.OpcodeInfo) -> Any:
        arg = op.arg
        if arg is None:
            return None
        if arg.n == pickletools.UP_TO_NEWLINE:
            return self._text(op)
        if arg.n >= 0:
            raw = self.reader.read(arg.n)
            return arg.reader(io.BytesIO(raw))
        length = self._length(arg.n)
        if op.name not in _STRINGS:
            if op.name in ("LONG1", "LONG4") and length <= _MAX_NAME:
                self.reader.read(length)
            else:
                self.reader.skip(length)
            return _OTHER
        if length > _MAX_NAME:
            self.reader.skip(length)
            return _OTHER
        raw = self.reader.read(length)
        if op.name in ("BINSTRING", "SHORT_BINSTRING"):
            return raw.decode("latin-1")
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise _NotPickle(f"{op.name} holds invalid UTF-8") from exc

    def _length(self, kind: int) -> int:
        if kind == pickletools.TAKEN_FROM_ARGUMENT1:
            return self.reader.read(1)[0]
        if kind == pickletools.TAKEN_FROM_ARGUMENT4:
            (length,) = struct.unpack("<i", self.reader.read(4))
            if length < 0:
                raise _NotPickle("negative length")
            return length
        if kind == pickletools.TAKEN_FROM_ARGUMENT4U:
            return struct.unpack("<I", self.reader.read(4))[0]
        return struct.unpack("<Q", self.reader.read(8))[0]

    def _text(self, op: pickletools.OpcodeInfo) -> Any:
        line = self.reader.line()
        if op.name in ("GLOBAL", "INST"):
            return self._name(line, op.name), self._name(self.reader.line(), op.name)
        if op.name == "PERSID":
            return _OTHER
        try:
            value = op.arg.reader(io.BytesIO(line + b"\n"))
        except ValueError as exc:
            raise _NotPickle(f"{op.name} argument is malformed") from exc
        if op.name in ("STRING", "UNICODE"):
            text = value if isinstance(value, str) else codecs.decode(value, "latin-1")
            return text if len(text) <= _MAX_NAME else _OTHER
        return value

    def _name(self, raw: bytes, opname: str) -> str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _NotPickle(f"{opname} names no module") from exc
        if not _NAME.match(text):
            # The unpickler would fail to import it before anything of it could run.
            raise _NotPickle(f"{opname} names {text[:40]!r}, which no import can find")
        return text

    # ---- stack

    def _above_mark(self) -> int:
        return len(self.stack) - (self.marks[-1] if self.marks else 0)

    def _pop(self, count: int) -> list[Any]:
        if self._above_mark() < count:
            raise _NotPickle(f"stack underflow at byte {self.reader.tell()}")
        if not count:
            return []
        taken = self.stack[-count:]
        del self.stack[-count:]
        return taken

    def _pop_mark(self) -> None:
        if not self.marks:
            raise _NotPickle(f"no MARK before byte {self.reader.tell()}")
        del self.stack[self.marks.pop():]

    def _push(self, value: Any) -> None:
        if len(self.stack) >= _MAX_STACK:
            raise _Unscannable(f"the pickle stack grows past {_MAX_STACK} items")
        self.stack.append(value)

    def _apply(self, op: pickletools.OpcodeInfo, value: Any) -> None:
        name = op.name
        if name == "MARK":
            if len(self.marks) >= _MAX_STACK:
                raise _Unscannable(f"more than {_MAX_STACK} nested MARKs")
            self.marks.append(len(self.stack))
            return
        if name == "POP" and self.marks and self._above_mark() == 0:
            self.marks.pop()
            return
        if name == "PROTO" and value > pickle.HIGHEST_PROTOCOL:
            raise _NotPickle(f"protocol {value} is not one Python knows")
        if name in _MEMO_PUTS:
            memoize_index = None if self.memo_full else len(self.memo)
            self._memo_put(memoize_index if name == "MEMOIZE" else value)
            return
        if name in _MEMO_GETS:
            if value not in self.memo and not self.memo_full:
                raise _NotPickle(f"memo entry {value} is read before it is stored")
            self._push(self.memo.get(value, _FORGOTTEN))
            return
        before = op.stack_before
        if _MARK in before:
            below = before.index(_MARK)
            self._pop_mark()
            self._pop(below)
        else:
            taken = self._pop(len(before))
            if name == "DUP":
                self._push(taken[0])
                self._push(taken[0])
                return
            if name == "STACK_GLOBAL":
                self._stack_global(*taken)
        if name in ("GLOBAL", "INST"):
            self._import(*value)
        elif name in ("EXT1", "EXT2", "EXT4"):
            self._extension(value)
        for _ in op.stack_after:
            self._push(_COMPUTED if name in _CALLS else value if name in _STRINGS else _OTHER)

    def _memo_put(self, index: int | None) -> None:
        if self._above_mark() < 1:
            raise _NotPickle(f"memo store on an empty stack at byte {self.reader.tell()}")
        if index is None or (index not in self.memo and len(self.memo) >= _MAX_MEMO):
            self.memo_full = True
            return
        top = self.stack[-1]
        self.memo[index] = top if isinstance(top, str) or top is _COMPUTED else _OTHER

    def _stack_global(self, module: Any, name: Any) -> None:
        if isinstance(module, str) and isinstance(name, str):
            self._import(module, name)
        elif _FORGOTTEN in (module, name):
            raise _Unscannable("a global is named by a memo entry past the scan budget")
        elif _COMPUTED in (module, name):
            self._import(*COMPUTED_GLOBAL)
        else:
            raise _NotPickle("STACK_GLOBAL on values that are not strings")

    def _import(self, module: str, name: str) -> None:
        self.imported = True
        self.globals.add((module, name))

    def _extension(self, code: int) -> None:
        # copyreg's registry is empty unless a library fills it; the unpickler refuses an
        # unregistered code before importing anything.
        key = copyreg._inverted_registry.get(code)
        if key is None:
            raise _NotPickle(f"extension code {code} is not registered")
        self._import(*key)


# --------------------------------------------------------------------------- MLmodel


def named_pickles(root: Path) -> dict[str, str]:
    """The files below ``root`` that an ``MLmodel`` says its flavor loads with pickle.

    Maps each POSIX path (relative to ``root``) to the reason, such as ``"MLmodel flavor
    sklearn (pickled_model)"``: ``pickled_model`` of any flavor not saved with skops,
    ``python_function``'s ``python_model`` (cloudpickle), ``statsmodels``' ``data``,
    ``lightgbm``'s ``data`` for scikit-learn API models, ``pytorch``'s
    ``model_data/model.pth``.
    """
    return _mlmodel_entries(Path(root))[0]


def _mlmodel_entries(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """:func:`named_pickles`, and the ``MLmodel`` files that could not be read (why)."""
    named: dict[str, str] = {}
    unreadable: dict[str, str] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        if "MLmodel" not in filenames:
            continue
        mlmodel = Path(dirpath, "MLmodel")
        if mlmodel.is_symlink():
            continue
        rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        try:
            flavors = _flavors(mlmodel)
        except ValueError as exc:
            unreadable[(rel_dir / "MLmodel").as_posix()] = str(exc)
            continue
        for flavor, key, value in _pickled_entries(flavors):
            target = PurePosixPath(rel_dir, value)
            if target.is_absolute() or ".." in PurePosixPath(value).parts:
                continue  # outside the model folder: the reader refused such paths already
            named.setdefault(target.as_posix(), f"MLmodel flavor {flavor} ({key})")
    return named, unreadable


def _flavors(mlmodel: Path) -> dict:
    if mlmodel.stat().st_size > _MAX_MLMODEL:
        raise ValueError(f"larger than {_MAX_MLMODEL} bytes")
    # No aliases at all: MLflow never writes them, so one is a sign of a crafted file, and
    # the file then counts as unreadable (strict refuses it) rather than trusted in part.
    try:
        document = load_yaml(mlmodel.read_bytes(), what="MLmodel", max_bytes=_MAX_MLMODEL,
                             max_aliases=0)
    except UnsafeArchiveError as exc:
        raise ValueError(exc.reason or str(exc)) from None
    except CorruptArchiveError as exc:
        raise ValueError(str(exc)) from None
    flavors = document.get("flavors") if isinstance(document, dict) else None
    return flavors if isinstance(flavors, dict) else {}


def _pickled_entries(flavors: dict) -> Iterable[tuple[str, str, str]]:
    for flavor, conf in flavors.items():
        if not isinstance(conf, dict):
            continue
        skops = conf.get("serialization_format") == "skops"
        if isinstance(conf.get("pickled_model"), str) and not skops:
            yield flavor, "pickled_model", conf["pickled_model"]
        if flavor == "python_function" and isinstance(conf.get("python_model"), str):
            yield flavor, "python_model", conf["python_model"]
        if flavor == "statsmodels" and isinstance(conf.get("data"), str):
            yield flavor, "data", conf["data"]
        if (flavor == "lightgbm" and isinstance(conf.get("data"), str) and not skops
                and not str(conf.get("model_class", "")).endswith("Booster")):
            yield flavor, "data", conf["data"]
        if flavor == "pytorch" and isinstance(conf.get("model_data"), str):
            yield flavor, "model_data", f"{conf['model_data']}/model.pth"


# --------------------------------------------------------------------------- scanning


def find_pickle_files(root: Path, extents: Mapping[Path, Extent] | None = None) -> list[str]:
    """List the files below ``root`` that are pickles by their bytes (see the module's
    docstring) or that an ``MLmodel`` names as pickled, as sorted POSIX paths relative to it.
    Symbolic links are neither followed nor listed. Files left in the archive (``extents``,
    by placeholder path) are read from there."""
    return [finding.path for finding in scan_pickles(root, extents=extents)]


def scan_pickles(root: Path, paths: list[str] | None = None,
                 extents: Mapping[Path, Extent] | None = None) -> list[PickleFinding]:
    """Report the globals each pickle below ``root`` would import, one finding per file.

    Every regular file is read (see the module's docstring); ``paths`` (POSIX, relative to
    ``root``) limits that to the files given, each of which gets a finding, with ``error``
    set when it is no pickle the scanner can read, is missing, not a regular file or outside
    ``root``. Files left in the archive (``extents``, by placeholder path) are read from
    there. Without picklescan every pickle is still listed, with ``error`` set to
    :data:`INSTALL_HINT`.
    """
    root = Path(root)
    rater = _load_rater()
    named, unreadable = _mlmodel_entries(root)
    findings = [
        PickleFinding(rel, error=f"cannot be read to find the files its flavors unpickle "
                                 f"({reason})")
        for rel, reason in sorted(unreadable.items()) if paths is None
    ]
    candidates = sorted(_regular_files(root)) if paths is None else paths
    for rel in candidates:
        finding = _scan_one(root, rel, rater, extents, named.get(rel), expected=paths is not None)
        if finding is not None:
            findings.append(finding)
    return sorted(findings, key=lambda finding: finding.path) if paths is None else findings


def _regular_files(root: Path) -> Iterable[str]:
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            path = Path(dirpath, filename)
            if not path.is_symlink() and path.is_file():
                yield path.relative_to(root).as_posix()


def _scan_one(root: Path, rel: str, rater: Any, extents: Mapping[Path, Extent] | None,
              loader: str | None, *, expected: bool) -> PickleFinding | None:
    relative = PurePosixPath(rel.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        return PickleFinding(rel, error="path is outside the scanned folder")
    path = root.joinpath(*relative.parts)
    if path.is_symlink() or not path.is_file():
        return PickleFinding(rel, error="not a regular file", loader=loader)
    try:
        scan = _read_file(path, extents)
    except OSError as exc:
        return PickleFinding(rel, error=f"cannot be read: {_one_line(exc)}", loader=loader)
    if not scan.pickle:
        if loader is None and not expected:
            return None
        who = loader or "it was given to scan as a pickle"
        return PickleFinding(rel, loader=loader, error=(
            f"{who}, but its bytes are no pickle the scanner can read"
            if loader else "its bytes are no pickle the scanner can read"))
    if rater is None:
        return PickleFinding(rel, error=INSTALL_HINT, inside=scan.inside, loader=loader)
    levels = {f"{module}.{name}": rater(module, name) for module, name in scan.globals}
    names = sorted(levels)
    return PickleFinding(
        path=rel,
        globals=names,
        dangerous=[n for n in names if levels[n] == "dangerous"],
        suspicious=[n for n in names if levels[n] == "suspicious"],
        error="; ".join(dict.fromkeys(scan.problems)) or None,
        inside=scan.inside,
        loader=loader,
    )


def _load_rater() -> Any:
    # Imported lazily: picklescan is an optional extra, and the rest of the plugin works
    # without it. Its lists of safe and unsafe globals are what it is used for here.
    try:
        from picklescan import scanner
        safe, unsafe = scanner._safe_globals, scanner._unsafe_globals
    except (ImportError, AttributeError):
        return None

    def rate(module: str, name: str) -> str:
        if (module, name) == COMPUTED_GLOBAL:
            return "dangerous"
        parts = module.split(".")
        for depth in range(len(parts), 0, -1):
            prefix = ".".join(parts[:depth])
            for rules in (_ALSO_DANGEROUS, unsafe):
                rule = rules.get(prefix)
                if rule == "*" or (depth == len(parts) and rule is not None and name in rule):
                    return "dangerous"
        rule = safe.get(module)
        if rule == "*" or (rule is not None and name in rule):
            return "innocuous"
        return "suspicious"

    return rate


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


# --------------------------------------------------------------------------- policy


def enforce(findings: Iterable[PickleFinding], mode: str) -> list[str]:
    """Turn findings into one human line each, and apply the ``--scan`` mode.

    ``off`` returns no lines; ``warn`` returns the lines; ``strict`` returns them too when
    nothing is flagged, and otherwise raises :class:`UnsafeArchiveError` naming the first
    dangerous, then suspicious, then unscannable file. A missing scanner makes every
    pickle unscannable, so strict mode refuses any archive that holds one.
    """
    if mode not in SCAN_MODES:
        raise UnsupportedError(f"unknown scan mode {mode!r}; use one of {', '.join(SCAN_MODES)}")
    if mode == "off":
        return []
    findings = list(findings)
    lines = [_describe(finding) for finding in findings]
    if mode == "strict":
        reason = _refusal(findings)
        if reason is not None:
            raise UnsafeArchiveError(reason)
    return lines


def _describe(finding: PickleFinding) -> str:
    parts: list[str] = []
    if finding.dangerous:
        parts.append("DANGEROUS imports " + ", ".join(finding.dangerous))
    others = [name for name in finding.globals if name not in finding.dangerous]
    if others:
        parts.append(("also imports " if finding.dangerous else "imports ") + ", ".join(others))
    if not finding.globals and not finding.error:
        parts.append("imports no globals")
    if finding.error:
        parts.append(_NOT_SCANNABLE_PREFIX + finding.error)
    return f"{finding.label}: " + "; ".join(parts)


def _refusal(findings: list[PickleFinding]) -> str | None:
    total = sum(len(f.dangerous) + len(f.suspicious) + bool(f.error) for f in findings)
    if total == 0:
        return None
    if any(f.dangerous for f in findings):
        f = next(f for f in findings if f.dangerous)
        first = f"{f.label} imports {f.dangerous[0]}, which can run code when loaded"
    elif any(f.suspicious for f in findings):
        f = next(f for f in findings if f.suspicious)
        first = f"{f.label} imports {f.suspicious[0]}, which the scanner does not know to be safe"
    else:
        f = next(f for f in findings if f.error)
        first = f"{f.label} could not be scanned ({f.error})"
    others = total - 1
    more = f" (and {others} more problem{'s' if others != 1 else ''})" if others else ""
    return (
        f"--scan strict refused the archive: {first}{more}; "
        "inspect it with `mlflow-archive inspect`; "
        "import with --scan warn only if you trust its source"
    )
