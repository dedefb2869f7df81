"""MLSteam ``.mlarchive``: export, the generated hooks run as MLSteam's SDK runs them, encrypted
packages, several models in one package, import of the plugin's own and of hand-written ones.

Hooks run in a fresh ``sys.executable`` the way the SDK would: extract the package, set
``MLSTEAM_MODEL_DIR``, import ``hooks/load.py`` and ``hooks/predict.py`` by path, call
``load(env=...)`` then ``predict(env=..., model=..., inputs=...)``. Imports go into the real
``server_b`` under unique names; a hook that would leave a marker file proves import never
runs one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    CHECKSUM_FILE,
    METADATA_FILE,
    assert_user_error,
    child_env,
    download_model,
    load_and_predict,
    register_iris_model,
    registry_census,
    tree_hashes,
    unique,
)
from mlflow import MlflowClient

from mlflow_archive_plugin.errors import ArchiveError, EncryptionError
from mlflow_archive_plugin.formats import mlarchive
from mlflow_archive_plugin.formats.mlsteam import load as load_hook
from mlflow_archive_plugin.trust import crypto

pytestmark = pytest.mark.server

KEY = bytes(range(32))
KEY_HEX = KEY.hex()
HOOK_FILES = ("hooks/load.py", "hooks/predict.py")


def client_for(url: str) -> MlflowClient:
    return MlflowClient(tracking_uri=url, registry_uri=url)


def extract(archive: str | Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(dst)
    return dst


def model_hashes(model_dir: Path) -> dict[str, str]:
    """sha256 of a downloaded model's files, without ``registered_model_meta``, which MLflow
    writes on the client while downloading ``models:/<name>/<version>``."""
    hashes = tree_hashes(model_dir)
    hashes.pop("registered_model_meta", None)
    return hashes


def read_manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text(encoding="utf-8"))


def zip_folder(root: Path, target: Path, first: str = "manifest.json") -> Path:
    """A hand-made .mlarchive of ``root``'s files, ``first`` first, as a person would zip it."""
    files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: p.as_posix())
    files.sort(key=lambda p: p.relative_to(root).as_posix() != first)
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            zf.write(path, path.relative_to(root).as_posix())
    return target


# --------------------------------------------------------------------------- running hooks

RUNNER = textwrap.dedent('''
    """Runs an MLSteam package's hooks as MLSteam's SDK would; prints one JSON line."""
    import importlib.util, json, os, sys, traceback
    import numpy as np
    import pandas as pd

    def hook(root, name, tag):
        spec = importlib.util.spec_from_file_location(
            f"mlsteam_hook_{name}_{tag}", os.path.join(root, "hooks", name + ".py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def build(item):
        kind, value = item["kind"], item["value"]
        if kind == "ndarray":
            return np.asarray(value)
        if kind == "dataframe":
            return pd.DataFrame(value)
        if kind == "json":
            return json.dumps(value)
        if kind == "select-ndarray":
            return {"model": value["model"], "inputs": np.asarray(value["inputs"])}
        return value

    def files(root):
        return sorted(os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                      for d, _, names in os.walk(root) for f in names)

    results = []
    for index, step in enumerate(json.loads(sys.argv[1])):
        root = step["root"]
        env = {"MLSTEAM_MODEL_DIR": os.path.join(root, "models"), **step.get("env", {})}
        outcome = {}
        try:
            load, predict = hook(root, "load", index), hook(root, "predict", index)
            model = load.load(env=env)
            outcome["loaded"] = sorted(model) if isinstance(model, dict) else type(model).__name__
            outcome["predictions"] = {
                item["label"]: np.asarray(
                    predict.predict(env=env, model=model, inputs=build(item))).tolist()
                for item in step.get("inputs", [])
            }
        except Exception as exc:
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        outcome["files"] = files(root)
        results.append(outcome)
    print(json.dumps(results))
''')


def run_hooks(steps: list[dict], tmp_path: Path, **env: str) -> list[dict]:
    """Run each step's package hooks in one fresh Python; ``env`` adds environment variables."""
    script = tmp_path / "run_hooks.py"
    script.write_text(RUNNER, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script), json.dumps(steps)],
        cwd=tmp_path, env=child_env(MLFLOW_DISABLE_TELEMETRY="true", **env),
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def input_forms(X: np.ndarray) -> list[dict]:
    """Every form a caller may give ``predict``: array, DataFrame, list, and MLflow's JSON."""
    rows = X.tolist()
    return [
        {"label": "ndarray", "kind": "ndarray", "value": rows},
        {"label": "dataframe", "kind": "dataframe", "value": rows},
        {"label": "list", "kind": "raw", "value": rows},
        {"label": "inputs-dict", "kind": "raw", "value": {"inputs": rows}},
        {"label": "inputs-json", "kind": "json", "value": {"inputs": rows}},
        {"label": "instances-json", "kind": "json", "value": {"instances": rows}},
    ]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlarchive")


@pytest.fixture(scope="module")
def key_file(workdir) -> Path:
    path = workdir / "model.key"
    path.write_text(KEY_HEX + "\n", encoding="ascii")
    return path


@pytest.fixture(scope="module")
def plain(rich_model, workdir):
    """The rich model exported as an MLSteam package: (ExportResult, extracted folder)."""
    from mlflow_archive_plugin import export_model

    result = export_model(rich_model.uri, str(workdir / "plain") + "/", format="mlarchive",
                          tracking_uri=rich_model.url)
    return result, extract(result.location, workdir / "plain-extracted")


@pytest.fixture(scope="module")
def encrypted(rich_model, workdir):
    """The rich model exported encrypted into a folder: (ExportResult, its source files)."""
    from mlflow_archive_plugin import export_model

    result = export_model(rich_model.uri, str(workdir / "encrypted") + "/", format="mlarchive",
                          tracking_uri=rich_model.url, encryption_key=KEY)
    source = download_model(rich_model.uri, rich_model.url, workdir / "source")
    return result, source


