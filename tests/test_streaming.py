"""Large model files move in one pass, without a second copy on disk.

Export from a server's artifact proxy: large files are streamed from the server into the
archive writer; small documents are downloaded first. Import: large entries stored as they
are (a stored zip entry, a plain tar member) are verified, left in the archive, scanned for
pickles there, and uploaded from there, hashed again on the way.

Every test runs against real ``mlflow server`` processes with served artifacts; archives and
uploaded files are checked byte for byte against what was logged.
"""

from __future__ import annotations

import hashlib
import json
import random
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import global_tracking_uri, registry_census, unique
from mlflow.entities import ViewType

from mlflow_archive_plugin import api
from mlflow_archive_plugin import formats as layouts
from mlflow_archive_plugin.errors import ArchiveError, IntegrityError, UnsafeArchiveError
from mlflow_archive_plugin.mlflow_side import served
from mlflow_archive_plugin.mlflow_side.registry import register
from mlflow_archive_plugin.mlflow_side.source import read_model
from mlflow_archive_plugin.storage import containers, location
from mlflow_archive_plugin.storage import pipeline as archive
from mlflow_archive_plugin.storage.extents import Extent
from mlflow_archive_plugin.storage.integrity import parse_checksums

pytestmark = pytest.mark.server

WEIGHTS_SIZE = 3 * 1024 * 1024 + 12345  # past IN_PLACE_MIN_BYTES, not whole chunks
KEY = bytes(range(32))
X = np.arange(6, dtype=np.float64).reshape(2, 3)


class FirstByteModel(mlflow.pyfunc.PythonModel):
    """Adds the first byte of its weights to each row's sum: predictions prove which weights
    were loaded."""

    def load_context(self, context):
        with open(context.artifacts["weights"], "rb") as handle:
            self.offset = handle.read(1)[0]

    def predict(self, context, model_input, params=None):
        return np.asarray(model_input, dtype=np.float64).sum(axis=1) + self.offset


@dataclass
class ServedModel:
    url: str
    name: str
    weights: bytes
    document: bytes
    artifacts_root: Path

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/1"


@pytest.fixture(scope="module")
def served_model(server_a, tmp_path_factory) -> ServedModel:
    folder = tmp_path_factory.mktemp("served-model")
    weights = random.Random(11).randbytes(WEIGHTS_SIZE)
    # A large document: layouts may read such files while planning, so it is downloaded.
    document = json.dumps({"rows": list(range(300_000))}).encode()
    (folder / "weights.bin").write_bytes(weights)
    (folder / "table.json").write_bytes(document)
    name = unique("served-big")
    with global_tracking_uri(server_a.url), mlflow.start_run():
        mlflow.pyfunc.log_model(
            name="model", python_model=FirstByteModel(),
            artifacts={"weights": str(folder / "weights.bin"),
                       "table": str(folder / "table.json")},
            registered_model_name=name, pip_requirements=["numpy"], input_example=X,
        )
    return ServedModel(server_a.url, name, weights, document, server_a.root / "artifacts")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def archive_members(path: Path) -> dict[str, bytes]:
    """Every file of a zip, tar or folder archive by name."""
    if path.is_dir():
        return {p.relative_to(path).as_posix(): p.read_bytes()
                for p in path.rglob("*") if p.is_file()}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return {info.filename: archive.read(info) for info in archive.infolist()
                    if not info.is_dir()}
    with tarfile.open(path) as archive:
        return {member.name: archive.extractfile(member).read()
                for member in archive.getmembers() if member.isfile()}


def assert_holds(members: dict[str, bytes], model: ServedModel) -> None:
    weights = [name for name, data in members.items() if name.endswith("/weights.bin")]
    tables = [name for name, data in members.items() if name.endswith("/table.json")]
    assert len(weights) == 1 and len(tables) == 1, sorted(members)
    assert sha(members[weights[0]]) == sha(model.weights)
    assert members[tables[0]] == model.document


