"""Remote flakiness (issue 17, item 5): transient failures are retried, lasting ones are one
line.

A loopback proxy (tests/flaky_proxy.py) fails every third request, with a 503 or a reset
connection, in front of a real `mlflow server`, `python -m http.server` and moto's S3. Export,
import and reads through it succeed, and the proxy's counters show that failures did happen;
through a proxy that fails every request, each command ends in one line naming what it
could not do.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
from pathlib import Path

import pytest
from conftest import assert_user_error, child_env, cli, registry_census, unique
from flaky_proxy import flaky_proxy
from s3_server import moto_s3_in_environment, start_http_server

pytestmark = pytest.mark.server

# MLflow's client retries on its own (MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7) with a
# back-off of seconds; a short one keeps these tests quick without changing what is retried.
QUICK_RETRIES = {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0"}


def port_of(url: str) -> int:
    return urllib.parse.urlsplit(url).port


@pytest.mark.parametrize("mode", ["503", "reset"])
def test_export_and_import_through_a_flaky_tracking_server(mode, rich_model, server_b,
                                                            tmp_path):
    archive = tmp_path / "rich.zip"
    with flaky_proxy(port_of(rich_model.url), 3, mode) as proxy:
        proc = cli("export", rich_model.uri, "-o", str(archive), "--tracking-uri",
                   proxy.endpoint, "-q", cwd=tmp_path, env=child_env(**QUICK_RETRIES),
                   timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert proxy.failed > 0, "the proxy failed nothing: the test tested nothing"
    before = registry_census(server_b.url)
    name = unique("flaky")
    with flaky_proxy(port_of(server_b.url), 3, mode) as proxy:
        proc = cli("import", str(archive), "--name", name, "--tracking-uri", proxy.endpoint,
                   "-q", "--json", cwd=tmp_path, env=child_env(**QUICK_RETRIES), timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert proxy.failed > 0
    assert json.loads(proc.stdout)["version"] in ("1", 1)
    after = registry_census(server_b.url)
    assert after["model_versions"] == before["model_versions"] + 1  # once, not once a retry


def test_reading_an_archive_over_a_flaky_http_server(rich_zip, tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    shutil.copyfile(rich_zip.location, root / "rich.zip")
    server = start_http_server(root, tmp_path / "http.log")
    try:
        with flaky_proxy(port_of(server.url), 3) as proxy:
            proc = cli("verify", f"{proxy.endpoint}/rich.zip", "-q", cwd=tmp_path)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert proxy.failed > 0
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["503", "reset"])
def test_export_to_s3_through_a_flaky_endpoint(mode, rich_model, tmp_path):
    with moto_s3_in_environment(tmp_path / "moto") as s3, \
            flaky_proxy(port_of(s3.endpoint), 3, mode) as proxy:
        proc = cli("export", rich_model.uri, "-o", f"s3://{s3.bucket}/m/rich.zip",
                   "--tracking-uri", rich_model.url, "-q", "--storage-option",
                   f"endpoint_url={proxy.endpoint}", cwd=tmp_path,
                   env=s3.env(**QUICK_RETRIES), timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert proxy.failed > 0
        assert s3.keys("m/") == ["m/rich.zip"]
        verified = cli("verify", f"s3://{s3.bucket}/m/rich.zip", "-q", "--storage-option",
                       f"endpoint_url={s3.endpoint}", cwd=tmp_path, env=s3.env())
        assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_tracking_server_that_always_fails_is_one_line(rich_model, tmp_path):
    with flaky_proxy(port_of(rich_model.url), 1) as proxy:
        line = assert_user_error(cli("export", rich_model.uri, "-o", str(tmp_path / "a.zip"),
                                     "--tracking-uri", proxy.endpoint, "-q", cwd=tmp_path,
                                     env=child_env(**QUICK_RETRIES), timeout=300))
        assert proxy.requests > 1, "nothing was retried"
    assert "503" in line or "tracking server" in line, line
    assert not any(Path(tmp_path).glob("*.zip"))


def test_an_http_source_that_always_fails_is_one_line(rich_zip, tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    shutil.copyfile(rich_zip.location, root / "rich.zip")
    server = start_http_server(root, tmp_path / "http.log")
    try:
        with flaky_proxy(port_of(server.url), 1) as proxy:
            line = assert_user_error(cli("verify", f"{proxy.endpoint}/rich.zip", "-q",
                                         cwd=tmp_path))
            assert proxy.requests > 1, "nothing was retried"
        assert "cannot read" in line and "rich.zip" in line, line
    finally:
        server.stop()
