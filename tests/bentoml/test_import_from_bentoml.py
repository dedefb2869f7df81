"""Models the real BentoML saved and exported import with ``mlflow-archive import``.

Two models are saved by the real BentoML in a BENTOML_HOME of their own: an MLflow model
through ``bentoml.mlflow.import_model`` and a plain Python object through
``bentoml.picklable_model.save_model`` (a module with no MLflow model inside). Each is exported
by the real ``bentoml.models.export_model`` in every format it writes (``.bentomodel``,
``xz``, ``gz``, ``bz2``, ``tar``, ``zip``, ``folder``) and each export is imported into a real
MLflow server (the ``.bentomodel`` files by the CLI). A ``bentoml.mlflow`` model comes back as
a registered version of its inner MLflow model, predicting as the original; any other module
comes back as an archive-backed version that keeps the export byte for byte, carries
``model.yaml`` in its tags and description, and exports again as the very bytes BentoML wrote.
A model BentoML made with no module at all (``bentoml.models.create``) imports the same way.
"""

from __future__ import annotations

import json
import tarfile
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from conftest import (
    cli,
    download_model,
    load_and_predict,
    sha256_file,
    tree_hashes,
    unique,
    use_bentoml_home,
)
from mlflow import MlflowClient

from mlflow_archive_plugin import export_model, import_archive

# BentoML's output_format -> the file suffix its export_model gives.
FORMATS = {"bentomodel": ".bentomodel", "xz": ".xz", "gz": ".gz", "bz2": ".bz2", "tar": ".tar",
           "zip": ".zip", "folder": ""}
KINDS = ("mlflow", "picklable")
# BentoML takes any text as a label key; MLflow refuses "+" in a tag key and "//" in a path.
PICKLABLE_LABELS = {"owner": "bob", "cost+center": "42", "app.kubernetes.io/name": "lookup",
                    "a//b": "c"}
LABEL_TAG_KEYS = {"owner": "owner", "cost+center": "cost_center",
                  "app.kubernetes.io/name": "app.kubernetes.io/name", "a//b": "a__b",
                  "team": "team", "stage": "stage"}


