"""A run's metric history travels as its own file of JSON lines, streamed both ways.

Export pages through the server's metric history and writes ``mlflow-archive-metrics.jsonl``
beside ``mlflow-archive.json`` (which keeps a summary); import reads it back one line at a
time. Archives of schema 1, whose document holds the history inline, still import; a
history file that does not match its summary is refused before the registry is touched.
Memory and speed on a flood of points are measured in ``benchmarks/bench_metrics.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import (
    assert_user_error,
    cli,
    global_tracking_uri,
    registry_census,
    start_mlflow_server,
    unique,
)
from mlflow import MlflowClient
from mlflow.entities import Metric

from mlflow_archive_plugin import export_model, import_archive
from mlflow_archive_plugin.mlflow_side import source
from mlflow_archive_plugin.snapshot import FileRecord
from mlflow_archive_plugin.storage.integrity import render_checksums

METRICS = "mlflow-archive-metrics.jsonl"
T0 = 1_700_000_000_000
# More points than a page of the export (made small below), so paging is exercised.
LOSS_POINTS = 1_234
SPECIAL = [math.nan, math.inf, -math.inf, 0.5]


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    source_server = start_mlflow_server(tmp_path_factory.mktemp("history-a"))
    target = start_mlflow_server(tmp_path_factory.mktemp("history-b"))
    yield source_server, target
    source_server.stop()
    target.stop()


@pytest.fixture(scope="module")
def flooded(servers):
    """A registered model whose run holds a long history, a short one and special values."""
    url = servers[0].url
    client = MlflowClient(url, url)
    name = unique("flooded")
    experiment = client.create_experiment(unique("history"))
    with global_tracking_uri(url), mlflow.start_run(experiment_id=experiment) as run:
        run_id = run.info.run_id
        loss = [Metric("loss", 1 / (i + 1), T0 + i, i) for i in range(LOSS_POINTS)]
        for start in range(0, len(loss), 1000):
            client.log_batch(run_id, metrics=loss[start:start + 1000])
        client.log_batch(run_id, metrics=[Metric("odd", value, T0 + i, i)
                                          for i, value in enumerate(SPECIAL)])
        mlflow.log_metric("acc", 0.75, step=3)
        mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=["mlflow"],
                                input_example=pd.DataFrame({"x": [1.0, 2.0]}),
                                registered_model_name=name)
    return name, run_id


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, int, str]]:
    # repr() makes NaN equal to NaN.
    return sorted((m.step, m.timestamp, repr(m.value))
                  for m in client.get_metric_history(run_id, key))


@pytest.fixture(scope="module")
def exported(servers, flooded, tmp_path_factory):
    name, _ = flooded
    dest = tmp_path_factory.mktemp("history-export") / "archive"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(source, "_METRIC_PAGE", 100)
        export_model(f"models:/{name}/1", dest, container="folder",
                     tracking_uri=servers[0].url, progress=False)
    return dest


def test_the_history_is_a_file_beside_the_document_listed_in_checksums(exported, flooded,
                                                                      servers):
    lines = (exported / METRICS).read_text("utf-8").splitlines()
    assert len(lines) == LOSS_POINTS + len(SPECIAL) + 1
    document = json.loads((exported / "mlflow-archive.json").read_text("utf-8"))
    assert document["schema_version"] == 3
    assert document["run"]["metrics"] == {}
    summary = document["run"]["metric_history"]
    assert summary["path"] == METRICS and summary["points"] == len(lines)
    latest = MlflowClient(servers[0].url).get_run(flooded[1]).data.metrics
    assert {key: point["value"] for key, point in summary["keys"].items()
            if key != "odd"} == {key: value for key, value in latest.items() if key != "odd"}
    assert summary["keys"]["loss"]["points"] == LOSS_POINTS
    assert summary["keys"]["loss"]["step"] == LOSS_POINTS - 1
    listed = dict(line.split("  ", 1)[::-1]
                  for line in (exported / "checksum.txt").read_text().splitlines())
    assert METRICS in listed


def test_export_pages_through_the_servers_history(exported):
    # Pages of 100 points: a page that ignored the server's token would stop at 100.
    keys = [json.loads(line)["key"] for line in (exported / METRICS).read_text().splitlines()]
    assert keys.count("loss") == LOSS_POINTS


def test_import_replays_every_point(exported, flooded, servers):
    imported = import_archive(exported, name=unique("replayed"), tracking_uri=servers[1].url,
                              progress=False)
    source_client, target = MlflowClient(servers[0].url), MlflowClient(servers[1].url)
    for key in ("loss", "odd", "acc"):
        assert history(target, imported.run_id, key) == history(source_client, flooded[1], key)


def test_an_inline_history_of_schema_1_still_imports(exported, flooded, servers, tmp_path):
    old = tmp_path / "old"
    _copy(exported, old)
    document = json.loads((old / "mlflow-archive.json").read_text("utf-8"))
    points: dict[str, list] = {}
    for line in (old / METRICS).read_text().splitlines():
        point = json.loads(line)
        points.setdefault(point.pop("key"), []).append(point)
    document["run"]["metrics"] = points
    del document["run"]["metric_history"]
    document["schema_version"] = 1
    (old / METRICS).unlink()
    _rewrite(old, document)
    imported = import_archive(old, name=unique("inline"), tracking_uri=servers[1].url,
                              progress=False)
    source_client, target = MlflowClient(servers[0].url), MlflowClient(servers[1].url)
    for key in ("loss", "odd"):
        assert history(target, imported.run_id, key) == history(source_client, flooded[1], key)


@pytest.mark.parametrize(("damage", "says"), [
    (lambda lines: lines[:7] + ["{not json"] + lines[8:], f"{METRICS} line 8 is not a metric"),
    (lambda lines: lines[:-1], "mlflow-archive.json says"),
    (lambda lines: _first_loss(lines, '"loss"', '"unlisted"'),
     "names a key mlflow-archive.json does not list"),
    (lambda lines: _first_loss(lines, '"step": 0', '"step": "zero"'),
     "'step' is not a number"),
    (lambda lines: lines[:3] + ["[" * 3000] + lines[4:], f"{METRICS} line 4 is not a metric"),
], ids=["garbage-line", "point-missing", "unlisted-key", "text-step", "nested-too-deep"])
def test_a_history_unlike_its_summary_is_refused_before_the_registry_changes(
        exported, servers, tmp_path, damage, says):
    damaged = tmp_path / "damaged"
    _copy(exported, damaged)
    lines = (damaged / METRICS).read_text().splitlines()
    (damaged / METRICS).write_text("\n".join(damage(lines)) + "\n")
    _rewrite(damaged, json.loads((damaged / "mlflow-archive.json").read_text("utf-8")))
    before = registry_census(servers[1].url)
    proc = cli("import", str(damaged), "--name", unique("damaged"),
               "--tracking-uri", servers[1].url, cwd=tmp_path)
    line = assert_user_error(proc)
    assert says in line
    assert registry_census(servers[1].url) == before


def test_a_missing_history_file_is_refused(exported, servers, tmp_path):
    missing = tmp_path / "missing"
    _copy(exported, missing)
    (missing / METRICS).unlink()
    _rewrite(missing, json.loads((missing / "mlflow-archive.json").read_text("utf-8")))
    before = registry_census(servers[1].url)
    proc = cli("import", str(missing), "--tracking-uri", servers[1].url, cwd=tmp_path)
    assert f"{METRICS} is missing" in assert_user_error(proc)
    assert registry_census(servers[1].url) == before


@pytest.mark.parametrize("fmt", ["mar", "bentoml", "portable"])
def test_other_layouts_carry_the_history_file_too(fmt, flooded, servers, tmp_path):
    archive = export_model(f"models:/{flooded[0]}/1", tmp_path, format=fmt,
                           tracking_uri=servers[0].url, progress=False)
    imported = import_archive(archive.location, name=unique(fmt), tracking_uri=servers[1].url,
                              progress=False)
    target, source_client = MlflowClient(servers[1].url), MlflowClient(servers[0].url)
    assert history(target, imported.run_id, "loss") == history(source_client, flooded[1], "loss")


def _first_loss(lines: list[str], old: str, new: str) -> list[str]:
    """The lines with ``old`` replaced in the first point of ``loss`` (step 0)."""
    index = next(i for i, line in enumerate(lines) if '"loss"' in line)
    assert old in lines[index]
    return [*lines[:index], lines[index].replace(old, new), *lines[index + 1:]]


def _copy(source_dir: Path, dest: Path) -> None:
    for path in source_dir.rglob("*"):
        if path.is_file():
            (dest / path.relative_to(source_dir)).parent.mkdir(parents=True, exist_ok=True)
            (dest / path.relative_to(source_dir)).write_bytes(path.read_bytes())


def _rewrite(root: Path, document: dict) -> None:
    """Write ``document`` and a ``checksum.txt`` matching the folder's files as they now are."""
    (root / "mlflow-archive.json").write_text(json.dumps(document, indent=2), "utf-8")
    records = [FileRecord.of_bytes(p.relative_to(root).as_posix(), p.read_bytes())
               for p in sorted(root.rglob("*"))
               if p.is_file() and p.name not in ("checksum.txt", "checksum.sig")]
    (root / "checksum.txt").write_bytes(render_checksums(records))