def test_large_files_are_left_on_the_server_and_documents_are_downloaded(served_model,
                                                                        tmp_path):
    snapshot = read_model(served_model.uri, tmp_path, tracking_uri=served_model.url)
    deferred = {path.name: file for path, file in snapshot.deferred.items()}
    assert list(deferred) == ["weights.bin"]
    placeholder = next(iter(snapshot.deferred))
    assert placeholder.stat().st_size == WEIGHTS_SIZE
    # A sparse placeholder: nothing of the weights was written to disk.
    assert placeholder.stat().st_blocks * 512 < WEIGHTS_SIZE // 8
    assert (snapshot.model_dir / "artifacts" / "table.json").read_bytes() == served_model.document
    assert "flavors" in snapshot.mlmodel


def test_without_streaming_every_file_is_downloaded(served_model, tmp_path):
    snapshot = read_model(served_model.uri, tmp_path, tracking_uri=served_model.url,
                          stream=False)
    assert snapshot.deferred == {}
    assert (snapshot.model_dir / "artifacts" / "weights.bin").read_bytes() == \
        served_model.weights


@pytest.mark.parametrize(("format", "container"), [
    ("mlflow", "zip"), ("mlflow", "tar"), ("mlflow", "tar.gz"), ("mlflow", "folder"),
    ("mar", "zip"), ("bentoml", "bentomodel"), ("mlarchive", "zip"), ("portable", "zip"),
])
def test_streamed_export_holds_the_logged_bytes_and_verifies(served_model, tmp_path, format,
                                                             container):
    result = api.export_model(served_model.uri, tmp_path / "out", format=format,
                              container=container, tracking_uri=served_model.url,
                              progress=False)
    path = Path(result.location)
    assert_holds(archive_members(path), served_model)
    report = api.verify_archive(str(path))
    assert report.ok, report.problems


def test_streamed_archive_imports_and_predicts_with_the_logged_weights(served_model, server_b,
                                                                      tmp_path):
    exported = api.export_model(served_model.uri, tmp_path / "m.zip",
                                tracking_uri=served_model.url, progress=False)
    name = unique("served-back")
    imported = api.import_archive(exported.location, name=name, tracking_uri=server_b.url,
                                  progress=False)
    with global_tracking_uri(server_b.url):
        predictions = mlflow.pyfunc.load_model(imported.model_uri).predict(X)
    assert predictions.tolist() == (X.sum(axis=1) + served_model.weights[0]).tolist()


def test_signing_fetches_the_streamed_files_first(served_model, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / "key.pem"
    public = tmp_path / "key.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    result = api.export_model(served_model.uri, tmp_path / "signed.zip",
                              tracking_uri=served_model.url, progress=False, sign_key=private)
    assert_holds(archive_members(Path(result.location)), served_model)
    report = api.verify_archive(result.location, key=str(public))
    assert report.ok, report.problems


def test_encryption_fetches_the_streamed_files_first(served_model, server_b, tmp_path):
    result = api.export_model(served_model.uri, tmp_path / "enc", format="mlarchive",
                              tracking_uri=served_model.url, progress=False,
                              encryption_key=KEY)
    name = unique("served-enc")
    imported = api.import_archive(result.location, name=name, tracking_uri=server_b.url,
                                  progress=False, encryption_key=KEY)
    with global_tracking_uri(server_b.url):
        predictions = mlflow.pyfunc.load_model(imported.model_uri).predict(X)
    assert predictions.tolist() == (X.sum(axis=1) + served_model.weights[0]).tolist()


def served_weights_path(model: ServedModel) -> Path:
    """Where the server keeps the model's weights (found by content: the store's layout is
    MLflow's business)."""
    digest = sha(model.weights)
    (path,) = [p for p in model.artifacts_root.rglob("weights.bin")
               if sha(p.read_bytes()) == digest]
    return path