@pytest.fixture(scope="module")
def second_model(server_a) -> str:
    name = unique("mls-second")
    register_iris_model(server_a.url, name)
    return name


@pytest.fixture(scope="module")
def first_model(server_a) -> str:
    """The bundle's first model. Not the rich model: the bundle is imported into server_b
    under its models' own names, and test_roundtrip expects the rich model's name there to
    be free (its import to be version 1, with the aliases)."""
    name = unique("mls-first")
    register_iris_model(server_a.url, name)
    return name


@pytest.fixture(scope="module")
def bundle(first_model, second_model, rich_model, workdir):
    """Two models in one package: (ExportResult, extracted folder)."""
    from mlflow_archive_plugin import export_model

    result = export_model([f"models:/{first_model}/1", f"models:/{second_model}/1"],
                          str(workdir / "bundle.mlarchive"), format="mlarchive",
                          tracking_uri=rich_model.url)
    return result, extract(result.location, workdir / "bundle-extracted")


# --------------------------------------------------------------------------- export


def test_export_names_the_file_after_the_model_with_the_mlarchive_extension(plain, rich_model):
    result, _ = plain
    assert Path(result.location).name.endswith(f"-v{rich_model.version}.mlarchive")
    assert (result.format, result.container) == ("mlarchive", "zip")


def test_manifest_is_the_first_zip_entry_then_models_then_hooks(plain):
    result, _ = plain
    names = zipfile.ZipFile(result.location).namelist()
    assert names[0] == "manifest.json"
    assert names[-4:] == ["mlflow-archive-metrics.jsonl", "mlflow-archive-export.json",
                          METADATA_FILE, CHECKSUM_FILE]
    model_entries = [name for name in names if name.startswith("models/")]
    assert "models/MLmodel" in model_entries and "models/model.skops" in model_entries
    assert names[1:1 + len(model_entries)] == model_entries
    assert names[1 + len(model_entries):-4] == list(HOOK_FILES)


def test_models_folder_is_the_mlflow_model_byte_for_byte(plain, encrypted):
    _, root = plain
    _, source = encrypted
    packaged = {path.removeprefix("models/"): digest
                for path, digest in tree_hashes(root).items() if path.startswith("models/")}
    assert packaged == model_hashes(source)


def test_manifest_fields_come_from_the_registry_and_the_signature(plain, rich_model):
    _, root = plain
    (entry,) = read_manifest(root)["models"]
    assert entry == {
        "name": rich_model.name,
        "version": rich_model.version,
        "description": "Version 2: C=0.5, l2",
        "framework": "sklearn",
        "inputs": [{"name": "inputs", "type": "numpy.ndarray"}],
        "outputs": [{"name": "outputs", "type": "numpy.ndarray"}],
        "enc_model_cleanup": None,
        "enc_model_cleanup_files": None,
    }


def test_a_framework_outside_the_spec_is_written_with_a_warning(plain):
    result, _ = plain
    assert len(result.warnings) == 1
    assert "'sklearn'" in result.warnings[0] and "--strict" in result.warnings[0]


def test_hooks_define_the_functions_mlsteam_calls(plain):
    _, root = plain
    assert mlarchive.hook_problems(root) == []


