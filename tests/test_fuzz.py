"""Property-based tests: valid archives, mutated byte by byte, read safely or refused cleanly.

A small valid archive is written once per container by the package's own writer. Hypothesis
mutates it (1 to 8 flipped bytes, a truncation, an inserted or a deleted run of bytes), with
offsets drawn anywhere or inside a header field, where a change means the most. Every
mutated archive must either read back with verified content (exactly the original files) or
be refused with an ``ArchiveError``: any other exception is a crash and fails the test, a hang
is stopped by pytest-timeout, and no reader may leave a file outside the folder it was told to
extract into, or anything in the temporary folder. Examples are derandomized, so CI sees the
same ones every run.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import stat
import struct
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_archive_plugin import (
    ArchiveError,
    ReadLimits,
    archive,
    containers,
    inspect_archive,
    layouts,
    location,
    verify_archive,
)
from mlflow_archive_plugin.snapshot import ModelVersionInfo, RegisteredModelInfo, Snapshot

# Pickle scanning (inspect) runs pickletools over mutated bytes, which makes the standard
# library warn about escape sequences it decodes: noise here, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning")

CONTAINERS = ["zip", "tar", "tar.gz"]
# A mutated length field must not make an example slow: far more than the archives hold.
LIMITS = ReadLimits(max_total_bytes=16 * 1024 * 1024)
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    report_multiple_bugs=False,  # one shrunk failure per test keeps a failing run short
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------- the originals


@dataclass(frozen=True)
class Original:
    """A valid archive's bytes, the files it holds, and where its header fields are."""

    container: str
    data: bytes
    files: dict[str, bytes]
    fields: tuple[tuple[int, int], ...]  # (offset, length)

    @property
    def file_name(self) -> str:
        return "archive" + containers.get_container(self.container).extension


# (offset, length) of every field of a zip local header, central directory record and end record.
LOCAL_FIELDS = ((0, 4), (4, 2), (6, 2), (8, 2), (10, 2), (12, 2), (14, 4), (18, 4), (22, 4),
                (26, 2), (28, 2))
CENTRAL_FIELDS = ((0, 4), (4, 2), (6, 2), (8, 2), (10, 2), (12, 2), (14, 2), (16, 4), (20, 4),
                  (24, 4), (28, 2), (30, 2), (32, 2), (34, 2), (36, 2), (38, 4), (42, 4))