def test_a_file_that_shrinks_on_the_server_mid_export_fails_and_leaves_nothing(
        server_a, tmp_path):
    weights = random.Random(5).randbytes(WEIGHTS_SIZE)
    (tmp_path / "weights.bin").write_bytes(weights)
    name = unique("served-shrink")
    with global_tracking_uri(server_a.url), mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=FirstByteModel(),
                                artifacts={"weights": str(tmp_path / "weights.bin")},
                                registered_model_name=name, pip_requirements=["numpy"])
    model = ServedModel(server_a.url, name, weights, b"", server_a.root / "artifacts")
    snapshot = read_model(model.uri, tmp_path / "download", tracking_uri=model.url)
    # The model changes on the server after it was listed and before its bytes are read.
    on_server = served_weights_path(model)
    on_server.write_bytes(weights[: WEIGHTS_SIZE // 2])
    target = location.resolve(str(tmp_path / "out.zip"))
    with pytest.raises(ArchiveError) as raised:
        archive.write_archive(snapshot, layouts.get_layout("mlflow"),
                              containers.get_container("zip"), target, show_progress=False)
    message = str(raised.value)
    assert "weights.bin" in message and "listed" in message and "\n" not in message
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))] == []


def test_a_file_gone_from_the_server_is_one_line_naming_it(served_model, tmp_path):
    snapshot = read_model(served_model.uri, tmp_path / "download",
                          tracking_uri=served_model.url)
    (file,) = snapshot.deferred.values()
    gone = served.ServedFile(file._repo, "artifacts/no-such-file.bin", 10, "no-such-file.bin")
    with pytest.raises(ArchiveError) as raised:
        gone.open().read()
    assert "no-such-file.bin" in str(raised.value)
    assert "\n" not in str(raised.value)


# --------------------------------------------------------------------------- import in place


@pytest.fixture(scope="module")
def exported_zip(served_model, tmp_path_factory) -> Path:
    result = api.export_model(served_model.uri, tmp_path_factory.mktemp("zip") / "m.zip",
                              tracking_uri=served_model.url, progress=False)
    return Path(result.location)


def uploaded_weights(server, model_uri: str) -> list[bytes]:
    """The weights files the server stored for ``model_uri``'s logged model."""
    client = mlflow.MlflowClient(server.url, server.url)
    name, number = model_uri.removeprefix("models:/").split("/")
    model_id = client.get_model_version(name, number).source.removeprefix("models:/")
    found = []
    for path in (server.root / "artifacts").rglob("weights.bin"):
        if model_id in path.parts:
            found.append(path.read_bytes())
    return found


def scan_in_place(path: str | Path, root: Path) -> archive.Scanned:
    root.mkdir(exist_ok=True)
    return archive.scan_archive(location.resolve(str(path)), extract_to=root, in_place=True,
                                show_progress=False)


def test_large_stored_entries_are_verified_and_left_in_the_archive(served_model, exported_zip,
                                                                   tmp_path):
    scanned = scan_in_place(exported_zip, tmp_path)
    assert list(scanned.extents) == ["model/artifacts/weights.bin"]
    extent = scanned.extents["model/artifacts/weights.bin"]
    in_archive = exported_zip.read_bytes()[extent.offset:extent.offset + extent.size]
    assert in_archive == served_model.weights
    assert extent.sha256 == sha(served_model.weights)
    placeholder = tmp_path / "model/artifacts/weights.bin"
    assert placeholder.stat().st_size == WEIGHTS_SIZE
    assert placeholder.stat().st_blocks * 512 < WEIGHTS_SIZE // 8
    assert (tmp_path / "model/artifacts/table.json").stat().st_blocks > 0
    assert scanned.integrity_problems() == []


def test_without_in_place_every_entry_is_extracted(exported_zip, tmp_path):
    scanned = archive.scan_archive(location.resolve(str(exported_zip)), extract_to=tmp_path,
                                   show_progress=False)
    assert scanned.extents == {}
    assert sha((tmp_path / "model/artifacts/weights.bin").read_bytes()) == \
        scanned.records["model/artifacts/weights.bin"].sha256


