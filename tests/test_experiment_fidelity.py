"""The experiment and the run's lifecycle move with the version (issue 18, items 3 and 5).

Import recreates the source experiment by name (its tags and its description,
``mlflow.note.content``, with it) instead of one named after the model, and a version whose
source run was deleted gets a deleted run on the target. Real servers on loopback.
"""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from conftest import global_tracking_uri, start_mlflow_server, unique
from mlflow import MlflowClient

from mlflow_archive_plugin import export_model, import_archive

NOTE = "mlflow.note.content"


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    source = start_mlflow_server(tmp_path_factory.mktemp("experiment-a"))
    target = start_mlflow_server(tmp_path_factory.mktemp("experiment-b"))
    yield source, target
    source.stop()
    target.stop()


@pytest.fixture(scope="module")
def source_versions(servers, tmp_path_factory):
    """Two versions in an experiment with tags and a description: version 1's run is
    active, version 2's run was deleted after registering. Both exported."""
    url = servers[0].url
    client = MlflowClient(url, url)
    experiment_name = unique("Ünïcode experiment")
    experiment = client.create_experiment(
        experiment_name, tags={"team": "vision", NOTE: "Trained on **all** the data."})
    name = unique("lifecycle")
    run_ids = []
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    with global_tracking_uri(url):
        for _ in range(2):
            with mlflow.start_run(experiment_id=experiment) as run:
                mlflow.log_param("p", "1")
                mlflow.log_input(mlflow.data.from_pandas(frame, source="s3://bucket/train.csv",
                                                         name="train", targets="y"),
                                 context="training", tags={"split": "first-half"})
                mlflow.log_input(mlflow.data.from_pandas(frame.head(1), name="eval"),
                                 context="evaluation")
                mlflow.pyfunc.log_model(name="model", python_model=Echo(),
                                        pip_requirements=["mlflow"],
                                        registered_model_name=name)
                run_ids.append(run.info.run_id)
    client.delete_run(run_ids[1])
    out = tmp_path_factory.mktemp("experiment-archives")
    archives = [export_model(f"models:/{name}/{v}", out, tracking_uri=url,
                             progress=False).location for v in ("1", "2")]
    return experiment_name, run_ids, archives


def test_import_recreates_the_source_experiment_with_its_tags_and_description(
        servers, source_versions):
    experiment_name, _, archives = source_versions
    target = MlflowClient(servers[1].url, servers[1].url)
    imported = import_archive(archives[0], name=unique("moved"), tracking_uri=servers[1].url,
                              progress=False)
    experiment = target.get_experiment(target.get_run(imported.run_id).info.experiment_id)
    assert experiment.name == experiment_name
    assert experiment.tags["team"] == "vision"
    assert experiment.tags[NOTE] == "Trained on **all** the data."


def test_tags_the_target_experiment_already_has_are_kept(servers, source_versions):
    """The target's own changes win: only tags it lacks are added."""
    experiment_name, _, archives = source_versions
    target = MlflowClient(servers[1].url, servers[1].url)
    experiment = target.get_experiment_by_name(experiment_name)
    experiment_id = (experiment.experiment_id if experiment is not None
                     else target.create_experiment(experiment_name))
    target.set_experiment_tag(experiment_id, "team", "nlp")
    if NOTE in target.get_experiment(experiment_id).tags:
        target.delete_experiment_tag(experiment_id, NOTE)
    import_archive(archives[0], name=unique("kept"), tracking_uri=servers[1].url,
                   on_exists="new", progress=False)
    tags = target.get_experiment(experiment_id).tags
    assert tags["team"] == "nlp"
    assert tags[NOTE] == "Trained on **all** the data."


def test_the_experiment_option_still_chooses(servers, source_versions):
    _, _, archives = source_versions
    chosen = unique("chosen")
    target = MlflowClient(servers[1].url, servers[1].url)
    imported = import_archive(archives[0], name=unique("chosen-model"), experiment=chosen,
                              tracking_uri=servers[1].url, progress=False)
    assert target.get_experiment(target.get_run(imported.run_id).info.experiment_id).name \
        == chosen


