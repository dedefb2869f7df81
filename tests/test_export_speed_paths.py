"""The fast paths of export: one read of each model file, hashing beside the copy, the archive's
hash taken while it is flushed to disk, models in a local artifact store read where they are,
and big S3 uploads sent as parallel multipart parts (against a real moto server).

Speed itself is measured in ``benchmarks/bench_export.py``; these tests pin down that the fast
paths give exactly the bytes and hashes the plain ones would.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import threading
import uuid
import zipfile
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pytest
from conftest import METADATA_FILE, unique
from s3_server import cutting_proxy, moto_s3_in_environment

from mlflow_archive_plugin import formats as layouts
from mlflow_archive_plugin.errors import ArchiveError, UnsupportedError
from mlflow_archive_plugin.snapshot import Snapshot
from mlflow_archive_plugin.storage import containers, location
from mlflow_archive_plugin.storage import pipeline as archive
from mlflow_archive_plugin.storage.integrity import CHUNK_SIZE, copy_and_hash

MiB = 1024 * 1024
HASH_THREAD = "mlflow-archive-sha256"


def random_bytes(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


def model_dir_of(root: Path, size: int) -> Path:
    """An MLflow-looking model folder with ``size`` bytes of incompressible weights."""
    model = root / "model"
    model.mkdir(parents=True)
    (model / "MLmodel").write_text("artifact_path: model\nflavors: {}\n")
    (model / "notes.txt").write_text("compressible text\n" * 5000)
    (model / "weights.bin").write_bytes(random_bytes(size))
    return model


def write_to(model: Path, target: location.Location, container: str = "zip") -> archive.Written:
    return archive.write_archive(Snapshot(model_dir=model, mlmodel={"flavors": {}}),
                                 layouts.get_layout("mlflow"),
                                 containers.get_container(container), target,
                                 show_progress=False)


def hash_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(HASH_THREAD)]


class FailingSink(io.RawIOBase):
    """A sink that accepts ``limit`` bytes, then fails like a full disk."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0

    def write(self, data) -> int:
        if self.taken + len(data) > self.limit:
            raise OSError(28, "No space left on device")
        self.taken += len(data)
        return len(data)


# ------------------------------------------------------------------ hashing beside the copy


@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 12345])
def test_copy_and_hash_gives_every_byte_and_its_sha256_at_any_size(size):
    data = random_bytes(size)
    sink = io.BytesIO()
    seen: list[int] = []
    assert copy_and_hash(io.BytesIO(data), sink, seen.append) == (
        size, hashlib.sha256(data).hexdigest())
    assert sink.getvalue() == data
    assert sum(seen) == size


def test_copy_and_hash_failing_mid_copy_raises_and_leaves_no_hashing_thread():
    before = len(hash_threads())
    with pytest.raises(OSError, match="No space left"):
        copy_and_hash(io.BytesIO(random_bytes(4 * CHUNK_SIZE)), FailingSink(2 * CHUNK_SIZE))
    assert len(hash_threads()) == before


# --------------------------------------------------------------------------- the archive's own hash


@pytest.mark.parametrize("container", ["zip", "tar", "tar.xz"])
def test_recorded_sha256_is_the_sha256_of_the_file_on_disk(tmp_path, container):
    model = model_dir_of(tmp_path, 3 * MiB + 4321)
    target = tmp_path / f"out.{container}"
    written = write_to(model, location.resolve(str(target)), container)
    data = target.read_bytes()
    assert (written.size, written.sha256) == (len(data), hashlib.sha256(data).hexdigest())


def test_recorded_file_hashes_match_the_model_files_and_the_zip_reads_back(tmp_path):
    model = model_dir_of(tmp_path, 3 * MiB)
    target = tmp_path / "out.zip"
    written = write_to(model, location.resolve(str(target)))
    recorded = {record.path: record.sha256 for record in written.records}
    for path in model.iterdir():
        expected = hashlib.sha256(path.read_bytes()).hexdigest()
        assert recorded[f"model/{path.name}"] == expected
    with zipfile.ZipFile(target) as handle:
        assert handle.testzip() is None
        assert handle.read("model/weights.bin") == (model / "weights.bin").read_bytes()
        # Incompressible weights are stored, compressible text deflated, as before.
        assert handle.getinfo("model/weights.bin").compress_type == zipfile.ZIP_STORED
        assert handle.getinfo("model/notes.txt").compress_type == zipfile.ZIP_DEFLATED


def test_the_hook_on_the_finished_file_sees_it_whole_before_it_is_published(tmp_path):
    target = location.resolve(str(tmp_path / "demo.bin"))
    payload = random_bytes(3 * MiB)
    seen: list[bytes] = []

    def check(path: str) -> None:
        assert not (tmp_path / "demo.bin").exists()
        seen.append(Path(path).read_bytes())

    with location.publish_file(target, on_complete=check) as handle:
        handle.write(payload)
    assert seen == [payload]
    assert (tmp_path / "demo.bin").read_bytes() == payload


def test_a_hook_refusing_the_finished_file_publishes_nothing(tmp_path):
    target = location.resolve(str(tmp_path / "demo.bin"))

    def refuse(path: str) -> None:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"), \
            location.publish_file(target, on_complete=refuse) as handle:
        handle.write(random_bytes(MiB))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- local artifact stores


