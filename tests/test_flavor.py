"""The ``mlflow_archive`` flavor: ``save_model``, ``log_model``, ``load_model`` and pyfunc.

Archives are exported with the plugin's own API from the rich model on ``server_a`` (native
zip, ``.mar``, ``.bentomodel``, ``.mlarchive``, a portable folder), plus a ``.mar`` made the
way torch-model-archiver makes it and an MLSteam package written by hand whose hooks hold a
pure-Python model. Each is logged with ``log_model`` on the real server and read back through
MLflow's public entry points (``models:/`` URIs, ``mlflow.pyfunc``, artifact downloads).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import (
    child_env,
    download_model,
    global_tracking_uri,
    load_and_predict,
    registry_census,
    sha256_file,
    tree_hashes,
    unique,
)
from mlflow.exceptions import MlflowException
from mlflow.models import Model

import mlflow_archive_plugin
from mlflow_archive_plugin import ArchiveError, export_model, import_archive, inspect_archive
from mlflow_archive_plugin.errors import (
    DestinationExistsError,
    IntegrityError,
    SourceNotFoundError,
    UnsupportedError,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flavor_log_model.py"
LAYOUTS = ("mlflow", "mar", "bentoml", "mlarchive", "portable")
# What each logged model predicts with: the MLflow model inside, or the archive's own code.
PREDICTORS = {
    "mlflow": None, "mar": None, "bentoml": None, "mlarchive": None, "portable": None,
    "mlarchive-hooks": "hooks", "portable-predict.py": "predict.py",
}
MAR_MANIFEST = "MAR-INF/MANIFEST.json"


def flavor_entry(model_dir: Path) -> dict:
    return yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["mlflow_archive"]


def mlmodel(model_dir: Path) -> dict:
    return yaml.safe_load((model_dir / "MLmodel").read_text())


def archive_hashes(export) -> dict[str, str]:
    """path -> sha256 of every file of an exported archive, as the plugin's reader sees it."""
    return {record["path"]: record["sha256"] for record in inspect_archive(export.location).files}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def exports(rich_model, rich_zip, tmp_path_factory):
    """layout -> ExportResult of the rich model in that layout."""
    out = tmp_path_factory.mktemp("flavor-exports")
    made = {"mlflow": rich_zip}
    for layout in LAYOUTS[1:]:
        made[layout] = export_model(rich_model.uri, str(out / layout) + "/", format=layout,
                                    tracking_uri=rich_model.url)
    return made


@pytest.fixture(scope="module")
def logged(exports, rich_model):
    """key -> (ModelInfo, registered name): each export logged with log_model on server_a,
    the MLSteam package and the portable package also through their own code."""
    infos = {}
    with global_tracking_uri(rich_model.url):
        for key, predict_with in PREDICTORS.items():
            name = unique(f"flavor-{key.replace('.', '-')}")
            infos[key] = (mlflow_archive_plugin.log_model(
                exports[key.split("-")[0]].location, name="archived",
                registered_model_name=name, predict_with=predict_with), name)
    return infos


@pytest.fixture(scope="module")
def downloaded(logged, rich_model, tmp_path_factory):
    """key -> the logged model's files, downloaded through its models:/ URI."""
    root = tmp_path_factory.mktemp("flavor-downloads")
    return {key: download_model(f"models:/{name}/1", rich_model.url, root / key.replace(".", "-"))
            for key, (_, name) in logged.items()}


@pytest.fixture(scope="module")
def foreign_mar(tmp_path_factory) -> tuple[Path, Path]:
    """A .mar made as torch-model-archiver makes it (a TorchServe handler, no MLflow model),
    and the folder of its inputs."""
    from mlflow_archive_plugin.torchserve import ModelArchiverConfig, generate_model_archive

    src = tmp_path_factory.mktemp("ts-inputs")
    (src / "handler.py").write_text("from ts.torch_handler.base_handler import BaseHandler\n")
    (src / "weights.pt").write_bytes(os.urandom(2048))
    (src / "index_to_name.json").write_text('{"0": "cat", "1": "dog"}\n')
    archive = generate_model_archive(ModelArchiverConfig(
        model_name=unique("ts-flavor"), handler=str(src / "handler.py"), version="1.0",
        serialized_file=str(src / "weights.pt"), extra_files=str(src / "index_to_name.json"),
        export_path=str(tmp_path_factory.mktemp("ts-out")),
    ))
    return Path(archive), src


