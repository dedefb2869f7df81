"""``archive+<scheme>`` artifact repositories, through MLflow's own entry points only.

Three uses: an archive file read as the MLflow model inside it (``mlflow.pyfunc``,
``mlflow artifacts download``, ``mlflow models serve``), a model folder written as a new
archive, and a folder (local, or S3 on a real moto server) used as an experiment's artifact
store, where each logged model is kept as one archive object while MLflow lists and downloads
its files as usual. The archives read here are made by the plugin's own export, in every
layout, from a model registered on a real tracking server.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import (
    MlflowServer,
    child_env,
    cli,
    download_model,
    free_port,
    global_tracking_uri,
    load_and_predict,
    tree_hashes,
    unique,
)
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import (
    get_artifact_repository,
    get_registered_artifact_repositories,
)
from s3_server import moto_s3_in_environment

from mlflow_archive_plugin import export_model, verify_archive

pytestmark = pytest.mark.server

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "artifact_repository.py"
PACKED = ".mlflow-archive.zip"
# Each layout the plugin writes, and the file name its archive gets here.
LAYOUT_FILES = {
    "mlflow": "iris.zip",
    "mar": "iris.mar",
    "bentoml": "iris.bentomodel",
    "mlarchive": "iris.mlarchive",
    "portable": "iris-portable.zip",
}
FEATURES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
QUIET = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def archive_uri(path: Path) -> str:
    return f"archive+file://{path}"


def mlflow_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 180):
    """``python -m mlflow ARGS`` in a child process."""
    return subprocess.run([sys.executable, "-m", "mlflow", *args], cwd=str(cwd),
                          env=env or child_env(**QUIET), capture_output=True, text=True,
                          timeout=timeout)


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def iris(rich_model) -> tuple[str, np.ndarray, np.ndarray]:
    """The session's registered model (it has the signature a portable package needs): its
    URI, inputs and predictions."""
    return rich_model.uri, rich_model.X, rich_model.predictions


@pytest.fixture(scope="module")
def archives(iris, server_a, tmp_path_factory) -> dict[str, Path]:
    """The model exported once in every layout."""
    root = tmp_path_factory.mktemp("repo-archives")
    return {
        layout: Path(export_model(iris[0], root / file_name, format=layout,
                                  tracking_uri=server_a.url).location)
        for layout, file_name in LAYOUT_FILES.items()
    }


@pytest.fixture(scope="module")
def model_files(rich_model, server_a, tmp_path_factory) -> Path:
    """The logged model's own folder, as MLflow gives it back (through its LoggedModel: a
    ``models:/<name>/<version>`` download adds a ``registered_model_meta`` file)."""
    return download_model(f"models:/{rich_model.model_id}", server_a.url,
                          tmp_path_factory.mktemp("repo-model"))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server; this process's environment holds its credentials and endpoint."""
    root = tmp_path_factory.mktemp("repo-moto")
    with moto_s3_in_environment(root, ("MLFLOW_S3_ENDPOINT_URL",)) as server:
        yield server