def test_export_verifies_and_passes_sha256sum(plain):
    from mlflow_archive_plugin import verify_archive

    result, root = plain
    assert verify_archive(result.location).ok
    if shutil.which("sha256sum"):
        proc = subprocess.run(["sha256sum", "--strict", "-c", CHECKSUM_FILE], cwd=root,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_other_layouts_keep_their_single_model_metadata(rich_zip):
    document = json.loads(zipfile.ZipFile(rich_zip.location).read(METADATA_FILE))
    assert "models" not in document and "encryption" not in document


# --------------------------------------------------------------------------- hooks at work


def test_generated_hooks_predict_like_pyfunc_in_a_fresh_process(plain, rich_model, tmp_path):
    _, root = plain
    (outcome,) = run_hooks([{"root": str(root), "inputs": input_forms(rich_model.X)}], tmp_path)
    assert "error" not in outcome, outcome
    expected = load_and_predict(rich_model.uri, rich_model.url, rich_model.X).tolist()
    assert expected == rich_model.predictions.tolist()
    assert outcome["loaded"] == "PyFuncModel"
    assert outcome["predictions"] == {item["label"]: expected
                                      for item in input_forms(rich_model.X)}


def test_bundle_hooks_load_every_model_and_predict_picks_one_by_name(
    bundle, first_model, rich_model, second_model, tmp_path
):
    _, root = bundle
    rows = rich_model.X.tolist()
    forms = [
        {"label": "first-by-default", "kind": "ndarray", "value": rows},
        {"label": "rich", "kind": "raw", "value": {"model": first_model, "inputs": rows}},
        {"label": "second", "kind": "select-ndarray",
         "value": {"model": second_model, "inputs": rows}},
        {"label": "second-json", "kind": "json",
         "value": {"model": second_model, "dataframe_split": {"data": rows}}},
    ]
    (outcome,) = run_hooks([{"root": str(root), "inputs": forms}], tmp_path)
    assert "error" not in outcome, outcome
    assert outcome["loaded"] == sorted([first_model, second_model])
    rich = load_and_predict(f"models:/{first_model}/1", rich_model.url, rich_model.X).tolist()
    second = load_and_predict(f"models:/{second_model}/1", rich_model.url, rich_model.X).tolist()
    assert outcome["predictions"] == {"first-by-default": rich, "rich": rich,
                                      "second": second, "second-json": second}


# --------------------------------------------------------------------------- encryption


def test_encrypted_export_into_a_folder_is_named_model_enc(encrypted):
    result, _ = encrypted
    assert Path(result.location).name == "model-enc.mlarchive"


def test_encrypted_package_holds_no_model_file_in_plaintext(encrypted):
    result, source = encrypted
    raw = Path(result.location).read_bytes()
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        contents = [zf.read(name) for name in zf.namelist()]
        model_entries = [name for name in zf.namelist() if name.startswith("models/")]
    assert model_entries and all(name.endswith(".enc") for name in model_entries)
    secrets = [(source / rel).read_bytes() for rel in model_hashes(source)
               if (source / rel).stat().st_size >= 64]
    assert any(len(secret) > 1000 for secret in secrets)  # the weights are among them
    for secret in secrets:
        assert secret not in raw
        assert not any(secret in content for content in contents)


def test_encrypted_manifest_names_its_cleanup_policy(encrypted, workdir):
    result, _ = encrypted
    root = extract(result.location, workdir / "encrypted-manifest")
    (entry,) = read_manifest(root)["models"]
    assert (entry["enc_model_cleanup"], entry["enc_model_cleanup_files"]) == (
        "after-load", ["models"])


def test_encrypted_hooks_refuse_a_wrong_key_then_decrypt_predict_and_clean_up(
    encrypted, rich_model, tmp_path
):
    result, _ = encrypted
    root = extract(result.location, tmp_path / "package")
    escaping = extract(result.location, tmp_path / "escaping")
    manifest = read_manifest(escaping)
    manifest["models"][0]["enc_model_cleanup_files"] = ["../victim"]
    (escaping / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    (tmp_path / "victim").write_text("keep me", encoding="utf-8")
    sealed = sorted(path for path in tree_hashes(root) if path.startswith("models/"))
    forms = input_forms(rich_model.X)[:2]
    no_key, wrong, escape, right = run_hooks([
        {"root": str(root), "inputs": forms},
        {"root": str(root), "env": {"MLSTEAM_MODEL_KEY": "ab" * 32}, "inputs": forms},
        {"root": str(escaping), "env": {"MLSTEAM_MODEL_KEY": KEY_HEX}, "inputs": forms},
        {"root": str(root), "env": {"MLSTEAM_MODEL_KEY": KEY_HEX}, "inputs": forms},
    ], tmp_path)
    assert "MLSTEAM_MODEL_KEY" in no_key["error"]
    assert "not the one this package was encrypted with" in wrong["error"]
    for refused in (no_key, wrong):
        assert sorted(p for p in refused["files"] if p.startswith("models/")) == sealed
        assert not any(p.startswith(".decrypting") for p in refused["files"])
    assert "reaches outside the package root" in escape["error"]
    assert not any(p.startswith("models/") and not p.endswith(".enc") for p in escape["files"])
    assert (tmp_path / "victim").read_text(encoding="utf-8") == "keep me"
    assert "error" not in right, right
    assert right["predictions"] == {item["label"]: rich_model.predictions.tolist()
                                    for item in forms}
    assert not any(p.startswith("models/") for p in right["files"])  # after-load cleanup


def test_encrypted_package_imports_with_its_key(encrypted, key_file, rich_model, server_b,
                                                tmp_path):
    from mlflow_archive_plugin import import_archive

    result, source = encrypted
    imported = import_archive(result.location, name=unique("mls-enc"), tracking_uri=server_b.url,
                              encryption_key=crypto.read_key(key_file=key_file))
    target = download_model(imported.model_uri, server_b.url, tmp_path / "target")
    assert model_hashes(target) == model_hashes(source)
    np.testing.assert_array_equal(
        load_and_predict(imported.model_uri, server_b.url, rich_model.X), rich_model.predictions)


@pytest.mark.parametrize("key", [None, b"\x01" * 32], ids=["missing", "wrong"])
def test_encrypted_import_without_the_right_key_registers_nothing(encrypted, server_b, key):
    from mlflow_archive_plugin import import_archive

    result, _ = encrypted
    before = registry_census(server_b.url)
    with pytest.raises(EncryptionError) as caught:
        import_archive(result.location, name=unique("mls-nokey"), tracking_uri=server_b.url,
                       encryption_key=key)
    assert "\n" not in str(caught.value)
    assert registry_census(server_b.url) == before


# --------------------------------------------------------------------------- import


@pytest.fixture(scope="module")
def roundtrip(plain, server_b):
    from mlflow_archive_plugin import import_archive

    result, _ = plain
    return import_archive(result.location, name=unique("mls-rt"), tracking_uri=server_b.url)


def test_round_trip_keeps_descriptions_tags_and_aliases(roundtrip, rich_model, server_b):
    source, target = client_for(rich_model.url), client_for(server_b.url)
    source_version = source.get_model_version(rich_model.name, rich_model.version)
    target_version = target.get_model_version(roundtrip.name, roundtrip.version)
    assert target_version.description == source_version.description
    assert source_version.tags.items() <= target_version.tags.items()
    assert sorted(target_version.aliases) == ["champion", "stable"]
    registered = target.get_registered_model(roundtrip.name)
    assert registered.description == source.get_registered_model(rich_model.name).description
    assert {"domain": "botany", "owner": "alice"}.items() <= registered.tags.items()


def test_round_trip_keeps_params_and_metric_history(roundtrip, rich_model, server_b):
    source, target = client_for(rich_model.url), client_for(server_b.url)
    assert target.get_run(roundtrip.run_id).data.params == \
        source.get_run(rich_model.run_id).data.params
    for key in ("loss", "lr"):
        def points(client, run_id, key=key):
            return sorted((m.step, m.timestamp, m.value)
                          for m in client.get_metric_history(run_id, key))
        assert points(target, roundtrip.run_id) == points(source, rich_model.run_id)
    assert target.get_logged_model(roundtrip.model_id).params == \
        source.get_logged_model(rich_model.model_id).params


def test_round_trip_predicts_and_reimport_reuses_the_version(roundtrip, plain, rich_model,
                                                             server_b):
    from mlflow_archive_plugin import import_archive

    np.testing.assert_array_equal(
        load_and_predict(roundtrip.model_uri, server_b.url, rich_model.X), rich_model.predictions)
    again = import_archive(plain[0].location, name=roundtrip.name, tracking_uri=server_b.url)
    assert (again.version, again.reused) == (roundtrip.version, True)


def test_bundle_import_registers_every_model_through_the_cli(bundle, first_model, rich_model,
                                                             second_model, server_b, workdir):
    from conftest import cli

    result, _ = bundle
    before = registry_census(server_b.url)
    proc = cli("import", result.location, "--tracking-uri", server_b.url, "--json", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [model["name"] for model in data["models"]] == [first_model, second_model]
    assert registry_census(server_b.url)["model_versions"] == before["model_versions"] + 2
    for model in data["models"]:
        assert load_and_predict(model["model_uri"], server_b.url, rich_model.X).shape == (5,)
    again = cli("import", result.location, "--tracking-uri", server_b.url, cwd=workdir)
    assert again.stdout.count("already imported as") == 2, again.stderr


# --------------------------------------------------------------------------- hand-written


MARKER_HOOK = textwrap.dedent('''
    import pathlib
    pathlib.Path({marker!r}).write_text("the hook ran")

    def {function}(*args, env=None, **kwargs):
        return None
''')


def write_spec_package(root: Path, models: dict[str, Path | bytes], manifest: dict,
                       marker: Path) -> Path:
    """A package written to the spec by hand: each model folder copied, or bytes as a file."""
    for name, content in models.items():
        target = root / "models" / name
        if isinstance(content, Path):
            shutil.copytree(content, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    (root / "hooks").mkdir(parents=True)
    for hook, function in (("load.py", "load"), ("predict.py", "predict")):
        (root / "hooks" / hook).write_text(
            MARKER_HOOK.format(marker=str(marker), function=function), encoding="utf-8")
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


def spec_entry(name: str, **extra) -> dict:
    return {"name": name, "version": "2023.1-rc", "framework": "pytorch",
            "description": f"{name}, written by hand", **extra}


def test_hand_written_package_with_an_mlflow_model_registers_it_without_running_hooks(
    encrypted, rich_model, server_b, tmp_path
):
    from mlflow_archive_plugin import import_archive

    _, source = encrypted
    name = unique("mls-hand")
    marker = tmp_path / "hook-ran"
    inputs = [{"name": "features", "type": "list[float]"}]
    root = write_spec_package(tmp_path / "pkg", {".": source}, {"models": [spec_entry(
        name, inputs=inputs)]}, marker)
    archive = zip_folder(root, tmp_path / "hand.mlarchive")
    imported = import_archive(archive, tracking_uri=server_b.url)
    assert not marker.exists()
    version = client_for(server_b.url).get_model_version(imported.name, imported.version)
    assert version.description == f"{name}, written by hand"
    assert {"mlsteam.name": name, "mlsteam.version": "2023.1-rc", "mlsteam.framework": "pytorch",
            "mlsteam.inputs": json.dumps(inputs),
            "mlsteam.hooks": "load.py, predict.py"}.items() <= version.tags.items()
    np.testing.assert_array_equal(
        load_and_predict(imported.model_uri, server_b.url, rich_model.X), rich_model.predictions)


def test_hand_written_package_exports_again_with_its_own_manifest_fields(
    encrypted, server_b, tmp_path
):
    from mlflow_archive_plugin import export_model, import_archive

    _, source = encrypted
    name = unique("mls-again")
    inputs = [{"name": "features", "type": "list[float]"}]
    root = write_spec_package(tmp_path / "pkg", {".": source}, {"models": [spec_entry(
        name, inputs=inputs)]}, tmp_path / "marker")
    imported = import_archive(zip_folder(root, tmp_path / "hand.mlarchive"),
                              tracking_uri=server_b.url)
    again = export_model(imported.model_uri, str(tmp_path / "again.mlarchive"),
                         format="mlarchive", tracking_uri=server_b.url)
    (entry,) = read_manifest(extract(again.location, tmp_path / "again"))["models"]
    assert {key: entry[key] for key in ("name", "version", "framework", "description",
                                        "inputs")} == {**spec_entry(name), "inputs": inputs}
    assert again.warnings == []


def test_a_bundle_cannot_be_imported_under_one_name(bundle, server_b):
    from mlflow_archive_plugin import import_archive

    before = registry_census(server_b.url)
    with pytest.raises(ArchiveError, match="--name renames one model"):
        import_archive(bundle[0].location, name=unique("mls-one"), tracking_uri=server_b.url)
    assert registry_census(server_b.url) == before


def test_hand_written_package_of_two_mlflow_models_registers_both(encrypted, server_b, tmp_path):
    from mlflow_archive_plugin import import_archive

    _, source = encrypted
    first, second = unique("mls-a"), unique("mls-b")
    root = write_spec_package(tmp_path / "pkg", {second: source, first: source},
                              {"models": [spec_entry(first), spec_entry(second)]},
                              tmp_path / "marker")
    imported = import_archive(zip_folder(root, tmp_path / "two.mlarchive"),
                              tracking_uri=server_b.url)
    assert [model.name for model in imported.models] == [first, second]
    assert not (tmp_path / "marker").exists()


def test_a_failing_model_of_a_package_takes_back_the_ones_registered_before_it(
    encrypted, server_b, tmp_path
):
    from mlflow_archive_plugin import import_archive

    _, source = encrypted
    first, second = unique("mls-ok"), unique("mls-fails")
    client = client_for(server_b.url)
    client.delete_experiment(client.create_experiment(second))  # the second's experiment
    root = write_spec_package(tmp_path / "pkg", {first: source, second: source},
                              {"models": [spec_entry(first), spec_entry(second)]},
                              tmp_path / "marker")
    before = registry_census(server_b.url)
    with pytest.raises(ArchiveError, match="is deleted"):
        import_archive(zip_folder(root, tmp_path / "two.mlarchive"), tracking_uri=server_b.url)
    after = registry_census(server_b.url)
    assert (after["registered_models"], after["model_versions"]) == (
        before["registered_models"], before["model_versions"])
    assert not client.search_registered_models(filter_string=f"name = '{first}'")
    # The first model got as far as its own experiment (which an import never takes back).
    assert client.get_experiment_by_name(first) is not None


def test_hand_written_package_of_other_files_round_trips_byte_for_byte(server_b, tmp_path):
    from mlflow_archive_plugin import export_model, import_archive

    name = unique("mls-weights") + ":v1.0"  # free text; MLflow refuses ':' in its names
    root = write_spec_package(tmp_path / "pkg", {"model.pt": os.urandom(4096)},
                              {"models": [spec_entry(name)]}, tmp_path / "marker")
    archive = zip_folder(root, tmp_path / "weights.mlarchive")
    imported = import_archive(archive, tracking_uri=server_b.url)
    assert imported.name == name.replace(":", "_")
    tags = client_for(server_b.url).get_model_version(imported.name, imported.version).tags
    assert (tags["mlsteam.name"], tags["mlsteam.framework"]) == (name, "pytorch")
    again = export_model(imported.model_uri, str(tmp_path / "out") + "/", format="mlarchive",
                         tracking_uri=server_b.url)
    assert Path(again.location).read_bytes() == archive.read_bytes()
    assert not (tmp_path / "marker").exists()


# --------------------------------------------------------------------------- kept hooks


def own_hooks(marker: Path) -> dict[str, bytes]:
    """Hand-written hooks no generator would write: comments, non-ASCII text, CRLF line ends,
    no final newline, a helper module, an empty package file; importing any writes
    ``marker``."""
    top = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('the hook ran')\n"
    return {
        "load.py": ("# Hand-written for MLSteam — ünïcode kept as it is\r\n" + top
                    + "from util import pick\r\n\r\ndef load(*args, env=None, **kwargs):\r\n"
                    "    return pick(env)\r\n").encode("utf-8"),
        "predict.py": ("# predicts with the hand-written helper\n" + top
                       + "def predict(*args, env=None, model=None, inputs=None, **kwargs):\n"
                       "    return model.predict(inputs)").encode("utf-8"),
        "util.py": ("# helper next to the hooks\n" + top
                    + "def pick(env):\n    return env['MLSTEAM_MODEL_DIR']\n").encode("utf-8"),
        "lib/__init__.py": b"",
    }


def write_hooks(root: Path, hooks: dict[str, bytes]) -> None:
    shutil.rmtree(root / "hooks")
    for name, data in hooks.items():
        (root / "hooks" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "hooks" / name).write_bytes(data)


def hook_version_tags(url: str, name: str, version: str) -> dict[str, str]:
    tags = client_for(url).get_model_version(name, version).tags
    return {key: value for key, value in tags.items() if key.startswith("mlsteam.hook.")}


@pytest.fixture(scope="module")
def kept(encrypted, server_b, tmp_path_factory):
    """A hand-written package with its own hooks, imported then exported as mlarchive:
    (package folder, its hooks, marker, ImportResult, export extracted, ExportResult)."""
    from mlflow_archive_plugin import export_model, import_archive

    scratch = tmp_path_factory.mktemp("mlarchive-kept")
    _, source = encrypted
    marker = scratch / "hook-ran"
    inputs = [{"name": "features", "type": "list[float]"}]
    root = write_spec_package(scratch / "pkg", {".": source}, {"models": [spec_entry(
        unique("mls-kept"), inputs=inputs)]}, marker)
    hooks = own_hooks(marker)
    write_hooks(root, hooks)
    imported = import_archive(zip_folder(root, scratch / "hand.mlarchive"),
                              tracking_uri=server_b.url)
    again = export_model(imported.model_uri, str(scratch / "again.mlarchive"),
                         format="mlarchive", tracking_uri=server_b.url)
    return root, hooks, marker, imported, extract(again.location, scratch / "again"), again


def test_hand_written_hooks_are_kept_as_version_tags_holding_their_text(kept, server_b):
    _, hooks, _, imported, _, _ = kept
    assert imported.warnings == []
    assert hook_version_tags(server_b.url, imported.name, imported.version) == {
        f"mlsteam.hook.{name}": data.decode("utf-8") for name, data in hooks.items()}


def test_kept_hooks_are_exported_again_byte_for_byte(kept):
    root, _, _, _, again, _ = kept
    exported = {path: digest for path, digest in tree_hashes(again).items()
                if path.startswith("hooks/")}
    assert exported == {path: digest for path, digest in tree_hashes(root).items()
                        if path.startswith("hooks/")}
    assert (again / "hooks/load.py").read_bytes() == (root / "hooks/load.py").read_bytes()


def test_kept_hooks_export_keeps_the_manifest_fields_and_the_model_files(kept):
    root, _, _, imported, again, result = kept
    (original,) = read_manifest(root)["models"]
    (entry,) = read_manifest(again)["models"]
    assert {key: entry[key] for key in original} == original
    assert model_hashes(again / "models") == model_hashes(root / "models")
    names = zipfile.ZipFile(result.location).namelist()
    assert names[0] == "manifest.json" and names[-2:] == [METADATA_FILE, CHECKSUM_FILE]
    assert result.warnings == []


def test_kept_hooks_never_run_on_import_export_or_verify(kept):
    from mlflow_archive_plugin import verify_archive

    _, _, marker, _, _, result = kept
    assert verify_archive(result.location).ok
    assert not marker.exists()


def test_kept_hooks_survive_importing_the_exported_package_and_exporting_it_again(
    kept, server_b, tmp_path
):
    from mlflow_archive_plugin import export_model, import_archive

    root, _, marker, _, _, result = kept
    reimported = import_archive(result.location, tracking_uri=server_b.url)
    third = export_model(reimported.model_uri, str(tmp_path / "third.mlarchive"),
                         format="mlarchive", tracking_uri=server_b.url)
    with zipfile.ZipFile(third.location) as zf:
        hooks = {name: zf.read(name) for name in zf.namelist() if name.startswith("hooks/")}
    assert hooks == {f"hooks/{path}": path_bytes for path, path_bytes in
                     ((p.relative_to(root / "hooks").as_posix(), p.read_bytes())
                      for p in (root / "hooks").rglob("*") if p.is_file())}
    assert not marker.exists()


def test_an_encrypted_export_of_kept_hooks_gets_the_generated_ones_and_a_warning(
    kept, server_b, tmp_path
):
    from mlflow_archive_plugin import export_model

    _, _, _, imported, _, _ = kept
    result = export_model(imported.model_uri, str(tmp_path) + "/", format="mlarchive",
                          tracking_uri=server_b.url, encryption_key=KEY)
    with zipfile.ZipFile(result.location) as zf:
        hooks = sorted(name for name in zf.namelist() if name.startswith("hooks/"))
        predict = zf.read("hooks/predict.py")
    assert hooks == list(HOOK_FILES)
    assert predict == Path(mlarchive.predict_hook.__file__).read_bytes()
    assert any("kept the hooks" in line and "encrypted" in line for line in result.warnings)


def test_each_model_of_a_hand_written_package_keeps_its_hooks(encrypted, server_b, tmp_path):
    from mlflow_archive_plugin import export_model, import_archive

    _, source = encrypted
    first, second = unique("mls-hooks-a"), unique("mls-hooks-b")
    marker = tmp_path / "marker"
    root = write_spec_package(tmp_path / "pkg", {first: source, second: source},
                              {"models": [spec_entry(first), spec_entry(second)]}, marker)
    hooks = own_hooks(marker)
    write_hooks(root, hooks)
    imported = import_archive(zip_folder(root, tmp_path / "two.mlarchive"),
                              tracking_uri=server_b.url)
    expected = {f"mlsteam.hook.{name}": data.decode("utf-8") for name, data in hooks.items()}
    for model in imported.models:
        assert hook_version_tags(server_b.url, model.name, model.version) == expected
    alone = export_model(imported.models[1].model_uri, str(tmp_path / "alone.mlarchive"),
                         format="mlarchive", tracking_uri=server_b.url)
    with zipfile.ZipFile(alone.location) as zf:
        assert {name: zf.read(f"hooks/{name}") for name in hooks} == hooks
    both = export_model([model.model_uri for model in imported.models],
                        str(tmp_path / "both.mlarchive"), format="mlarchive",
                        tracking_uri=server_b.url)
    with zipfile.ZipFile(both.location) as zf:
        assert sorted(n for n in zf.namelist() if n.startswith("hooks/")) == list(HOOK_FILES)
    assert sum("kept the hooks" in line for line in both.warnings) == 2
    assert not marker.exists()


def test_hooks_that_cannot_be_kept_warn_and_export_gets_the_generated_ones(
    encrypted, server_b, tmp_path
):
    from mlflow_archive_plugin import export_model, import_archive

    _, source = encrypted
    marker = tmp_path / "marker"
    root = write_spec_package(tmp_path / "pkg", {".": source},
                              {"models": [spec_entry(unique("mls-latin1"))]}, marker)
    (root / "hooks" / "util.py").write_bytes("# écrit à la main\n".encode("latin-1"))
    imported = import_archive(zip_folder(root, tmp_path / "latin1.mlarchive"),
                              tracking_uri=server_b.url)
    (line,) = [line for line in imported.warnings if "hooks are not kept" in line]
    assert "hooks/util.py is not UTF-8 text" in line and "\n" not in line
    assert hook_version_tags(server_b.url, imported.name, imported.version) == {}
    again = export_model(imported.model_uri, str(tmp_path / "again.mlarchive"),
                         format="mlarchive", tracking_uri=server_b.url)
    root_again = extract(again.location, tmp_path / "again")
    assert sorted(p.name for p in (root_again / "hooks").iterdir()) == ["load.py", "predict.py"]
    assert (root_again / "hooks/predict.py").read_bytes() == Path(
        mlarchive.predict_hook.__file__).read_bytes()
    assert not marker.exists()


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("util.py", b"\xff\xfe# utf-16\n", "hooks/util.py is not UTF-8 text"),
    ("util.py", b"x = 1\x00\n", "hooks/util.py is not text"),
    ("big.py", b"#" * 100_001, "hooks/big.py is longer than the 100,000 characters"),
    ("huge.py", b"#" * 400_001, "hooks/huge.py is longer than the 100,000 characters"),
    ("ünï.py", b"x = 1\n", "no MLflow tag key can hold"),
    ("a:b.py", b"x = 1\n", "no MLflow tag key can hold"),
], ids=["not-utf8", "nul", "too-long", "far-too-long", "non-ascii-name", "colon-name"])
def test_a_hook_a_tag_cannot_hold_keeps_no_hooks_and_says_why(name, data, reason, tmp_path):
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks/load.py").write_text("def load(env=None):\n    pass\n", encoding="utf-8")
    (tmp_path / "hooks" / name).write_bytes(data)
    tags, problem = mlarchive.hook_tags(tmp_path)
    assert tags == {} and reason in problem


def test_a_hook_of_exactly_the_tag_limit_is_kept(tmp_path):
    (tmp_path / "hooks").mkdir()
    text = "é" * 100_000  # 100,000 characters in 200,000 bytes
    (tmp_path / "hooks/load.py").write_bytes(text.encode("utf-8"))
    assert mlarchive.hook_tags(tmp_path) == ({"mlsteam.hook.load.py": text}, None)


@pytest.mark.parametrize("tags", [
    {"mlsteam.hook.load.py": "def load(): pass\n"},
    {"mlsteam.hook.load.py": "", "mlsteam.hook.predict.py": "", "mlsteam.hook.../x.py": ""},
    {"mlsteam.hook.load.py": "", "mlsteam.hook.predict.py": "", "mlsteam.hook./etc/x": ""},
], ids=["no-predict", "dot-dot", "absolute"])
def test_edited_hook_tags_that_lack_a_hook_or_leave_hooks_are_not_written(tags, tmp_path):
    from mlflow_archive_plugin.snapshot import ModelVersionInfo, Snapshot

    member = Snapshot(model_dir=tmp_path, mlmodel={},
                      model_version=ModelVersionInfo(version="1", tags=tags))
    assert mlarchive.kept_hooks(member) == {}


# --------------------------------------------------------------------------- bad input


def _drop(root: Path, rel: str) -> None:
    (root / rel).unlink()


def _write(rel: str, text: str):
    return lambda root: (root / rel).write_text(text, encoding="utf-8")


def _manifest(**fields):
    def change(root: Path) -> None:
        document = read_manifest(root)
        document["models"][0].update(fields)
        (root / "manifest.json").write_text(json.dumps(document), encoding="utf-8")
    return change


BAD_PACKAGES = {
    "no-manifest": (lambda root: _drop(root, "manifest.json"), "no manifest.json"),
    "manifest-not-json": (_write("manifest.json", "{models: ["), "not valid JSON"),
    "manifest-without-models": (_write("manifest.json", '{"models": []}'), "no 'models' list"),
    "model-without-name": (_manifest(name=None), "lacks 'name'"),
    "no-load-hook": (lambda root: _drop(root, "hooks/load.py"), "hooks/load.py is missing"),
    "predict-without-def": (_write("hooks/predict.py", "predict = print\n"),
                            "no top-level def predict"),
    "load-not-python": (_write("hooks/load.py", "def load(:\n"), "not valid Python"),
    "cleanup-escapes-root": (_manifest(enc_model_cleanup_files=["models/../../x"]),
                             "outside the package root"),
    "cleanup-absolute": (_manifest(enc_model_cleanup_files=["/etc"]),
                         "outside the package root"),
    "cleanup-policy-unknown": (_manifest(enc_model_cleanup="sometimes"), "'sometimes'"),
}


@pytest.mark.parametrize("case", sorted(BAD_PACKAGES))
def test_bad_package_is_refused_in_one_line_and_registers_nothing(case, encrypted, server_b,
                                                                  tmp_path):
    from mlflow_archive_plugin import import_archive

    change, expected = BAD_PACKAGES[case]
    _, source = encrypted
    marker = tmp_path / "marker"
    root = write_spec_package(tmp_path / "pkg", {".": source},
                              {"models": [spec_entry(unique("mls-bad"))]}, marker)
    change(root)
    archive = zip_folder(root, tmp_path / "bad.mlarchive")
    before = registry_census(server_b.url)
    with pytest.raises(ArchiveError) as caught:
        import_archive(archive, tracking_uri=server_b.url)
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert registry_census(server_b.url) == before
    assert not marker.exists()


@pytest.fixture(scope="module")
def cli_runs(rich_model, server_b, encrypted, key_file, workdir, tmp_path_factory):
    """Bad command lines, run concurrently (each is a fresh Python): name -> (process, dest)."""
    scratch = tmp_path_factory.mktemp("mlarchive-cli")
    missing = scratch / "no-manifest.mlarchive"
    with zipfile.ZipFile(encrypted[0].location) as zf, zipfile.ZipFile(missing, "w") as out:
        for name in zf.namelist():
            if name not in ("manifest.json", METADATA_FILE, CHECKSUM_FILE):
                out.writestr(name, zf.read(name))
    wrong_key = scratch / "wrong.key"
    wrong_key.write_text("cd" * 32, encoding="ascii")
    export = ("export", rich_model.uri, "--tracking-uri", rich_model.url)
    runs = {
        "several-uris-need-mlarchive": (*export, rich_model.uri, "-o", str(scratch / "a.zip")),
        "strict-refuses-sklearn": (*export, "--format", "mlarchive", "--strict",
                                   "-o", str(scratch / "strict.mlarchive")),
        "cleanup-escaping-root": (*export, "--format", "mlarchive", "--encrypt",
                                  "--key-file", str(key_file), "--cleanup-file", "../up",
                                  "-o", str(scratch / "escape.mlarchive")),
        "encrypt-without-key": (*export, "--format", "mlarchive", "--encrypt",
                                "-o", str(scratch / "nokey.mlarchive")),
        "import-missing-manifest": ("import", str(missing), "--tracking-uri", server_b.url),
        "import-without-key": ("import", encrypted[0].location, "--tracking-uri", server_b.url),
        "import-wrong-key": ("import", encrypted[0].location, "--tracking-uri", server_b.url,
                             "--key-file", str(wrong_key)),
    }
    before = registry_census(server_b.url)
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "mlflow_archive_plugin.cli", *args], cwd=scratch,
            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, args in runs.items()
    }
    done = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=180)
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return done, before, registry_census(server_b.url), scratch


