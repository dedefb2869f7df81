"""Locations: atomic publish (all or nothing, never over an existing archive unless forced)."""

from __future__ import annotations

import hashlib
import os
import random
import uuid
from pathlib import Path

import fsspec
import pytest

from mlflow_archive_plugin import formats as layouts
from mlflow_archive_plugin.errors import (
    ArchiveError,
    DestinationExistsError,
    SourceNotFoundError,
    UnsupportedError,
)
from mlflow_archive_plugin.snapshot import ModelVersionInfo, RegisteredModelInfo, Snapshot
from mlflow_archive_plugin.storage import containers, location
from mlflow_archive_plugin.storage import pipeline as archive

OLD = b"the archive that was here before\n"


class Boom(RuntimeError):
    """Raised inside a publish block to simulate a writer failing half way."""


@pytest.fixture
def model_dir(tmp_path) -> Path:
    root = tmp_path / "source" / "model"
    root.mkdir(parents=True)
    (root / "MLmodel").write_text("artifact_path: model\nflavors: {}\n")
    (root / "weights.bin").write_bytes(random.Random(5).randbytes(1 << 20))
    (root / "notes.txt").write_text("compressible\n" * 4000)
    return root


@pytest.fixture
def out(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def memory_root():
    """A unique folder in fsspec's process-wide in-memory file system, removed afterwards."""
    fs = fsspec.filesystem("memory")
    root = f"/archive-tests-{uuid.uuid4().hex}"
    yield f"memory://{root}"
    if fs.exists(root):
        fs.rm(root, recursive=True)


def snapshot_of(model_dir: Path) -> Snapshot:
    return Snapshot(
        model_dir=model_dir,
        mlmodel={"flavors": {}},
        registered_model=RegisteredModelInfo(name="demo"),
        model_version=ModelVersionInfo(version="2"),
    )


def write(model_dir: Path, container: str, target, force: bool = False) -> archive.Written:
    return archive.write_archive(
        snapshot_of(model_dir),
        layouts.get_layout("mlflow"),
        containers.get_container(container),
        location.resolve(target),
        force=force,
        show_progress=False,
    )


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def make_old_folder(path: Path) -> None:
    path.mkdir()
    (path / "old.txt").write_bytes(OLD)


# --------------------------------------------------------------------------- resolve


def test_resolve_makes_a_relative_local_path_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    resolved = location.resolve("sub/demo.zip")
    assert resolved.is_local
    assert resolved.path == str(tmp_path / "sub" / "demo.zip")


def test_resolve_refuses_an_unknown_protocol():
    with pytest.raises(UnsupportedError, match="nosuchproto"):
        location.resolve("nosuchproto://bucket/demo.zip")


def test_child_joins_a_name_inside_a_folder(out):
    child = location.resolve(out).child("demo.zip")
    assert child.path == str(out / "demo.zip")
    assert child.url == str(out / "demo.zip")


def test_child_of_a_memory_location_keeps_the_protocol(memory_root):
    child = location.resolve(memory_root).child("demo.zip")
    assert child.url.startswith("memory://")
    assert child.url.endswith("/demo.zip")


@pytest.mark.parametrize(
    ("raw", "expected"), [("new-folder/", True), ("existing", True), ("demo.zip", False)]
)
def test_is_folder_target(out, raw, expected):
    (out / "existing").mkdir()
    path = os.path.join(str(out), raw)
    assert location.is_folder_target(location.resolve(path), path) is expected


# --------------------------------------------------------------------------- publish_file


def test_publish_file_refuses_an_existing_file_and_leaves_it_byte_identical(out):
    final = out / "demo.zip"
    final.write_bytes(OLD)
    with (
        pytest.raises(DestinationExistsError, match="force"),
        location.publish_file(location.resolve(final)) as handle,
    ):
        handle.write(b"new")
    assert final.read_bytes() == OLD
    assert listing(out) == ["demo.zip"]


def test_publish_file_with_force_replaces_an_existing_file(out):
    final = out / "demo.zip"
    final.write_bytes(OLD)
    with location.publish_file(location.resolve(final), force=True) as handle:
        handle.write(b"new")
    assert final.read_bytes() == b"new"
    assert listing(out) == ["demo.zip"]


def test_publish_file_with_force_replaces_an_existing_folder(out):
    final = out / "demo"
    make_old_folder(final)
    with location.publish_file(location.resolve(final), force=True) as handle:
        handle.write(b"new")
    assert final.read_bytes() == b"new"
    assert listing(out) == ["demo"]


def test_publish_file_shows_nothing_under_the_final_name_until_the_block_ends(out):
    final = out / "demo.zip"
    with location.publish_file(location.resolve(final)) as handle:
        handle.write(b"new")
        assert not final.exists()
    assert final.read_bytes() == b"new"


def test_publish_file_failure_leaves_no_destination_and_no_partial_file(out):
    with pytest.raises(Boom), location.publish_file(location.resolve(out / "demo.zip")) as handle:
        handle.write(b"half")
        raise Boom
    assert listing(out) == []


def test_publish_file_failure_with_force_keeps_the_existing_file(out):
    final = out / "demo.zip"
    final.write_bytes(OLD)
    with (
        pytest.raises(Boom),
        location.publish_file(location.resolve(final), force=True) as handle,
    ):
        handle.write(b"half")
        raise Boom
    assert final.read_bytes() == OLD
    assert listing(out) == ["demo.zip"]


def test_publish_file_creates_missing_parent_folders(out):
    final = out / "a" / "b" / "demo.zip"
    with location.publish_file(location.resolve(final)) as handle:
        handle.write(b"new")
    assert final.read_bytes() == b"new"


# --------------------------------------------------------------------------- publish_folder


def test_publish_folder_refuses_an_existing_folder_and_leaves_it_intact(out):
    final = out / "demo"
    make_old_folder(final)
    with (
        pytest.raises(DestinationExistsError),
        location.publish_folder(location.resolve(final)) as folder,
    ):
        (folder / "new.txt").write_bytes(b"new")
    assert listing(final) == ["old.txt"]
    assert (final / "old.txt").read_bytes() == OLD
    assert listing(out) == ["demo"]


def test_publish_folder_with_force_replaces_an_existing_folder(out):
    final = out / "demo"
    make_old_folder(final)
    with location.publish_folder(location.resolve(final), force=True) as folder:
        (folder / "new.txt").write_bytes(b"new")
    assert listing(final) == ["new.txt"]
    assert listing(out) == ["demo"]


def test_publish_folder_with_force_replaces_an_existing_file(out):
    final = out / "demo"
    final.write_bytes(OLD)
    with location.publish_folder(location.resolve(final), force=True) as folder:
        (folder / "new.txt").write_bytes(b"new")
    assert listing(final) == ["new.txt"]
    assert listing(out) == ["demo"]


def test_publish_folder_failure_leaves_no_destination_and_no_partial_folder(out):
    with pytest.raises(Boom), location.publish_folder(location.resolve(out / "demo")) as folder:
        (folder / "half.txt").write_bytes(b"half")
        raise Boom
    assert listing(out) == []


def test_publish_folder_failure_with_force_keeps_the_existing_folder(out):
    final = out / "demo"
    make_old_folder(final)
    with (
        pytest.raises(Boom),
        location.publish_folder(location.resolve(final), force=True) as folder,
    ):
        (folder / "half.txt").write_bytes(b"half")
        raise Boom
    assert listing(final) == ["old.txt"]
    assert listing(out) == ["demo"]


# --------------------------------------------------------------------------- write_archive


@pytest.mark.parametrize("container", ["zip", "folder"])
def test_write_archive_refuses_an_existing_destination_without_force(model_dir, out, container):
    final = out / "demo.zip"
    final.write_bytes(OLD)
    with pytest.raises(DestinationExistsError):
        write(model_dir, container, final)
    assert final.read_bytes() == OLD
    assert listing(out) == ["demo.zip"]


@pytest.mark.parametrize("container", ["zip", "tar.gz", "folder"])
def test_write_archive_with_force_replaces_an_existing_archive(model_dir, out, container):
    final = out / "demo"
    write(model_dir, container, final)
    (model_dir / "notes.txt").write_text("changed\n")
    result = write(model_dir, container, final, force=True)
    scanned = archive.scan_archive(location.resolve(final), show_progress=False)
    assert scanned.digest == result.digest
    assert scanned.integrity_problems() == []
    assert listing(out) == ["demo"]


@pytest.mark.parametrize("container", ["zip", "tar", "folder"])
def test_write_archive_that_fails_publishes_nothing(model_dir, out, container):
    # A backslash cannot be listed in checksum.txt: file containers fail only after every
    # model file was written, the folder writer as soon as it meets the name.
    (model_dir / "odd\\name.txt").write_text("x")
    with pytest.raises(ArchiveError):
        write(model_dir, container, out / "demo")
    assert listing(out) == []


# --------------------------------------------------------------------------- memory://


def test_memory_destination_round_trips_a_zip_archive(model_dir, memory_root):
    url = f"{memory_root}/demo.zip"
    result = write(model_dir, "zip", url)
    scanned = archive.scan_archive(location.resolve(url), show_progress=False)
    assert scanned.container == "zip"
    assert scanned.integrity_problems() == []
    assert {r.path: r for r in result.records}.items() <= scanned.records.items()


def test_memory_destination_size_and_sha256_describe_the_uploaded_file(model_dir, memory_root):
    url = f"{memory_root}/demo.tar.gz"
    result = write(model_dir, "tar.gz", url)
    data = fsspec.filesystem("memory").cat_file(location.resolve(url).path)
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_memory_destination_refuses_to_overwrite_without_force(model_dir, memory_root):
    url = f"{memory_root}/demo.zip"
    fs = fsspec.filesystem("memory")
    path = location.resolve(url).path
    fs.pipe_file(path, OLD)
    with pytest.raises(DestinationExistsError):
        write(model_dir, "zip", url)
    assert fs.cat_file(path) == OLD


def test_memory_publish_failure_uploads_nothing(memory_root):
    url = f"{memory_root}/demo.zip"
    with pytest.raises(Boom), location.publish_file(location.resolve(url)) as handle:
        handle.write(b"half")
        raise Boom
    assert fsspec.filesystem("memory").find(location.resolve(memory_root).path) == []


def test_memory_destination_refuses_a_folder_container(model_dir, memory_root):
    with pytest.raises(UnsupportedError, match="local"):
        write(model_dir, "folder", f"{memory_root}/demo")
    assert fsspec.filesystem("memory").find(location.resolve(memory_root).path) == []


def test_publish_folder_refuses_a_memory_location(memory_root):
    with (
        pytest.raises(UnsupportedError),
        location.publish_folder(location.resolve(f"{memory_root}/demo")),
    ):
        pass


# --------------------------------------------------------------------------- open_source


def test_open_source_of_a_missing_local_path_is_source_not_found(tmp_path):
    with (
        pytest.raises(SourceNotFoundError, match="does not exist"),
        location.open_source(location.resolve(tmp_path / "nope.zip")),
    ):
        pass


def test_open_source_of_a_missing_memory_path_is_source_not_found(memory_root):
    with (
        pytest.raises(SourceNotFoundError),
        location.open_source(location.resolve(f"{memory_root}/nope.zip")),
    ):
        pass


def test_open_source_of_a_folder_yields_its_path(out):
    with location.open_source(location.resolve(out)) as (container, source):
        assert (container, source) == ("folder", out)
