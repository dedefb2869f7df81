"""The pipeline between snapshots and archive bytes, in both directions.

Write: layout plan -> container writer (hashing while writing) -> metadata document ->
``checksum.txt`` -> atomic publish. Read: container reader (unsafe entries refused before
anything is written) -> files hashed as they stream -> checksums compared -> layout reader.
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_archive_plugin import progress
from mlflow_archive_plugin.errors import (
    CorruptArchiveError,
    InsufficientSpaceError,
    IntegrityError,
    NotAnArchiveError,
    UnsafeArchiveError,
    UnsupportedError,
)
from mlflow_archive_plugin.formats import Entry, Layout, detect_layout
from mlflow_archive_plugin.snapshot import EXPORT_NOTE_NAME, METADATA_NAME, Snapshot
from mlflow_archive_plugin.storage.containers import (
    CONTAINERS,
    Container,
    get_container,
    open_reader,
)
from mlflow_archive_plugin.storage.containers.base import Listed, collision_key, safe_entry_name
from mlflow_archive_plugin.storage.extents import Extent, make_placeholder, stays_in_place
from mlflow_archive_plugin.storage.integrity import (
    CHECKSUM_NAME,
    CHECKSUM_SIGNATURE_NAME,
    FileRecord,
    compare,
    content_digest,
    copy_and_hash,
    hash_stream,
    parse_checksums,
    render_checksums,
)
from mlflow_archive_plugin.storage.location import (
    Location,
    open_source,
    publish_file,
    publish_folder,
)

# Small documents kept in memory while scanning; refused past MAX_DOCUMENT_BYTES.
_CAPTURED = {METADATA_NAME, CHECKSUM_NAME}
MAX_DOCUMENT_BYTES = 64 * 1024**2


@dataclass
class Written:
    """What ``write_archive`` produced."""

    records: list[FileRecord]
    digest: str
    size: int | None
    sha256: str | None


@dataclass
class Scanned:
    """Every file of an archive with its measured size and hash, and what failed to read."""

    container: str
    records: dict[str, FileRecord] = field(default_factory=dict)
    captured: dict[str, bytes] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # The one folder every entry sat under (``name/`` in a .mar's tgz), removed from names.
    prefix: str = ""
    # Entries left in the archive file (``in_place``), by name; the extraction folder holds a
    # placeholder of each. Their sha256 is the one measured, or, for entries not read
    # (``verify_in_place=False``), the one checksum.txt lists, to be checked when they are.
    extents: dict[str, Extent] = field(default_factory=dict)
    unread: set[str] = field(default_factory=set)

    def extents_under(self, root: Path) -> dict[Path, Extent]:
        """The extents by the resolved path of their placeholder below the extraction folder
        (look them up with ``path.resolve()``: a placeholder read as a file gives zeros)."""
        return {(root / name).resolve(): extent for name, extent in self.extents.items()}

    @property
    def digest(self) -> str | None:
        """The content digest, if the archive has a ``checksum.txt``."""
        data = self.captured.get(CHECKSUM_NAME)
        return None if data is None else content_digest(data)

    def integrity_problems(self) -> list[str]:
        """Read failures plus every mismatch against ``checksum.txt``, one line each."""
        problems = list(self.problems)
        data = self.captured.get(CHECKSUM_NAME)
        if data is None:
            return [*problems, f"{CHECKSUM_NAME}: missing, so nothing can be verified"]
        expected = parse_checksums(data)
        found = {path: record for path, record in self.records.items()
                 if path not in (CHECKSUM_NAME, CHECKSUM_SIGNATURE_NAME)}
        unreadable = {line.split(":", 1)[0] for line in self.problems}
        return problems + [
            line for line in compare(expected, found) if line.split(":", 1)[0] not in unreadable
        ]


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on what reading one archive may produce, against compression bombs and floods.

    Counted on the bytes actually produced while reading, never on sizes headers claim. The
    defaults are far beyond any real model: 100,000 files, 2 TiB in all, and, once past
    ``ratio_floor_bytes``, 1,000 bytes out per compressed byte read so far (real weights
    barely compress; bombs expand by millions).
    """

    max_members: int = 100_000
    max_total_bytes: int = 2 * 1024**4
    max_ratio: float = 1000.0

    # An archive of a few kilobytes may legitimately expand past the ratio (tiny text files
    # in a tar's 10 KiB of padding): allow this much before the ratio applies.
    ratio_floor_bytes: int = 64 * 1024**2


