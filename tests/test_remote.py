"""Remote locations through fsspec: S3 (a real moto server, real s3fs), memory://, HTTP and FTP.

Every server listens on 127.0.0.1 only (tests/s3_server.py). The S3 server checks signatures
against the one IAM key it knows, so wrong credentials are refused as AWS would refuse them;
the AWS SDKs here never look for instance metadata or the user's ~/.aws files. Uploads that
fail (in the writer, or on the wire through a proxy that cuts the connection mid-body) must
leave no object at the final key and no temporary one beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from pathlib import Path

import fsspec
import pytest
from conftest import (
    assert_user_error,
    child_env,
    cli,
    free_port,
    registry_census,
    unique,
)
from mlflow import MlflowClient
from s3_server import (
    cutting_proxy,
    moto_s3_in_environment,
    start_ftp_server,
    start_http_server,
)

from mlflow_archive_plugin import formats as layouts
from mlflow_archive_plugin.api import export_model, import_archive, inspect_archive, verify_archive
from mlflow_archive_plugin.errors import (
    ArchiveError,
    DestinationExistsError,
    SourceNotFoundError,
    UnsupportedError,
)
from mlflow_archive_plugin.snapshot import ModelVersionInfo, RegisteredModelInfo, Snapshot
from mlflow_archive_plugin.storage import containers, location
from mlflow_archive_plugin.storage import pipeline as archive

pytestmark = pytest.mark.server

WRONG_SECRET = "Wr0ngSecret-" + "x" * 28  # noqa: S105 - a credential the server must refuse
# One attempt per request, so a test of a cut connection does not wait out SDK back-offs.
NO_RETRIES = {"config_kwargs": {"retries": {"max_attempts": 1}}}


class Boom(RuntimeError):
    """Raised inside a publish block: the writer failing half way."""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server, with this process's environment holding its credentials."""
    with moto_s3_in_environment(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def s3_export(rich_model, s3, tmp_path_factory):
    """The rich model exported by the CLI into an S3 "folder", its name derived: the JSON."""
    proc = cli(
        "export", rich_model.uri, "-o", f"s3://{s3.bucket}/models/", "--json", "-q",
        "--tracking-uri", rich_model.url, "--storage-option", f"endpoint_url={s3.endpoint}",
        cwd=tmp_path_factory.mktemp("s3-export"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def http_root(rich_zip, tmp_path_factory):
    """A folder holding the rich model's zip, served by ``python -m http.server``."""
    root = tmp_path_factory.mktemp("http-root")
    shutil.copyfile(rich_zip.location, root / "rich.zip")
    (root / "notes.txt").write_text("not an archive\n")
    server = start_http_server(root, tmp_path_factory.mktemp("http-log") / "http.log")
    yield server
    server.stop()


def s3_option(s3) -> list[str]:
    return ["--storage-option", f"endpoint_url={s3.endpoint}"]


def object_bytes(s3, key: str) -> bytes:
    return s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()


def model_dir_of(root: Path, size: int) -> Path:
    """A small MLflow-looking model folder with ``size`` bytes of incompressible weights."""
    model = root / "model"
    model.mkdir(parents=True)
    (model / "MLmodel").write_text("artifact_path: model\nflavors: {}\n")
    (model / "weights.bin").write_bytes(random.Random(7).randbytes(size))
    return model


def write_to(model: Path, target: location.Location, force: bool = False) -> archive.Written:
    snapshot = Snapshot(model_dir=model, mlmodel={"flavors": {}},
                        registered_model=RegisteredModelInfo(name="demo"),
                        model_version=ModelVersionInfo(version="1"))
    return archive.write_archive(snapshot, layouts.get_layout("mlflow"),
                                 containers.get_container("zip"), target, force=force,
                                 show_progress=False)


# --------------------------------------------------------------------------- S3 round trip


def test_export_into_an_s3_folder_uploads_one_object_under_a_derived_name(s3, s3_export,
                                                                          rich_model):
    prefix = f"s3://{s3.bucket}/models/"
    assert s3_export["location"].startswith(prefix)
    assert s3_export["location"].endswith(".zip")
    key = s3_export["location"].removeprefix(f"s3://{s3.bucket}/")
    assert s3.keys("models/") == [key]  # nothing temporary left beside it
    data = object_bytes(s3, key)
    assert (len(data), hashlib.sha256(data).hexdigest()) == (
        s3_export["size"], s3_export["sha256"])


def test_import_from_s3_registers_the_model_with_its_metadata(s3, s3_export, rich_model,
                                                               server_b, tmp_path):
    name = unique("iris-from-s3")
    proc = cli(
        "import", s3_export["location"], "--name", name, "--json", "-q",
        "--tracking-uri", server_b.url, *s3_option(s3), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["name"], result["reused"]) == (name, False)

    source = MlflowClient(tracking_uri=rich_model.url, registry_uri=rich_model.url)
    target = MlflowClient(tracking_uri=server_b.url, registry_uri=server_b.url)
    before = source.get_model_version(rich_model.name, rich_model.version)
    after = target.get_model_version(name, result["version"])
    assert after.description == before.description
    assert {k: after.tags[k] for k in ("validated", "reviewer")} == {
        "validated": "true", "reviewer": "bob"}
    assert target.get_registered_model(name).description == \
        source.get_registered_model(rich_model.name).description
    assert target.get_model_version_by_alias(name, "champion").version == result["version"]
    params = target.get_run(after.run_id).data.params
    assert {k: params[k] for k in ("C", "max_iter", "solver")} == {
        "C": "0.5", "max_iter": "300", "solver": "lbfgs"}


def test_inspect_from_s3_with_the_endpoint_in_fsspec_configuration(s3, s3_export, rich_model,
                                                                   tmp_path):
    proc = cli("inspect", s3_export["location"], "--json", cwd=tmp_path,
               env=child_env(FSSPEC_S3_ENDPOINT_URL=s3.endpoint))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["container"], info["digest"]) == ("zip", s3_export["digest"])
    assert info["metadata"]["registered_model"]["name"] == rich_model.name


def test_verify_from_s3_with_the_endpoint_in_the_aws_environment(s3, s3_export, tmp_path):
    proc = cli("verify", s3_export["location"], "-q", cwd=tmp_path,
               env=child_env(AWS_ENDPOINT_URL_S3=s3.endpoint))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("intact: "), proc.stdout
    assert s3_export["digest"] in proc.stdout


def test_export_to_an_s3_key_refuses_to_overwrite_and_replaces_with_force(s3, rich_model):
    url = f"s3://{s3.bucket}/explicit/{uuid.uuid4().hex}/rich.tar.gz"
    options = s3.storage_options()
    first = export_model(rich_model.uri, url, tracking_uri=rich_model.url,
                         storage_options=options, progress=False)
    assert (first.location, first.container) == (url, "tar.gz")
    key = url.removeprefix(f"s3://{s3.bucket}/")
    s3.client().put_object(Bucket=s3.bucket, Key=key, Body=b"an older archive")
    with pytest.raises(DestinationExistsError, match="force"):
        export_model(rich_model.uri, url, tracking_uri=rich_model.url,
                     storage_options=options, progress=False)
    assert object_bytes(s3, key) == b"an older archive"
    again = export_model(rich_model.uri, url, tracking_uri=rich_model.url, force=True,
                         storage_options=options, progress=False)
    assert hashlib.sha256(object_bytes(s3, key)).hexdigest() == again.sha256
    assert verify_archive(url, storage_options=options, progress=False).ok
    assert s3.keys(key.rsplit("/", 1)[0]) == [key]


# --------------------------------------------------------------------------- atomic publish


def test_a_writer_failing_half_way_uploads_nothing(s3):
    key = f"broken/{uuid.uuid4().hex}/demo.zip"
    target = location.resolve(f"s3://{s3.bucket}/{key}", s3.storage_options())
    with pytest.raises(Boom), location.publish_file(target) as handle:
        handle.write(b"half an archive")
        raise Boom
    assert s3.keys(key.rsplit("/", 1)[0]) == []


@pytest.mark.parametrize("existing", [None, b"the archive that was here before"])
def test_an_upload_cut_mid_body_leaves_no_object_and_no_partial(s3, tmp_path, existing):
    """A real network failure: a proxy passes the first 256 KiB of each request to S3, then
    drops the connection; the archive is 2 MiB, so every attempt to upload it is cut."""
    model = model_dir_of(tmp_path, 2 << 20)
    prefix = f"cut/{uuid.uuid4().hex}"
    key = f"{prefix}/demo.zip"
    if existing is not None:
        s3.client().put_object(Bucket=s3.bucket, Key=key, Body=existing)
    port = int(s3.endpoint.rsplit(":", 1)[1])
    with cutting_proxy(port, 256 << 10) as proxy:
        target = location.resolve(f"s3://{s3.bucket}/{key}",
                                  s3.storage_options(endpoint_url=proxy.endpoint, **NO_RETRIES))
        with pytest.raises(ArchiveError, match=f"cannot write s3://{s3.bucket}/{key}"):
            write_to(model, target, force=existing is not None)
        assert proxy.cuts >= 1
    assert s3.keys(prefix) == ([key] if existing is not None else [])
    assert s3.pending_uploads(prefix) == []
    if existing is not None:
        assert object_bytes(s3, key) == existing


def test_the_same_upload_without_the_cut_arrives_whole(s3, tmp_path):
    model = model_dir_of(tmp_path, 2 << 20)
    key = f"whole/{uuid.uuid4().hex}/demo.zip"
    target = location.resolve(f"s3://{s3.bucket}/{key}", s3.storage_options())
    written = write_to(model, target)
    assert hashlib.sha256(object_bytes(s3, key)).hexdigest() == written.sha256
    scanned = archive.scan_archive(target, show_progress=False)
    assert scanned.integrity_problems() == []
    assert scanned.digest == written.digest


# --------------------------------------------------------------------------- S3 errors (CLI)


def closed_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"


def no_retries() -> list[str]:
    return ["--storage-option", "config_kwargs.retries.max_attempts=1"]


@pytest.mark.parametrize("retries", ["default", "none"])
def test_reading_from_an_unreachable_endpoint_is_one_line(retries, s3, server_b, tmp_path):
    """With the SDK's default retries (a few seconds of back-off) and with none."""
    before = registry_census(server_b.url)
    url = f"s3://{s3.bucket}/models/any.zip"
    extra = no_retries() if retries == "none" else []
    proc = cli("import", url, "--tracking-uri", server_b.url, *extra,
               "--storage-option", f"endpoint_url={closed_endpoint()}", cwd=tmp_path, timeout=60)
    assert f"cannot read {url}: Could not connect" in assert_user_error(proc)
    assert registry_census(server_b.url) == before


def test_export_to_an_unreachable_endpoint_fails_before_reading_the_model(rich_model, tmp_path):
    proc = cli(
        "export", rich_model.uri, "-o", "s3://archives/x.zip", "--tracking-uri", rich_model.url,
        "--storage-option", f"endpoint_url={closed_endpoint()}", *no_retries(), cwd=tmp_path,
        timeout=60,
    )  # fmt: skip
    assert "cannot reach s3://archives/x.zip" in assert_user_error(proc)
    assert list(tmp_path.iterdir()) == []


def test_import_with_a_wrong_secret_is_refused_without_showing_it(s3, s3_export, server_b,
                                                                   tmp_path):
    before = registry_census(server_b.url)
    proc = cli(
        "import", s3_export["location"], "--tracking-uri", server_b.url, *s3_option(s3),
        "--storage-option", f"key={s3.access_key}", "--storage-option", f"secret={WRONG_SECRET}",
        cwd=tmp_path,
    )  # fmt: skip
    line = assert_user_error(proc)
    assert "denied" in line and "credentials" in line
    assert WRONG_SECRET not in proc.stdout + proc.stderr
    assert registry_census(server_b.url) == before


def test_export_with_a_wrong_secret_in_the_environment_writes_nothing(s3, rich_model, tmp_path):
    before = s3.keys()
    proc = cli(
        "export", rich_model.uri, "-o", f"s3://{s3.bucket}/denied/x.zip",
        "--tracking-uri", rich_model.url, *s3_option(s3), cwd=tmp_path,
        env=child_env(AWS_SECRET_ACCESS_KEY=WRONG_SECRET),
    )  # fmt: skip
    assert "denied" in assert_user_error(proc)
    assert WRONG_SECRET not in proc.stdout + proc.stderr
    assert s3.secret_key not in proc.stdout + proc.stderr
    assert s3.keys() == before


def test_unknown_access_key_is_refused_for_verify(s3, s3_export, tmp_path):
    proc = cli("verify", s3_export["location"], *s3_option(s3), cwd=tmp_path,
               env=child_env(AWS_ACCESS_KEY_ID="AKIANOTAKNOWNKEY0000"))
    assert "denied" in assert_user_error(proc)


def test_no_credentials_anywhere_is_refused_quickly_without_asking_instance_metadata(
        s3, s3_export, tmp_path):
    env = {k: v for k, v in child_env().items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    assert env["AWS_EC2_METADATA_DISABLED"] == "true"
    proc = cli("inspect", s3_export["location"], *s3_option(s3), cwd=tmp_path, env=env,
               timeout=30)
    assert "denied (Unable to locate credentials)" in assert_user_error(proc)


def test_import_of_a_missing_object_registers_nothing(s3, server_b, tmp_path):
    before = registry_census(server_b.url)
    url = f"s3://{s3.bucket}/models/no-such-archive.zip"
    proc = cli("import", url, "--tracking-uri", server_b.url, *s3_option(s3), cwd=tmp_path)
    assert assert_user_error(proc) == f"error: {url} does not exist; check the path or URL"
    assert registry_census(server_b.url) == before


def test_export_into_a_missing_bucket_writes_nothing(s3, rich_model, tmp_path):
    before = s3.keys()
    proc = cli(
        "export", rich_model.uri, "-o", "s3://no-such-bucket/x.zip",
        "--tracking-uri", rich_model.url, *s3_option(s3), cwd=tmp_path,
    )  # fmt: skip
    assert "s3://no-such-bucket/x.zip" in assert_user_error(proc)
    assert s3.keys() == before
    assert list(tmp_path.iterdir()) == []


def test_a_storage_option_without_a_value_is_a_usage_error(tmp_path):
    proc = cli("inspect", "s3://archives/x.zip", "--storage-option", "endpoint_url",
               cwd=tmp_path)
    assert proc.returncode == 2
    assert "KEY=VALUE" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- memory://


def test_memory_round_trip_in_process(rich_model, server_b):
    root = f"memory://remote-tests-{uuid.uuid4().hex}"
    try:
        result = export_model(rich_model.uri, f"{root}/", tracking_uri=rich_model.url,
                              progress=False)
        assert result.location.startswith(f"{root}/") and result.location.endswith(".zip")
        info = inspect_archive(result.location)
        assert (info.digest, info.problems) == (result.digest, [])
        assert verify_archive(result.location, progress=False).ok
        name = unique("iris-from-memory")
        imported = import_archive(result.location, name=name, tracking_uri=server_b.url,
                                  progress=False)
        assert (imported.name, imported.digest, imported.reused) == (name, result.digest, False)
    finally:
        fs = fsspec.filesystem("memory")
        path = location.resolve(root).path
        if fs.exists(path):
            fs.rm(path, recursive=True)


# --------------------------------------------------------------------------- http(s)://


def test_verify_over_http_from_a_server_without_range_requests(http_root, rich_zip, tmp_path):
    proc = cli("verify", f"{http_root.url}/rich.zip", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert rich_zip.digest in proc.stdout


def test_inspect_over_http_in_process(http_root, rich_zip, rich_model):
    info = inspect_archive(f"{http_root.url}/rich.zip")
    assert (info.container, info.digest) == ("zip", rich_zip.digest)
    assert info.metadata["registered_model"]["name"] == rich_model.name


def test_import_over_http_registers_the_model(http_root, rich_zip, server_b):
    name = unique("iris-from-http")
    result = import_archive(f"{http_root.url}/rich.zip", name=name, tracking_uri=server_b.url,
                            progress=False)
    assert (result.name, result.digest) == (name, rich_zip.digest)


@pytest.mark.parametrize(("path", "message"), [
    ("missing.zip", "does not exist"),
    ("notes.txt", "not"),
])
def test_reading_what_is_not_an_archive_over_http_is_one_line(http_root, server_b, tmp_path,
                                                              path, message):
    before = registry_census(server_b.url)
    proc = cli("import", f"{http_root.url}/{path}", "--tracking-uri", server_b.url,
               cwd=tmp_path)
    assert message in assert_user_error(proc)
    assert registry_census(server_b.url) == before


def test_an_unreachable_http_server_is_one_line(tmp_path):
    proc = cli("inspect", f"{closed_endpoint()}/rich.zip", cwd=tmp_path)
    assert "cannot read http://127.0.0.1:" in assert_user_error(proc)


def test_http_is_refused_as_an_export_destination(http_root, rich_model, tmp_path):
    proc = cli("export", rich_model.uri, "-o", f"{http_root.url}/out.zip",
               "--tracking-uri", rich_model.url, cwd=tmp_path)
    assert "can only be read from" in assert_user_error(proc)
    assert sorted(p.name for p in http_root.root.iterdir()) == ["notes.txt", "rich.zip"]


# --------------------------------------------------------------------------- ftp://


FTP_USER, FTP_PASSWORD = "archiver", "ftp-pass-" + "y" * 12


@pytest.fixture(scope="module")
def ftp(tmp_path_factory):
    pytest.importorskip("pyftpdlib", reason="the ftp tests need pyftpdlib (the [test] extra)")
    root = tmp_path_factory.mktemp("ftp-root")
    server = start_ftp_server(root, tmp_path_factory.mktemp("ftp-log") / "ftp.log",
                              FTP_USER, FTP_PASSWORD)
    yield server
    server.stop()


def ftp_url(ftp, path: str, password: str = FTP_PASSWORD) -> str:
    return ftp.url.replace("ftp://", f"ftp://{FTP_USER}:{password}@") + path


def test_ftp_export_renames_a_complete_upload_into_place(ftp, rich_model, rich_zip, tmp_path):
    result = export_model(rich_model.uri, ftp_url(ftp, "/sub/rich.zip"),
                          tracking_uri=rich_model.url, progress=False)
    assert FTP_PASSWORD not in result.location
    assert result.location == ftp_url(ftp, "/sub/rich.zip", password="***")
    stored = ftp.root / "sub" / "rich.zip"
    assert sorted(p.name for p in stored.parent.iterdir()) == ["rich.zip"]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == result.sha256
    proc = cli("verify", ftp_url(ftp, "/sub/rich.zip"), "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert result.digest in proc.stdout


def test_ftp_with_a_wrong_password_is_one_line_without_it(ftp, tmp_path):
    wrong = "not-the-password-" + "z" * 10
    proc = cli("inspect", ftp_url(ftp, "/sub/rich.zip", password=wrong), cwd=tmp_path)
    line = assert_user_error(proc)
    assert "denied" in line
    assert wrong not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- locations


def test_resolve_masks_a_password_in_the_url_and_in_messages():
    resolved = location.resolve("memory://user:hunter2hunter2@host/x.zip")
    assert "hunter2hunter2" not in resolved.url
    assert resolved.scrub("failed for hunter2hunter2") == "failed for ***"


def test_resolve_of_an_uninstalled_protocol_is_unsupported():
    with pytest.raises(UnsupportedError, match="cannot open"):
        location.resolve("nosuchproto://bucket/x.zip")


def test_open_source_of_a_missing_http_path_is_source_not_found(http_root):
    target = location.resolve(f"{http_root.url}/missing.zip")
    with pytest.raises(SourceNotFoundError), location.open_source(target):
        pass


def test_file_urls_resolve_to_their_local_path(tmp_path):
    path = tmp_path / "x.zip"
    resolved = location.resolve(f"file://{path}")
    assert resolved.is_local and resolved.path == str(path)
    assert os.path.isabs(resolved.path)