@dataclass
class BentoModel:
    """A model as the real BentoML saved it, and its export in every format."""

    tag: str
    module: str
    document: dict  # model.yaml as BentoML wrote it
    exports: dict[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.tag.split(":", 1)[0]


@dataclass
class Source:
    """Both BentoML models plus the MLflow model behind the first and its predictions."""

    models: dict[str, BentoModel]
    X: np.ndarray
    predictions: np.ndarray
    mlflow_dir: Path


def _save_and_export(base: Path) -> Source:
    import bentoml
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    mlflow_dir = base / "mlflow-model"
    mlflow.sklearn.save_model(LogisticRegression(max_iter=300).fit(X, y), str(mlflow_dir))
    rows = X[::30]
    predictions = np.asarray(mlflow.pyfunc.load_model(str(mlflow_dir)).predict(rows))
    models = {}
    with use_bentoml_home(base / "home", tmp_dir=base / "tmp"):
        saved = bentoml.mlflow.import_model(
            unique("bento-sk").lower(), str(mlflow_dir), labels={"team": "ml", "stage": "prod"},
            metadata={"accuracy": 0.97, "dataset": {"name": "iris", "rows": 150}},
        )
        models["mlflow"] = saved
        with warnings.catch_warnings():  # deprecated since BentoML 1.4, still shipped
            warnings.simplefilter("ignore")
            models["picklable"] = bentoml.picklable_model.save_model(
                unique("bento-pick").lower(), {"weights": [1.0, 2.0, 3.0]},
                labels=PICKLABLE_LABELS, metadata={"kind": "lookup", "size": 3},
                signatures={"__call__": {"batchable": True, "batch_dim": 0}},
            )
        result = {}
        for kind, model in models.items():
            stored = bentoml.models.get(model.tag)
            document = yaml.safe_load(Path(stored.path, "model.yaml").read_text())
            entry = BentoModel(str(model.tag), stored.info.module, document)
            out = base / "exports" / kind
            out.mkdir(parents=True)
            for fmt in FORMATS:
                if fmt == "folder":
                    path = bentoml.models.export_model(model.tag, str(out / "as-folder"), fmt)
                else:
                    path = bentoml.models.export_model(model.tag, f"{out}/",
                                                       None if fmt == "bentomodel" else fmt)
                entry.exports[fmt] = Path(path)
            result[kind] = entry
    return Source(result, rows, predictions, mlflow_dir)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Source:
    return _save_and_export(tmp_path_factory.mktemp("bento-source"))


def target_name(model: BentoModel, fmt: str) -> str:
    """The .bentomodel registers under the model's own name; other formats under a name of
    their own, since the same files in another container are the same archive to import."""
    return model.name if fmt == "bentomodel" else f"{model.name}-{fmt}"


@pytest.fixture(scope="module")
def imported(source, server_b, tmp_path_factory) -> dict[tuple[str, str], dict]:
    """Every export imported into server_b: each ``.bentomodel`` by ``mlflow-archive import
    --json`` (in children, meanwhile), the other formats by ``import_archive``, the function
    under that command (in this process, which saves a minute of interpreter start-ups)."""
    cwd = tmp_path_factory.mktemp("bento-import")

    def with_cli(model: BentoModel) -> dict:
        proc = cli("import", str(model.exports["bentomodel"]), "--tracking-uri", server_b.url,
                   "--json", "-q", cwd=cwd)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        return json.loads(proc.stdout)

    results = {}
    with ThreadPoolExecutor(max_workers=len(KINDS)) as pool:
        children = {kind: pool.submit(with_cli, source.models[kind]) for kind in KINDS}
        for kind in KINDS:
            model = source.models[kind]
            for fmt in FORMATS:
                if fmt != "bentomodel":
                    results[(kind, fmt)] = import_archive(
                        model.exports[fmt], name=target_name(model, fmt),
                        tracking_uri=server_b.url, progress=False).to_dict()
        results.update({(kind, "bentomodel"): child.result() for kind, child in children.items()})
    return results


def client_for(url: str) -> MlflowClient:
    return MlflowClient(tracking_uri=url, registry_uri=url)


def version_of(imported, server_b, kind: str, fmt: str):
    result = imported[(kind, fmt)]
    return client_for(server_b.url).get_model_version(result["name"], result["version"])


def extracted_files(path: Path, fmt: str, dst: Path) -> dict[str, str]:
    """sha256 of each file in a BentoML export, unpacked with the standard library."""
    if fmt == "folder":
        return tree_hashes(path)
    if fmt == "zip":
        with zipfile.ZipFile(path) as archive:
            archive.extractall(dst)
    else:
        with tarfile.open(path) as archive:
            archive.extractall(dst, filter="data")
    return tree_hashes(dst)


# --------------------------------------------------------------------------- BentoML's side


def test_bentoml_writes_each_format_with_model_yaml_at_the_root(source):
    for model in source.models.values():
        for fmt, path in model.exports.items():
            assert path.name == (f"{model.name}-{model.tag.split(':')[1]}{FORMATS[fmt]}"
                                 if fmt != "folder" else "as-folder"), fmt
            if fmt == "folder":
                assert (path / "model.yaml").is_file()
            elif fmt == "zip":
                assert "model.yaml" in zipfile.ZipFile(path).namelist()
            else:
                with tarfile.open(path) as archive:
                    assert "./model.yaml" in archive.getnames(), fmt


# --------------------------------------------------------------------------- both modules


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("kind", KINDS)
def test_model_yaml_becomes_bentoml_tags_on_the_version(source, imported, server_b, kind,
                                                        fmt):
    model = source.models[kind]
    document = model.document
    tags = version_of(imported, server_b, kind, fmt).tags
    assert tags["bentoml.name"] == model.name
    assert tags["bentoml.version"] == document["version"]
    assert tags["bentoml.module"] == model.module
    assert tags["bentoml.creation_time"] == document["creation_time"]
    assert tags["bentoml.api_version"] == "v1"
    assert {key.removeprefix("bentoml.label."): value for key, value in tags.items()
            if key.startswith("bentoml.label.")} == {
        LABEL_TAG_KEYS[key]: value for key, value in document["labels"].items()}
    assert json.loads(tags["bentoml.metadata"]) == document["metadata"]
    assert json.loads(tags["bentoml.context"]) == document["context"]


def test_label_keys_mlflow_refuses_are_kept_whole_beside_their_tags(source, imported,
                                                                     server_b):
    tags = version_of(imported, server_b, "picklable", "bentomodel").tags
    assert json.loads(tags["bentoml.labels"]) == PICKLABLE_LABELS
    assert "bentoml.labels" not in version_of(imported, server_b, "mlflow", "bentomodel").tags


@pytest.mark.parametrize("kind", KINDS)
def test_description_names_the_bentoml_tag_module_and_creation_time(source, imported,
                                                                   server_b, kind):
    model = source.models[kind]
    description = version_of(imported, server_b, kind, "bentomodel").description
    assert model.tag in description
    assert model.module in description
    assert model.document["creation_time"] in description


@pytest.mark.parametrize("kind", KINDS)
def test_a_bentomodel_registers_under_the_bentoml_model_name(source, imported, kind):
    result = imported[(kind, "bentomodel")]
    assert result["name"] == source.models[kind].name
    assert result["reused"] is False


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_model_in_another_container_is_the_same_import(source, imported, server_b,
                                                                kind):
    model = source.models[kind]
    first = imported[(kind, "bentomodel")]
    again = import_archive(model.exports["gz"], tracking_uri=server_b.url)
    assert (again.name, again.version, again.reused) == (first["name"], first["version"], True)


# --------------------------------------------------------------------------- bentoml.mlflow


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_bentoml_mlflow_model_registers_its_inner_model_predicting_as_the_original(
        source, imported, server_b, fmt):
    result = imported[("mlflow", fmt)]
    predicted = load_and_predict(result["model_uri"], server_b.url, source.X)
    np.testing.assert_array_equal(predicted, source.predictions)


def test_a_bentoml_mlflow_model_is_stored_as_the_mlflow_model_bentoml_held(
        source, imported, server_b, tmp_path):
    result = imported[("mlflow", "bentomodel")]
    local = download_model(result["model_uri"], server_b.url, tmp_path / "model")
    stored = tree_hashes(local)
    stored.pop("registered_model_meta", None)  # written by MLflow's download itself
    assert stored == tree_hashes(source.models["mlflow"].exports["folder"] / "mlflow_model")
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert "sklearn" in mlmodel["flavors"]
    assert "mlflow_archive" not in mlmodel["flavors"]


def test_a_bentoml_mlflow_model_exported_again_is_the_bentoml_model_with_its_labels(
        source, imported, server_b, tmp_path, bentoml_home):
    import bentoml

    model = source.models["mlflow"]
    result = imported[("mlflow", "bentomodel")]
    again = export_model(result["model_uri"], f"{tmp_path}/", format="bentoml",
                         tracking_uri=server_b.url)
    stored = bentoml.models.import_model(again.location)
    assert str(stored.tag) == f"{model.name}:v{result['version']}"
    assert stored.info.labels == model.document["labels"]
    assert stored.info.metadata["mlflow_tags"]["bentoml.version"] == model.document["version"]
    predicted = bentoml.mlflow.load_model(stored.tag).predict(source.X)
    np.testing.assert_array_equal(np.asarray(predicted), source.predictions)


# --------------------------------------------------------------------------- other modules


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_another_module_is_kept_whole_and_as_files(source, imported, server_b, fmt, tmp_path):
    model = source.models["picklable"]
    result = imported[("picklable", fmt)]
    local = download_model(result["model_uri"], server_b.url, tmp_path / "model")
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["mlflow_archive"]
    assert flavor["layout"] == "bentoml"
    assert flavor["manifest"]["module"] == "bentoml.picklable_model"
    export = model.exports[fmt]
    assert tree_hashes(local / "files") == extracted_files(export, fmt, tmp_path / "unpacked")
    if fmt != "folder":
        assert flavor["file_name"] == export.name
        assert sha256_file(local / "archive" / export.name) == sha256_file(export)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_another_module_exports_again_as_the_bytes_bentoml_wrote(source, imported, server_b,
                                                                 fmt, tmp_path):
    export = source.models["picklable"].exports[fmt]
    again = export_model(imported[("picklable", fmt)]["model_uri"], f"{tmp_path}/",
                         format="bentoml", tracking_uri=server_b.url)
    location = Path(again.location)
    if fmt == "folder":
        assert tree_hashes(location) == tree_hashes(export)
    else:
        assert location.name == export.name
        assert sha256_file(location) == sha256_file(export)


def test_the_cli_exports_another_module_again_byte_identical(source, imported, server_b,
                                                             tmp_path):
    export = source.models["picklable"].exports["bentomodel"]
    proc = cli("export", imported[("picklable", "bentomodel")]["model_uri"], "--format",
               "bentoml", "-o", f"{tmp_path}/", "--tracking-uri", server_b.url, "-q",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sha256_file(tmp_path / export.name) == sha256_file(export)


def test_a_re_exported_bentomodel_imports_into_bentoml_as_the_same_model(
        source, imported, server_b, tmp_path, bentoml_home):
    import bentoml

    model = source.models["picklable"]
    again = export_model(imported[("picklable", "bentomodel")]["model_uri"], f"{tmp_path}/",
                         format="bentoml", tracking_uri=server_b.url)
    stored = bentoml.models.import_model(again.location)
    assert str(stored.tag) == model.tag
    assert stored.info.labels == model.document["labels"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert bentoml.picklable_model.load_model(model.tag) == {"weights": [1.0, 2.0, 3.0]}


# --------------------------------------------------------------------------- no module at all


@pytest.fixture(scope="module")
def generic(tmp_path_factory) -> BentoModel:
    """A model made with BentoML's generic ``bentoml.models.create``: its files written by
    hand, ``module: ''`` and an empty framework context in model.yaml."""
    import bentoml

    base = tmp_path_factory.mktemp("bento-generic")
    with use_bentoml_home(base / "home", tmp_dir=base / "tmp"):
        with bentoml.models.create(unique("bento-raw").lower(), labels={"owner": "eve"}) as made:
            Path(made.path, "weights.bin").write_bytes(bytes(range(256)) * 64)
        stored = bentoml.models.get(made.tag)
        document = yaml.safe_load(Path(stored.path, "model.yaml").read_text())
        model = BentoModel(str(made.tag), stored.info.module, document)
        model.exports["bentomodel"] = Path(bentoml.models.export_model(made.tag, f"{base}/"))
    return model


def test_a_model_bentoml_made_without_a_module_imports_as_an_archive_backed_version(
        generic, server_b, tmp_path):
    assert generic.document["module"] == ""
    proc = cli("import", str(generic.exports["bentomodel"]), "--tracking-uri", server_b.url,
               "--json", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    tags = client_for(server_b.url).get_model_version(result["name"], result["version"]).tags
    assert (result["name"], tags["bentoml.module"]) == (generic.name, "")
    assert tags["bentoml.label.owner"] == "eve"
    again = export_model(result["model_uri"], f"{tmp_path}/out/", format="bentoml",
                         tracking_uri=server_b.url)
    assert sha256_file(Path(again.location)) == sha256_file(generic.exports["bentomodel"])