class _Budget:
    """Counts files and bytes as they are produced and refuses past the limits.

    The ratio is taken against the compressed bytes consumed *so far*, so a bomb is stopped
    soon after the floor, not after it has produced ``max_ratio`` times its whole size.
    """

    def __init__(self, limits: ReadLimits, consumed: Callable[[], int] | None, on_bytes) -> None:
        self._limits = limits
        self._consumed = consumed
        self._on_bytes = on_bytes
        self.members = 0
        self.produced = 0
        self.entry = ""

    def start(self, name: str) -> None:
        self.entry = name
        self.members += 1
        if self.members > self._limits.max_members:
            _refuse(name, f"more than {self._limits.max_members} files "
                          "(raise the limit with --max-members if you trust the archive)")

    def __call__(self, count: int, *, unread: bool = False) -> None:
        """Count ``count`` bytes produced. ``unread`` ones (a stored entry left in the
        archive) count towards the total but skip the ratio: the compressed bytes consumed
        catch up only when the next entry is read, and a stored entry expands nothing."""
        self.produced += count
        limits = self._limits
        if self.produced > limits.max_total_bytes:
            _refuse(self.entry, f"the archive holds more than {limits.max_total_bytes} "
                                "bytes (raise --max-size if you trust the archive)")
        if (
            not unread
            and self._consumed is not None
            and self.produced > limits.ratio_floor_bytes
            and self.produced > limits.max_ratio * max(1, self._consumed())
        ):
            _refuse(self.entry, f"the archive expands to more than {limits.max_ratio:g} "
                                "times its size, like a compression bomb "
                                "(raise --max-ratio if you trust the archive)")
        if self._on_bytes is not None:
            self._on_bytes(count)


def _refuse(name: str, reason: str) -> None:
    raise UnsafeArchiveError(f"refused archive entry {name!r}: {reason}")



def pick_container(layout: Layout, name: str | None) -> Container:
    """The container ``name`` (an alias such as ``tgz`` too; the layout's own when None) for an
    archive of ``layout``, refused in one line when the layout cannot be packed in it."""
    chosen = get_container(name or layout.default_container)
    if chosen.name not in layout.containers:
        raise UnsupportedError(f"format {layout.name!r} cannot use container {chosen.name!r}; "
                               f"choose one of: {', '.join(layout.containers)}")
    return chosen


def container_named(path: str, layout: Layout) -> str | None:
    """The container a file name asks for in ``layout`` (``m.tar.gz``, ``m.mar``), if any."""
    if path.endswith(".tgz"):
        return "tar.gz"
    known = {c.extension: name for name, c in CONTAINERS.items() if c.extension}
    known.update({layout.extension(CONTAINERS[name]): name for name in layout.containers})
    known.update(layout.extra_extensions)
    for extension, name in sorted(known.items(), key=lambda item: -len(item[0])):
        if extension and path.endswith(extension):
            return name
    return None


# File names that mark an archive rather than a plain file or folder: each container's own
# extension plus the names the layouts give (.mar, .bentomodel, .mlarchive) and the aliases
# people use (.tgz, .xz for a BentoML export), longest first.
ARCHIVE_EXTENSIONS: tuple[str, ...] = tuple(sorted(
    {c.extension for c in CONTAINERS.values() if c.extension}
    | {".tgz", ".mar", ".bentomodel", ".mlarchive", ".xz", ".tar.zst"},
    key=len, reverse=True,
))