@pytest.mark.parametrize(("container", "in_place"), [
    ("zip", True), ("tar", True), ("tar.gz", False), ("folder", False),
])
def test_import_uploads_the_verified_bytes_and_the_model_predicts(
        served_model, server_b, tmp_path, container, in_place):
    exported = api.export_model(served_model.uri, tmp_path / "out", container=container,
                                tracking_uri=served_model.url, progress=False)
    assert bool(scan_in_place(exported.location, tmp_path / "probe").extents) is in_place
    imported = api.import_archive(exported.location, name=unique(f"in-place-{container}"),
                                  tracking_uri=server_b.url, progress=False)
    assert [sha(data) for data in uploaded_weights(server_b, imported.model_uri)] == \
        [sha(served_model.weights)]
    with global_tracking_uri(server_b.url):
        predictions = mlflow.pyfunc.load_model(imported.model_uri).predict(X)
    assert predictions.tolist() == (X.sum(axis=1) + served_model.weights[0]).tolist()


def test_an_archive_changed_after_verification_fails_the_upload_and_registers_nothing(
        exported_zip, server_b, tmp_path):
    copy = tmp_path / "m.zip"
    copy.write_bytes(exported_zip.read_bytes())
    root = tmp_path / "root"
    scanned = scan_in_place(copy, root)
    snapshot = archive.read_snapshot(root, scanned)
    (extent,) = scanned.extents.values()
    flip_a_byte(copy, extent.offset + extent.size // 2)  # after verification
    before = registry_census(server_b.url)
    with pytest.raises(IntegrityError) as raised:
        register(snapshot, archive.archive_digest(scanned), name=unique("changed"),
                 tracking_uri=server_b.url, extents=scanned.extents_under(root))
    assert "weights.bin" in str(raised.value) and "\n" not in str(raised.value)
    after = registry_census(server_b.url)
    assert after["model_versions"] == before["model_versions"]
    assert after["registered_models"] == before["registered_models"]


def flip_a_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_unread_entries_carry_the_digest_checksum_txt_lists(exported_zip, tmp_path):
    scanned = archive.scan_archive(location.resolve(str(exported_zip)), extract_to=tmp_path,
                                   in_place=True, verify_in_place=False, show_progress=False)
    name = "model/artifacts/weights.bin"
    assert scanned.unread == {name}
    listed = parse_checksums(scanned.captured["checksum.txt"])
    assert scanned.records[name].sha256 == scanned.extents[name].sha256 == listed[name]
    assert scanned.integrity_problems() == []


def test_an_unread_stored_entry_counts_towards_the_size_limit_but_is_no_bomb(tmp_path):
    weights = random.Random(4).randbytes(WEIGHTS_SIZE)
    path = tmp_path / "stored.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as made:
        made.writestr("model/weights.bin", weights)
        made.writestr("checksum.txt", f"{sha(weights)}  model/weights.bin\n")

    def scan(limits: archive.ReadLimits, root: Path) -> archive.Scanned:
        root.mkdir()
        return archive.scan_archive(location.resolve(str(path)), extract_to=root,
                                    in_place=True, verify_in_place=False, show_progress=False,
                                    limits=limits)

    # Left unread, the weights have produced bytes before any were consumed; a ratio check
    # on them would take a stored file for a bomb.
    scanned = scan(archive.ReadLimits(ratio_floor_bytes=1024, max_ratio=1.5), tmp_path / "a")
    assert scanned.unread == {"model/weights.bin"}
    assert scanned.records["model/weights.bin"].sha256 == sha(weights)
    with pytest.raises(UnsafeArchiveError, match="more than"):
        scan(archive.ReadLimits(max_total_bytes=WEIGHTS_SIZE - 1), tmp_path / "b")


def test_a_damaged_large_entry_fails_the_import_as_it_uploads_and_undoes_it(
        exported_zip, server_b, tmp_path):
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(exported_zip.read_bytes())
    extent = scan_in_place(exported_zip, tmp_path / "probe").extents["model/artifacts/weights.bin"]
    flip_a_byte(damaged, extent.offset + extent.size // 3)
    name = unique("damaged-big")
    client = mlflow.MlflowClient(server_b.url, server_b.url)
    before = registry_census(server_b.url)
    with pytest.raises(IntegrityError) as raised:
        api.import_archive(str(damaged), name=name, experiment=name, tracking_uri=server_b.url,
                           progress=False)
    assert "weights.bin" in str(raised.value) and "\n" not in str(raised.value)
    after = registry_census(server_b.url)
    assert after["model_versions"] == before["model_versions"]
    assert after["registered_models"] == before["registered_models"]
    # What the import made before the upload failed is deleted again.
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    assert runs and all(run.info.lifecycle_stage == "deleted" for run in runs)
    assert client.search_logged_models([experiment.experiment_id]) == []
    # The undamaged archive imports under the same name afterwards.
    imported = api.import_archive(str(exported_zip), name=name, tracking_uri=server_b.url,
                                  progress=False)
    assert imported.version == "1"


def test_through_a_symlinked_temporary_folder_every_byte_is_still_the_real_one(
        served_model, server_b, tmp_path, monkeypatch):
    # Placeholders are looked up by resolved path; a temporary folder reached through a
    # link must not turn a lookup into a miss (and a placeholder's zeros into the model).
    real = tmp_path / "real-tmp"
    real.mkdir()
    (tmp_path / "linked-tmp").symlink_to(real)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "linked-tmp"))
    exported = api.export_model(served_model.uri, tmp_path / "out.zip",
                                tracking_uri=served_model.url, progress=False)
    assert_holds(archive_members(Path(exported.location)), served_model)
    imported = api.import_archive(exported.location, name=unique("linked-tmp"),
                                  tracking_uri=server_b.url, progress=False)
    assert [sha(data) for data in uploaded_weights(server_b, imported.model_uri)] == \
        [sha(served_model.weights)]