HOOK_PRELUDE = """
import pathlib
pathlib.Path({marker!r}).write_text("the hook ran")
"""
LOAD_HOOK = """
import json, os

def load(*args, env=None, **kwargs):
    with open(os.path.join(env["MLSTEAM_MODEL_DIR"], "weights.json"), encoding="utf-8") as f:
        return json.load(f)
"""
PREDICT_HOOK = """
def predict(*args, env=None, model=None, inputs=None, **kwargs):
    import pandas as pd
    frame = pd.DataFrame(inputs)
    return (frame["a"] * model["a"] + frame["b"] * model["b"] + model["bias"]).to_numpy()
"""
WEIGHTS = {"a": 2.0, "b": -1.0, "bias": 0.5}
LINEAR_INPUT = pd.DataFrame({"a": [1.0, 2.0, -3.0], "b": [0.5, 3.0, 1.0]})
LINEAR_OUTPUT = [2.0, 1.5, -6.5]


def hooks_package(target: Path, marker: Path) -> Path:
    """An MLSteam package written by hand: a pure-Python linear model in its hooks, no MLflow
    model; each hook writes ``marker`` when it is imported."""
    members = {
        "manifest.json": json.dumps({"models": [{
            "name": "linear", "version": "1", "framework": "python",
            "inputs": [{"name": "a", "type": "float"}, {"name": "b", "type": "float"}],
            "outputs": [{"name": "score", "type": "float"}],
        }]}),
        "models/weights.json": json.dumps(WEIGHTS),
        "hooks/load.py": HOOK_PRELUDE.format(marker=str(marker)) + LOAD_HOOK,
        "hooks/predict.py": HOOK_PRELUDE.format(marker=str(marker)) + PREDICT_HOOK,
    }
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return target


