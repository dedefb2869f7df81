"""A ``.bentomodel`` carries the whole registry entry back, even after a trip through BentoML.

The rich model (server_a, version 2, with tags, descriptions, aliases, params, metric
histories and a logged model) is exported by the CLI as a ``.bentomodel`` and imported by the
CLI into server_b: the version there equals the original. The same file also goes through the
real BentoML (``import_model`` into a fresh BENTOML_HOME, then ``export_model``), which
re-packs it; that re-packed ``.bentomodel`` imports as the same model again.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import cli, load_and_predict, sha256_file, unique, use_bentoml_home
from mlflow import MlflowClient

ROUTES = ("direct", "through-bentoml")


def client_for(url: str) -> MlflowClient:
    return MlflowClient(tracking_uri=url, registry_uri=url)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, int, float]]:
    return sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))


def user_tags(tags: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in tags.items() if not key.startswith("mlflow")}


def cli_import(path: Path, url: str, cwd: Path, *extra: str) -> dict:
    proc = cli("import", str(path), "--tracking-uri", url, "--json", "-q", *extra, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def bentomodel(rich_model, tmp_path_factory) -> Path:
    """The rich model exported by the CLI with ``--format bentoml`` and nothing else."""
    out = tmp_path_factory.mktemp("ours")
    proc = cli("export", rich_model.uri, "--format", "bentoml", "-o", f"{out}/",
               "--tracking-uri", rich_model.url, "--json", "-q", cwd=out)
    assert proc.returncode == 0, proc.stderr
    return Path(json.loads(proc.stdout)["location"])


@pytest.fixture(scope="module")
def through_bentoml(bentomodel, tmp_path_factory) -> Path:
    """Our .bentomodel imported by the real BentoML and exported again by it."""
    import bentoml

    base = tmp_path_factory.mktemp("through-bentoml")
    with use_bentoml_home(base / "home", tmp_dir=base / "tmp"):
        model = bentoml.models.import_model(str(bentomodel))
        return Path(bentoml.models.export_model(model.tag, f"{base}/"))


@pytest.fixture(scope="module")
def imports(bentomodel, through_bentoml, server_b, tmp_path_factory) -> dict[str, dict]:
    """Both files imported by the CLI into server_b: ours under the original name, BentoML's
    re-pack under a name of its own (under the original name it would be the same import)."""
    cwd = tmp_path_factory.mktemp("roundtrip-cwd")
    return {
        "direct": cli_import(bentomodel, server_b.url, cwd),
        "through-bentoml": cli_import(through_bentoml, server_b.url, cwd,
                                      "--name", unique("via-bentoml")),
    }


@pytest.fixture(scope="module")
def source_client(rich_model):
    return client_for(rich_model.url)


@pytest.fixture(scope="module")
def target_client(server_b):
    return client_for(server_b.url)


def test_bentoml_repacks_the_archive_but_keeps_every_file(bentomodel, through_bentoml):
    assert sha256_file(through_bentoml) != sha256_file(bentomodel)

    def members(path: Path) -> dict[str, bytes]:
        with tarfile.open(path, "r:xz") as archive:
            return {member.name.removeprefix("./"): archive.extractfile(member).read()
                    for member in archive.getmembers() if member.isfile()}

    assert members(through_bentoml) == members(bentomodel)


def test_the_direct_import_registers_the_original_name_as_a_new_version(imports, rich_model):
    assert imports["direct"]["name"] == rich_model.name
    assert imports["direct"]["reused"] is False


def test_bentomls_repack_under_the_original_name_is_the_version_already_imported(
        imports, through_bentoml, server_b, tmp_path):
    again = cli_import(through_bentoml, server_b.url, tmp_path)
    direct = imports["direct"]
    assert (again["name"], again["version"], again["reused"]) == (direct["name"],
                                                                  direct["version"], True)


@pytest.mark.parametrize("route", ROUTES)
def test_registered_model_description_and_tags_arrive(imports, route, rich_model,
                                                      source_client, target_client):
    source = source_client.get_registered_model(rich_model.name)
    target = target_client.get_registered_model(imports[route]["name"])
    assert target.description == source.description
    assert source.tags and source.tags.items() <= target.tags.items()


@pytest.mark.parametrize("route", ROUTES)
def test_version_description_tags_and_source_ids_arrive(imports, route, rich_model,
                                                        source_client, target_client):
    source = source_client.get_model_version(rich_model.name, rich_model.version)
    target = target_client.get_model_version(imports[route]["name"], imports[route]["version"])
    assert target.description == source.description
    assert source.tags and source.tags.items() <= target.tags.items()
    assert target.tags["mlflow_archive.source.version"] == rich_model.version
    assert target.tags["mlflow_archive.source.name"] == rich_model.name
    assert target.tags["mlflow_archive.source.creation_timestamp"] == str(
        source.creation_timestamp)


@pytest.mark.parametrize("route", ROUTES)
def test_aliases_arrive_on_the_imported_version(imports, route, target_client):
    result = imports[route]
    registered = target_client.get_registered_model(result["name"])
    assert registered.aliases == {"champion": result["version"], "stable": result["version"]}


@pytest.mark.parametrize("route", ROUTES)
def test_run_params_tags_and_metric_histories_arrive(imports, route, rich_model,
                                                     source_client, target_client):
    version = target_client.get_model_version(imports[route]["name"], imports[route]["version"])
    source = source_client.get_run(rich_model.run_id)
    target = target_client.get_run(version.run_id)
    assert target.info.run_name == source.info.run_name
    assert target.data.params == source.data.params
    assert user_tags(source.data.tags).items() <= target.data.tags.items()
    assert set(target.data.metrics) == set(source.data.metrics)
    for key in source.data.metrics:
        assert (history(target_client, version.run_id, key)
                == history(source_client, rich_model.run_id, key)), key
    assert (target.info.start_time, target.info.end_time) == (source.info.start_time,
                                                              source.info.end_time)


@pytest.mark.parametrize("route", ROUTES)
def test_logged_model_params_tags_and_metrics_arrive(imports, route, rich_model,
                                                     source_client, target_client):
    version = target_client.get_model_version(imports[route]["name"], imports[route]["version"])
    model_id = version.source.removeprefix("models:/")
    source = source_client.get_logged_model(rich_model.model_id)
    target = target_client.get_logged_model(model_id)
    assert (target.name, target.model_type, target.params) == (source.name, source.model_type,
                                                               source.params)
    assert user_tags(source.tags).items() <= target.tags.items()

    def points(logged):
        return sorted((m.key, m.step, m.timestamp, m.value) for m in logged.metrics or [])

    assert points(source) and points(target) == points(source)


@pytest.mark.parametrize("route", ROUTES)
def test_the_imported_version_predicts_as_the_original(imports, route, rich_model, server_b):
    predicted = load_and_predict(imports[route]["model_uri"], server_b.url, rich_model.X)
    np.testing.assert_array_equal(predicted, rich_model.predictions)


def test_the_imported_version_exports_again_as_the_same_bentoml_model(imports, bentomodel,
                                                                    server_b, tmp_path):
    """Only what the target registry decides differs: the version number (and so the tag's
    version), the creation time and the new run and model ids."""
    result = imports["direct"]
    proc = cli("export", result["model_uri"], "--format", "bentoml", "-o", f"{tmp_path}/",
               "--tracking-uri", server_b.url, "--json", "-q", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    again = Path(json.loads(proc.stdout)["location"])

    def document(path: Path) -> dict:
        with tarfile.open(path, "r:xz") as archive:
            return yaml.safe_load(archive.extractfile("model.yaml"))

    before, after = document(bentomodel), document(again)
    assert again.name == f"{before['name']}-v{result['version']}.bentomodel"
    assert after["version"] == f"v{result['version']}"
    for key in ("name", "module", "labels", "options", "context", "signatures", "api_version"):
        assert after[key] == before[key], key
    for key in ("mlflow_registered_model", "description", "params", "metrics"):
        assert after["metadata"][key] == before["metadata"][key], key
