"""The ``archive`` deployments target, through MLflow's own entry points only.

Everything goes through ``mlflow.deployments.get_deploy_client("archive:...")`` or the
``mlflow deployments`` CLI in a subprocess, against models registered on the real
``server_a``; stores are local folders and a real S3 endpoint (moto) on loopback.
``run-local`` is started on a free loopback port and queried over HTTP.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import (
    child_env,
    free_port,
    global_tracking_uri,
    register_iris_model,
    sha256_file,
    tree_hashes,
    unique,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from mlflow import MlflowClient
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException
from s3_server import moto_s3_in_environment

from mlflow_archive_plugin import inspect_archive, verify_archive

pytestmark = pytest.mark.server

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "deployments.py"
RECORD = "deployment.json"
DEFAULT_STORE = "mlflow-archive-deployments"
EXTENSIONS = {"mlflow": ".zip", "mar": ".mar", "bentoml": ".bentomodel",
              "mlarchive": ".mlarchive", "portable": ".zip"}
RUN_LOCAL_START = 120.0


# --------------------------------------------------------------------------- fixtures


@dataclass
class Models:
    """One registered model with two versions that predict differently on ``X``."""

    name: str
    url: str
    X: pd.DataFrame
    v1: np.ndarray  # pyfunc's predictions of version 1 on X
    v2: np.ndarray

    def uri(self, version: int | str) -> str:
        return f"models:/{self.name}/{version}"


@pytest.fixture(scope="module")
def models(server_a) -> Models:
    """Version 1 from register_iris_model (no signature); version 2 logged with an input
    example, so it has the signature a portable package needs."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    name = unique("deploy-iris")
    register_iris_model(server_a.url, name)
    features, labels = load_iris(return_X_y=True, as_frame=True)
    with global_tracking_uri(server_a.url), mlflow.start_run():
        mlflow.sklearn.log_model(LogisticRegression(C=0.02, max_iter=300).fit(features, labels),
                                 name="model", input_example=features.head(3),
                                 registered_model_name=name)
    X = features.iloc[::10]
    with global_tracking_uri(server_a.url):
        v1, v2 = (np.asarray(mlflow.pyfunc.load_model(f"models:/{name}/{v}").predict(X))
                  for v in (1, 2))
    assert not np.array_equal(v1, v2), "fixture sanity: the versions must predict differently"
    return Models(name, server_a.url, X, v1, v2)


@pytest.fixture(autouse=True)
def _tracking(server_a):
    """In-process calls resolve models:/ URIs through MLflow's global URIs, as users' do."""
    with global_tracking_uri(server_a.url):
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def client(store):
    return get_deploy_client(f"archive:{store}")


@pytest.fixture(scope="module")
def cli_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def cli_created(models, cli_workdir):
    """``mlflow deployments create -t archive`` (the default store in the working
    directory) of version 2 as a .mar in a tar.gz: the process it ran in."""
    return deployments("create", "-t", "archive", "--name", "cli-mar", "-m", models.uri(2),
                       "-C", "format=mar", "-C", "container=tar.gz",
                       cwd=cli_workdir, tracking=models.url)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server; this process's environment holds its credentials and, as MLflow
    users set it, MLFLOW_S3_ENDPOINT_URL."""
    root = tmp_path_factory.mktemp("moto")
    with moto_s3_in_environment(root, ("MLFLOW_S3_ENDPOINT_URL",)) as server:
        yield server


# --------------------------------------------------------------------------- helpers


def s3_env(server) -> dict[str, str]:
    return server.env(MLFLOW_S3_ENDPOINT_URL=server.endpoint)


def deployments(*args: str, cwd: Path, tracking: str, env: dict | None = None,
                timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m mlflow deployments ARGS`` with MLFLOW_TRACKING_URI set to ``tracking``."""
    return subprocess.run(
        [sys.executable, "-m", "mlflow", "deployments", *args],
        cwd=str(cwd), env=child_env(MLFLOW_TRACKING_URI=tracking, **(env or {})),
        capture_output=True, text=True, timeout=timeout,
    )


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def assert_mlflow_cli_error(proc: subprocess.CompletedProcess) -> str:
    """MLflow's CLI reported the plugin's error: exit 1, one ``Error: `` line, no traceback."""
    detail = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 1, detail
    assert "Traceback" not in proc.stderr, detail
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, detail
    return errors[0]