def write_archive(
    snapshot: Snapshot,
    layout: Layout,
    container: Container,
    location: Location,
    *,
    force: bool = False,
    show_progress: bool | None = None,
    extra: tuple[Entry, ...] = (),
    options: dict | None = None,
    sign_checksums: Callable[[bytes], bytes] | None = None,
) -> Written:
    """Write ``snapshot`` as ``layout`` in ``container`` at ``location``, atomically.

    ``extra`` entries (a signature, say) follow the layout's own and are covered by
    ``checksum.txt`` but not listed as model files. ``options`` go to the layout. Where the
    layout puts every entry under a folder (a .mar's tgz), names in ``checksum.txt`` and the
    metadata document are relative to that folder, so ``sha256sum -c`` works inside it.
    ``sign_checksums`` turns the bytes of ``checksum.txt`` into a signature of them, stored
    after it as ``checksum.sig`` (the one file ``checksum.txt`` does not list).
    """
    entries = layout.plan(snapshot, options)
    prefix = layout.entry_prefix(snapshot, container)
    _check_portable_names(entry.arcname for entry in [*entries, *extra])
    total = sum(entry.source.stat().st_size for entry in entries if entry.source is not None)
    # Placeholders of files still on the server: the writer streams those from there.
    served = {path: file for member in snapshot.members for path, file in member.deferred.items()}
    measured: list[tuple[int, str]] = []

    def measure(path: str) -> None:
        with open(path, "rb") as handle:
            measured.append(hash_stream(handle))

    metrics_size = sum(member.metrics_file.stat().st_size for member in snapshot.members
                       if member.metrics_file is not None)
    check_free_space(location, total + metrics_size, "export to")
    publisher = (publish_folder(location, force) if container.is_folder
                 else publish_file(location, force, on_complete=measure))
    with (
        progress.byte_progress(total, "export", show_progress) as on_bytes,
        publisher as target,
        container.open_writer(target) as writer,
    ):
        records = [
            dataclasses.replace(
                writer.add_file(prefix + entry.arcname,
                                served.get(entry.source.resolve(), entry.source), on_bytes)
                if entry.source is not None
                else writer.add_bytes(prefix + entry.arcname, entry.data or b""),
                path=entry.arcname,
            )
            for entry in [*entries, *extra]
        ]
        snapshot.files = records[:len(entries)]
        for member in snapshot.members:  # each run's metric history, streamed as a file
            if member.metrics_file is not None and member.run is not None \
                    and member.run.metric_history is not None:
                name = member.run.metric_history["path"]
                records.append(dataclasses.replace(
                    writer.add_file(prefix + name, member.metrics_file, on_bytes), path=name))
        note = snapshot.export_note()
        writer.add_bytes(prefix + EXPORT_NOTE_NAME, note)
        records.append(FileRecord.of_bytes(EXPORT_NOTE_NAME, note))
        metadata = snapshot.to_json()
        writer.add_bytes(prefix + METADATA_NAME, metadata)
        records.append(FileRecord.of_bytes(METADATA_NAME, metadata))
        checksums = render_checksums(records)
        writer.add_bytes(prefix + CHECKSUM_NAME, checksums)
        if sign_checksums is not None:
            writer.add_bytes(prefix + CHECKSUM_SIGNATURE_NAME, sign_checksums(checksums))
    if container.is_folder:
        return Written(records, content_digest(checksums), None, None)
    size, sha256 = measured[0]
    return Written(records, content_digest(checksums), size, sha256)


def _check_portable_names(names) -> None:
    """Refuse, before writing, a model file name that readers would reject or misread."""
    guard = _NameGuard()
    for name in names:
        try:
            if any(char in name for char in "\n\r"):
                raise UnsafeArchiveError("line break in name")
            safe_entry_name(name)
            guard.admit(name)
        except UnsafeArchiveError as exc:
            raise UnsupportedError(
                f"cannot archive model file {name!r}: its name is not portable ({exc}); rename it"
            ) from exc


