"""Containers: what is written reads back byte for byte, and hostile or damaged input is refused.

Everything here runs on real files under ``tmp_path``; no MLflow server is needed. Snapshots are
built by hand around a small model folder holding an incompressible and a compressible file.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import stat
import struct
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from mlflow_archive_plugin import formats as layouts
from mlflow_archive_plugin.errors import (
    CorruptArchiveError,
    NotAnArchiveError,
    UnsafeArchiveError,
    UnsupportedError,
)
from mlflow_archive_plugin.snapshot import (
    EXPORT_NOTE_NAME as EXPORT_NOTE,
)
from mlflow_archive_plugin.snapshot import (
    METADATA_NAME,
    ModelVersionInfo,
    RegisteredModelInfo,
    Snapshot,
)
from mlflow_archive_plugin.storage import containers, location
from mlflow_archive_plugin.storage import pipeline as archive
from mlflow_archive_plugin.storage.integrity import CHECKSUM_NAME

ALL_CONTAINERS = ["zip", "tar", "tar.gz", "tar.xz", "tar.bz2", "folder"]
FILE_CONTAINERS = [name for name in ALL_CONTAINERS if name != "folder"]
TAR_CONTAINERS = ["tar", "tar.gz", "tar.xz", "tar.bz2"]
TAR_EXTRACT_FLAGS = {"tar": "-xf", "tar.gz": "-xzf", "tar.xz": "-xJf", "tar.bz2": "-xjf"}

WEIGHTS = "model/weights.bin"
NOTES = "model/notes.txt"
LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")


# --------------------------------------------------------------------------- helpers


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_model_dir(root: Path) -> Path:
    """An MLflow-like model folder: MLmodel, an incompressible 1 MiB file, compressible text."""
    root.mkdir(parents=True)
    (root / "MLmodel").write_text(
        "artifact_path: model\nflavors:\n  python_function:\n    loader_module: demo\n"
    )
    (root / "weights.bin").write_bytes(random.Random(1234).randbytes(1 << 20))
    (root / "notes.txt").write_text(
        "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(4000))
    )
    (root / "data").mkdir()
    (root / "data" / "vocab.txt").write_text("alpha\nbeta\ngamma\n")
    return root


def make_snapshot(model_dir: Path) -> Snapshot:
    return Snapshot(
        model_dir=model_dir,
        mlmodel={"artifact_path": "model", "flavors": {"python_function": {}}},
        registered_model=RegisteredModelInfo(name="demo", tags={"team": "ml"}),
        model_version=ModelVersionInfo(version="3", aliases=["champion"]),
    )


def archive_path(folder: Path, container: str) -> Path:
    return folder / f"demo{containers.get_container(container).extension}"


def write(model_dir: Path, container: str, target: Path) -> archive.Written:
    return archive.write_archive(
        make_snapshot(model_dir),
        layouts.get_layout("mlflow"),
        containers.get_container(container),
        location.resolve(target),
        show_progress=False,
    )


def source_files(model_dir: Path) -> dict[str, bytes]:
    """Archive path -> bytes of every model file as the mlflow layout places it."""
    return {
        f"model/{p.relative_to(model_dir).as_posix()}": p.read_bytes()
        for p in model_dir.rglob("*")
        if p.is_file()
    }


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def scan(path: Path, **kwargs) -> archive.Scanned:
    return archive.scan_archive(location.resolve(path), show_progress=False, **kwargs)


def require(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"{tool} is not installed")
    return found


def zip_bytes(*entries: tuple[str | zipfile.ZipInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as handle:
        for name, data in entries:
            handle.writestr(name, data)
    return buffer.getvalue()


def tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes | None], mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, format=tarfile.PAX_FORMAT) as handle:
        for info, data in members:
            if data is None:
                handle.addfile(info)
            else:
                info.size = len(data)
                handle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def hostile_bytes(kind: str, *names_and_data: tuple[str, bytes]) -> bytes:
    """A zip, tar or tar.gz holding regular files with exactly these (possibly unsafe) names."""
    if kind == "zip":
        return zip_bytes(*names_and_data)
    mode = "w:gz" if kind == "tar.gz" else "w"
    return tar_bytes(*((tar_member(name), data) for name, data in names_and_data), mode=mode)


def assert_refused_before_writing(source: Path, out: Path) -> UnsafeArchiveError:
    """Scanning ``source`` into ``out`` raises UnsafeArchiveError and leaves ``out`` empty."""
    out.mkdir(exist_ok=True)
    with pytest.raises(UnsafeArchiveError) as caught:
        scan(source, extract_to=out)
    assert sorted(p.name for p in out.iterdir()) == []
    assert "\n" not in str(caught.value)
    return caught.value


def local_headers(raw: bytes, infos: list[zipfile.ZipInfo]):
    """(info, flags, method, crc, compressed size, size, data offset) from each local header."""
    for info in infos:
        sig, _ver, flags, method, _t, _d, crc, csize, usize, nlen, elen = LOCAL_HEADER.unpack_from(
            raw, info.header_offset
        )
        assert sig == b"PK\x03\x04", f"{info.filename}: no local file header at its offset"
        data_offset = info.header_offset + LOCAL_HEADER.size + nlen + elen
        yield info, flags, method, crc, csize, usize, data_offset


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_model_dir(tmp_path_factory.mktemp("source") / "model")


@pytest.fixture(scope="module")
def written(tmp_path_factory, model_dir) -> dict[str, tuple[Path, archive.Written]]:
    """One archive per container, written once for the module and only read by tests."""
    out = tmp_path_factory.mktemp("archives")
    result = {}
    for name in ALL_CONTAINERS:
        target = archive_path(out, name)
        result[name] = (target, write(model_dir, name, target))
    return result


@pytest.fixture
def out(tmp_path) -> Path:
    folder = tmp_path / "extracted"
    folder.mkdir()
    return folder


# --------------------------------------------------------------------------- registry


def test_get_container_accepts_aliases():
    assert containers.get_container("tgz").name == "tar.gz"
    assert containers.get_container("dir").name == "folder"


def test_get_container_refuses_unknown_name():
    with pytest.raises(UnsupportedError, match="rar"):
        containers.get_container("rar")


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ALL_CONTAINERS)
def test_container_writer_and_reader_round_trip_entries(tmp_path, name):
    entries = {"a.txt": b"alpha", "sub/dir/b.bin": bytes(range(256)) * 8, "empty": b""}
    container = containers.get_container(name)
    target = tmp_path / f"x{container.extension}"
    if container.is_folder:
        target.mkdir()
        with container.open_writer(target) as writer:
            records = [writer.add_bytes(arcname, data) for arcname, data in entries.items()]
    else:
        with target.open("wb") as sink, container.open_writer(sink) as writer:
            records = [writer.add_bytes(arcname, data) for arcname, data in entries.items()]
    assert [(r.path, r.size) for r in records] == [(k, len(v)) for k, v in entries.items()]
    with (
        location.open_source(location.resolve(target)) as (detected, source),
        containers.open_reader(detected, source) as reader,
    ):
        found = {entry: stream.read() for entry, stream in reader.entries()}
    assert found == entries


@pytest.mark.parametrize("name", ALL_CONTAINERS)
def test_archive_extracts_to_the_same_names_and_bytes(written, model_dir, out, name):
    path, _ = written[name]
    scanned = scan(path, extract_to=out)
    extracted = tree(out)
    expected_names = {*source_files(model_dir), METADATA_NAME, EXPORT_NOTE, CHECKSUM_NAME}
    assert set(extracted) == expected_names
    assert set(scanned.records) == expected_names
    for arcname, data in source_files(model_dir).items():
        assert extracted[arcname] == data, arcname


@pytest.mark.parametrize("name", ALL_CONTAINERS)
def test_written_records_equal_hashlib_of_the_source_files(written, model_dir, name):
    _, result = written[name]
    recorded = {r.path: (r.size, r.sha256) for r in result.records if r.path.startswith("model/")}
    expected = {path: (len(data), sha256(data)) for path, data in source_files(model_dir).items()}
    assert recorded == expected


@pytest.mark.parametrize("name", ALL_CONTAINERS)
def test_scan_hashes_equal_the_records_made_while_writing(written, name):
    path, result = written[name]
    scanned = scan(path)
    for record in result.records:
        assert scanned.records[record.path] == record
    assert scanned.integrity_problems() == []


@pytest.mark.parametrize("name", FILE_CONTAINERS)
def test_written_size_and_sha256_describe_the_archive_file(written, name):
    path, result = written[name]
    data = path.read_bytes()
    assert (result.size, result.sha256) == (len(data), sha256(data))


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("name", FILE_CONTAINERS)
def test_detect_container_recognises_first_bytes(written, name):
    path, _ = written[name]
    with path.open("rb") as handle:
        head = handle.read(512)
    assert containers.detect_container(head) == name


@pytest.mark.parametrize("name", ALL_CONTAINERS)
def test_open_source_names_the_container(written, name):
    path, _ = written[name]
    with location.open_source(location.resolve(path)) as (detected, _source):
        assert detected == name


def test_detect_container_refuses_random_bytes():
    head = random.Random(7).randbytes(512)
    assert not head.startswith((b"PK", b"\x1f\x8b", b"\xfd7zXZ", b"BZh"))
    with pytest.raises(NotAnArchiveError):
        containers.detect_container(head)


def test_detect_container_refuses_empty_input():
    with pytest.raises(NotAnArchiveError):
        containers.detect_container(b"")


def test_scan_refuses_an_empty_file(tmp_path):
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    with pytest.raises(NotAnArchiveError):
        scan(empty)


# --------------------------------------------------------------------------- zip details


def test_zip_stores_the_incompressible_file(written):
    path, _ = written["zip"]
    with zipfile.ZipFile(path) as handle:
        assert handle.getinfo(WEIGHTS).compress_type == zipfile.ZIP_STORED


def test_zip_deflates_the_compressible_text(written):
    path, _ = written["zip"]
    with zipfile.ZipFile(path) as handle:
        info = handle.getinfo(NOTES)
    assert info.compress_type == zipfile.ZIP_DEFLATED
    assert info.compress_size < info.file_size // 4


def test_zip_stored_entries_carry_sizes_and_crc_in_the_local_header(written):
    """Java's ZipInputStream (TorchServe) cannot read a STORED entry that defers them."""
    path, _ = written["zip"]
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as handle:
        stored = [i for i in handle.infolist() if i.compress_type == zipfile.ZIP_STORED]
    assert [i.filename for i in stored] == [WEIGHTS]
    for info, flags, method, crc, csize, usize, _ in local_headers(raw, stored):
        assert flags & 0x08 == 0, f"{info.filename}: data descriptor flag set"
        assert method == zipfile.ZIP_STORED
        assert (crc, csize, usize) == (info.CRC, info.file_size, info.file_size), info.filename


