"""import_archive against a real registry: idempotence, on_exists, tags, aliases, defaults.

Every test imports the session's zip archive of the rich model under its own registered
model name, so tests sharing server_b never see each other's versions.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from conftest import child_env, cli, load_and_predict, unique
from mlflow import MlflowClient
from mlflow.entities import ViewType

pytestmark = pytest.mark.server


def client_for(url: str) -> MlflowClient:
    return MlflowClient(tracking_uri=url, registry_uri=url)


def versions_of(client: MlflowClient, name: str) -> list[str]:
    return sorted((v.version for v in client.search_model_versions(f"name = '{name}'")), key=int)


def runs_in_experiment_named(client: MlflowClient, name: str) -> list[str]:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    return sorted(r.info.run_id for r in runs)


@pytest.fixture
def target_name() -> str:
    return unique("imported")


@pytest.fixture
def import_to_b(rich_zip, server_b, target_name):
    """import_archive(rich zip) into server_b under this test's name, with extra options."""
    from mlflow_archive_plugin import import_archive

    def run(**options):
        options.setdefault("name", target_name)
        # The test's own experiment, so its runs are counted alone (the default, the source
        # run's experiment, is shared by every import of the rich model).
        options.setdefault("experiment", target_name)
        return import_archive(rich_zip.location, tracking_uri=server_b.url, **options)

    return run


def test_reimport_returns_same_version_marked_reused(import_to_b):
    first = import_to_b()
    second = import_to_b()
    assert first.reused is False
    assert second.reused is True
    assert (second.version, second.model_uri) == (first.version, first.model_uri)


def test_reimport_creates_no_new_version_or_run(import_to_b, server_b, target_name):
    client = client_for(server_b.url)
    import_to_b()
    versions_before = versions_of(client, target_name)
    runs_before = runs_in_experiment_named(client, target_name)
    import_to_b()
    assert versions_of(client, target_name) == versions_before == ["1"]
    assert runs_in_experiment_named(client, target_name) == runs_before
    assert len(runs_before) == 1


def test_on_exists_new_creates_next_version(import_to_b, server_b, target_name):
    first = import_to_b()
    second = import_to_b(on_exists="new")
    assert second.reused is False
    assert int(second.version) == int(first.version) + 1
    assert versions_of(client_for(server_b.url), target_name) == ["1", "2"]


def test_on_exists_fail_raises_version_exists(import_to_b):
    from mlflow_archive_plugin import ArchiveError
    from mlflow_archive_plugin.errors import VersionExistsError

    import_to_b()
    with pytest.raises(VersionExistsError) as excinfo:
        import_to_b(on_exists="fail")
    assert isinstance(excinfo.value, ArchiveError)
    assert "\n" not in str(excinfo.value).strip()


def test_on_exists_fail_registers_nothing(import_to_b, server_b, target_name):
    from mlflow_archive_plugin import ArchiveError

    client = client_for(server_b.url)
    import_to_b()
    versions_before = versions_of(client, target_name)
    runs_before = runs_in_experiment_named(client, target_name)
    with pytest.raises(ArchiveError):
        import_to_b(on_exists="fail")
    assert versions_of(client, target_name) == versions_before
    assert runs_in_experiment_named(client, target_name) == runs_before


def test_import_into_existing_model_keeps_its_tags(import_to_b, rich_model, server_b, target_name):
    client = client_for(server_b.url)
    client.create_registered_model(target_name, tags={"cost-center": "42"})
    import_to_b()
    tags = client.get_registered_model(target_name).tags
    assert tags["cost-center"] == "42"
    assert tags["domain"] == "botany"  # merged in from the archive


def test_no_aliases_sets_none(import_to_b, server_b, target_name):
    client = client_for(server_b.url)
    result = import_to_b(aliases=False)
    assert client.get_model_version(target_name, result.version).aliases == []
    assert client.get_registered_model(target_name).aliases == {}


def test_default_experiment_is_the_source_runs_by_name(import_to_b, server_b, rich_model):
    result = import_to_b(experiment=None)
    client = client_for(server_b.url)
    source = client_for(rich_model.url).get_experiment(rich_model.experiment_id)
    assert client.get_experiment(client.get_run(result.run_id).info.experiment_id).name == (
        source.name
    )


def test_an_archive_without_a_run_goes_to_an_experiment_named_after_the_model(
        server_b, tmp_path):
    from mlflow_archive_plugin import formats, import_archive
    from mlflow_archive_plugin.snapshot import Snapshot
    from mlflow_archive_plugin.storage import containers, location, pipeline

    model_dir = tmp_path / "bare"
    mlflow.pyfunc.save_model(model_dir, python_model=_Echo(), pip_requirements=["mlflow"])
    archive = tmp_path / "runless.zip"
    pipeline.write_archive(Snapshot(model_dir=model_dir, mlmodel={"flavors": {}}),
                           formats.get_layout("mlflow"), containers.get_container("zip"),
                           location.resolve(archive), show_progress=False)
    name = unique("runless")
    result = import_archive(archive, name=name, tracking_uri=server_b.url, progress=False)
    client = client_for(server_b.url)
    assert result.run_id is None
    logged = client.get_logged_model(result.model_id)
    assert client.get_experiment(logged.experiment_id).name == name


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def test_experiment_option_chooses_experiment(import_to_b, server_b):
    experiment_name = unique("chosen-exp")
    result = import_to_b(experiment=experiment_name)
    client = client_for(server_b.url)
    experiment = client.get_experiment(client.get_run(result.run_id).info.experiment_id)
    assert experiment.name == experiment_name


def test_import_leaves_global_tracking_uri_unchanged(import_to_b):
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    import_to_b()
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before


def test_import_into_embedded_sqlite_serves_same_predictions(
    rich_zip, rich_model, tmp_path, monkeypatch
):
    from mlflow_archive_plugin import import_archive

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = import_archive(rich_zip.location, tracking_uri=uri)
    assert result.model_uri == f"models:/{rich_model.name}/1"
    predictions = load_and_predict(result.model_uri, uri, rich_model.X)
    np.testing.assert_array_equal(predictions, rich_model.predictions)


def test_import_without_tracking_uri_uses_sqlite_in_working_directory(
    rich_zip, rich_model, tmp_path, monkeypatch
):
    from mlflow_archive_plugin import import_archive

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    result = import_archive(rich_zip.location)
    assert (tmp_path / "mlflow.db").is_file()
    client = client_for(f"sqlite:///{tmp_path}/mlflow.db")
    assert (
        client.get_model_version(rich_model.name, result.version).tags["mlflow_archive.digest"]
        == rich_zip.digest
    )


def test_cli_name_option_renames_model(rich_zip, rich_model, server_b, tmp_path):
    new_name = unique("renamed")
    proc = cli(
        "import", rich_zip.location, "--name", new_name,
        "--tracking-uri", server_b.url, "--json",
        cwd=tmp_path, env=child_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["name"] == new_name, repr(proc.stdout)
    client = client_for(server_b.url)
    assert versions_of(client, new_name) == ["1"]
    assert client.get_registered_model(new_name).description == (
        client_for(rich_model.url).get_registered_model(rich_model.name).description
    )
