"""Portable package: ``<name>/<version>/`` that loads and predicts offline, verified without us.

The rich model is exported once per container through the CLI (the three at once); the
package is checked with coreutils' ``sha256sum``, its ``predict.py`` is run in a fresh Python
as a user would run it, it is imported into server_b, and damaged copies of it are verified
and imported to see each rule fail on one line naming the file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from conftest import (
    CHECKSUM_FILE,
    METADATA_FILE,
    assert_user_error,
    child_env,
    cli,
    digest_of,
    download_model,
    global_tracking_uri,
    load_and_predict,
    registry_census,
    tree_hashes,
    unique,
)
from mlflow import MlflowClient
from packaging.requirements import Requirement

from mlflow_archive_plugin import export_model, import_archive, verify_archive
from mlflow_archive_plugin.errors import IntegrityError, UnsupportedError
from mlflow_archive_plugin.formats.portable import (
    payload_problems,
    pinned_requirements,
    signature_document,
)
from mlflow_archive_plugin.snapshot import Snapshot

pytestmark = pytest.mark.server

CONTAINERS = ("folder", "zip", "tar.gz")
PACKAGE_FILES = {"requirements.txt", "predict.py", "signature.json", "example-payload.json",
                 "model-card.md", METADATA_FILE, CHECKSUM_FILE, "model/MLmodel"}


def client_for(url: str) -> MlflowClient:
    return MlflowClient(tracking_uri=url, registry_uri=url)


def package_of(location: str, container: str, dst: Path, prefix: str) -> Path:
    """The package folder ``<name>/<version>/`` of an export, unpacked with the stdlib."""
    if container == "folder":
        return Path(location) / prefix
    dst.mkdir(parents=True, exist_ok=True)
    if container == "zip":
        with zipfile.ZipFile(location) as zf:
            zf.extractall(dst)
    else:
        with tarfile.open(location) as tf:
            tf.extractall(dst, filter="data")
    return dst / prefix


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def python_in(package: Path, code: str) -> subprocess.CompletedProcess:
    """``python -c CODE`` in the package folder, in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-c", code], cwd=package, env=child_env(),
                          capture_output=True, text=True, timeout=180)


def rewrite(package: Path, relative: str, text: str) -> None:
    """Change one file and re-hash it in mlflow-archive.json and checksum.txt, so that only
    the package's own rules can notice."""
    (package / relative).write_text(text, encoding="utf-8")
    digest = hashlib.sha256((package / relative).read_bytes()).hexdigest()
    metadata = json.loads((package / METADATA_FILE).read_text(encoding="utf-8"))
    for record in metadata["files"]:
        if record["path"] == relative:
            record.update(sha256=digest, size=(package / relative).stat().st_size)
    (package / METADATA_FILE).write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    hashes = {path: hashlib.sha256((package / path).read_bytes()).hexdigest()
              for path in files_under(package) - {CHECKSUM_FILE}}
    (package / CHECKSUM_FILE).write_text(
        "".join(f"{hashes[path]}  {path}\n" for path in sorted(hashes)), encoding="utf-8")