def test_zip_writer_clamps_timestamps_before_1980(tmp_path):
    old = tmp_path / "old.txt"
    old.write_text("from 1970")
    os.utime(old, (0, 0))
    with (
        (tmp_path / "x.zip").open("wb") as sink,
        containers.get_container("zip").open_writer(sink) as writer,
    ):
        writer.add_file("old.txt", old)
    with zipfile.ZipFile(tmp_path / "x.zip") as handle:
        assert handle.getinfo("old.txt").date_time == (1980, 1, 1, 0, 0, 0)
        assert handle.read("old.txt") == b"from 1970"


# --------------------------------------------------------------------------- external tools


def test_unzip_tests_the_zip_without_errors(written):
    unzip = require("unzip")
    path, _ = written["zip"]
    result = subprocess.run([unzip, "-t", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No errors detected" in result.stdout


def test_unzip_extracts_the_zip_byte_for_byte(written, model_dir, out):
    unzip = require("unzip")
    path, _ = written["zip"]
    subprocess.run([unzip, "-q", str(path), "-d", str(out)], check=True)
    extracted = tree(out)
    for arcname, data in source_files(model_dir).items():
        assert extracted[arcname] == data, arcname


@pytest.mark.parametrize("name", TAR_CONTAINERS)
def test_gnu_tar_lists_every_entry(written, name):
    tar = require("tar")
    path, result = written[name]
    listing = subprocess.run(
        [tar, "-tf", str(path)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert sorted(listing) == sorted({*(r.path for r in result.records), CHECKSUM_NAME})


@pytest.mark.parametrize("name", TAR_CONTAINERS)
def test_gnu_tar_extracts_with_the_explicit_compression_flag(written, model_dir, out, name):
    tar = require("tar")
    if name == "tar.xz":
        require("xz")
    if name == "tar.bz2":
        require("bzip2")
    path, _ = written[name]
    subprocess.run([tar, TAR_EXTRACT_FLAGS[name], str(path), "-C", str(out)], check=True)
    extracted = tree(out)
    for arcname, data in source_files(model_dir).items():
        assert extracted[arcname] == data, arcname


# --------------------------------------------------------------------------- unsafe entries

UNSAFE_NAMES = ["../x", "a/../../x", "/abs", "a\\b", "C:x", "a//b"]


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_zip_entry_with_unsafe_name_is_refused_before_writing(tmp_path, out, name):
    source = tmp_path / "hostile.zip"
    source.write_bytes(zip_bytes((name, b"payload")))
    assert_refused_before_writing(source, out)


def test_zip_entry_with_nul_in_its_name_is_refused_before_writing(tmp_path, out):
    # zipfile cuts names at NUL when writing, so the byte is patched into both headers.
    raw = zip_bytes(("model/MLmodelQ.txt", b"payload"))
    assert raw.count(b"MLmodelQ") == 2
    source = tmp_path / "hostile.zip"
    source.write_bytes(raw.replace(b"MLmodelQ", b"MLmodel\x00"))
    assert_refused_before_writing(source, out)


@pytest.mark.parametrize("name", [*UNSAFE_NAMES, "a\x00b"])
def test_tar_entry_with_unsafe_name_is_refused_before_writing(tmp_path, out, name):
    member = tar_member("placeholder")
    member.pax_headers = {"path": name}  # a PAX path keeps every character, NUL included
    source = tmp_path / "hostile.tar"
    source.write_bytes(tar_bytes((member, b"payload")))
    assert_refused_before_writing(source, out)


@pytest.mark.parametrize(
    ("kind", "linkname"),
    [
        (tarfile.SYMTYPE, "/etc/passwd"),
        (tarfile.LNKTYPE, "model/MLmodel"),
        (tarfile.FIFOTYPE, ""),
        (tarfile.CHRTYPE, ""),
        (tarfile.BLKTYPE, ""),
    ],
    ids=["symlink", "hardlink", "fifo", "char-device", "block-device"],
)
def test_tar_link_or_special_member_is_refused_before_writing(tmp_path, out, kind, linkname):
    source = tmp_path / "hostile.tar"
    source.write_bytes(tar_bytes((tar_member("model/evil", kind, linkname), None)))
    error = assert_refused_before_writing(source, out)
    assert "model/evil" in str(error)


def test_zip_entry_with_symlink_mode_is_refused_before_writing(tmp_path, out):
    info = zipfile.ZipInfo("model/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    source = tmp_path / "hostile.zip"
    source.write_bytes(zip_bytes((info, b"/etc/passwd")))
    error = assert_refused_before_writing(source, out)
    assert "symbolic link" in str(error)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_names_differing_only_by_case_are_refused_before_writing(tmp_path, out, kind):
    source = tmp_path / f"hostile.{kind}"
    source.write_bytes(hostile_bytes(kind, ("model/Weights.bin", b"one"), (WEIGHTS, b"two")))
    assert_refused_before_writing(source, out)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_file_that_is_also_a_folder_is_refused_before_writing(tmp_path, out, kind):
    source = tmp_path / f"hostile.{kind}"
    source.write_bytes(hostile_bytes(kind, ("a", b"file"), ("a/b", b"nested")))
    assert_refused_before_writing(source, out)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_folder_that_is_also_a_file_is_refused_as_unsafe(tmp_path, out, kind):
    source = tmp_path / f"hostile.{kind}"
    source.write_bytes(hostile_bytes(kind, ("a/b", b"nested"), ("a", b"file")))
    with pytest.raises(UnsafeArchiveError):
        scan(source, extract_to=out)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_scan_without_extracting_refuses_a_file_that_is_also_a_folder(tmp_path, kind):
    """verify/inspect scan without extracting; they must not pass what import refuses."""
    source = tmp_path / f"hostile.{kind}"
    source.write_bytes(hostile_bytes(kind, ("a", b"file"), ("a/b", b"nested")))
    with pytest.raises(UnsafeArchiveError):
        scan(source, keep_going=True)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_unsafe_entry_after_safe_ones_leaves_the_extraction_folder_empty(tmp_path, out, kind):
    source = tmp_path / f"hostile.{kind}"
    source.write_bytes(
        hostile_bytes(kind, ("model/MLmodel", b"flavors: {}\n"), ("../escape.txt", b"payload"))
    )
    assert_refused_before_writing(source, out)
    assert not (tmp_path / "escape.txt").exists()


def test_folder_archive_holding_a_symlink_is_refused_before_writing(tmp_path, out):
    source = tmp_path / "hostile"
    source.mkdir()
    (source / "link").symlink_to("/etc/passwd")
    error = assert_refused_before_writing(source, out)
    assert "link" in str(error)


def test_written_folder_archive_with_a_symlink_added_extracts_nothing(written, tmp_path, out):
    path, _ = written["folder"]
    source = tmp_path / "tampered"
    shutil.copytree(path, source)
    (source / "model" / "data" / "passwd").symlink_to("/etc/passwd")
    assert_refused_before_writing(source, out)


def test_folder_archive_holding_a_fifo_is_refused(tmp_path, out):
    source = tmp_path / "hostile"
    source.mkdir()
    os.mkfifo(source / "pipe")
    with pytest.raises(UnsafeArchiveError, match="pipe"):
        scan(source, extract_to=out)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_leading_dot_slash_names_are_accepted_and_normalised(tmp_path, out, kind):
    source = tmp_path / f"dotted.{kind}"
    source.write_bytes(hostile_bytes(kind, ("./model.yaml", b"name: demo\n")))
    scanned = scan(source, extract_to=out)
    assert set(scanned.records) == {"model.yaml"}
    assert (out / "model.yaml").read_bytes() == b"name: demo\n"


def test_archive_repacked_by_gnu_tar_from_its_folder_is_readable(written, tmp_path, out):
    """``tar -C dir -czf x.tgz .`` writes a './' member and './'-prefixed names."""
    tar = require("tar")
    folder, result = written["folder"]
    repacked = tmp_path / "repacked.tar.gz"
    subprocess.run([tar, "-C", str(folder), "-czf", str(repacked), "."], check=True)
    scanned = scan(repacked, extract_to=out)
    snapshot = archive.read_snapshot(out, scanned)
    assert snapshot.files == [r for r in result.records if r.path.startswith("model/")]


# --------------------------------------------------------------------------- damage


@pytest.mark.parametrize("name", FILE_CONTAINERS)
def test_archive_cut_in_half_is_corrupt_with_a_one_line_message(written, tmp_path, name):
    path, _ = written[name]
    data = path.read_bytes()
    cut = tmp_path / path.name
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptArchiveError) as caught:
        scan(cut)
    message = str(caught.value)
    assert message and "\n" not in message


def _stored_weights_data_offset(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as handle:
        info = handle.getinfo(WEIGHTS)
    [(_, _, _, _, _, size, offset)] = list(local_headers(raw, [info]))
    return offset, size


def test_flipped_byte_in_a_stored_zip_entry_is_named_and_other_files_still_hash(written, tmp_path):
    path, result = written["zip"]
    damaged = tmp_path / path.name
    shutil.copyfile(path, damaged)
    offset, size = _stored_weights_data_offset(damaged)
    flip_byte(damaged, offset + size // 2)

    scanned = scan(damaged, keep_going=True)

    assert len(scanned.problems) == 1
    assert WEIGHTS in scanned.problems[0]
    assert WEIGHTS not in scanned.records
    for record in result.records:
        if record.path != WEIGHTS:
            assert scanned.records[record.path] == record
    assert [line for line in scanned.integrity_problems() if WEIGHTS not in line] == []


def test_flipped_byte_in_a_stored_zip_entry_fails_the_scan_without_keep_going(written, tmp_path):
    path, _ = written["zip"]
    damaged = tmp_path / path.name
    shutil.copyfile(path, damaged)
    offset, size = _stored_weights_data_offset(damaged)
    flip_byte(damaged, offset + size // 2)
    with pytest.raises(CorruptArchiveError, match=WEIGHTS):
        scan(damaged)


def test_flipped_byte_in_a_folder_archive_names_only_that_file(written, tmp_path):
    path, _ = written["folder"]
    damaged = tmp_path / "damaged"
    shutil.copytree(path, damaged)
    flip_byte(damaged / "model" / "MLmodel", 3)
    problems = scan(damaged).integrity_problems()
    assert len(problems) == 1
    assert problems[0].startswith("model/MLmodel:")