@pytest.fixture
def local_store_model(tmp_path):
    """A logged model in a SQLite tracking store whose artifacts live in a local folder."""
    from mlflow import MlflowClient

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(
        unique("local-store"), artifact_location=(tmp_path / "artifacts").as_uri())
    logged = client.create_logged_model(experiment_id, name="model")
    source = model_dir_of(tmp_path / "source", 2 * MiB)
    client.log_model_artifacts(logged.model_id, str(source))
    client.finalize_logged_model(logged.model_id, "READY")
    return tracking_uri, client.get_logged_model(logged.model_id), source


def test_a_model_in_a_local_artifact_store_is_read_where_it_is(local_store_model, tmp_path):
    from mlflow_archive_plugin.mlflow_side.source import read_model

    tracking_uri, logged, _ = local_store_model
    download = tmp_path / "download"
    download.mkdir()
    snapshot = read_model(f"models:/{logged.model_id}", download, tracking_uri=tracking_uri)
    stored = Path(url2pathname(urlsplit(logged.artifact_location).path)).resolve()
    assert snapshot.model_dir == stored
    assert list(download.iterdir()) == []


def test_export_from_a_local_artifact_store_archives_the_stored_bytes(local_store_model,
                                                                       tmp_path):
    from mlflow_archive_plugin import export_model, verify_archive

    tracking_uri, logged, source = local_store_model
    result = export_model(f"models:/{logged.model_id}", str(tmp_path / "out.zip"),
                          tracking_uri=tracking_uri, progress=False)
    data = (tmp_path / "out.zip").read_bytes()
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert verify_archive(result.location, progress=False).ok
    with zipfile.ZipFile(tmp_path / "out.zip") as handle:
        assert handle.read("model/weights.bin") == (source / "weights.bin").read_bytes()
        document = json.loads(handle.read(METADATA_FILE))
    assert document["logged_model"]["model_id"] == logged.model_id


# --------------------------------------------------------------------------- S3 multipart uploads


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server, with this process's environment holding its credentials."""
    with moto_s3_in_environment(tmp_path_factory.mktemp("moto")) as server:
        yield server


def test_a_big_archive_goes_to_s3_in_parallel_parts_byte_for_byte(s3, tmp_path):
    model = model_dir_of(tmp_path, 17 * MiB)
    key = f"multipart/{uuid.uuid4().hex}/demo.zip"
    target = location.resolve(f"s3://{s3.bucket}/{key}", s3.storage_options(
        multipart_chunksize=5 * MiB, max_concurrency=3))
    written = write_to(model, target)
    head = s3.client().head_object(Bucket=s3.bucket, Key=key)
    stored = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    assert head["ETag"].strip('"').endswith("-4")  # S3 marks a multipart object's ETag
    assert (len(stored), hashlib.sha256(stored).hexdigest()) == (written.size, written.sha256)
    assert s3.pending_uploads("multipart/") == []
    scanned = archive.scan_archive(target, show_progress=False)
    assert scanned.integrity_problems() == []


def test_a_multipart_upload_cut_mid_part_leaves_no_object_and_no_pending_upload(s3, tmp_path):
    model = model_dir_of(tmp_path, 12 * MiB)
    prefix = f"cut-multipart/{uuid.uuid4().hex}"
    key = f"{prefix}/demo.zip"
    port = int(s3.endpoint.rsplit(":", 1)[1])
    with cutting_proxy(port, 1 * MiB) as proxy:
        target = location.resolve(f"s3://{s3.bucket}/{key}", s3.storage_options(
            endpoint_url=proxy.endpoint, multipart_chunksize=5 * MiB,
            config_kwargs={"retries": {"max_attempts": 1}}))
        with pytest.raises(ArchiveError, match=f"cannot write s3://{s3.bucket}/{key}"):
            write_to(model, target)
        assert proxy.cuts >= 1
    assert s3.keys(prefix) == []
    assert s3.pending_uploads(prefix) == []


def test_the_default_part_size_and_its_growth_past_ten_thousand_parts():
    target = location.resolve("s3://bucket/key.zip", {"anon": True})
    assert location._upload_options(target, 100 * MiB) == {"chunksize": 8 * MiB,
                                                           "max_concurrency": 4}
    assert location._upload_options(target, 200_000 * MiB)["chunksize"] == 20 * MiB
    assert location._upload_options(location.resolve("memory://x/key.zip"), 100 * MiB) == {}


def test_parts_in_flight_follow_s3fs_own_max_concurrency_option():
    target = location.resolve("s3://bucket/key.zip", {"anon": True, "max_concurrency": 7})
    assert location._upload_options(target, 100 * MiB)["max_concurrency"] == 7


@pytest.mark.parametrize("value", [1024, "8MiB", True, 4.5e6])
def test_a_part_size_that_s3_would_refuse_is_a_one_line_error(value):
    with pytest.raises(UnsupportedError, match="multipart_chunksize") as caught:
        location.resolve("s3://bucket/key.zip", {"multipart_chunksize": value, "anon": True})
    assert "\n" not in str(caught.value)