def test_a_deleted_source_run_arrives_deleted(servers, source_versions):
    _, run_ids, archives = source_versions
    source = MlflowClient(servers[0].url, servers[0].url)
    assert source.get_run(run_ids[1]).info.lifecycle_stage == "deleted"
    target = MlflowClient(servers[1].url, servers[1].url)
    name = unique("deleted-run")
    imported = import_archive(archives[1], name=name, tracking_uri=servers[1].url,
                              progress=False)
    run = target.get_run(imported.run_id)
    assert run.info.lifecycle_stage == "deleted"
    assert run.data.params == {"p": "1"}  # recreated in full, then deleted
    assert target.get_model_version(name, imported.version).run_id == imported.run_id
    # an active source run stays active
    active = import_archive(archives[0], name=unique("active-run"),
                            tracking_uri=servers[1].url, progress=False)
    assert target.get_run(active.run_id).info.lifecycle_stage == "active"


def _datasets(run) -> list[tuple]:
    return sorted((item.dataset.name, item.dataset.digest, item.dataset.source_type,
                   item.dataset.source, item.dataset.schema, item.dataset.profile,
                   tuple(sorted((tag.key, tag.value) for tag in item.tags)))
                  for item in run.inputs.dataset_inputs)


def test_the_runs_datasets_arrive_with_their_tags(servers, source_versions):
    _, run_ids, archives = source_versions
    source = MlflowClient(servers[0].url, servers[0].url).get_run(run_ids[0])
    expected = _datasets(source)
    assert len(expected) == 2 and all(item[4] and item[5] for item in expected)
    imported = import_archive(archives[0], name=unique("datasets"),
                              tracking_uri=servers[1].url, progress=False)
    target = MlflowClient(servers[1].url, servers[1].url).get_run(imported.run_id)
    assert _datasets(target) == expected
    tags = dict(next(item for item in expected if item[0] == "train")[6])
    assert tags == {"mlflow.data.context": "training", "split": "first-half"}


@pytest.fixture(scope="module")
def nested(servers, tmp_path_factory):
    """A model logged in a run nested two deep (grandparent -> parent -> child), exported."""
    url = servers[0].url
    client = MlflowClient(url, url)
    experiment = client.create_experiment(unique("nested"))
    name = unique("nested-model")
    with global_tracking_uri(url), mlflow.start_run(experiment_id=experiment,
                                                    run_name="sweep") as grandparent:
        mlflow.log_param("search", "grid")
        mlflow.set_tag("level", "top")
        with mlflow.start_run(run_name="fold", nested=True) as parent:
            mlflow.log_param("fold", "3")
            for step in range(3):
                mlflow.log_metric("fold_loss", 1.0 / (step + 1), step=step)
            with mlflow.start_run(run_name="fit", nested=True) as child:
                mlflow.pyfunc.log_model(name="model", python_model=Echo(),
                                        pip_requirements=["mlflow"],
                                        registered_model_name=name)
    archive = export_model(f"models:/{name}/1", tmp_path_factory.mktemp("nested-archive"),
                           tracking_uri=url, progress=False).location
    return archive, grandparent.info.run_id, parent.info.run_id, child.info.run_id