class Dangerous:
    """Pickles as a call to os.system: what the scanner must find even in a file it reads
    from inside the archive."""

    def __reduce__(self):
        import os

        return (os.system, ("true",))


def test_pickles_left_in_the_archive_are_scanned_there(server_a, server_b, tmp_path):
    import pickle

    evil = tmp_path / "state.pkl"
    evil.write_bytes(pickle.dumps([Dangerous(), random.Random(3).randbytes(2 * 1024 * 1024)]))
    name = unique("in-place-pickle")
    with global_tracking_uri(server_a.url), mlflow.start_run():
        mlflow.pyfunc.log_model(name="model", python_model=FirstByteModel(),
                                artifacts={"weights": str(evil)}, registered_model_name=name,
                                pip_requirements=["numpy"])
    exported = api.export_model(f"models:/{name}/1", tmp_path / "evil.zip",
                                tracking_uri=server_a.url, progress=False)
    info = api.inspect_archive(exported.location)
    pickles = {finding["path"]: finding for finding in info.pickles}
    assert any("system" in g for g in pickles["model/artifacts/state.pkl"]["dangerous"])
    assert "model/artifacts/state.pkl" in scan_in_place(exported.location, tmp_path / "x").extents
    before = registry_census(server_b.url)
    with pytest.raises(UnsafeArchiveError) as raised:
        api.import_archive(exported.location, tracking_uri=server_b.url, scan="strict",
                           progress=False)
    assert "state.pkl" in str(raised.value)
    assert registry_census(server_b.url) == before


def test_a_signed_archive_with_entries_in_place_verifies_its_signature(served_model, server_b,
                                                                      tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    exported = api.export_model(served_model.uri, tmp_path / "s.zip", sign_key=private,
                                tracking_uri=served_model.url, progress=False)
    imported = api.import_archive(exported.location, name=unique("in-place-signed"),
                                  tracking_uri=server_b.url, verify_key=public, progress=False)
    assert [sha(data) for data in uploaded_weights(server_b, imported.model_uri)] == \
        [sha(served_model.weights)]


def test_an_extent_reads_only_its_own_bytes(tmp_path):
    from mlflow_archive_plugin.storage.extents import UploadBody, open_extent

    data = random.Random(2).randbytes(3 * 1024 * 1024)
    path = tmp_path / "blob"
    path.write_bytes(b"HEAD" + data + b"TAIL")
    extent = Extent(str(path), 4, len(data), sha(data))
    with open_extent(extent) as handle:
        assert handle.read() == data
        handle.seek(-10, 2)
        assert handle.read() == data[-10:]
    body = UploadBody(extent, "blob")
    try:
        assert len(body) == len(data)
        parts = []
        while part := body.read(16384):
            parts.append(part)
        assert b"".join(parts) == data
    finally:
        body.close()