def scan_archive(
    location: Location,
    *,
    extract_to: Path | None = None,
    keep_going: bool = False,
    show_progress: bool | None = None,
    limits: ReadLimits | None = None,
    in_place: bool = False,
    verify_in_place: bool = True,
    expect_model: bool = False,
) -> Scanned:
    """Read every entry once, hashing it and (with ``extract_to``) extracting it there.

    Where the container lists its entries up front (zip, folder, plain tar), the listing is
    checked before any entry is read: more files or declared bytes than ``limits`` allow, or
    (extracting) more bytes to write than the extraction folder's file system has free, is
    refused in one line; with ``expect_model`` so is an archive whose entry names hold no
    layout this plugin reads. Nothing is written before these checks.

    Entries are extracted into a hidden staging folder inside ``extract_to`` and moved into
    place only once the whole archive has been read, so a refused or damaged archive leaves
    ``extract_to`` as it was. With ``keep_going`` a damaged entry is recorded as a problem and
    reading goes on where the container allows it. With ``in_place``, large entries stored
    as they are in a local archive file are verified but not extracted (see ``extents.py``);
    without ``verify_in_place`` they are not even read, and whoever reads them later checks
    them against the sha256 their record and extent then carry, from ``checksum.txt``.
    """
    staging = None
    if extract_to is not None:
        staging = extract_to / f".staging-{uuid.uuid4().hex[:12]}"
        staging.mkdir()
    try:
        scanned = _scan(location, staging, keep_going, show_progress, limits or ReadLimits(),
                        in_place and location.is_local, verify_in_place, expect_model)
        _strip_wrapper_folder(scanned)
        _expect_listed_digests(scanned)
        if staging is not None and (staging / scanned.prefix).is_dir():
            for child in (staging / scanned.prefix).iterdir():
                child.rename(extract_to / child.name)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return scanned


def _scan(location: Location, staging: Path | None, keep_going: bool, show_progress,
          limits: ReadLimits, in_place: bool = False, verify_in_place: bool = True,
          expect_model: bool = False) -> Scanned:
    with open_source(location) as (container, source):
        _check_extension(location, container)
        scanned = Scanned(container)
        archive_size = _source_size(location, container)
        # Produced bytes match the archive's size only for an uncompressed tar.
        total = archive_size if container == "tar" else None
        try:
            reader = open_reader(container, source)
        except CorruptArchiveError as exc:
            raise CorruptArchiveError(f"{location.url}: {exc}") from exc
        with progress.byte_progress(total, "read", show_progress) as on_bytes, reader:
            listing = reader.listing()
            if listing is not None and not _check_listing(
                    location, listing, limits, staging, expect_model,
                    in_place and staging is not None, keep_going):
                staging = None  # no model to extract: read (verify) the entries, write nothing
            consumed = None if container == "folder" else source.tell
            budget = _Budget(limits, consumed, on_bytes)
            try:
                _scan_entries(reader.entries(), scanned, staging, keep_going, budget,
                              location.path if in_place and staging is not None else None,
                              verify_in_place)
            except CorruptArchiveError as exc:
                if not keep_going:
                    raise
                scanned.problems.append(str(exc))
    return scanned


# Room left free on the extraction folder's file system beyond what an archive needs.
DISK_MARGIN_BYTES = 64 * 1024**2


