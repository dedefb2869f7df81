"""Inside a tracking server, an ``archive+`` URL may not make the server connect to a host a
client named (MLflow's GHSA-mr9f-g8qf-4w4j policy, which knows ``http`` but not
``archive+http``). A real ``mlflow server`` is asked, through its own ``/get-artifact``
endpoint, for a file of a run whose experiment points at an archive on another loopback HTTP
server; the HTTP server's log shows whether the tracking server went there.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from conftest import MlflowServer, start_mlflow_server, unique
from mlflow import MlflowClient
from s3_server import FolderServer, start_http_server

pytestmark = pytest.mark.server

ARCHIVE = "rich.zip"


@pytest.fixture(scope="module")
def archive_host(rich_zip, tmp_path_factory) -> Iterator[FolderServer]:
    """Another host (a second loopback HTTP server) holding a valid archive."""
    root = tmp_path_factory.mktemp("policy-http")
    shutil.copyfile(rich_zip.location, root / ARCHIVE)
    server = start_http_server(root, tmp_path_factory.mktemp("policy-http-log") / "http.log")
    yield server
    server.stop()


def requests_for_archive(host: FolderServer) -> int:
    return host.log.read_text(errors="replace").count(f"GET /{ARCHIVE}")


def ask_server_for_mlmodel(server: MlflowServer, host: FolderServer) -> tuple[int, str]:
    """Make a run in an experiment whose artifacts are ``archive+http://<host>/rich.zip`` and
    ask the tracking server itself for one of its files; the status and body it answers."""
    client = MlflowClient(tracking_uri=server.url)
    experiment = client.create_experiment(unique("policy"),
                                          artifact_location=f"archive+{host.url}/{ARCHIVE}")
    run = client.create_run(experiment)
    url = f"{server.url}/get-artifact?path=model/MLmodel&run_uuid={run.info.run_id}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=60) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def test_a_tracking_server_does_not_fetch_an_archive_from_a_host_a_client_named(
        archive_host, tmp_path):
    server = start_mlflow_server(tmp_path / "server")
    try:
        before = requests_for_archive(archive_host)
        status, body = ask_server_for_mlmodel(server, archive_host)
    finally:
        server.stop()
    assert status >= 400, body[:500]
    assert "does not connect to artifact location 'archive+http://" in body, body[:500]
    assert "MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES" in body
    assert requests_for_archive(archive_host) == before


def test_the_scheme_allowed_by_the_operator_is_fetched(archive_host, tmp_path):
    # The control: with the operator's explicit permission the same request goes through,
    # so the refusal above is the policy and not a broken set-up.
    server = start_mlflow_server(tmp_path / "server",
                                 MLFLOW_ALLOWED_HOST_ADDRESSED_ARTIFACT_SCHEMES="archive+http")
    try:
        before = requests_for_archive(archive_host)
        status, body = ask_server_for_mlmodel(server, archive_host)
    finally:
        server.stop()
    # The run's folder is not in the archive, so the answer is a 404 from reading it: the
    # server fetched the archive and looked inside.
    assert "does not connect" not in body, body[:500]
    assert "does not exist in the archive" in body, body[:500]
    assert requests_for_archive(archive_host) > before
