"""What ``mlflow-archive export --format bentoml`` writes, the real BentoML takes as its own.

A registered sklearn model on a real MLflow server is exported with the CLI in every
container BentoML's ``import_model`` reads (``.bentomodel``, ``.xz``, ``.gz``, ``.bz2``,
``.tar``, ``.zip`` and a folder), imported by the real ``bentoml.models.import_model`` into a
fresh BENTOML_HOME, and loaded by the real ``bentoml.mlflow.load_model``: it predicts what
``mlflow.pyfunc`` predicts, and its ``model.yaml`` carries the registry's name, version,
tags, params, metrics and creation time as BentoML's own fields.
"""

from __future__ import annotations

import datetime
import json
import platform
import tarfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from conftest import cli, load_and_predict, register_iris_model, run_bentoml_cli
from mlflow import MlflowClient

# Container flag -> (file suffix, BentoML's input_format). BentoML guesses the format from the
# file's extension; a folder has none, so it must be told (its guess would be .bentomodel).
CONTAINERS = {
    "bentomodel": (".bentomodel", None),
    "xz": (".xz", None),
    "gz": (".gz", None),
    "bz2": (".bz2", None),
    "tar": (".tar", None),
    "zip": (".zip", None),
    "folder": ("", "folder"),
}


@dataclass
class Exported:
    """One CLI export of a registered version: where it went, and what BentoML should see."""

    path: Path
    input_format: str | None
    tag: str
    report: dict


def export_with_cli(uri: str, tracking_uri: str, out: Path, container: str,
                    tag: str) -> Exported:
    """``mlflow-archive export URI --format bentoml`` into ``out`` (the default container
    without ``--container``; ``xz`` by naming the file ``.xz``)."""
    args = ["export", uri, "--format", "bentoml", "--tracking-uri", tracking_uri, "--json", "-q"]
    if container == "xz":
        args += ["-o", str(out / "model.xz")]
    else:
        args += ["-o", f"{out}/"]
        if container != "bentomodel":
            args += ["--container", container]
    proc = cli(*args, cwd=out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    return Exported(Path(report["location"]), CONTAINERS[container][1], tag, report)


@pytest.fixture(scope="module")
def pyfunc_predictions(rich_model) -> np.ndarray:
    """What MLflow's own pyfunc predicts for the registered version."""
    return load_and_predict(rich_model.uri, rich_model.url, rich_model.X)


@pytest.fixture(scope="module")
def exports(rich_model, tmp_path_factory) -> dict[str, Exported]:
    """The rich model (version 2) exported once by the CLI in every container (two at a
    time)."""
    tag = f"{rich_model.name}:v{rich_model.version}"
    outs = {container: tmp_path_factory.mktemp(f"bento-{container}") for container in CONTAINERS}

    def export(container: str) -> Exported:
        return export_with_cli(rich_model.uri, rich_model.url, outs[container], container, tag)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(CONTAINERS, pool.map(export, CONTAINERS), strict=True))


@pytest.fixture(scope="module")
def source(rich_model):
    """The registry entries the export was made from, as MLflow reports them."""
    client = MlflowClient(tracking_uri=rich_model.url, registry_uri=rich_model.url)
    return (client.get_registered_model(rich_model.name),
            client.get_model_version(rich_model.name, rich_model.version),
            client.get_run(rich_model.run_id))


@pytest.fixture
def imported(exports, bentoml_home):
    """The default ``.bentomodel`` imported by the real BentoML into a fresh home."""
    import bentoml

    return bentoml.models.import_model(str(exports["bentomodel"].path))


# --------------------------------------------------------------------------- the files


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_export_is_named_after_the_bentoml_tag_as_bentoml_names_its_exports(
        exports, rich_model, container):
    exported = exports[container]
    if container == "xz":
        assert exported.path.name == "model.xz"
    else:
        # BentoML's own export_model names a file <name>-<version>.<format>.
        suffix = CONTAINERS[container][0]
        assert exported.path.name == f"{rich_model.name}-v{rich_model.version}{suffix}"
    assert exported.report["format"] == "bentoml"
    assert exported.path.is_dir() == (container == "folder")


