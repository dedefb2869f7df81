"""MLflow models exported as .mar are served by a real TorchServe; real .mar files import.

A real TorchServe (Java frontend, Python worker from this environment) runs on loopback
ports and answers with the generated handler; its predictions must equal ``mlflow.pyfunc``'s.
A .mar made by the real torch-model-archiver imports into a real MLflow server and comes
back out unchanged.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import global_tracking_uri, registry_census, unique
from mlflow import MlflowClient

from mlflow_archive_plugin import export_model, import_archive

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


@pytest.fixture(scope="module")
def iris_frame_model(server_a):
    """A scikit-learn model with named DataFrame columns, registered on server_a."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True, as_frame=True)
    X.columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    name = unique("iris served")  # a space: the .mar name must be made valid
    with global_tracking_uri(server_a.url), mlflow.start_run():
        mlflow.sklearn.log_model(LogisticRegression(max_iter=300).fit(X, y), name="model",
                                 input_example=X.head(3), registered_model_name=name)
    rows = X.iloc[::25].reset_index(drop=True)
    with global_tracking_uri(server_a.url):
        model = mlflow.pyfunc.load_model(f"models:/{name}/1")
        expected = np.asarray(model.predict(rows)).tolist()
    return name, rows, expected


def payload(kind: str, rows: pd.DataFrame) -> dict:
    if kind == "dataframe_split":
        return {"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}
    if kind == "dataframe_records":
        return {"dataframe_records": rows.to_dict(orient="records")}
    if kind == "instances":
        return {"instances": rows.to_dict(orient="records")}
    return {"inputs": rows.to_dict(orient="list")}


@pytest.fixture(scope="module")
def served(iris_frame_model, server_a, tmp_path_factory):
    """The model exported as a zip .mar and as a tgz, both served by one real TorchServe."""
    from conftest import running_torchserve

    name = iris_frame_model[0]
    store = tmp_path_factory.mktemp("store")
    mar = export_model(f"models:/{name}/1", store, format="mar", tracking_uri=server_a.url)
    tgz = export_model(f"models:/{name}/1", store / "tgz-model.tar.gz", format="mar",
                       container="tgz", tracking_uri=server_a.url)
    models = {"zipped": Path(mar.location).name, "tarred": Path(tgz.location).name}
    with running_torchserve(tmp_path_factory.mktemp("ts"), store, models) as server:
        yield server, mar


def test_export_names_the_mar_after_the_model_made_valid_for_torchserve(served,
                                                                        iris_frame_model):
    _, mar = served
    assert Path(mar.location).name == iris_frame_model[0].replace(" ", "_") + ".mar"


@pytest.mark.parametrize("model", ["zipped", "tarred"])
@pytest.mark.parametrize("kind", FORMATS)
def test_torchserve_predicts_what_pyfunc_predicts(served, iris_frame_model, model, kind):
    server, _ = served
    _, rows, expected = iris_frame_model
    status, answer = server.predict(model, payload(kind, rows))
    assert status == 200, answer
    assert answer == {"predictions": expected}


def test_a_bad_request_is_a_400_with_mlflows_error_and_the_worker_survives(served,
                                                                            iris_frame_model):
    server, _ = served
    _, rows, expected = iris_frame_model
    status, answer = server.predict("zipped", {"no_such_format": [1, 2]})
    assert status == 400
    assert answer["error_code"] == "BAD_REQUEST"
    status, answer = server.predict("zipped", payload("inputs", rows))
    assert (status, answer) == (200, {"predictions": expected})


def real_archiver() -> str:
    path = Path(sys.executable).parent / "torch-model-archiver"
    assert path.exists(), f"torch-model-archiver is not installed next to {sys.executable}"
    return str(path)


@pytest.fixture(scope="module")
def real_mar(tmp_path_factory) -> Path:
    """A .mar made by the real torch-model-archiver, with weights, extras and config."""
    src = tmp_path_factory.mktemp("real-inputs")
    (src / "weights.pt").write_bytes(np.random.default_rng(7).bytes(300_000))
    (src / "handler.py").write_text("def handle(data, context):\n    return data\n")
    (src / "index_to_name.json").write_text(json.dumps({"0": "cat", "1": "dog"}))
    (src / "requirements.txt").write_text("numpy\n")
    (src / "model-config.yaml").write_text("batchSize: 4\n")
    out = tmp_path_factory.mktemp("real-out")
    name = unique("real-mar")
    subprocess.run(
        [real_archiver(), "--model-name", name, "--version", "2.5", "--serialized-file",
         "weights.pt", "--handler", "handler.py", "--extra-files", "index_to_name.json",
         "-r", "requirements.txt", "-c", "model-config.yaml", "--export-path", str(out)],
        cwd=src, check=True, env={"PATH": "/usr/bin:/bin", "TMPDIR": str(src)},
    )
    return out / f"{name}.mar"


def test_a_real_mar_imports_with_its_manifest_as_tags(real_mar, server_b):
    manifest = json.loads(zipfile.ZipFile(real_mar).read("MAR-INF/MANIFEST.json"))
    result = import_archive(real_mar, tracking_uri=server_b.url)
    client = MlflowClient(server_b.url, server_b.url)
    version = client.get_model_version(result.name, result.version)
    assert result.name == manifest["model"]["modelName"]
    for key, value in manifest["model"].items():
        assert version.tags[f"torchserve.{key}"] == value
    assert version.tags["torchserve.runtime"] == "python"
    assert version.tags["torchserve.archiverVersion"] == "0.12.0"
    assert "2.5" in version.description


def test_a_real_mar_is_kept_whole_and_as_files(real_mar, server_b, tmp_path):
    result = import_archive(real_mar, tracking_uri=server_b.url)
    with global_tracking_uri(server_b.url):
        local = Path(mlflow.artifacts.download_artifacts(result.model_uri, dst_path=tmp_path))
    files = {p.relative_to(local / "files").as_posix(): p.read_bytes()
             for p in (local / "files").rglob("*") if p.is_file()}
    with zipfile.ZipFile(real_mar) as archive:
        assert files == {name: archive.read(name) for name in archive.namelist()}
    assert (local / "archive" / real_mar.name).read_bytes() == real_mar.read_bytes()


def test_a_real_mar_exports_again_byte_identical(real_mar, server_b, tmp_path):
    result = import_archive(real_mar, tracking_uri=server_b.url)
    again = import_archive(real_mar, tracking_uri=server_b.url)
    assert (again.version, again.reused) == (result.version, True)
    exported = export_model(result.model_uri, tmp_path, format="mar",
                            tracking_uri=server_b.url)
    assert Path(exported.location).name == real_mar.name
    assert (hashlib.sha256(Path(exported.location).read_bytes()).hexdigest()
            == hashlib.sha256(real_mar.read_bytes()).hexdigest())


def test_a_real_tgz_imports_without_its_name_folder(tmp_path, server_b):
    src = tmp_path / "in"
    src.mkdir()
    (src / "handler.py").write_text("def handle(data, context):\n    return data\n")
    name = unique("real-tgz")
    subprocess.run([real_archiver(), "--model-name", name, "--version", "1.0", "--handler",
                    "handler.py", "--archive-format", "tgz", "--export-path", str(tmp_path)],
                   cwd=src, check=True, env={"PATH": "/usr/bin:/bin", "TMPDIR": str(src)})
    tgz = tmp_path / f"{name}.tar.gz"
    with tarfile.open(tgz) as archive:
        assert all(member.startswith(f"{name}/") for member in archive.getnames())
    result = import_archive(tgz, tracking_uri=server_b.url)
    client = MlflowClient(server_b.url, server_b.url)
    listed = {a.path for a in client.list_logged_model_artifacts(result.model_id, "files")}
    assert listed == {"files/MAR-INF", "files/handler.py"}


def test_a_mar_without_model_version_registers_nothing(tmp_path, server_b):
    bad = tmp_path / "bad.mar"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json",
                         json.dumps({"runtime": "python", "model": {"modelName": "x",
                                                                    "handler": "h.py"}}))
        archive.writestr("h.py", "")
    before = registry_census(server_b.url)
    with pytest.raises(Exception, match="modelVersion"):
        import_archive(bad, tracking_uri=server_b.url)
    assert registry_census(server_b.url) == before