@pytest.fixture(scope="module")
def exports(rich_model, tmp_path_factory):
    """container -> (location, package folder): the rich model exported by the CLI."""
    out = tmp_path_factory.mktemp("portable")
    children = {
        container: subprocess.Popen(
            [sys.executable, "-m", "mlflow_archive_plugin.cli", "export", rich_model.uri,
             "--format", "portable", "--container", container, "-o", f"{out / container}/",
             "--tracking-uri", rich_model.url, "--json", "--quiet"],
            cwd=out, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for container in CONTAINERS
    }
    prefix = f"{rich_model.name}/{rich_model.version}"
    found = {}
    for container, child in children.items():
        stdout, stderr = child.communicate(timeout=180)
        assert child.returncode == 0, stderr
        location = json.loads(stdout)["location"]
        found[container] = (location, package_of(location, container,
                                                 out / f"unpacked-{container}", prefix))
    return found


@pytest.fixture(scope="module")
def package(exports) -> Path:
    """The folder export's package, ``<name>/<version>/``."""
    return exports["folder"][1]


@pytest.fixture
def damaged(package, tmp_path) -> Path:
    """A copy of the package to damage: the folder ``<name>/<version>/`` under tmp_path."""
    copy = tmp_path / "copy" / package.parent.name / package.name
    shutil.copytree(package, copy)
    return copy


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("container", CONTAINERS)
def test_every_container_holds_the_package_under_name_and_version(exports, rich_model,
                                                                  container):
    location, package = exports[container]
    assert package.parts[-2:] == (rich_model.name, rich_model.version)
    assert files_under(package) >= PACKAGE_FILES
    if container == "zip":
        with zipfile.ZipFile(location) as zf:
            names = zf.namelist()
        assert location.endswith(f"{rich_model.name}-v2-portable.zip")
        assert all(name.startswith(f"{rich_model.name}/2/") for name in names)


@pytest.mark.parametrize("container", CONTAINERS)
def test_sha256sum_passes_in_the_package_folder(exports, container):
    package = exports[container][1]
    checked = subprocess.run(["sha256sum", "--strict", "-c", CHECKSUM_FILE], cwd=package,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = {line.split("  ", 1)[1] for line in
              (package / CHECKSUM_FILE).read_text().splitlines()}
    assert listed == files_under(package) - {CHECKSUM_FILE}


def test_package_is_the_same_in_every_container(exports):
    # Only the export's own time differs, and only in the export note: the metadata document
    # and the model card are the same bytes, so the digest is the same too.
    listings = set()
    for container in CONTAINERS:
        lines = (exports[container][1] / CHECKSUM_FILE).read_text().splitlines()
        listings.add(tuple(line for line in lines
                           if not line.endswith("  mlflow-archive-export.json")))
    assert len(listings) == 1
    assert len({digest_of((exports[container][1] / CHECKSUM_FILE).read_bytes())
                for container in CONTAINERS}) == 1


def test_model_files_are_the_mlflow_model_as_logged(package, rich_model, tmp_path):
    source = tree_hashes(download_model(rich_model.uri, rich_model.url, tmp_path / "source"))
    source.pop("registered_model_meta", None)
    packaged = tree_hashes(package / "model")
    packaged.pop("registered_model_meta", None)
    assert packaged == source


def test_every_requirement_is_pinned_to_one_version(package):
    lines = [line for line in (package / "requirements.txt").read_text().splitlines() if line]
    assert any(line.startswith("scikit-learn==") for line in lines)
    for line in lines:
        specifiers = list(Requirement(line).specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", line


def test_signature_json_describes_the_tensor_signature(package):
    signature = json.loads((package / "signature.json").read_text())
    assert signature == {
        "inputs": [{"name": "input", "type": "float64", "shape": [None, 4], "kind": "tensor"}],
        "outputs": [{"name": "output", "type": "int64", "shape": [None], "kind": "tensor"}],
    }


def test_example_payload_is_the_logged_input_example_by_name(package, rich_model):
    payload = json.loads((package / "example-payload.json").read_text())
    assert payload == {"input": rich_model.X[:2].tolist()}


def test_model_card_holds_description_tags_params_metrics_use_and_lineage(package, rich_model):
    card = (package / "model-card.md").read_text(encoding="utf-8")
    assert card.startswith(f"# {rich_model.name} version 2\n")
    for expected in (
        "Version 2: C=0.5, l2", "Iris classifier \u2014 round trips \u2713",
        "## Intended use",
        "| registered model | domain | botany |", "| version | validated | true |",
        "| logged model | dataset | iris |", "| run | team | ml-platform |",
        "| C | 0.5 | run and logged model |", "| regularization | l2 | logged model |",
        "| loss | 0.125 | 7 | run |", "| val_accuracy |",
        "- Aliases: champion, stable", "- Model type: classifier",
        f"- Run: rich-run (`{rich_model.run_id}`), FINISHED",
        f"- Logged model: `{rich_model.model_id}`",
        f"- Source: `models:/{rich_model.model_id}`",
        "| input | input | float64 | [null, 4] |",
    ):
        assert expected in card, expected
    experiment = client_for(rich_model.url).get_experiment(rich_model.experiment_id)
    assert f"- Experiment: {experiment.name} (`{rich_model.experiment_id}`)" in card


def test_model_without_a_signature_is_refused(rich_model, tmp_path):
    with pytest.raises(UnsupportedError, match="has no signature.*input_example"):
        export_model(f"models:/{rich_model.name}/1", tmp_path / "pkg", format="portable",
                     tracking_uri=rich_model.url)
    assert not (tmp_path / "pkg").exists()


# --------------------------------------------------------------------------- predict.py


def test_predict_py_in_a_fresh_process_predicts_like_pyfunc(package, rich_model):
    rows = rich_model.X.tolist()
    code = (
        "import json\n"
        "from predict import load_model, predict\n"
        "model = load_model()\n"
        f"rows = {rows!r}\n"
        "answers = [predict({'input': rows}), predict({'inputs': rows}, model),\n"
        "           predict({'dataframe_split': {'data': rows}}),\n"
        "           predict(json.dumps({'input': rows}))]\n"
        "print(json.dumps(answers))\n"
    )
    child = python_in(package, code)
    assert child.returncode == 0, child.stderr
    answers = json.loads(child.stdout.strip().splitlines()[-1])
    for answer in answers:
        assert answer == {"predictions": rich_model.predictions.tolist()}


def test_predict_py_names_an_unknown_input(package):
    child = python_in(package, "from predict import predict\npredict({'x': [[1, 2, 3, 4]]})")
    assert child.returncode != 0
    assert "'x' is not an input of this model" in child.stderr


# --------------------------------------------------------------------------- column models


@pytest.fixture(scope="module")
def column_model(server_a, tmp_path_factory):
    """A DataFrame model logged with open requirements, exported as a portable folder."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True, as_frame=True)
    X.columns = ["sepal length", "sepal width", "petal length", "petal width"]
    name = unique("iris-columns")
    with global_tracking_uri(server_a.url), mlflow.start_run():
        mlflow.sklearn.log_model(LogisticRegression(max_iter=300).fit(X, y), name="model",
                                 input_example=X[:3], registered_model_name=name,
                                 pip_requirements=["scikit-learn", "numpy>=1.0", "pandas"])
    out = tmp_path_factory.mktemp("columns")
    result = export_model(f"models:/{name}/1", out / "pkg", format="portable",
                          tracking_uri=server_a.url)
    return name, X, Path(result.location) / name / "1"


def test_open_requirements_are_pinned_to_the_installed_versions(column_model):
    import numpy
    import sklearn

    lines = (column_model[2] / "requirements.txt").read_text().splitlines()
    assert f"scikit-learn=={sklearn.__version__}" in lines
    assert f"numpy=={numpy.__version__}" in lines
    assert f"pandas=={pd.__version__}" in lines


def test_signature_json_lists_columns_with_one_value_per_row(column_model):
    signature = json.loads((column_model[2] / "signature.json").read_text())
    assert signature["inputs"][0] == {"name": "sepal length", "type": "double",
                                      "shape": [None], "kind": "column", "required": True}
    assert [spec["name"] for spec in signature["inputs"]] == list(column_model[1].columns)
    assert signature["outputs"] == [{"name": None, "type": "long", "shape": [None],
                                     "kind": "column", "required": True}]


def test_column_predict_by_name_matches_pyfunc(column_model, server_a):
    name, X, package = column_model
    payload = json.loads((package / "example-payload.json").read_text())
    assert payload == {column: X[column][:3].tolist() for column in X.columns}
    expected = load_and_predict(f"models:/{name}/1", server_a.url, X[:3]).tolist()
    code = ("import json\nfrom predict import predict\n"
            "payload = json.load(open('example-payload.json'))\n"
            "split = {'dataframe_split': {'columns': list(payload),"
            " 'data': [list(row) for row in zip(*payload.values())]}}\n"
            "print(json.dumps([predict(payload), predict(split)]))\n")
    child = python_in(package, code)
    assert child.returncode == 0, child.stderr
    for answer in json.loads(child.stdout.strip().splitlines()[-1]):
        assert answer == {"predictions": expected}


def test_requirement_that_cannot_be_pinned_fails_the_export_naming_it(server_a, tmp_path):
    from sklearn.linear_model import LogisticRegression

    name = unique("iris-unpinnable")
    X = np.array([[0.0, 1.0], [1.0, 0.0]])
    with global_tracking_uri(server_a.url), mlflow.start_run():
        mlflow.sklearn.log_model(LogisticRegression().fit(X, [0, 1]), name="model",
                                 input_example=X, registered_model_name=name,
                                 pip_requirements=["scikit-learn", "surely-not-installed-zq"])
    proc = cli("export", f"models:/{name}/1", "--format", "portable", "-o", "out/",
               "--tracking-uri", server_a.url, cwd=tmp_path)
    line = assert_user_error(proc)
    assert "surely-not-installed-zq" in line and "not installed" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _snapshot_with_requirements(tmp_path: Path, text: str) -> Snapshot:
    (tmp_path / "requirements.txt").write_text(text)
    return Snapshot(model_dir=tmp_path, mlmodel={})


def test_pinning_keeps_pins_extras_and_markers(tmp_path):
    import sklearn

    text = ("mlflow==3.1.0\n# a comment\nscikit-learn[all]>=1.0  # open\n"
            "--extra-index-url https://example.invalid/simple\n"
            "numpy ; python_version >= '3.0'\n")
    pinned = pinned_requirements(_snapshot_with_requirements(tmp_path, text)).splitlines()
    assert pinned[0] == "mlflow==3.1.0"
    assert pinned[1] == f"scikit-learn[all]=={sklearn.__version__}"
    assert pinned[2] == "--extra-index-url https://example.invalid/simple"
    assert pinned[3] == f'numpy=={np.__version__}; python_version >= "3.0"'


@pytest.mark.parametrize(("line", "reason"), [
    ("scikit-learn<0.1", "outside its range"),
    ("pywin32; sys_platform == 'win32'", "applies only where"),
    ("-r other.txt", "refers to other files"),
    ("not a requirement!", "not a valid"),
])
def test_pinning_refuses_what_it_cannot_pin(tmp_path, line, reason):
    with pytest.raises(UnsupportedError, match=reason):
        pinned_requirements(_snapshot_with_requirements(tmp_path, line + "\n"))


def test_signature_json_from_mlflow_schemas_of_both_kinds():
    from mlflow.models import infer_signature

    frame = pd.DataFrame({"age": [30, 40], "city": ["a", "b"], "score": [0.5, 0.25]})
    columns = infer_signature(frame, np.array([1, 0])).to_dict()
    tensors = infer_signature(np.zeros((2, 3, 8), dtype=np.float32),
                              np.zeros((2, 5), dtype=np.float32)).to_dict()
    assert signature_document({"signature": columns})["inputs"] == [
        {"name": "age", "type": "long", "shape": [None], "kind": "column", "required": True},
        {"name": "city", "type": "string", "shape": [None], "kind": "column", "required": True},
        {"name": "score", "type": "double", "shape": [None], "kind": "column",
         "required": True},
    ]
    assert signature_document({"signature": tensors}) == {
        "inputs": [{"name": "input", "type": "float32", "shape": [None, 3, 8],
                    "kind": "tensor"}],
        "outputs": [{"name": "output", "type": "float32", "shape": [None, 5],
                     "kind": "tensor"}],
    }
    assert signature_document({}) is None


def test_payload_conformance_names_each_problem():
    signature = {"inputs": [{"name": "x", "type": "float64", "shape": [None, 2],
                             "kind": "tensor"}]}
    assert payload_problems({"x": [[1, 2.5]]}, signature) == []
    assert payload_problems({"inputs": [[1, 2]]}, signature) == []
    assert payload_problems({"x": [[1, 2, 3]]}, signature) == [
        "input 'x' has shape [1, 3], but signature.json says [null, 2]"]
    assert payload_problems({"x": [["a", 2]]}, signature) == [
        "input 'x' holds \"a\", not of type 'float64'"]
    assert payload_problems({"y": [[1, 2]]}, signature) == [
        "'y' is not an input in signature.json", "lacks the required input 'x'"]


# --------------------------------------------------------------------------- verify


@pytest.mark.parametrize("container", CONTAINERS)
def test_verify_passes_on_every_container(exports, container, tmp_path):
    proc = cli("verify", exports[container][0], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("intact: "), proc.stdout


def test_verify_run_predicts_the_example_in_a_child_process(package, tmp_path):
    proc = cli("verify", "--run", str(package), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("intact: "), proc.stdout


def test_verify_names_a_tampered_file(damaged, tmp_path):
    model_file = next(path for path in (damaged / "model").iterdir()
                      if path.name.startswith("model."))
    model_file.write_bytes(model_file.read_bytes() + b"x")
    proc = cli("verify", str(damaged), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: model/{model_file.name}: content differs from checksum.txt"]


def test_verify_names_an_unpinned_requirement(damaged, tmp_path):
    lines = (damaged / "requirements.txt").read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1) if line.startswith("scikit-learn=="))
    lines[number - 1] = "scikit-learn>=1.0"
    rewrite(damaged, "requirements.txt", "\n".join(lines) + "\n")
    proc = cli("verify", str(damaged), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: requirements.txt: line {number} 'scikit-learn>=1.0' is not pinned to one "
        "version; write scikit-learn==<version>"]


def test_verify_names_an_example_that_does_not_conform(damaged):
    rewrite(damaged, "example-payload.json", json.dumps({"input": [[1.0, 2.0, 3.0]]}))
    report = verify_archive(damaged)
    assert report.problems == ["example-payload.json: input 'input' has shape [1, 3], but "
                               "signature.json says [null, 4]"]


def test_verify_names_a_signature_json_that_is_not_the_models(damaged):
    signature = json.loads((damaged / "signature.json").read_text())
    signature["inputs"][0]["shape"] = [None, 5]
    rewrite(damaged, "signature.json", json.dumps(signature))
    report = verify_archive(damaged)
    assert report.problems[0].startswith("signature.json: differs from the signature in "
                                         "model/MLmodel")


def test_verify_run_names_a_predict_py_that_raises(damaged, tmp_path):
    source = (damaged / "predict.py").read_text()
    rewrite(damaged, "predict.py", source.replace(
        "def predict(payload, model=None):\n",
        "def predict(payload, model=None):\n    raise RuntimeError('model server on fire')\n",
        1))
    assert verify_archive(damaged).ok  # verifying never runs the package's code unasked
    proc = cli("verify", "--run", str(damaged), cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "error: predict.py: predict() on example-payload.json raised RuntimeError: model "
        "server on fire"]


def test_verify_names_a_predict_py_without_predict(damaged):
    rewrite(damaged, "predict.py", "def load_model():\n    return None\n")
    assert verify_archive(damaged).problems == ["predict.py: defines no predict() function"]


# --------------------------------------------------------------------------- import


@pytest.fixture(scope="module")
def imported(exports, server_b):
    """container -> ImportResult: the zip imported into server_b, then the other two."""
    name = unique("portable-rt")
    first = import_archive(exports["zip"][0], name=name, tracking_uri=server_b.url)
    return {"zip": first, **{container: import_archive(exports[container][0], name=name,
                                                       tracking_uri=server_b.url)
                             for container in ("folder", "tar.gz")}}


def test_import_reads_the_package_in_every_container(imported, exports):
    assert (imported["zip"].version, imported["zip"].reused) == ("1", False)
    for container in CONTAINERS:
        checksums = (exports[container][1] / CHECKSUM_FILE).read_bytes()
        # the digest leaves out the line of the export note (when it was exported)
        kept = b"".join(line for line in checksums.splitlines(keepends=True)
                        if not line.endswith(b"  mlflow-archive-export.json\n"))
        assert len(kept) < len(checksums)
        assert imported[container].digest == hashlib.sha256(kept).hexdigest()
        assert imported[container].name == imported["zip"].name


def test_import_keeps_descriptions_tags_and_aliases(imported, rich_model, server_b):
    source, target = client_for(rich_model.url), client_for(server_b.url)
    name = imported["zip"].name
    assert target.get_registered_model(name).description == \
        source.get_registered_model(rich_model.name).description
    assert source.get_registered_model(rich_model.name).tags.items() <= \
        target.get_registered_model(name).tags.items()
    source_version = source.get_model_version(rich_model.name, rich_model.version)
    target_version = target.get_model_version(name, "1")
    assert target_version.description == source_version.description
    assert source_version.tags.items() <= target_version.tags.items()
    assert sorted(target_version.aliases) == ["champion", "stable"]


def test_import_keeps_params_and_metric_histories(imported, rich_model, server_b):
    source, target = client_for(rich_model.url), client_for(server_b.url)
    source_run = source.get_run(rich_model.run_id)
    target_run = target.get_run(imported["zip"].run_id)
    assert target_run.data.params == source_run.data.params
    for key in source_run.data.metrics:
        assert sorted((m.step, m.timestamp, m.value) for m in
                      target.get_metric_history(imported["zip"].run_id, key)) == \
            sorted((m.step, m.timestamp, m.value) for m in
                   source.get_metric_history(rich_model.run_id, key))
    logged = target.get_logged_model(imported["zip"].model_id)
    assert logged.params == source.get_logged_model(rich_model.model_id).params


def test_imported_model_predicts_like_the_source(imported, rich_model, server_b):
    predictions = load_and_predict(imported["zip"].model_uri, server_b.url, rich_model.X)
    np.testing.assert_array_equal(predictions, rich_model.predictions)


def test_import_of_a_package_failing_its_checksum_registers_nothing(damaged, server_b,
                                                                   tmp_path):
    (damaged / "model" / "MLmodel").write_text("tampered\n")
    before = registry_census(server_b.url)
    proc = cli("import", str(damaged.parent.parent), "--name", unique("portable-bad"),
               "--tracking-uri", server_b.url, cwd=tmp_path)
    line = assert_user_error(proc)
    assert "model/MLmodel" in line
    assert registry_census(server_b.url) == before


def test_import_of_a_package_with_an_unpinned_requirement_registers_nothing(damaged,
                                                                           server_b):
    rewrite(damaged, "requirements.txt", "scikit-learn\n")
    before = registry_census(server_b.url)
    with pytest.raises(IntegrityError, match="requirements.txt: line 1 'scikit-learn' is not "
                                             "pinned"):
        import_archive(damaged, name=unique("portable-unpinned"), tracking_uri=server_b.url)
    assert registry_census(server_b.url) == before


def test_verify_run_names_a_predict_py_returning_no_dict(damaged, tmp_path):
    rewrite(damaged, "predict.py",
            "def load_model():\n    return None\n\n\ndef predict(payload):\n    return [1]\n")
    report = verify_archive(damaged, run=True)
    assert report.problems == [
        "predict.py: predict() on example-payload.json returned a list, not a dict"]