CLI_ERRORS = {
    "several-uris-need-mlarchive": "--format mlarchive only",
    "strict-refuses-sklearn": "drop --strict",
    "cleanup-escaping-root": "outside the package root",
    "encrypt-without-key": "--encrypt needs a key",
    "import-missing-manifest": "no manifest.json",
    "import-without-key": "pass --key-file or --key-env",
    "import-wrong-key": "not the one this package was encrypted with",
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_cli_refuses_bad_input_in_one_line(case, cli_runs):
    done, _, _, _ = cli_runs
    assert CLI_ERRORS[case] in assert_user_error(done[case])


def test_refused_cli_runs_write_and_register_nothing(cli_runs):
    _, before, after, scratch = cli_runs
    assert after == before
    assert sorted(path.name for path in scratch.iterdir()) == ["no-manifest.mlarchive",
                                                              "wrong.key"]


# --------------------------------------------------------------------------- the parts


@pytest.mark.parametrize(("spec", "expected"), [
    ({"type": "double", "name": "x"}, "float"),
    ({"type": "long"}, "int"),
    ({"type": "string"}, "str"),
    ({"type": "boolean"}, "bool"),
    ({"type": "binary"}, "bytes"),
    ({"type": "datetime"}, "datetime.datetime"),
    ({"type": "array", "items": {"type": "float"}}, "list[float]"),
    ({"type": "map", "values": {"type": "array", "items": {"type": "integer"}}},
     "dict[str, list[int]]"),
    ({"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}, "numpy.ndarray"),
    ({"type": "any"}, "typing.Any"),
])
def test_signature_types_become_python_annotations(spec, expected):
    assert mlarchive.annotation(spec) == expected


def test_signature_fields_name_columns_and_mark_optional_ones():
    signature = {"inputs": json.dumps([{"type": "double", "name": "a"},
                                       {"type": "string", "name": "b", "required": False}]),
                 "outputs": json.dumps([{"type": "long"}])}
    assert mlarchive.signature_fields({"signature": signature}) == (
        [{"name": "a", "type": "float"}, {"name": "b", "type": "typing.Optional[str]"}],
        [{"name": "outputs", "type": "int"}],
    )


@pytest.mark.parametrize(("flavors", "requirements", "expected"), [
    ({"pytorch": {}}, "torch==2.3.0\n", "pytorch"),
    ({"pytorch": {}}, "torch==2.3.0\nlightning==2.2.0\n", "pytorch.lightning"),
    ({"pytorch": {}}, "pytorch_lightning>=1.9\n", "pytorch.lightning"),
    ({"tensorflow": {"model_type": "tf2-module"}}, "", "tensorflow"),
    ({"tensorflow": {"model_type": "keras"}}, "", "tensorflow.keras"),
    ({"keras": {}}, "", "tensorflow.keras"),
    ({"python_function": {}, "sklearn": {}}, "", "sklearn"),
    ({"python_function": {}}, "", "python_function"),
])
def test_mlflow_flavors_map_onto_mlsteam_frameworks(flavors, requirements, expected, tmp_path):
    (tmp_path / "requirements.txt").write_text(requirements, encoding="utf-8")
    assert mlarchive.framework_of({"flavors": flavors}, tmp_path) == expected


@pytest.mark.parametrize("text", [KEY, KEY_HEX.encode() + b"\n",
                                  __import__("base64").b64encode(KEY) + b"\n"],
                         ids=["raw", "hex", "base64"])
def test_a_key_file_may_hold_raw_hex_or_base64(text, tmp_path):
    path = tmp_path / "key"
    path.write_bytes(text)
    assert crypto.read_key(key_file=path) == KEY


def test_a_key_of_the_wrong_length_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SHORT_KEY", "abcd")
    with pytest.raises(EncryptionError, match="32-byte key"):
        crypto.read_key(key_env="SHORT_KEY")


def test_encrypted_files_refuse_alteration_truncation_and_swapping(tmp_path):
    source = tmp_path / "plain"
    source.mkdir()
    (source / "a.bin").write_bytes(os.urandom(3 * crypto.CHUNK_SIZE + 7))
    (source / "b.bin").write_bytes(os.urandom(crypto.CHUNK_SIZE))
    info = crypto.describe(KEY)
    sealed = crypto.encrypt_tree(source, tmp_path / "sealed", KEY, "models/")
    plain = crypto.decrypt_tree(sealed, tmp_path / "out", KEY, info, "models/")
    assert tree_hashes(plain) == tree_hashes(source)
    a, b = sealed / "a.bin.enc", sealed / "b.bin.enc"
    original = a.read_bytes()
    record = load_hook.NONCE_SIZE + crypto.CHUNK_SIZE + load_hook.TAG_SIZE
    for damaged in (original[:-1] + bytes([original[-1] ^ 1]),      # altered
                    original[:load_hook.HEADER_SIZE + 3 * record],    # last chunk dropped
                    b.read_bytes()):                                   # another file's blob
        a.write_bytes(damaged)
        target = tmp_path / f"out-{hashlib.sha256(damaged).hexdigest()[:8]}"
        with pytest.raises(EncryptionError, match="does not decrypt"):
            crypto.decrypt_tree(sealed, target, KEY, info, "models/")
        assert not target.exists()


@pytest.mark.parametrize("pattern", ["../x", "/etc", "models/../../x", "..", ".", "",
                                     "C:/x", "~/x"])
def test_cleanup_patterns_may_not_leave_the_package_root(pattern):
    with pytest.raises(load_hook.PackageError):
        load_hook.check_pattern(pattern)


def test_cleanup_deletes_in_order_and_spares_links_leading_outside(tmp_path):
    root, outside = tmp_path / "pkg", tmp_path / "outside"
    (root / "models" / "sub").mkdir(parents=True)
    (root / "models" / "sub" / "w.bin").write_bytes(b"w")
    (root / "keep.txt").write_text("k")
    outside.mkdir()
    (outside / "precious").write_text("p")
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(load_hook.PackageError, match="outside the package root"):
        load_hook.clean_up(str(root), ["models/**/*.bin", "models", "link/*"])
    assert sorted(p.name for p in root.iterdir()) == ["keep.txt", "link"]
    assert (outside / "precious").read_text() == "p"