def test_a_bentomodel_is_tar_xz_with_model_yaml_and_the_mlflow_model_at_its_root(exports):
    with tarfile.open(exports["bentomodel"].path, "r:xz") as archive:
        names = {name.removeprefix("./") for name in archive.getnames()}
    assert {"model.yaml", "mlflow_model/MLmodel", "mlflow-archive.json", "checksum.txt"} <= names
    assert not any(name.startswith(("/", "../")) for name in names)


def test_model_yaml_keeps_bentomls_key_order(exports):
    with tarfile.open(exports["bentomodel"].path, "r:xz") as archive:
        text = archive.extractfile("model.yaml").read().decode("utf-8")
    keys = [line.split(":", 1)[0] for line in text.splitlines() if line and line[0] != " "]
    assert keys == ["name", "version", "module", "labels", "options", "metadata", "context",
                    "signatures", "api_version", "creation_time"]


# --------------------------------------------------------------------------- in BentoML


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_real_bentoml_imports_each_container_and_predicts_like_pyfunc(
        exports, container, bentoml_home, pyfunc_predictions, rich_model):
    import bentoml

    exported = exports[container]
    model = bentoml.models.import_model(str(exported.path), exported.input_format)
    assert str(model.tag) == exported.tag
    assert Path(model.path) == bentoml_home / "models" / rich_model.name / f"v{rich_model.version}"
    predicted = bentoml.mlflow.load_model(exported.tag).predict(rich_model.X)
    np.testing.assert_array_equal(np.asarray(predicted), pyfunc_predictions)
    np.testing.assert_array_equal(np.asarray(predicted), rich_model.predictions)


def test_bentoml_tag_is_the_registered_name_and_version(imported, rich_model):
    assert (imported.tag.name, imported.tag.version) == (rich_model.name, f"v{rich_model.version}")
    assert imported.info.module == "bentoml.mlflow"
    assert imported.info.api_version == "v1"


def test_labels_are_the_registered_model_and_version_tags(imported, source):
    registered, version, _ = source
    assert registered.tags and version.tags
    assert imported.info.labels == {**registered.tags, **version.tags}


def test_metadata_holds_params_latest_metrics_and_the_original_names(imported, source,
                                                                     rich_model):
    _, version, run = source
    metadata = imported.info.metadata
    assert metadata["params"] == run.data.params
    assert metadata["metrics"] == pytest.approx(run.data.metrics)
    assert metadata["metrics"]["loss"] == 0.125  # the point at the highest step
    assert metadata["mlflow_registered_model"] == rich_model.name
    assert metadata["mlflow_model_version"] == rich_model.version
    assert metadata["mlflow_model_id"] == rich_model.model_id
    assert metadata["mlflow_run_id"] == rich_model.run_id
    assert metadata["description"] == version.description
    # Labels equal the tags here, so there are no changed originals to keep.
    assert "mlflow_tags" not in metadata


def test_creation_time_is_the_versions_with_a_timezone(imported, source):
    _, version, _ = source
    created = imported.info.creation_time
    assert created.tzinfo is not None and created.utcoffset() == datetime.timedelta(0)
    assert created == datetime.datetime.fromtimestamp(version.creation_timestamp / 1000,
                                                      datetime.UTC)
    assert round(created.timestamp() * 1000) == version.creation_timestamp


def test_context_names_mlflow_and_the_versions_the_model_was_saved_with(imported):
    import bentoml

    context = imported.info.context
    assert context.framework_name == "mlflow"
    assert context.framework_versions == {"mlflow": mlflow.__version__}
    assert context.python_version == platform.python_version()
    assert context.bentoml_version == bentoml.__version__  # the release the env pins


def test_signature_is_the_pyfunc_predict_method(imported):
    signatures = imported.info.signatures
    assert set(signatures) == {"predict"}
    assert signatures["predict"].batchable is False