def log_to_store(server: MlflowServer, artifact_location: str, name: str, X: np.ndarray):
    """Log and register a fitted model in a new experiment stored at ``artifact_location``,
    plus a note logged as a single file; returns (run id, model id, predictions)."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, labels = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=200).fit(features, labels)
    client = MlflowClient(server.url)
    experiment_id = client.create_experiment(unique("repo-exp"),
                                             artifact_location=artifact_location)
    with global_tracking_uri(server.url), mlflow.start_run(experiment_id=experiment_id) as run:
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name)
        mlflow.log_text("kept as it came\n", "notes/readme.txt")
    return run.info.run_id, info.model_id, model.predict(X)


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("layout", list(LAYOUT_FILES))
def test_pyfunc_loads_the_model_inside_every_layout(layout, archives, iris):
    _, X, expected = iris
    model = mlflow.pyfunc.load_model(archive_uri(archives[layout]))
    np.testing.assert_array_equal(np.asarray(model.predict(X)), expected)


def test_model_load_reads_mlmodel_with_the_archive_as_root(archives):
    # Model.load asks a repository rooted at the archive itself for "MLmodel".
    model = mlflow.models.Model.load(archive_uri(archives["bentoml"]))
    assert {"python_function", "sklearn"} <= set(model.flavors)


def test_a_foreign_mar_reads_as_an_archive_flavor_model(tmp_path):
    from mlflow_archive_plugin.torchserve import ModelArchiverConfig, generate_model_archive

    (tmp_path / "weights.pt").write_bytes(b"\x00weights")
    (tmp_path / "handler.py").write_text("def handle(data, context):\n    return data\n")
    generate_model_archive(ModelArchiverConfig(
        model_name="echo", handler=str(tmp_path / "handler.py"), version="1.0",
        serialized_file=str(tmp_path / "weights.pt"), export_path=str(tmp_path)))
    (tmp_path / "out").mkdir()
    local = Path(mlflow.artifacts.download_artifacts(archive_uri(tmp_path / "echo.mar"),
                                                     dst_path=str(tmp_path / "out")))
    flavor = mlflow.models.Model.load(str(local)).flavors["mlflow_archive"]
    assert flavor["layout"] == "mar"
    stored = local / flavor["archive"]
    assert stored.read_bytes() == (tmp_path / "echo.mar").read_bytes()


def test_cli_download_gives_the_model_files_byte_for_byte(archives, tmp_path):
    proc = mlflow_cli("artifacts", "download", "-u", archive_uri(archives["mar"]),
                      "-d", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    downloaded = Path(proc.stdout.strip().splitlines()[-1])
    assert downloaded == tmp_path / "iris.mar" and downloaded.is_dir()
    with zipfile.ZipFile(archives["mar"]) as archive:
        inner = {name.removeprefix("model/"): hashlib.sha256(archive.read(name)).hexdigest()
                 for name in archive.namelist()
                 if name.startswith("model/") and not name.endswith("/")}
    assert "MLmodel" in inner
    assert tree_hashes(downloaded) == inner


def test_models_serve_answers_like_pyfunc(archives, iris, tmp_path):
    _, X, expected = iris
    port = free_port()
    env = child_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    **QUIET)
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m",
             archive_uri(archives["mlarchive"]), "-h", "127.0.0.1", "-p", str(port),
             "--env-manager", "local"],
            cwd=str(tmp_path), env=env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                with opener.open(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        body = json.dumps({"dataframe_split": {"columns": FEATURES, "data": X.tolist()}})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=body.encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with opener.open(request, timeout=30) as response:
            predictions = json.loads(response.read())["predictions"]
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
    np.testing.assert_array_equal(np.asarray(predictions), expected)


# --------------------------------------------------------------------------- writing


def test_log_artifacts_writes_a_native_archive_that_verifies_and_imports(
        model_files, iris, server_a, tmp_path):
    target = tmp_path / "written.zip"
    get_artifact_repository(archive_uri(target)).log_artifacts(str(model_files))

    with zipfile.ZipFile(target) as archive:
        names = set(archive.namelist())
    assert {"mlflow-archive.json", "checksum.txt", "model/MLmodel"} <= names
    assert cli("verify", str(target), cwd=tmp_path).returncode == 0
    name = unique("repo-written")
    proc = cli("import", str(target), "--name", name, "--tracking-uri", server_a.url, "--json",
               "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model_uri"] == f"models:/{name}/1"
    _, X, expected = iris
    np.testing.assert_array_equal(load_and_predict(f"models:/{name}/1", server_a.url, X),
                                  expected)


def test_an_existing_archive_is_never_overwritten(archives, model_files):
    before = archives["mlflow"].read_bytes()
    with pytest.raises(MlflowException, match="already exists") as caught:
        get_artifact_repository(archive_uri(archives["mlflow"])).log_artifacts(str(model_files))
    assert "\n" not in str(caught.value.message)
    assert archives["mlflow"].read_bytes() == before


def test_a_folder_without_mlmodel_is_refused_and_nothing_is_written(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.csv").write_text("1,2\n")
    target = tmp_path / "data.zip"
    with pytest.raises(MlflowException, match="no MLmodel"):
        get_artifact_repository(archive_uri(target)).log_artifacts(str(tmp_path / "data"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# --------------------------------------------------------------------------- as a store


def test_local_store_keeps_each_model_as_one_verified_archive(server_a, iris, tmp_path):
    _, X, _ = iris
    store = tmp_path / "store"
    name = unique("repo-store")
    run_id, model_id, expected = log_to_store(server_a, archive_uri(store), name, X)

    model_root = store / "models" / model_id / "artifacts"
    assert [p.name for p in model_root.iterdir()] == [PACKED]
    assert verify_archive(model_root / PACKED).ok
    assert (store / run_id / "artifacts" / "notes" / "readme.txt").read_text() == \
        "kept as it came\n"

    listed = {info.path for info in MlflowClient(server_a.url).list_logged_model_artifacts(
        model_id)}
    assert {"MLmodel", "model.skops", "requirements.txt"} <= listed
    np.testing.assert_array_equal(load_and_predict(f"models:/{name}/1", server_a.url, X),
                                  expected)


def test_ui_listing_through_the_server_shows_the_packed_files(server_a, iris, tmp_path):
    # The server itself builds the repository for the UI's requests, when the location is
    # not one it proxies.
    _, X, _ = iris
    store = tmp_path / "ui-store"
    _, model_id, _ = log_to_store(server_a, archive_uri(store), unique("repo-ui"), X)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"{server_a.url}/ajax-api/2.0/mlflow/logged-models/{model_id}/artifacts/directories"
    with opener.open(url, timeout=30) as response:
        files = {entry["path"]: entry for entry in json.loads(response.read())["files"]}
    assert "MLmodel" in files and not files["MLmodel"]["is_dir"]
    packed = zipfile.ZipFile(store / "models" / model_id / "artifacts" / PACKED)
    assert files["model.skops"]["file_size"] == packed.getinfo("model/model.skops").file_size


def test_cli_log_artifacts_into_a_store_run_packs_the_model(server_a, model_files, tmp_path):
    store = tmp_path / "cli-store"
    client = MlflowClient(server_a.url)
    experiment_id = client.create_experiment(unique("repo-cli"),
                                             artifact_location=archive_uri(store))
    run_id = client.create_run(experiment_id).info.run_id
    env = child_env(MLFLOW_TRACKING_URI=server_a.url, **QUIET)
    proc = mlflow_cli("artifacts", "log-artifacts", "--local-dir", str(model_files),
                      "--run-id", run_id, "--artifact-path", "model", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in (store / run_id / "artifacts" / "model").iterdir()] == [PACKED]

    proc = mlflow_cli("artifacts", "download", "--run-id", run_id, "--artifact-path", "model",
                      "-d", str(tmp_path / "back"), cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert tree_hashes(tmp_path / "back" / "model") == tree_hashes(model_files)


def test_files_logged_later_stay_retrievable_beside_a_packed_model(server_a, model_files,
                                                                  tmp_path):
    store = tmp_path / "mixed-store"
    repo = get_artifact_repository(archive_uri(store))
    repo.log_artifacts(str(model_files), "model")
    newer = tmp_path / "requirements.txt"
    newer.write_text("scikit-learn\n# pinned later\n")
    repo.log_artifact(str(newer), "model")
    extra = tmp_path / "eval.json"
    extra.write_text('{"accuracy": 0.97}\n')
    repo.log_artifact(str(extra), "model")

    listed = {info.path for info in repo.list_artifacts("model")}
    assert {"model/MLmodel", "model/eval.json", "model/requirements.txt"} <= listed
    back = Path(repo.download_artifacts("model", str(tmp_path)))
    assert (back / "requirements.txt").read_text() == newer.read_text()
    assert (back / "eval.json").read_text() == extra.read_text()
    assert (back / "model.skops").read_bytes() == (model_files / "model.skops").read_bytes()


def test_s3_store_keeps_each_model_as_one_archive_object(s3, server_a, iris):
    _, X, _ = iris
    prefix = unique("store")
    name = unique("repo-s3")
    _, model_id, expected = log_to_store(server_a, f"archive+s3://{s3.bucket}/{prefix}", name, X)

    model_keys = s3.keys(f"{prefix}/models/{model_id}/")
    assert model_keys == [f"{prefix}/models/{model_id}/artifacts/{PACKED}"]
    assert s3.pending_uploads(prefix) == []
    assert any(key.endswith("notes/readme.txt") for key in s3.keys(prefix))
    np.testing.assert_array_equal(load_and_predict(f"models:/{name}/1", server_a.url, X),
                                  expected)


# --------------------------------------------------------------------------- bad input


def test_a_missing_archive_is_one_line_through_the_cli(tmp_path):
    missing = tmp_path / "absent.zip"
    proc = mlflow_cli("artifacts", "download", "-u", archive_uri(missing), "-d", str(tmp_path),
                      cwd=tmp_path)
    assert proc.returncode != 0
    assert last_line(proc).endswith(f"{archive_uri(missing)} does not exist; check the "
                                    "archive's path"), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_checksum_failure_is_refused_and_nothing_is_downloaded(archives, tmp_path):
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(archives["mlflow"]) as source, zipfile.ZipFile(tampered, "w") as out:
        for entry in source.infolist():
            data = source.read(entry.filename)
            if entry.filename == "model/requirements.txt":
                data += b"evil-package\n"
            out.writestr(entry, data)
    destination = tmp_path / "out"
    destination.mkdir()
    with pytest.raises(MlflowException, match="differs from checksum.txt") as caught:
        mlflow.artifacts.download_artifacts(archive_uri(tampered), dst_path=str(destination))
    assert "\n" not in caught.value.message
    assert list(destination.iterdir()) == []


def test_an_unknown_inner_scheme_is_one_clear_line():
    repository = get_registered_artifact_repositories()["archive+file"]
    with pytest.raises(MlflowException, match="nosuchfs") as caught:
        repository("archive+nosuchfs://bucket/model.zip")
    assert "\n" not in caught.value.message


def test_files_cannot_be_added_inside_an_archive(archives, tmp_path):
    before = archives["mlflow"].read_bytes()
    note = tmp_path / "note.txt"
    note.write_text("x")
    with pytest.raises(MlflowException, match="written whole"):
        get_artifact_repository(archive_uri(archives["mlflow"])).log_artifact(str(note))
    assert archives["mlflow"].read_bytes() == before


# --------------------------------------------------------------------------- the example


def test_example_script_shows_the_three_uses(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--workdir", str(tmp_path / "demo")],
                          cwd=str(tmp_path), env=child_env(**QUIET), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for use in ("store:", "read:", "write:"):
        assert use in proc.stdout, proc.stdout
    assert "FAILED" not in proc.stdout