def test_the_parent_chain_of_a_nested_run_is_recreated(servers, nested):
    archive, grandparent_id, parent_id, child_id = nested
    source = MlflowClient(servers[0].url, servers[0].url)
    target = MlflowClient(servers[1].url, servers[1].url)
    imported = import_archive(archive, name=unique("nested-moved"),
                              tracking_uri=servers[1].url, progress=False)
    run = target.get_run(imported.run_id)
    assert run.data.tags["mlflow_archive.source.parentRunId"] == parent_id
    parent = target.get_run(run.data.tags["mlflow.parentRunId"])
    source_parent = source.get_run(parent_id)
    assert parent.data.params == source_parent.data.params == {"fold": "3"}
    assert parent.info.run_name == "fold"
    assert (parent.info.start_time, parent.info.end_time, parent.info.status) == (
        source_parent.info.start_time, source_parent.info.end_time, source_parent.info.status)
    assert sorted((m.step, m.value) for m in target.get_metric_history(
        parent.info.run_id, "fold_loss")) == [(0, 1.0), (1, 0.5), (2, 1 / 3)]
    assert parent.data.tags["mlflow_archive.source.run_id"] == parent_id
    top = target.get_run(parent.data.tags["mlflow.parentRunId"])
    assert top.data.tags["mlflow_archive.source.run_id"] == grandparent_id
    assert (top.data.params, top.data.tags["level"]) == ({"search": "grid"}, "top")
    assert "mlflow.parentRunId" not in top.data.tags
    assert {run.info.experiment_id, parent.info.experiment_id, top.info.experiment_id} == {
        run.info.experiment_id}


def test_a_second_import_reuses_the_recreated_parents(servers, nested):
    archive, _, _, _ = nested
    target = MlflowClient(servers[1].url, servers[1].url)
    first = import_archive(archive, name=unique("nested-first"), tracking_uri=servers[1].url,
                           progress=False)
    second = import_archive(archive, name=unique("nested-second"),
                            tracking_uri=servers[1].url, progress=False)
    assert first.run_id != second.run_id
    parents = {target.get_run(result.run_id).data.tags["mlflow.parentRunId"]
               for result in (first, second)}
    assert len(parents) == 1


def test_model_inputs_point_at_the_imported_logged_model_or_are_named(servers, tmp_path):
    """A run that took a LoggedModel as input (an evaluation, say): on the target the input
    is that model's import where there is one, else its source id is kept in a tag."""
    from mlflow.entities import LoggedModelInput

    url = servers[0].url
    client = MlflowClient(url, url)
    experiment = client.create_experiment(unique("inputs"))
    base_name, judged_name = unique("base"), unique("judged")
    with global_tracking_uri(url):
        with mlflow.start_run(experiment_id=experiment):
            base = mlflow.pyfunc.log_model(name="model", python_model=Echo(),
                                           pip_requirements=["mlflow"],
                                           registered_model_name=base_name)
        with mlflow.start_run(experiment_id=experiment) as run:
            client.log_inputs(run.info.run_id, models=[LoggedModelInput(base.model_id)])
            mlflow.pyfunc.log_model(name="model", python_model=Echo(),
                                    pip_requirements=["mlflow"],
                                    registered_model_name=judged_name)
    base_archive = export_model(f"models:/{base_name}/1", tmp_path, tracking_uri=url,
                                progress=False).location
    judged_archive = export_model(f"models:/{judged_name}/1", tmp_path, tracking_uri=url,
                                  progress=False).location
    target = MlflowClient(servers[1].url, servers[1].url)
    # before the base model is imported: named, not linked
    early = import_archive(judged_archive, name=unique("judged-early"),
                           tracking_uri=servers[1].url, progress=False)
    early_run = target.get_run(early.run_id)
    assert early_run.inputs.model_inputs == []
    assert early_run.data.tags["mlflow_archive.source.model_inputs"] == base.model_id
    # after: linked to the base model's import
    imported_base = import_archive(base_archive, name=unique("base-moved"),
                                   tracking_uri=servers[1].url, progress=False)
    late = import_archive(judged_archive, name=unique("judged-late"),
                          tracking_uri=servers[1].url, progress=False)
    late_run = target.get_run(late.run_id)
    assert [m.model_id for m in late_run.inputs.model_inputs] == [imported_base.model_id]
    assert "mlflow_archive.source.model_inputs" not in late_run.data.tags