END_FIELDS = ((0, 4), (4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2))
# ... and of a ustar header: name, mode, uid, gid, size, mtime, checksum, type, link name,
# magic, version, user, group, device numbers, prefix.
TAR_FIELDS = ((0, 100), (100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (148, 8), (156, 1),
              (157, 100), (257, 6), (263, 2), (265, 32), (297, 32), (329, 8), (337, 8),
              (345, 155))


def fields_at(base: int, fields: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    return [(base + offset, length) for offset, length in fields]


def zip_fields(path: Path) -> tuple[tuple[int, int], ...]:
    """Every header field of the zip: flags, methods, sizes, CRCs, offsets, counts."""
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as handle:
        infos = handle.infolist()
        record = handle.start_dir
    found = [f for info in infos for f in fields_at(info.header_offset, LOCAL_FIELDS)]
    while raw[record:record + 4] == b"PK\x01\x02":
        found += fields_at(record, CENTRAL_FIELDS)
        name, extra, comment = struct.unpack_from("<3H", raw, record + 28)
        record += 46 + name + extra + comment
    return (*found, *fields_at(record, END_FIELDS))


def tar_fields(path: Path) -> tuple[tuple[int, int], ...]:
    """Every field of each member's own ustar header, and each PAX header block whole."""
    with tarfile.open(path) as handle:
        members = handle.getmembers()
    found = []
    for member in members:
        header = member.offset_data - 512
        found += fields_at(header, TAR_FIELDS)
        if header > member.offset:
            found.append((member.offset, header - member.offset))
    return tuple(found)


def gzip_fields(path: Path) -> tuple[tuple[int, int], ...]:
    """The gzip header (magic, method, flags, time, ...) and trailer (CRC, size)."""
    size = path.stat().st_size
    return ((0, 2), (2, 1), (3, 1), (4, 4), (8, 1), (9, 1), (size - 8, 4), (size - 4, 4))


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Original]:
    root = tmp_path_factory.mktemp("originals")
    model_dir = root / "src" / "model"
    model_dir.mkdir(parents=True)
    (model_dir / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: x\n")
    (model_dir / "weights.bin").write_bytes(random.Random(99).randbytes(1536))
    (model_dir / "data").mkdir()
    (model_dir / "data" / "notes.txt").write_text("fuzzed again and again\n" * 20)
    files = {f"model/{p.relative_to(model_dir).as_posix()}": p.read_bytes()
             for p in model_dir.rglob("*") if p.is_file()}
    result = {}
    for name in CONTAINERS:
        snapshot = Snapshot(
            model_dir=model_dir,
            mlmodel={"flavors": {"python_function": {}}},
            registered_model=RegisteredModelInfo(name="fuzz"),
            model_version=ModelVersionInfo(version="1"),
        )
        path = root / f"archive{containers.get_container(name).extension}"
        archive.write_archive(snapshot, layouts.get_layout("mlflow"),
                              containers.get_container(name), location.resolve(path),
                              show_progress=False)
        extracted = root / f"extracted-{name}"
        extracted.mkdir()
        archive.scan_archive(location.resolve(path), extract_to=extracted, show_progress=False)
        everything = regular_files(extracted)
        assert {k: v for k, v in everything.items() if k in files} == files
        fields = {"zip": zip_fields, "tar": tar_fields, "tar.gz": gzip_fields}[name](path)
        result[name] = Original(name, path.read_bytes(), everything, fields)
    return result


# --------------------------------------------------------------------------- the observed world


@dataclass(frozen=True)
class World:
    """Where examples run: ``work`` holds one folder per example, ``tmp`` is TMPDIR."""

    root: Path
    work: Path
    tmp: Path
    cwd: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("fuzz")
    observed = World(root, root / "work", root / "tmp", root / "cwd")
    for folder in (observed.work, observed.tmp, observed.cwd):
        folder.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(observed.tmp))
        patch.setattr(tempfile, "tempdir", str(observed.tmp))
        patch.chdir(observed.cwd)
        yield observed


@contextlib.contextmanager
def example_folder(world: World, original: Original, data: bytes) -> Iterator[Path]:
    """A fresh folder holding the mutated archive, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="example-", dir=world.work))
    try:
        (folder / original.file_name).write_bytes(data)
        yield folder
    finally:
        shutil.rmtree(folder)


def regular_files(root: Path) -> dict[str, bytes]:
    """Every file under ``root``; a link or special file there fails the test."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in [*dirnames, *filenames]:
            path = Path(dirpath, entry)
            mode = path.lstat().st_mode
            assert stat.S_ISDIR(mode) or stat.S_ISREG(mode), f"{path}: not a plain file"
            if stat.S_ISREG(mode):
                found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


# --------------------------------------------------------------------------- mutations


def offsets(original: Original) -> st.SearchStrategy[int]:
    """Anywhere in the archive, or (two times in three) in one of its header fields."""
    anywhere = st.integers(0, len(original.data) - 1)
    in_a_field = st.sampled_from(original.fields).flatmap(
        lambda field: st.integers(field[0], field[0] + field[1] - 1)
    )
    return st.one_of(anywhere, in_a_field, in_a_field)


def mutations(original: Original) -> st.SearchStrategy[tuple]:
    size = len(original.data)
    flips = st.tuples(st.just("flip"), st.lists(st.tuples(offsets(original), st.integers(1, 255)),
                                                min_size=1, max_size=8))
    return st.one_of(
        flips,
        flips,  # flips drawn twice as often as each other kind: they keep the length
        st.tuples(st.just("truncate"), st.integers(0, size - 1)),
        st.tuples(st.just("insert"), offsets(original), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("delete"), offsets(original), st.integers(1, 64)),
    )


def mutate(data: bytes, mutation: tuple) -> bytes:
    kind, *args = mutation
    if kind == "flip":
        mutated = bytearray(data)
        for offset, mask in args[0]:
            mutated[offset] ^= mask
        return bytes(mutated)
    if kind == "truncate":
        return data[: args[0]]
    if kind == "insert":
        offset, run = args
        return data[:offset] + run + data[offset:]
    offset, length = args
    return data[:offset] + data[offset + length:]


def draw_mutated(data_strategy, original: Original) -> bytes:
    return mutate(original.data, data_strategy.draw(mutations(original), label="mutation"))


# --------------------------------------------------------------------------- the readers


def extract(path: Path, out: Path) -> bool:
    """Extract and verify as import does; True if it succeeded, False on an ArchiveError.

    A scan refused before completion must leave ``out`` empty.
    """
    out.mkdir()
    try:
        scanned = archive.scan_archive(location.resolve(path), extract_to=out,
                                       show_progress=False, limits=LIMITS)
    except ArchiveError:
        assert list(out.iterdir()) == [], "a refused scan left files in the extraction folder"
        return False
    try:
        archive.read_snapshot(out, scanned)
    except ArchiveError:
        return False
    return True


def verify(path: Path) -> bool:
    """True if verify_archive says OK, False if it reports problems or raises an ArchiveError."""
    try:
        report = verify_archive(path, progress=False, limits=LIMITS)
    except ArchiveError:
        return False
    return report.ok


# --------------------------------------------------------------------------- properties


@pytest.mark.timeout(120)
@pytest.mark.parametrize("container", CONTAINERS)
@FUZZ
@given(data=st.data())
def test_mutated_archive_extracts_the_original_files_or_raises_archive_error(
    originals, world, container, data
):
    original = originals[container]
    mutated = draw_mutated(data, original)
    with example_folder(world, original, mutated) as folder:
        out = folder / "out"
        if extract(folder / original.file_name, out):
            assert regular_files(out) == original.files


@pytest.mark.timeout(120)
@pytest.mark.parametrize("container", CONTAINERS)
@FUZZ
@given(data=st.data())
def test_verify_of_a_mutated_archive_is_ok_exactly_when_extraction_succeeds(
    originals, world, container, data
):
    original = originals[container]
    mutated = draw_mutated(data, original)
    with example_folder(world, original, mutated) as folder:
        path = folder / original.file_name
        assert verify(path) == extract(path, folder / "out")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("container", CONTAINERS)
@FUZZ
@given(data=st.data())
def test_reading_a_mutated_archive_leaves_no_stray_file(originals, world, container, data):
    original = originals[container]
    mutated = draw_mutated(data, original)
    with example_folder(world, original, mutated) as folder:
        path = folder / original.file_name
        with contextlib.suppress(ArchiveError):
            inspect_archive(path, limits=LIMITS)
        verify(path)
        extract(path, folder / "out")
        assert sorted(p.name for p in folder.iterdir()) == sorted([original.file_name, "out"])
        assert path.read_bytes() == mutated
        assert [p.name for p in world.work.iterdir()] == [folder.name]
        assert list(world.tmp.iterdir()) == []
        assert list(world.cwd.iterdir()) == []
        assert sorted(p.name for p in world.root.iterdir()) == ["cwd", "tmp", "work"]
