"""Find the pickle-based files in an extracted archive and list the globals each would import.

Loading a pickle can run any code its author chose, so ``inspect`` and ``import`` report
what every pickle in a model would import before anyone loads it. Nothing here unpickles
or executes archive content: files are recognised by name and by their first bytes, and
the globals are read by disassembling the opcode stream with `picklescan
<https://github.com/mmaitre314/picklescan>`_, an optional dependency (the ``scan`` extra).

Typical use::

    findings = scan_pickles(extracted_root)
    for line in enforce(findings, "warn"):
        print(line)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from mlflow_archive_plugin.errors import UnsafeArchiveError, UnsupportedError
from mlflow_archive_plugin.extents import Extent, open_model_file

__all__ = [
    "INSTALL_HINT",
    "PICKLE_EXTENSIONS",
    "SCAN_MODES",
    "PickleFinding",
    "enforce",
    "find_pickle_files",
    "scan_pickles",
]

SCAN_MODES = ("off", "warn", "strict")
"""Accepted values of ``--scan``: skip scanning, report findings, or refuse unsafe archives."""

INSTALL_HINT = "picklescan is not installed; pip install 'mlflow-archive-plugin[scan]'"
"""The ``error`` of every finding when the scanner library is missing."""

PICKLE_EXTENSIONS = frozenset(
    {
        ".pkl",
        ".pickle",
        ".joblib",
        ".dill",
        ".pt",
        ".pth",
        ".bin",
        ".ckpt",
        ".cloudpickle",
        ".sav",
    }
)
"""File name suffixes (lower case) that are treated as pickle-based whatever their content."""

# PROTO opcode plus protocol number. The unpickler accepts PROTO 0 and 1 as well, so a file
# starting with them is loadable as a pickle too. Protocol 0/1 pickles without PROTO have no
# recognisable header and are only found by their suffix.
_PICKLE_HEADERS = tuple(b"\x80" + bytes([protocol]) for protocol in range(6))
_NUMPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_HEAD_SIZE = 8

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

# picklescan reports through its logger; these two kinds of record are not parse failures:
# the per-global notice (already in the result) and the fallback from the legacy PyTorch
# reader to the plain pickle reader. Every other warning or error means part of the file
# could not be read, so it is reported rather than trusted.
_BENIGN_LOG = re.compile(r"import '.*' FOUND|Invalid PyTorch magic number")
_LOG_PREFIX = re.compile(r"^(?:WARNING|ERROR): ")

# The capture below swaps handlers on a process-wide logger; one scan at a time keeps
# records from two threads apart.
_LOG_LOCK = threading.Lock()


@dataclass
class PickleFinding:
    """What one pickle-based file would import when loaded.

    ``path`` is relative to the scanned root, in POSIX form. ``globals`` holds every
    ``"module.name"`` the file imports, sorted; ``dangerous`` and ``suspicious`` are the
    subsets the scanner rates as able to run code and as not known to be safe. ``error``
    is set when (part of) the file could not be scanned, so its list may be incomplete.
    """

    path: str
    globals: list[str] = field(default_factory=list)
    dangerous: list[str] = field(default_factory=list)
    suspicious: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def flagged(self) -> bool:
        """True when strict mode would refuse this file."""
        return bool(self.dangerous or self.suspicious or self.error)


# --------------------------------------------------------------------------- finding files


def find_pickle_files(root: Path, extents: Mapping[Path, Extent] | None = None) -> list[str]:
    """List the pickle-based files below ``root`` as sorted POSIX paths relative to it.

    A file counts when its suffix is in :data:`PICKLE_EXTENSIONS`, when it starts with a
    pickle PROTO header, when it is a ``.npy`` (or NumPy-format) file of object dtype, or
    when it is a zip (PyTorch's format, ``.npz``) holding such a member. Only headers are
    read. Symbolic links are neither followed nor listed. Files left in the archive
    (``extents``, by placeholder path) are read from there.
    """
    root = Path(root)
    found: list[str] = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            path = Path(dirpath, filename)
            if path.is_symlink() or not path.is_file():
                continue
            if _is_pickle_based(path, extents):
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def _is_pickle_based(path: Path, extents: Mapping[Path, Extent] | None = None) -> bool:
    suffix = path.suffix.lower()
    if suffix in PICKLE_EXTENSIONS:
        return True
    try:
        with open_model_file(path, extents) as fh:
            head = fh.read(_HEAD_SIZE)
            if head.startswith(_PICKLE_HEADERS):
                return True
            if suffix == ".npy" or head.startswith(_NUMPY_MAGIC):
                fh.seek(0)
                return _npy_holds_objects(fh)
            if head.startswith(_ZIP_MAGIC):
                fh.seek(0)
                return _zip_holds_pickles(fh)
    except OSError:
        # Unreadable here means unverifiable: list it so the scan reports the failure.
        return True
    return False


def _npy_holds_objects(fh: IO[bytes]) -> bool:
    """Whether a NumPy-format stream would need pickle to load (object dtype)."""
    head = fh.read(len(_NUMPY_MAGIC))
    if head != _NUMPY_MAGIC:
        # numpy.load(allow_pickle=True) unpickles anything without the NumPy magic.
        return True
    fh.seek(0)
    try:
        from numpy.lib import format as npy_format

        version = npy_format.read_magic(fh)
        if version == (1, 0):
            _shape, _order, dtype = npy_format.read_array_header_1_0(fh)
        else:
            _shape, _order, dtype = npy_format.read_array_header_2_0(fh)
    except Exception:
        # A header NumPy cannot parse proves nothing; let the scan report on the file.
        return True
    return bool(dtype.hasobject)


def _zip_holds_pickles(fh: IO[bytes]) -> bool:
    """Whether a zip (a PyTorch checkpoint, an ``.npz``) has a pickle-based member."""
    try:
        archive = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            suffix = PurePosixPath(info.filename).suffix.lower()
            if suffix in PICKLE_EXTENSIONS:
                return True
            try:
                with archive.open(info) as member:
                    head = member.read(_HEAD_SIZE)
                if head.startswith(_PICKLE_HEADERS):
                    return True
                if suffix == ".npy" or head.startswith(_NUMPY_MAGIC):
                    with archive.open(info) as member:
                        if _npy_holds_objects(member):
                            return True
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError):
                # Encrypted, damaged or oddly compressed members cannot be ruled out.
                return True
    return False


# --------------------------------------------------------------------------- scanning


def scan_pickles(root: Path, paths: list[str] | None = None,
                 extents: Mapping[Path, Extent] | None = None) -> list[PickleFinding]:
    """Report the globals each pickle-based file below ``root`` would import.

    ``paths`` (POSIX, relative to ``root``) defaults to :func:`find_pickle_files`. The
    files are disassembled by picklescan, never loaded. Without picklescan every file is
    still listed, with ``error`` set to :data:`INSTALL_HINT`. A path that is missing, not
    a regular file or outside ``root`` gives a finding with ``error`` instead of raising.
    """
    root = Path(root)
    if paths is None:
        paths = find_pickle_files(root, extents)
    scan_bytes = _load_scanner()
    return [_scan_one(root, rel, scan_bytes, extents) for rel in paths]


def _load_scanner() -> Any:
    # Imported lazily: picklescan is an optional extra, and the rest of the plugin works
    # without it.
    try:
        from picklescan.scanner import scan_bytes
    except ImportError:
        return None
    return scan_bytes


def _scan_one(root: Path, rel: str, scan_bytes: Any,
              extents: Mapping[Path, Extent] | None = None) -> PickleFinding:
    relative = PurePosixPath(rel.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        return PickleFinding(rel, error="path is outside the scanned folder")
    path = root.joinpath(*relative.parts)
    if path.is_symlink() or not path.is_file():
        return PickleFinding(rel, error="not a regular file")
    if scan_bytes is None:
        return PickleFinding(rel, error=INSTALL_HINT)

    with _picklescan_log() as records:
        try:
            with open_model_file(path, extents) as fh:
                result = scan_bytes(fh, rel, path.suffix.lower())
        except Exception as exc:
            # picklescan raises on several kinds of malformed input; for a scan, a file
            # it cannot read is a finding, not a crash.
            return PickleFinding(rel, error=f"picklescan failed: {_one_line(exc)}")

    levels: dict[str, str] = {}
    for item in result.globals:
        name = f"{item.module}.{item.name}"
        level = _rate(item.module, item.name, item.safety.value)
        if _SEVERITY[level] > _SEVERITY.get(levels.get(name, ""), -1):
            levels[name] = level
    names = sorted(levels)

    problems = [
        _LOG_PREFIX.sub("", _one_line(record.getMessage()))
        for record in records
        if not _BENIGN_LOG.search(record.getMessage())
    ]
    if result.scan_err and not problems:
        problems.append("picklescan could not parse all of it")
    return PickleFinding(
        path=rel,
        globals=names,
        dangerous=[n for n in names if levels[n] == "dangerous"],
        suspicious=[n for n in names if levels[n] == "suspicious"],
        error="; ".join(dict.fromkeys(problems)) or None,
    )


_SEVERITY = {"innocuous": 0, "suspicious": 1, "dangerous": 2}


def _rate(module: str, name: str, scanner_level: str) -> str:
    if scanner_level == "dangerous":
        return "dangerous"
    parts = module.split(".")
    for depth in range(len(parts), 0, -1):
        rule = _ALSO_DANGEROUS.get(".".join(parts[:depth]))
        if rule == "*" or (depth == len(parts) and rule is not None and name in rule):
            return "dangerous"
    # Anything picklescan does not recognise is at least suspicious, never silently safe.
    return scanner_level if scanner_level in _SEVERITY else "suspicious"


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _picklescan_log() -> Iterator[list[logging.LogRecord]]:
    """Collect picklescan's log records for one scan and keep them off the user's console.

    Some parse failures (a truncated pickle with no globals) show up only as a log
    warning, so the records are the only way to tell "empty" from "unreadable".
    """
    logger = logging.getLogger("picklescan")
    collector = _Collector()
    with _LOG_LOCK:
        saved = (logger.level, logger.propagate, logging.root.manager.disable)
        logger.addHandler(collector)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        if saved[2] >= logging.WARNING:
            # A process-wide logging.disable() would hide the parse failures.
            logging.disable(logging.NOTSET)
        try:
            yield collector.records
        finally:
            logging.disable(saved[2])
            logger.propagate = saved[1]
            logger.setLevel(saved[0])
            logger.removeHandler(collector)


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
    return f"{finding.path}: " + "; ".join(parts)


def _refusal(findings: list[PickleFinding]) -> str | None:
    total = sum(len(f.dangerous) + len(f.suspicious) + bool(f.error) for f in findings)
    if total == 0:
        return None
    if any(f.dangerous for f in findings):
        f = next(f for f in findings if f.dangerous)
        first = f"{f.path} imports {f.dangerous[0]}, which can run code when loaded"
    elif any(f.suspicious for f in findings):
        f = next(f for f in findings if f.suspicious)
        first = f"{f.path} imports {f.suspicious[0]}, which the scanner does not know to be safe"
    else:
        f = next(f for f in findings if f.error)
        first = f"{f.path} could not be scanned ({f.error})"
    others = total - 1
    more = f" (and {others} more problem{'s' if others != 1 else ''})" if others else ""
    return (
        f"--scan strict refused the archive: {first}{more}; "
        "inspect it with `mlflow-archive inspect`; "
        "import with --scan warn only if you trust its source"
    )