def altered_copy(source: str, target: Path, member: str) -> Path:
    """``source`` zipped again with ``member``'s bytes changed and every other entry kept."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, data + b"\n# altered\n" if info.filename == member else data)
    return target


# --------------------------------------------------------------------------- the logged models


def test_log_model_returns_a_registered_model_info_with_both_flavors(logged):
    info, name = logged["mar"]
    assert str(info.registered_model_version) == "1"
    assert info.model_uri == f"models:/{info.model_id}"
    assert {"mlflow_archive", "python_function"} <= set(info.flavors)
    loader = info.flavors["python_function"]["loader_module"]
    assert loader == "mlflow_archive_plugin.plugins.flavor"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_logged_model_keeps_the_archive_byte_for_byte(layout, exports, downloaded):
    export, files = exports[layout], downloaded[layout]
    stored = files / flavor_entry(files)["archive"]
    if export.container == "folder":
        assert tree_hashes(stored) == tree_hashes(Path(export.location))
    else:
        assert sha256_file(stored) == export.sha256
        assert stored.name == Path(export.location).name


@pytest.mark.parametrize("layout", LAYOUTS)
def test_flavor_entry_records_layout_container_digest_and_files(layout, exports, downloaded):
    export, entry = exports[layout], flavor_entry(downloaded[layout])
    assert (entry["layout"], entry["container"]) == (layout, export.container)
    assert entry["digest"] == export.digest
    assert entry["members"] == sorted(archive_hashes(export))
    assert entry["predict_with"] == "model"
    assert entry["plugin_version"] == mlflow_archive_plugin.__version__
    assert "pyfunc_unavailable" not in entry
    if export.container != "folder":
        assert (entry["sha256"], entry["size"]) == (export.sha256, export.size)


def test_flavor_entry_summarises_each_layouts_manifest(exports, downloaded, rich_model):
    manifests = {layout: flavor_entry(downloaded[layout])["manifest"] for layout in LAYOUTS}
    assert manifests["mar"]["model"]["handler"] == "mlflow_handler.py"
    assert manifests["bentoml"]["module"] == "bentoml.mlflow"
    assert manifests["mlarchive"]["models"][0]["name"] == rich_model.name
    for layout in ("mlflow", "portable"):
        assert (manifests[layout]["registered_model"], manifests[layout]["model_version"]) == (
            rich_model.name, rich_model.version)
        assert manifests[layout]["layout"] == layout
    assert flavor_entry(downloaded["mar"])["document"]["model_uri"] == rich_model.uri


def test_requirements_pin_the_plugin_mlflow_and_the_inner_models_needs(downloaded):
    lines = (downloaded["bentoml"] / "requirements.txt").read_text().splitlines()
    assert f"mlflow-archive-plugin=={mlflow_archive_plugin.__version__}" in lines
    assert f"mlflow=={mlflow.__version__}" in lines
    assert any(line.startswith("scikit-learn==") for line in lines)
    assert all("==" in line for line in lines), lines
    assert (downloaded["bentoml"] / "python_env.yaml").is_file()


def test_signature_and_input_example_are_the_inner_models(downloaded, rich_model):
    with global_tracking_uri(rich_model.url):
        original = mlflow.models.get_model_info(rich_model.uri)
    for key in ("mar", "portable"):
        outer = Model.load(str(downloaded[key]))
        assert outer.signature == original.signature
        np.testing.assert_array_equal(outer.load_input_example(str(downloaded[key])),
                                      rich_model.X[:2])


@pytest.mark.parametrize("key", PREDICTORS)
def test_pyfunc_from_the_registry_predicts_like_the_original(key, logged, rich_model):
    _, name = logged[key]
    predictions = load_and_predict(f"models:/{name}/1", rich_model.url, rich_model.X)
    np.testing.assert_array_equal(predictions, rich_model.predictions)


def test_predict_with_is_recorded_when_the_archives_own_code_predicts(downloaded):
    assert flavor_entry(downloaded["mlarchive-hooks"])["predict_with"] == "hooks"
    assert flavor_entry(downloaded["portable-predict.py"])["predict_with"] == "predict.py"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_model_exposes_the_archive_and_extracts_it_verified(layout, exports, logged,
                                                                  rich_model, tmp_path):
    export = exports[layout]
    with global_tracking_uri(rich_model.url):
        model = mlflow_archive_plugin.load_model(f"models:/{logged[layout][1]}/1",
                                                 dst_path=str(tmp_path))
    assert (model.layout, model.container, model.digest) == (layout, export.container,
                                                             export.digest)
    assert model.files == sorted(archive_hashes(export))
    assert model.predict_with == "model"
    if export.container != "folder":
        assert sha256_file(model.archive_path) == export.sha256
    assert tree_hashes(model.extract(tmp_path / "unpacked")) == archive_hashes(export)


# --------------------------------------------------------------------------- foreign .mar


@pytest.fixture(scope="module")
def foreign_logged(foreign_mar, rich_model):
    archive, _ = foreign_mar
    name = unique("flavor-ts")
    with global_tracking_uri(rich_model.url):
        info = mlflow_archive_plugin.log_model(str(archive), name="torchserve",
                                               registered_model_name=name)
    return info, name


def test_foreign_mar_is_kept_byte_for_byte_without_a_python_function(foreign_mar,
                                                                     foreign_logged, rich_model,
                                                                     tmp_path):
    archive, _ = foreign_mar
    files = download_model(f"models:/{foreign_logged[1]}/1", rich_model.url, tmp_path / "m")
    entry = flavor_entry(files)
    assert sha256_file(files / entry["archive"]) == sha256_file(archive)
    assert (entry["layout"], entry["container"]) == ("mar", "zip")
    assert entry["manifest"]["model"]["handler"] == "handler.py"
    assert "python_function" not in mlmodel(files)["flavors"]
    assert "predict_with" not in entry
    assert "TorchServe" in entry["pyfunc_unavailable"]
    assert "handler.py" in entry["pyfunc_unavailable"]


def test_foreign_mar_pyfunc_load_fails_with_mlflows_error_and_load_model_says_why(
    foreign_logged, rich_model
):
    uri = f"models:/{foreign_logged[1]}/1"
    with global_tracking_uri(rich_model.url):
        with pytest.raises(MlflowException, match='does not have the "python_function" flavor'):
            mlflow.pyfunc.load_model(uri)
        model = mlflow_archive_plugin.load_model(uri)
    assert model.predict_with is None
    assert model.pyfunc_unavailable.startswith("no python_function flavor: this is a TorchServe")


def test_foreign_mar_extracts_its_original_files(foreign_mar, foreign_logged, rich_model,
                                                 tmp_path):
    _, inputs = foreign_mar
    with global_tracking_uri(rich_model.url):
        model = mlflow_archive_plugin.load_model(f"models:/{foreign_logged[1]}/1")
    unpacked = model.extract(tmp_path / "unpacked")
    assert (unpacked / "weights.pt").read_bytes() == (inputs / "weights.pt").read_bytes()
    assert (unpacked / "handler.py").read_bytes() == (inputs / "handler.py").read_bytes()
    assert sorted(model.files) == sorted(tree_hashes(unpacked))
    assert MAR_MANIFEST in model.files


def test_imported_foreign_mar_loads_with_load_model(foreign_mar, server_a, tmp_path):
    archive, _ = foreign_mar
    imported = import_archive(str(archive), tracking_uri=server_a.url)
    with global_tracking_uri(server_a.url):
        model = mlflow_archive_plugin.load_model(imported.model_uri)
    assert (model.layout, model.container) == ("mar", "zip")
    assert "TorchServe" in model.pyfunc_unavailable
    assert sha256_file(model.archive_path) == sha256_file(archive)
    assert MAR_MANIFEST in model.files
    assert (model.extract(tmp_path / "x") / MAR_MANIFEST).is_file()


# --------------------------------------------------------------------------- MLSteam hooks


def test_hand_written_hooks_predict_and_run_only_when_loaded(rich_model, tmp_path):
    marker = tmp_path / "hook-ran"
    package = hooks_package(tmp_path / "linear.mlarchive", marker)
    name = unique("flavor-hooks")
    with global_tracking_uri(rich_model.url):
        info = mlflow_archive_plugin.log_model(str(package), name="linear",
                                               registered_model_name=name)
        assert not marker.exists()
        model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    assert marker.exists()
    np.testing.assert_allclose(np.asarray(model.predict(LINEAR_INPUT)), LINEAR_OUTPUT)
    assert info.flavors["mlflow_archive"]["predict_with"] == "hooks"
    assert model.metadata.get_input_schema().input_names() == ["a", "b"]


def test_imported_hooks_package_gets_a_python_function_too(server_a, tmp_path):
    marker = tmp_path / "hook-ran"
    package = hooks_package(tmp_path / "linear.mlarchive", marker)
    imported = import_archive(str(package), name=unique("flavor-imported-hooks"),
                              tracking_uri=server_a.url)
    assert not marker.exists()
    predictions = load_and_predict(imported.model_uri, server_a.url, LINEAR_INPUT)
    np.testing.assert_allclose(predictions, LINEAR_OUTPUT)
    assert marker.exists()


def test_encrypted_package_predicts_through_its_hooks_with_the_key_at_load(rich_model,
                                                                          tmp_path):
    key = os.urandom(32)
    export = export_model(rich_model.uri, str(tmp_path / "enc") + "/", format="mlarchive",
                          encryption_key=key, tracking_uri=rich_model.url)
    path = tmp_path / "saved"
    mlflow_archive_plugin.save_model(export.location, path)
    assert flavor_entry(path)["predict_with"] == "hooks"
    assert Model.load(str(path)).signature is not None  # from the metadata document
    with pytest.raises(MlflowException, match=r"hooks/load\.py failed .*encrypted"):
        mlflow.pyfunc.load_model(str(path))
    model = mlflow.pyfunc.load_model(str(path), model_config={"MLSTEAM_MODEL_KEY": key.hex()})
    np.testing.assert_array_equal(model.predict(rich_model.X), rich_model.predictions)


# --------------------------------------------------------------------------- save_model


def test_save_model_writes_a_loadable_model_folder(exports, rich_model, tmp_path):
    path = tmp_path / "saved"
    mlflow_archive_plugin.save_model(exports["mar"].location, path)
    assert sha256_file(path / "archive" / Path(exports["mar"].location).name) == \
        exports["mar"].sha256
    model = mlflow.pyfunc.load_model(str(path))
    np.testing.assert_array_equal(model.predict(rich_model.X), rich_model.predictions)


def test_save_model_takes_the_users_requirements_signature_and_metadata(exports, tmp_path):
    from mlflow.models import infer_signature

    signature = infer_signature(np.zeros((1, 4)), np.zeros(1, dtype=np.int64))
    mlflow_archive_plugin.save_model(
        exports["mlflow"].location, tmp_path / "saved", signature=signature,
        extra_pip_requirements=["pyyaml"], metadata={"owner": "alice"})
    saved = Model.load(str(tmp_path / "saved"))
    assert saved.signature == signature
    assert saved.metadata == {"owner": "alice"}
    assert "pyyaml" in (tmp_path / "saved" / "requirements.txt").read_text().splitlines()


def test_corrupted_archive_is_refused_and_nothing_is_written(rich_zip, rich_model, tmp_path):
    corrupt = altered_copy(rich_zip.location, tmp_path / "corrupt.zip", "model/MLmodel")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError, match=r"corrupt\.zip cannot be saved as a model: .*"
                                             r"model/MLmodel"):
        mlflow_archive_plugin.save_model(str(corrupt), out / "saved")
    assert list(out.iterdir()) == []
    before = registry_census(rich_model.url)
    with global_tracking_uri(rich_model.url), pytest.raises(IntegrityError):
        mlflow_archive_plugin.log_model(str(corrupt), name="corrupt",
                                        registered_model_name=unique("flavor-corrupt"))
    assert registry_census(rich_model.url) == before


def a_missing_path(tmp: Path) -> Path:
    return tmp / "missing.zip"


def a_zip_of_notes(tmp: Path) -> Path:
    with zipfile.ZipFile(tmp / "notes.zip", "w") as zf:
        zf.writestr("notes.txt", "hello")
    return tmp / "notes.zip"


@pytest.mark.parametrize(("make", "error", "match"), [
    (a_missing_path, SourceNotFoundError, "does not exist"),
    (a_zip_of_notes, UnsupportedError, "not a model archive"),
], ids=["missing", "not-a-model"])
def test_bad_input_is_one_line_and_nothing_is_written(make, error, match, tmp_path):
    source = make(tmp_path)
    with pytest.raises(error, match=match) as caught:
        mlflow_archive_plugin.save_model(str(source), tmp_path / "saved")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "saved").exists()


def test_a_failure_while_writing_leaves_nothing_behind(exports, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(MlflowException, match="mlflow"):
        mlflow_archive_plugin.save_model(exports["mar"].location, out / "saved",
                                         extra_pip_requirements=["mlflow<3"])
    assert list(out.iterdir()) == []


def test_save_model_refuses_a_folder_that_is_not_empty(exports, tmp_path):
    path = tmp_path / "saved"
    path.mkdir()
    (path / "keep.txt").write_text("mine")
    with pytest.raises(DestinationExistsError, match="not empty"):
        mlflow_archive_plugin.save_model(exports["mar"].location, path)
    assert [p.name for p in path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(("predict_with", "match"), [
    ("hooks", "cannot predict with hooks: it is no MLSteam package"),
    ("predict.py", "cannot predict with predict.py: it is no portable package"),
    ("torchserve", "unknown predict_with 'torchserve'"),
])
def test_predict_with_what_the_archive_lacks_is_refused(predict_with, match, exports, tmp_path):
    with pytest.raises(ArchiveError, match=match):
        mlflow_archive_plugin.save_model(exports["mlflow"].location, tmp_path / "saved",
                                         predict_with=predict_with)
    assert not (tmp_path / "saved").exists()


def test_an_altered_stored_archive_is_refused_at_load(exports, tmp_path):
    path = tmp_path / "saved"
    mlflow_archive_plugin.save_model(exports["mlflow"].location, path)
    stored = path / "archive" / Path(exports["mlflow"].location).name
    altered = altered_copy(str(stored), tmp_path / "altered.zip", "model/MLmodel")
    stored.write_bytes(altered.read_bytes())
    model = mlflow_archive_plugin.load_model(str(path))
    with pytest.raises(IntegrityError, match="failed verification"):
        model.extract(tmp_path / "unpacked")
    assert not (tmp_path / "unpacked").exists()
    with pytest.raises(MlflowException, match="failed verification"):
        mlflow.pyfunc.load_model(str(path))


# --------------------------------------------------------------------------- package and example


def test_importing_the_package_does_not_import_mlflow():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, mlflow_archive_plugin as p; "
         "assert callable(p.log_model) and callable(p.load_model) and callable(p.save_model); "
         "print('mlflow' in sys.modules)"],
        env=child_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_example_script_exports_logs_and_predicts(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--workdir", str(tmp_path / "work")],
        cwd=tmp_path, env=child_env(PYTHONIOENCODING="utf-8"), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "predictions match" in proc.stdout
    assert "layout mar" in proc.stdout
    assert (tmp_path / "work" / "mlflow.db").is_file()  # the default registry, under --workdir