def _check_listing(location: Location, listing: list[Listed], limits: ReadLimits,
                   staging: Path | None, expect_model: bool, in_place: bool,
                   keep_going: bool) -> bool:
    """Refuse, from the entries' names and declared sizes alone, what reading would refuse
    only after writing it: too many files or bytes, more than the disk holds, no model.
    With ``keep_going`` (verify) an archive that holds no model is not refused here but
    False is returned: it is then read without writing anything, and reported."""
    if len(listing) > limits.max_members:
        raise UnsafeArchiveError(
            f"refused {location.url}: it lists {len(listing)} files, more than "
            f"{limits.max_members} files (raise the limit with --max-members if you trust the "
            "archive)")
    declared = sum(entry.size for entry in listing)
    if declared > limits.max_total_bytes:
        raise UnsafeArchiveError(
            f"refused {location.url}: its entries declare {declared} bytes "
            f"({_size_text(declared)}), so the archive holds more than "
            f"{limits.max_total_bytes} bytes (raise --max-size if you trust the archive)")
    if staging is None:
        return True
    if expect_model:
        try:  # as the reader will name them (``./model.yaml`` is ``model.yaml``)
            names = {safe_entry_name(entry.name) for entry in listing}
        except UnsafeArchiveError:
            names = None  # the reader refuses the entry itself, naming its rule
    if expect_model and names is not None:
        prefix = _wrapper_prefix(names)
        try:
            detect_layout({name.removeprefix(prefix) for name in names},
                          staging / "not-extracted")  # by the names alone: nothing is there
        except UnsupportedError:
            if not keep_going:
                raise
            return False
    needed = sum(entry.size for entry in listing
                 if not (in_place and entry.stored and stays_in_place(entry.name, entry.size)))
    free = shutil.disk_usage(staging).free
    if needed + DISK_MARGIN_BYTES > free:
        raise InsufficientSpaceError(
            f"cannot read {location.url}: extracting it needs {_size_text(needed)} in "
            f"{staging.parent}, which has {_size_text(free)} free; free some space there or "
            "choose another folder (--tmp-dir, or TMPDIR)")
    return True