def refused(call, *args, **kwargs) -> MlflowException:
    """The MlflowException ``call`` raised: one line, no Python reprs of internals."""
    with pytest.raises(MlflowException) as info:
        call(*args, **kwargs)
    message = info.value.message
    assert message and "\n" not in message, message
    assert "Traceback" not in message, message
    return info.value


def store_state(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (folders as "<dir>"), to show nothing changed."""
    state = dict(tree_hashes(root)) if root.exists() else {}
    if root.exists():
        state.update({p.relative_to(root).as_posix(): "<dir>" for p in root.rglob("*")
                      if p.is_dir()})
    return state


def write_ec_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def predictions(response) -> np.ndarray:
    return np.asarray(response["predictions"])


# --------------------------------------------------------------------------- create, per format


@pytest.mark.parametrize("fmt", list(EXTENSIONS))
def test_create_writes_a_verified_archive_that_predicts_like_pyfunc(client, models, store, fmt):
    name = f"fmt-{fmt}"
    created = client.create_deployment(name, models.uri(2), config={"format": fmt})

    assert created["name"] == name
    assert created["flavor"] == "python_function"
    record = client.get_deployment(name)
    assert record == created
    archive = Path(record["location"])
    assert archive.is_file()
    assert archive.parent.parent == store / name
    assert (store / name / RECORD).is_file()
    assert record["format"] == fmt
    assert record["file"] == archive.name and archive.name.endswith(EXTENSIONS[fmt])
    assert record["size"] == archive.stat().st_size
    assert record["sha256"] == sha256_file(archive)
    assert record["source"] == models.uri(2)
    assert (record["model_name"], record["model_version"]) == (models.name, "2")
    report = verify_archive(archive)
    assert report.ok, report.problems
    assert record["digest"] == report.digest
    np.testing.assert_array_equal(predictions(client.predict(name, models.X)), models.v2)


def test_sign_key_signs_the_model_files_in_the_archive(client, models, tmp_path):
    key = write_ec_key(tmp_path / "signing-key.pem")

    record = client.create_deployment("signed", models.uri(2), config={"sign_key": str(key)})

    assert record["config"] == {"sign_key": str(key)}
    assert inspect_archive(record["location"]).signed


# --------------------------------------------------------------------------- list, update, delete


def test_list_returns_every_deployment_as_get_describes_it(tmp_path, models):
    client = get_deploy_client(f"archive:{tmp_path / 'listed'}")
    assert client.list_deployments() == []
    client.create_deployment("b-second", models.uri(1))
    client.create_deployment("a-first", models.uri(2), config={"format": "mlarchive"})

    listed = client.list_deployments()

    assert [d["name"] for d in listed] == ["a-first", "b-second"]
    assert listed == [client.get_deployment("a-first"), client.get_deployment("b-second")]


def test_update_exports_the_new_model_and_removes_the_old_archive_after(client, models, store):
    client.create_deployment("upd", models.uri(1))
    before = client.get_deployment("upd")
    np.testing.assert_array_equal(predictions(client.predict("upd", models.X)), models.v1)

    updated = client.update_deployment("upd", model_uri=models.uri(2),
                                       config={"format": "bentoml"})

    assert updated == client.get_deployment("upd")
    assert updated["flavor"] == "python_function"
    assert (updated["source"], updated["model_version"]) == (models.uri(2), "2")
    assert updated["format"] == "bentoml" and updated["file"].endswith(".bentomodel")
    assert updated["revision"] == before["revision"] + 1
    assert updated["created"] == before["created"]
    assert updated["updated"] >= before["updated"]
    assert updated["digest"] != before["digest"]
    assert not Path(before["location"]).exists()
    assert sorted(p.name for p in (store / "upd").iterdir()) == sorted(
        [RECORD, Path(updated["location"]).parent.name])
    # The same client notices the new archive instead of predicting with the old one.
    np.testing.assert_array_equal(predictions(client.predict("upd", models.X)), models.v2)


def test_update_without_model_uri_exports_the_source_again_and_drops_emptied_keys(client,
                                                                                   models):
    registry = MlflowClient(tracking_uri=models.url, registry_uri=models.url)
    registry.set_registered_model_alias(models.name, "live", "1")
    client.create_deployment("alias", f"models:/{models.name}@live", config={"format": "mar"})
    registry.set_registered_model_alias(models.name, "live", "2")

    updated = client.update_deployment("alias", config={"format": ""})

    assert updated["source"] == f"models:/{models.name}@live"
    assert updated["model_version"] == "2"
    assert updated["format"] == "mlflow" and updated["config"] == {}
    np.testing.assert_array_equal(predictions(client.predict("alias", models.X)), models.v2)


def test_failed_update_leaves_the_deployment_as_it_was(client, models, store):
    client.create_deployment("keep", models.uri(1), config={"format": "mar"})
    before = client.get_deployment("keep")
    state = store_state(store / "keep")

    error = refused(client.update_deployment, "keep", model_uri=models.uri(99))

    assert "99" in error.message
    assert client.get_deployment("keep") == before
    assert store_state(store / "keep") == state
    np.testing.assert_array_equal(predictions(client.predict("keep", models.X)), models.v1)


def test_delete_removes_record_and_archive_and_is_safe_to_repeat(client, models, store,
                                                                   capsys):
    client.create_deployment("gone", models.uri(1))

    client.delete_deployment("gone")

    assert not (store / "gone").exists()
    assert "gone" not in [d["name"] for d in client.list_deployments()]
    error = refused(client.get_deployment, "gone")
    assert error.error_code == "RESOURCE_DOES_NOT_EXIST"
    client.delete_deployment("gone")
    assert "nothing to delete" in capsys.readouterr().err


# --------------------------------------------------------------------------- bad input (API)


@pytest.mark.parametrize(("config", "expected"), [
    ({"format": "onnx"}, "unknown format 'onnx'"),
    ({"replicas": "2"}, "unknown config key 'replicas'"),
    ({"format": "mlarchive", "container": "tar.gz"}, "cannot use container 'tar.gz'"),
    ({"container": "rar"}, "unknown container 'rar'"),
    ({"sign_key": "/nonexistent/key.pem"}, "is not a file"),
    ({"port": "8080"}, "unknown config key 'port'"),  # run-local only
])
def test_create_with_bad_config_is_refused_and_writes_nothing(client, models, store, config,
                                                              expected):
    state = store_state(store)

    error = refused(client.create_deployment, "bad-config", models.uri(1), config=config)

    assert expected in error.message
    assert error.error_code == "INVALID_PARAMETER_VALUE"
    assert store_state(store) == state


def test_create_of_a_model_that_does_not_exist_writes_nothing(client, models, store):
    state = store_state(store)

    error = refused(client.create_deployment, "no-model", models.uri(42))

    assert models.uri(42) in error.message
    assert store_state(store) == state


@pytest.mark.parametrize(("call", "expected"), [
    (lambda c, m: c.create_deployment("../escape", m.uri(1)), "not usable as a folder name"),
    (lambda c, m: c.create_deployment("flavored", m.uri(1), flavor="sklearn"),
     "flavor 'sklearn' is not offered"),
    (lambda c, m: c.create_deployment("ep", m.uri(1), endpoint="prod"), "no endpoints"),
    (lambda c, m: c.explain("fmt-mlflow", m.X), "does not explain"),
])
def test_unsupported_requests_are_refused_in_one_line(client, models, store, call, expected):
    state = store_state(store)

    error = refused(call, client, models)

    assert expected in error.message
    assert store_state(store) == state


def test_create_of_an_existing_name_is_refused_and_keeps_the_deployment(client, models, store):
    client.create_deployment("taken", models.uri(1))
    state = store_state(store / "taken")

    error = refused(client.create_deployment, "taken", models.uri(2), config={"format": "mar"})

    assert error.error_code == "RESOURCE_ALREADY_EXISTS"
    assert "update" in error.message
    assert store_state(store / "taken") == state


@pytest.mark.parametrize("call", [
    lambda c, m: c.get_deployment("missing"),
    lambda c, m: c.update_deployment("missing", m.uri(1)),
    lambda c, m: c.predict("missing", m.X),
])
def test_a_name_that_does_not_exist_is_refused(client, models, store, call):
    state = store_state(store)

    error = refused(call, client, models)

    assert error.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert "no deployment 'missing'" in error.message
    assert store_state(store) == state


def test_predict_refuses_an_archive_changed_behind_the_record(client, models):
    record = client.create_deployment("tampered", models.uri(1))
    archive = Path(record["location"])
    archive.write_bytes(archive.read_bytes() + b"\0")

    error = refused(get_deploy_client(client.target_uri).predict, "tampered", models.X)

    assert "no longer matches" in error.message


# --------------------------------------------------------------------------- the mlflow CLI


def test_cli_create_uses_the_default_store_in_the_working_directory(cli_created, cli_workdir):
    out = ok(cli_created)

    assert "python_function deployment cli-mar is created" in out
    record = json.loads((cli_workdir / DEFAULT_STORE / "cli-mar" / RECORD).read_text())
    assert (record["format"], record["container"]) == ("mar", "tar.gz")
    assert Path(record["location"]).is_file()


def test_cli_get_prints_location_format_digest_size_and_source(cli_created, cli_workdir,
                                                                models):
    ok(cli_created)

    out = ok(deployments("get", "-t", "archive", "--name", "cli-mar", cwd=cli_workdir,
                         tracking=models.url))

    printed = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    record = get_deploy_client(f"archive:{cli_workdir / DEFAULT_STORE}").get_deployment("cli-mar")
    for key in ("location", "format", "container", "digest", "sha256", "size", "source"):
        assert printed[key] == str(record[key]), key


def test_cli_list_names_the_deployment(cli_created, cli_workdir, models):
    ok(cli_created)

    out = ok(deployments("list", "-t", "archive", cwd=cli_workdir, tracking=models.url))

    assert "'name': 'cli-mar'" in out


def test_cli_predict_matches_pyfunc(cli_created, cli_workdir, models):
    ok(cli_created)
    payload = cli_workdir / "input.json"
    models.X.to_json(payload)

    out = ok(deployments("predict", "-t", "archive", "--name", "cli-mar", "-I", str(payload),
                         cwd=cli_workdir, tracking=models.url))

    np.testing.assert_array_equal(np.asarray(json.loads(out)["predictions"]), models.v2)


def test_cli_update_then_delete(client, models, store, cli_workdir):
    client.create_deployment("cli-upd", models.uri(1))
    target = f"archive:{store}"

    out = ok(deployments("update", "-t", target, "--name", "cli-upd", "-m", models.uri(2),
                         "-C", "container=tar.xz", cwd=cli_workdir, tracking=models.url))

    assert "Deployment cli-upd is updated (with flavor python_function)" in out
    record = client.get_deployment("cli-upd")
    assert (record["source"], record["container"]) == (models.uri(2), "tar.xz")
    out = ok(deployments("delete", "-t", target, "--name", "cli-upd", cwd=cli_workdir,
                         tracking=models.url))
    assert "Deployment cli-upd is deleted" in out
    assert not (store / "cli-upd").exists()


def test_cli_help_documents_every_config_key(cli_workdir, models):
    out = ok(deployments("help", "-t", "archive", cwd=cli_workdir, tracking=models.url))

    for key in ("format=", "container=", "sign_key=", "port=", "host="):
        assert key in out, key
    for fmt in EXTENSIONS:
        assert fmt in out, fmt
    assert "archive:/s3://" in out


@pytest.mark.parametrize(("args", "expected"), [
    (("create", "--name", "x", "-C", "replicas=2"), "unknown config key 'replicas'"),
    (("get", "--name", "missing"), "no deployment 'missing'"),
])
def test_cli_bad_input_is_one_error_line_and_writes_nothing(store, models, cli_workdir, args,
                                                            expected):
    state = store_state(store)
    model = ("-m", models.uri(1)) if args[0] == "create" else ()

    proc = deployments(*args, *model, "-t", f"archive:{store}", cwd=cli_workdir,
                       tracking=models.url)

    assert expected in assert_mlflow_cli_error(proc)
    assert store_state(store) == state


# --------------------------------------------------------------------------- run-local


def _post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=30) as response:
        return json.loads(response.read())


def _wait_for_ping(url: str, process: subprocess.Popen, log: Path) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + RUN_LOCAL_START
    while True:
        assert process.poll() is None, f"run-local exited:\n{log.read_text(errors='replace')}"
        with (contextlib.suppress(urllib.error.URLError, OSError),
              opener.open(f"{url}/ping", timeout=2) as response):
            if response.status == 200:
                return
        assert time.monotonic() < deadline, f"no answer:\n{log.read_text(errors='replace')}"
        time.sleep(0.5)


def test_run_local_serves_the_archive_with_pyfuncs_predictions(models, tmp_path):
    port = free_port()
    log = tmp_path / "run-local.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "deployments", "run-local", "-t", "archive",
             "--name", "local", "-m", models.uri(2), "-C", "format=portable",
             "-C", f"port={port}"],
            cwd=str(tmp_path), env=child_env(MLFLOW_TRACKING_URI=models.url),
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_for_ping(url, process, log)
        split = json.loads(models.X.to_json(orient="split"))
        answer = _post_json(f"{url}/invocations", {"dataframe_split": split})
        np.testing.assert_array_equal(np.asarray(answer["predictions"]), models.v2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code = process.wait(timeout=30)
    output = log.read_text(errors="replace")
    assert code == 0, output
    assert "portable" in output and "stopped" in output
    assert not (tmp_path / DEFAULT_STORE).exists()  # run-local keeps nothing


# --------------------------------------------------------------------------- a store on S3


def test_s3_store_create_get_list_predict(s3, models, cli_workdir):
    target = f"archive:/s3://{s3.bucket}/deployments"

    out = ok(deployments("create", "-t", target, "--name", "s3-iris", "-m", models.uri(2),
                         "-C", "format=mlarchive", cwd=cli_workdir, tracking=models.url,
                         env=s3_env(s3)))

    assert "deployment s3-iris is created" in out
    client = get_deploy_client(target)
    record = client.get_deployment("s3-iris")
    prefix = f"s3://{s3.bucket}/deployments/s3-iris/"
    assert record["location"].startswith(prefix) and record["file"].endswith(".mlarchive")
    key = record["location"].removeprefix(f"s3://{s3.bucket}/")
    assert s3.keys("deployments/") == sorted([f"deployments/s3-iris/{RECORD}", key])
    body = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    assert len(body) == record["size"]
    assert [d["name"] for d in client.list_deployments()] == ["s3-iris"]
    np.testing.assert_array_equal(predictions(client.predict("s3-iris", models.X)), models.v2)


def test_s3_store_update_and_delete_leave_no_stray_objects(s3, models):
    client = get_deploy_client(f"archive:/s3://{s3.bucket}/replaced")
    first = client.create_deployment("s3-upd", models.uri(1), config={"format": "mar"})

    second = client.update_deployment("s3-upd", models.uri(2))

    keys = s3.keys("replaced/")
    old_key = first["location"].removeprefix(f"s3://{s3.bucket}/")
    new_key = second["location"].removeprefix(f"s3://{s3.bucket}/")
    assert keys == sorted([f"replaced/s3-upd/{RECORD}", new_key]) and old_key not in keys
    np.testing.assert_array_equal(predictions(client.predict("s3-upd", models.X)), models.v2)
    client.delete_deployment("s3-upd")
    assert s3.keys("replaced/") == []
    assert client.list_deployments() == []


# --------------------------------------------------------------------------- the example


def test_example_script_runs_against_a_tracking_server(server_a, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--workdir", str(tmp_path / "demo"),
         "--tracking-uri", server_a.url],
        cwd=str(tmp_path), env=child_env(PYTHONIOENCODING="utf-8"), capture_output=True,
        text=True, timeout=300,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "python_function deployment iris is created" in proc.stdout
    assert "all predictions match" in proc.stdout
    assert not list((tmp_path / "demo" / "store").iterdir())
