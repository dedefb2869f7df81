"""The metadata document (mlflow-archive.json): lossless round trip, strict but tolerant reading."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mlflow_archive_plugin import formats as layouts
from mlflow_archive_plugin.errors import CorruptArchiveError
from mlflow_archive_plugin.snapshot import (
    EXPORT_NOTE_NAME,
    METADATA_NAME,
    SCHEMA_VERSION,
    Lineage,
    LoggedModelInfo,
    ModelVersionInfo,
    RegisteredModelInfo,
    RunInfo,
    Snapshot,
)
from mlflow_archive_plugin.storage import containers, location
from mlflow_archive_plugin.storage import pipeline as archive
from mlflow_archive_plugin.storage.integrity import FileRecord

MODEL_DIR = Path("/nonexistent/model")


def full_snapshot(model_dir: Path = MODEL_DIR) -> Snapshot:
    """A snapshot with every section filled, including nested metric histories."""
    return Snapshot(
        model_dir=model_dir,
        mlmodel={
            "artifact_path": "model",
            "flavors": {"python_function": {"loader_module": "mlflow.sklearn", "env": {}}},
            "signature": {"inputs": '[{"type": "double"}]', "outputs": None},
        },
        lineage=Lineage(
            model_uri="models:/demo/3",
            source_tracking_uri="http://127.0.0.1:5000",
            exported_at="2025-01-02T03:04:05Z",
            plugin_version="0.1.0",
            mlflow_version="3.1.0",
        ),
        registered_model=RegisteredModelInfo(
            name="demo",
            description="a model with ünïcödé",
            tags={"team": "ml", "empty": ""},
            aliases={"champion": "3", "challenger": "2"},
            creation_timestamp=1_700_000_000_000,
        ),
        model_version=ModelVersionInfo(
            version="3",
            description="third",
            tags={"validated": "true"},
            aliases=["champion"],
            current_stage="None",
            status="READY",
            user_id="alice",
            run_id="r1",
        ),
        logged_model=LoggedModelInfo(
            model_id="m-123",
            name="demo",
            params={"alpha": "0.5"},
            metrics=[{"key": "rmse", "value": 0.25, "step": 0, "timestamp": 1}],
            experiment_id="1",
        ),
        run=RunInfo(
            run_id="r1",
            run_name="brave-fox",
            experiment_name="exp",
            status="FINISHED",
            start_time=1,
            end_time=2,
            params={"alpha": "0.5"},
            tags={"mlflow.user": "alice"},
            metrics={"loss": [{"value": 1.0, "step": 0, "timestamp": 10},
                              {"value": 0.5, "step": 1, "timestamp": 20}]},
        ),
        files=[FileRecord("model/MLmodel", 12, "a" * 64)],
    )


def document() -> dict:
    return json.loads(full_snapshot().to_json())


def parse(doc) -> Snapshot:
    return Snapshot.from_json(json.dumps(doc).encode(), MODEL_DIR)


def assert_malformed(data: bytes, *fragments: str) -> None:
    with pytest.raises(CorruptArchiveError) as caught:
        Snapshot.from_json(data, MODEL_DIR)
    message = str(caught.value)
    assert message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


# --------------------------------------------------------------------------- round trip


def documented(snapshot: Snapshot) -> Snapshot:
    """What the document alone carries: the export facts are in the export note."""
    lineage = dataclasses.replace(snapshot.lineage, exported_at=None, plugin_version=None,
                                  mlflow_version=None)
    return dataclasses.replace(snapshot, lineage=lineage)


def test_to_json_then_from_json_gives_an_equal_snapshot():
    original = full_snapshot()
    restored = Snapshot.from_json(original.to_json(), MODEL_DIR)
    assert restored == documented(original)
    restored.read_export_note(json.loads(original.export_note()))
    assert restored == original


def test_the_export_facts_are_in_the_note_not_the_document():
    original = full_snapshot()
    lineage = json.loads(original.to_json())["lineage"]
    assert not {"exported_at", "plugin_version", "mlflow_version"} & set(lineage)
    assert json.loads(original.export_note()) == {
        "exported_at": "2025-01-02T03:04:05Z", "plugin_version": "0.1.0",
        "mlflow_version": "3.1.0"}
    with pytest.raises(CorruptArchiveError, match="'exported_at' is not text"):
        original.read_export_note({"exported_at": 5})


def test_round_trip_of_a_minimal_snapshot_keeps_absent_sections_absent():
    original = Snapshot(model_dir=MODEL_DIR, mlmodel={"flavors": {}})
    restored = Snapshot.from_json(original.to_json(), MODEL_DIR)
    assert restored == original
    assert restored.registered_model is None and restored.run is None


def test_to_json_is_utf8_with_the_format_and_schema_version():
    snapshot = full_snapshot()
    doc = json.loads(snapshot.to_json().decode("utf-8"))
    assert doc["format"] == "mlflow-archive"
    assert doc["schema_version"] == SCHEMA_VERSION == 3
    snapshot.run.metrics = {}
    snapshot.run.metric_history = {"path": "mlflow-archive-metrics.jsonl", "points": 1,
                                   "keys": {"loss": {"value": 1.0, "step": 0, "timestamp": 10,
                                                     "points": 1}}}
    restored = Snapshot.from_json(snapshot.to_json(), MODEL_DIR)
    assert restored.metrics_file == MODEL_DIR / "mlflow-archive-metrics.jsonl"
    assert restored.run.latest_metrics() == {"loss": {"value": 1.0, "step": 0,
                                                      "timestamp": 10, "points": 1}}


@pytest.mark.parametrize("summary", [
    {"path": "../escape.jsonl", "points": 0, "keys": {}},
    {"path": "mlflow-archive-metrics.jsonl", "points": "1", "keys": {}},
    {"path": "mlflow-archive-metrics.jsonl", "points": 1, "keys": {"k": {"value": 1}}},
    [],
], ids=["path", "points", "key-summary", "not-an-object"])
def test_a_malformed_metric_history_summary_is_refused(summary):
    snapshot = full_snapshot()
    doc = json.loads(snapshot.to_json().decode("utf-8"))
    doc["run"]["metric_history"] = summary
    with pytest.raises(CorruptArchiveError, match="malformed"):
        Snapshot.from_json(json.dumps(doc).encode(), MODEL_DIR)


def test_snapshot_read_back_from_a_written_archive_equals_the_original(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("artifact_path: model\nflavors: {}\n")
    (model_dir / "data.txt").write_text("payload\n" * 100)
    original = full_snapshot(model_dir)
    original.files = []
    target = tmp_path / "demo.zip"
    written = archive.write_archive(
        original,
        layouts.get_layout("mlflow"),
        containers.get_container("zip"),
        location.resolve(target),
        show_progress=False,
    )
    out = tmp_path / "out"
    out.mkdir()
    scanned = archive.scan_archive(location.resolve(target), extract_to=out, show_progress=False)
    restored = archive.read_snapshot(out, scanned)
    assert restored.files == [r for r in written.records
                              if r.path not in (METADATA_NAME, EXPORT_NOTE_NAME)]
    original.model_dir = out / "model"
    assert restored == original


# --------------------------------------------------------------------------- malformed documents


def test_invalid_json_is_corrupt():
    assert_malformed(b'{"format": "mlflow-archive", ', METADATA_NAME, "not valid JSON")


def test_bytes_that_are_not_utf8_are_corrupt():
    assert_malformed(b'{"format": "\xff"}', METADATA_NAME)


@pytest.mark.parametrize("text", ["[]", '"text"', "42", "null"])
def test_a_top_level_that_is_not_an_object_is_corrupt(text):
    assert_malformed(text.encode(), "not an object")


def test_a_missing_format_is_corrupt():
    doc = document()
    del doc["format"]
    assert_malformed(json.dumps(doc).encode(), "format")


def test_a_missing_mlmodel_is_corrupt():
    doc = document()
    del doc["mlmodel"]
    assert_malformed(json.dumps(doc).encode(), "mlmodel")


def test_an_mlmodel_that_is_not_an_object_is_corrupt():
    doc = document()
    doc["mlmodel"] = "flavors: {}"
    assert_malformed(json.dumps(doc).encode(), "mlmodel")


@pytest.mark.parametrize(
    ("section", "value"),
    [
        ("run", []),
        ("run", "r1"),
        ("registered_model", {"tags": "x"}),
        ("registered_model", {"description": "no name"}),
        ("registered_model", {"name": "demo", "aliases": ["champion"]}),
        ("model_version", {"version": "1", "aliases": "champion"}),
        ("logged_model", {"model_id": "m", "metrics": {"rmse": 1}}),
        ("lineage", []),
        ("files", "model/MLmodel"),
        ("files", [{"path": "model/MLmodel"}]),
        ("files", [{"path": "model/MLmodel", "size": "big", "sha256": "a" * 64}]),
    ],
    ids=[
        "run-list",
        "run-string",
        "tags-string-no-name",
        "registered-model-no-name",
        "registered-aliases-list",
        "version-aliases-string",
        "logged-metrics-object",
        "lineage-list",
        "files-string",
        "file-without-size",
        "file-size-not-a-number",
    ],
)
def test_a_wrong_typed_section_is_corrupt(section, value):
    doc = document()
    doc[section] = value
    assert_malformed(json.dumps(doc).encode(), METADATA_NAME, "wrong shape")


def test_a_newer_schema_version_is_refused_with_an_upgrade_hint():
    doc = document()
    doc["schema_version"] = SCHEMA_VERSION + 1
    assert_malformed(json.dumps(doc).encode(), "schema_version", "upgrade")


def test_a_schema_version_that_is_not_an_integer_is_corrupt():
    doc = document()
    doc["schema_version"] = "1"
    assert_malformed(json.dumps(doc).encode(), "schema_version")


def test_an_empty_model_path_is_corrupt():
    doc = document()
    doc["model_path"] = ""
    assert_malformed(json.dumps(doc).encode(), "model_path")


# --------------------------------------------------------------------------- tolerance


def test_unknown_top_level_keys_are_ignored():
    doc = document()
    doc["future_feature"] = {"anything": [1, 2, 3]}
    assert parse(doc) == documented(full_snapshot())


def test_unknown_keys_inside_sections_are_ignored():
    doc = document()
    doc["registered_model"]["owner_team"] = "platform"
    doc["run"]["dataset_inputs"] = [{"name": "train"}]
    doc["lineage"]["signed_by"] = "ci"
    doc["files"][0]["mode"] = "0644"
    assert parse(doc) == documented(full_snapshot())


def test_null_sections_are_read_as_absent():
    doc = document()
    doc["logged_model"] = None
    doc["run"] = None
    restored = parse(doc)
    assert restored.logged_model is None
    assert restored.run is None
    assert restored.registered_model == full_snapshot().registered_model


def test_schema_version_zero_is_refused_because_versions_start_at_one():
    doc = document()
    doc["schema_version"] = 0
    with pytest.raises(CorruptArchiveError, match="schema_version"):
        parse(doc)


# --------------------------------------------------------------------------- display name


def test_display_name_prefers_the_registered_model():
    assert full_snapshot().display_name == "demo"


def test_display_name_falls_back_to_the_logged_model_then_model():
    snapshot = Snapshot(
        model_dir=MODEL_DIR, mlmodel={}, logged_model=LoggedModelInfo(model_id="m", name="lm")
    )
    assert snapshot.display_name == "lm"
    assert Snapshot(model_dir=MODEL_DIR, mlmodel={}).display_name == "model"


@pytest.mark.parametrize("dataset", [
    "train",
    {"name": "train", "digest": "d", "source_type": "local"},
    {"name": "train", "digest": "d", "source_type": "local", "source": "s", "schema": 5},
    {"name": "train", "digest": "d", "source_type": "local", "source": "s", "tags": {"k": 1}},
], ids=["not-an-object", "no-source", "schema-not-text", "tag-not-text"])
def test_a_malformed_run_dataset_is_refused(dataset):
    doc = json.loads(full_snapshot().to_json().decode("utf-8"))
    doc["run"]["datasets"] = [dataset]
    with pytest.raises(CorruptArchiveError, match="malformed"):
        Snapshot.from_json(json.dumps(doc).encode(), MODEL_DIR)


def test_parent_runs_round_trip_and_a_nested_chain_is_refused():
    snapshot = full_snapshot()
    snapshot.run.parents = [RunInfo(run_id="parent", params={"fold": "3"},
                                    metrics={"loss": [{"value": 1.0, "step": 0,
                                                       "timestamp": 5}]})]
    restored = Snapshot.from_json(snapshot.to_json(), MODEL_DIR)
    assert restored.run.parents == snapshot.run.parents
    doc = json.loads(snapshot.to_json())
    doc["run"]["parents"][0]["parents"] = [{"run_id": "grandparent"}]
    with pytest.raises(CorruptArchiveError, match="parents of its own"):
        Snapshot.from_json(json.dumps(doc).encode(), MODEL_DIR)
    doc["run"]["parents"][0]["parents"] = []
    doc["run"]["parents"][0]["params"] = {"fold": 3}
    with pytest.raises(CorruptArchiveError, match="must map text to text"):
        Snapshot.from_json(json.dumps(doc).encode(), MODEL_DIR)