def check_free_space(location: Location, needed: int, doing: str,
                     fix: str = "choose another destination") -> None:
    """Refuse, before writing, ``needed`` bytes (at most; compression only shrinks them) to a
    local destination whose file system has less free (a remote store's room is unknown)."""
    if not location.is_local:
        return
    folder = Path(location.path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed + DISK_MARGIN_BYTES > free:
        raise InsufficientSpaceError(
            f"cannot {doing} {location.url}: the model's files take {_size_text(needed)}, and "
            f"{folder} has {_size_text(free)} free; free some space there or {fix}")


def _size_text(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} bytes"


# Documents whose presence inside a lone top-level folder marks that folder as a wrapper.
_ROOT_MARKERS = (CHECKSUM_NAME, METADATA_NAME, "MAR-INF/MANIFEST.json")
# How deep wrapper folders go: ``<name>/`` in a .mar's tgz, ``<name>/<version>/`` in a
# portable package.
_MAX_WRAPPER_DEPTH = 2


def _wrapper_prefix(records: dict[str, FileRecord] | set[str]) -> str:
    """The folders (at most two) every entry sits under, down to the first that holds the
    archive's documents; empty if there is no such folder."""
    prefix = ""
    for _ in range(_MAX_WRAPPER_DEPTH):
        rest = [name.removeprefix(prefix) for name in records]
        if not rest or any("/" not in name for name in rest):
            return ""
        tops = {name.split("/", 1)[0] for name in rest}
        if len(tops) != 1:
            return ""
        prefix += f"{tops.pop()}/"
        if any(prefix + marker in records for marker in _ROOT_MARKERS):
            return prefix
    return ""


def _strip_wrapper_folder(scanned: Scanned) -> None:
    """Treat the folder every entry is under as the archive's root when it holds the
    archive's documents: ``name/`` in torch-model-archiver's tgz format, ``<name>/<version>/``
    in a portable package."""
    prefix = _wrapper_prefix(scanned.records)
    if not prefix:
        return
    scanned.prefix = prefix
    scanned.records = {name.removeprefix(prefix): dataclasses.replace(
        record, path=record.path.removeprefix(prefix)) for name, record in scanned.records.items()}
    scanned.captured = {name.removeprefix(prefix): data for name, data in scanned.captured.items()}
    scanned.extents = {name.removeprefix(prefix): extent
                       for name, extent in scanned.extents.items()}
    scanned.unread = {name.removeprefix(prefix) for name in scanned.unread}


def _is_captured(name: str) -> bool:
    """A document kept in memory: at the root, or in a wrapper folder (one or two down)."""
    return name in _CAPTURED or (
        name.count("/") <= _MAX_WRAPPER_DEPTH and name.rsplit("/", 1)[-1] in _CAPTURED
    )


# Extensions whose consumers accept one container only: another one under that name is a
# mistake (a gzip file renamed .bentomodel fails in BentoML with an LZMA error).
_CONTAINER_OF_EXTENSION = {".bentomodel": "tar.xz", ".mar": "zip", ".mlarchive": "zip"}


def _check_extension(location: Location, container: str) -> None:
    for extension, expected in _CONTAINER_OF_EXTENSION.items():
        if location.path.endswith(extension) and container not in (expected, "folder"):
            raise NotAnArchiveError(
                f"{location.url} is {container} data, but a {extension} file must be "
                f"{expected}; rename it to match its content or export it again"
            )


class _NameGuard:
    """Refuses names that would land on the same file, or on a file and a folder at once."""

    def __init__(self) -> None:
        self._files: dict[str, str] = {}
        self._folders: dict[str, str] = {}

    def admit(self, name: str) -> None:
        key = collision_key(name)
        if key in self._files:
            other = self._files[key]
            if other == name:
                self._refuse(name, "duplicate entry")
            self._refuse(name, f"same file as {ascii(other)} once case and Unicode "
                               "normalization are ignored")
        if key in self._folders:
            self._refuse(name, f"{self._folders[key]!r} is also a folder")
        parts = name.split("/")
        for depth in range(1, len(parts)):
            folder = "/".join(parts[:depth])
            folder_key = collision_key(folder)
            if folder_key in self._files:
                self._refuse(name, f"{self._files[folder_key]!r} is also a file")
            self._folders.setdefault(folder_key, folder)
        self._files[key] = name

    @staticmethod
    def _refuse(name: str, reason: str) -> None:
        raise UnsafeArchiveError(
            f"refused archive entry {ascii(name)}: {reason}; the archive is unsafe"
        )


def _scan_entries(entries, scanned: Scanned, staging, keep_going, budget: _Budget,
                  archive_path: str | None = None, verify_in_place: bool = True) -> None:
    guard = _NameGuard()
    for name, stream in entries:
        budget.start(name)
        guard.admit(name)
        try:
            if archive_path is not None and _left_in_place(name, stream):
                if verify_in_place:
                    record = _verify_in_place(name, stream, staging, budget)
                else:
                    record = _leave_unread(name, stream, staging, budget)
                    scanned.unread.add(name)
                scanned.extents[name] = Extent(archive_path, stream.offset, record.size,
                                               record.sha256, getattr(stream, "crc32", None))
                captured = b""
            else:
                record, captured = _consume(name, stream, staging, budget)
        except CorruptArchiveError as exc:
            if not keep_going or scanned.container != "zip":
                raise
            scanned.problems.append(str(exc))
            continue
        scanned.records[name] = record
        if _is_captured(name):
            scanned.captured[name] = captured


def _consume(name: str, stream, staging: Path | None, on_bytes) -> tuple[FileRecord, bytes]:
    """Hash one entry (writing it under ``staging`` if given); small documents are kept."""
    sink: Any
    if staging is None:
        sink = _MemorySink() if _is_captured(name) else _NullSink()
        size, digest = copy_and_hash(stream, sink, on_bytes)
        _check_document_size(name, size)
        return FileRecord(name, size, digest), sink.getvalue()
    target = staging / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("xb") as sink:
        size, digest = copy_and_hash(stream, sink, on_bytes)
    _check_document_size(name, size)
    captured = target.read_bytes() if _is_captured(name) else b""
    return FileRecord(name, size, digest), captured


def _left_in_place(name: str, stream) -> bool:
    offset, size = getattr(stream, "offset", None), getattr(stream, "size", None)
    return offset is not None and size is not None and not _is_captured(name) and \
        stays_in_place(name, size)


def _verify_in_place(name: str, stream, staging: Path, on_bytes) -> FileRecord:
    """Hash an entry left in the archive; its placeholder is a sparse file of its size."""
    size, digest = copy_and_hash(stream, _NullSink(), on_bytes)
    if size != stream.size:
        raise CorruptArchiveError(f"{name}: holds {size} bytes but its header says "
                                  f"{stream.size}; the archive is damaged")
    make_placeholder(staging / name, size)
    return FileRecord(name, size, digest)


def _leave_unread(name: str, stream, staging: Path, budget: _Budget) -> FileRecord:
    """An entry left in the archive without reading it: its size counts against the limits
    now, its hash comes from checksum.txt once that has been read."""
    budget(stream.size, unread=True)
    make_placeholder(staging / name, stream.size)
    return FileRecord(name, stream.size, "")


def _expect_listed_digests(scanned: Scanned) -> None:
    """Give each entry that was not read the sha256 checksum.txt lists for it (none if it
    lists none: the entry is then an extra file, which verification reports)."""
    if not scanned.unread:
        return
    try:
        listed = parse_checksums(scanned.captured.get(CHECKSUM_NAME, b""))
    except CorruptArchiveError:
        listed = {}  # verification reports the damaged checksum.txt itself
    for name in scanned.unread:
        expected = listed.get(name, "")
        scanned.records[name] = dataclasses.replace(scanned.records[name], sha256=expected)
        scanned.extents[name] = dataclasses.replace(scanned.extents[name], sha256=expected)


def _check_document_size(name: str, size: int) -> None:
    """The two documents are read into memory; no real archive's come near this."""
    if _is_captured(name) and size > MAX_DOCUMENT_BYTES:
        _refuse(name, f"larger than {MAX_DOCUMENT_BYTES} bytes, which no real archive needs; "
                      "the archive is unsafe")


class _NullSink:
    def write(self, data: bytes) -> int:
        return len(data)

    def getvalue(self) -> bytes:
        return b""


class _MemorySink(_NullSink):
    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._chunks.append(data)
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self._chunks)