def test_bentoml_stores_our_files_unchanged(imported, exports, tmp_path):
    """Why a .bentomodel that went through BentoML still imports losslessly: BentoML keeps
    every file, model.yaml and our metadata document included, byte for byte."""
    with tarfile.open(exports["bentomodel"].path, "r:xz") as archive:
        archive.extractall(tmp_path, filter="data")
    ours = {p.relative_to(tmp_path).as_posix(): p.read_bytes()
            for p in tmp_path.rglob("*") if p.is_file()}
    stored_root = Path(imported.path)
    stored = {p.relative_to(stored_root).as_posix(): p.read_bytes()
              for p in stored_root.rglob("*") if p.is_file()}
    assert stored == ours


def test_the_bentoml_cli_imports_and_describes_it(exports, rich_model, tmp_path, source):
    registered, version, _ = source
    home = tmp_path / "home"
    exported = exports["bentomodel"]
    run = run_bentoml_cli(["models", "import", exported.path], home, tmp_dir=tmp_path / "tmp")
    assert exported.tag in run.stdout
    described = json.loads(run_bentoml_cli(["models", "get", exported.tag, "-o", "json"],
                                           home, tmp_dir=tmp_path / "tmp").stdout)
    assert (described["name"], described["version"]) == tuple(exported.tag.split(":"))
    assert described["module"] == "bentoml.mlflow"
    assert described["labels"] == {**registered.tags, **version.tags}
    assert (home / "models" / rich_model.name / f"v{rich_model.version}" / "mlflow_model"
            / "MLmodel").is_file()


# --------------------------------------------------------------------------- odd names


@pytest.fixture(scope="module")
def odd_model(server_a, tmp_path_factory):
    """A registered model whose name and tags BentoML would refuse as they are, exported by
    the CLI as a .bentomodel."""
    token = uuid.uuid4().hex[:10]
    name = f"Iris Model+\u00dc {token}"
    register_iris_model(server_a.url, name)
    client = MlflowClient(tracking_uri=server_a.url, registry_uri=server_a.url)
    client.set_registered_model_tag(name, "Team Name", "ML Platform")
    client.set_model_version_tag(name, "1", "note", "needs review / v2")
    client.set_model_version_tag(name, "1", "ok", "yes")
    tag_name = f"iris-model-{token}"
    exported = export_with_cli(f"models:/{name}/1", server_a.url,
                               tmp_path_factory.mktemp("odd"), "bentomodel", f"{tag_name}:v1")
    expected = load_and_predict(f"models:/{name}/1", server_a.url, iris_rows())
    return name, tag_name, exported, expected


def iris_rows() -> np.ndarray:
    from sklearn.datasets import load_iris

    return load_iris(return_X_y=True)[0][::40]


def test_a_name_bentoml_refuses_is_made_valid_in_the_file_name_and_model_yaml(odd_model):
    _, tag_name, exported, _ = odd_model
    assert exported.path.name == f"{tag_name}-v1.bentomodel"
    with tarfile.open(exported.path, "r:xz") as archive:
        document = yaml.safe_load(archive.extractfile("model.yaml"))
    assert (document["name"], document["version"]) == (tag_name, "v1")


def test_a_model_with_a_name_made_valid_imports_into_bentoml_and_predicts(odd_model,
                                                                          bentoml_home):
    import bentoml

    name, tag_name, exported, expected = odd_model
    model = bentoml.models.import_model(str(exported.path))
    assert str(model.tag) == f"{tag_name}:v1"
    assert model.info.metadata["mlflow_registered_model"] == name
    assert model.info.metadata["mlflow_model_version"] == "1"
    predicted = bentoml.mlflow.load_model(model.tag).predict(iris_rows())
    np.testing.assert_array_equal(np.asarray(predicted), expected)


def test_tags_bentoml_would_refuse_as_labels_are_made_valid_and_kept_whole(odd_model,
                                                                          bentoml_home):
    import bentoml

    model = bentoml.models.import_model(str(odd_model[2].path))
    assert model.info.labels == {"Team_Name": "ML_Platform", "note": "needs_review_v2",
                                 "ok": "yes"}
    assert model.info.metadata["mlflow_tags"] == {
        "Team Name": "ML Platform", "note": "needs review / v2", "ok": "yes",
    }
