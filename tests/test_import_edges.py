"""Edges of export and import found in review: global state, aliases, quoting, file names."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import mlflow
import pytest
from conftest import register_iris_model
from mlflow import MlflowClient

from mlflow_archive_plugin import export_model, import_archive, verify_archive
from mlflow_archive_plugin.errors import UnsafeArchiveError, UnsupportedError
from mlflow_archive_plugin.formats import get_layout
from mlflow_archive_plugin.snapshot import Snapshot
from mlflow_archive_plugin.storage.containers import get_container
from mlflow_archive_plugin.storage.location import resolve
from mlflow_archive_plugin.storage.pipeline import write_archive

QUOTED_NAME = "o'brien"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """``o'brien`` version 1 with alias ``champion``, in an embedded SQLite registry."""
    folder = tmp_path_factory.mktemp("edges")
    uri = f"sqlite:///{folder / 'source.db'}"
    register_iris_model(uri, QUOTED_NAME)
    MlflowClient(uri).set_registered_model_alias(QUOTED_NAME, "champion", "1")
    archive = export_model(f"models:/{QUOTED_NAME}/1", folder / "a.zip", tracking_uri=uri)
    return uri, Path(archive.location)


def test_import_leaves_the_callers_tracking_uri_variable_alone(source, tmp_path, monkeypatch):
    _, archive = source
    own = f"sqlite:///{tmp_path / 'own.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", own)
    before = mlflow.get_tracking_uri()
    import_archive(archive, tracking_uri=f"sqlite:///{tmp_path / 'target.db'}")
    assert os.environ.get("MLFLOW_TRACKING_URI") == own
    assert mlflow.get_tracking_uri() == before


def test_reimport_of_a_name_with_a_quote_reuses_the_version(source, tmp_path):
    _, archive = source
    target = f"sqlite:///{tmp_path / 'target.db'}"
    first = import_archive(archive, tracking_uri=target)
    again = import_archive(archive, tracking_uri=target)
    assert again.reused and again.version == first.version


def test_alias_held_by_another_version_on_the_target_is_not_moved(source, tmp_path):
    _, archive = source
    target = f"sqlite:///{tmp_path / 'target.db'}"
    import_archive(archive, tracking_uri=target)
    second = import_archive(archive, tracking_uri=target, on_exists="new")
    aliases = MlflowClient(target).get_registered_model(QUOTED_NAME).aliases
    assert str(aliases["champion"]) == "1"
    assert any("champion" in line and "version 1" in line for line in second.warnings)


def test_destination_suffix_chooses_the_container(source, tmp_path):
    uri, _ = source
    result = export_model(f"models:/{QUOTED_NAME}/1", tmp_path / "m.tar.gz", tracking_uri=uri)
    assert result.container == "tar.gz"
    assert (tmp_path / "m.tar.gz").read_bytes()[:2] == b"\x1f\x8b"


def test_destination_suffix_that_contradicts_the_container_is_refused(source, tmp_path):
    uri, _ = source
    with pytest.raises(UnsupportedError, match="names a tar.gz file"):
        export_model(f"models:/{QUOTED_NAME}/1", tmp_path / "m.tar.gz", tracking_uri=uri,
                     container="zip")
    assert not (tmp_path / "m.tar.gz").exists()


def test_verify_fails_an_archive_that_holds_no_metadata(tmp_path):
    archive = tmp_path / "empty.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("checksum.txt", "")
    report = verify_archive(archive)
    assert not report.ok
    assert "mlflow-archive.json: missing" in report.problems[0]


def test_export_refuses_model_files_that_collide_by_case(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "MLmodel").write_text("flavors: {}\n")
    (model / "a.txt").write_text("a")
    (model / "A.txt").write_text("A")
    snapshot = Snapshot(model_dir=model, mlmodel={"flavors": {}})
    with pytest.raises(UnsupportedError, match="not portable"):
        write_archive(snapshot, get_layout("mlflow"), get_container("zip"),
                      resolve(str(tmp_path / "out.zip")))
    assert not (tmp_path / "out.zip").exists()


def test_a_checksum_file_too_large_to_hold_in_memory_is_refused(tmp_path):
    archive = tmp_path / "huge-checksum.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle, \
            handle.open("checksum.txt", "w") as sink:
        for _ in range(65):
            sink.write(b"\n" * (1024 * 1024))
    with pytest.raises(UnsafeArchiveError, match="checksum.txt"):
        verify_archive(archive)