def _source_size(location: Location, container: str) -> int | None:
    if container == "folder":
        return None
    try:
        return int(location.fs.size(location.path))
    except (OSError, TypeError, ValueError):
        return None


def read_snapshot(root: Path, scanned: Scanned) -> Snapshot:
    """The snapshot of an archive extracted at ``root``, after its checksums were verified.

    An archive another tool wrote (no metadata document, no ``checksum.txt``) has nothing to
    verify against; it must still read cleanly, and its digest is taken over what was read.
    """
    foreign = METADATA_NAME not in scanned.records and CHECKSUM_NAME not in scanned.records
    problems = list(scanned.problems) if foreign else scanned.integrity_problems()
    if problems:
        raise IntegrityError(
            f"archive failed verification: {problems[0]}"
            + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""),
            problems,
        )
    return detect_layout(set(scanned.records), root).read(root)


def archive_digest(scanned: Scanned) -> str:
    """The content digest: of ``checksum.txt``, or, for a foreign archive, of the checksum
    list its files would have, so the same files give the same digest in any container."""
    if scanned.digest is not None:
        return scanned.digest
    return content_digest(render_checksums(sorted(scanned.records.values(),
                                                  key=lambda record: record.path)))


def metadata_problems(snapshot: Snapshot, scanned: Scanned) -> list[str]:
    """Disagreements between the metadata document's file list and the files found."""
    problems = []
    for record in snapshot.files:
        found = scanned.records.get(record.path)
        if found is None:
            problems.append(f"{record.path}: listed in {METADATA_NAME} but not in the archive")
        elif found.sha256 != record.sha256:
            problems.append(f"{record.path}: differs from its hash in {METADATA_NAME}")
    return problems

