"""export_model from every model URI form MLflow 3 resolves, and where the archive lands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import METADATA_FILE, unique

pytestmark = pytest.mark.server

URI_FORMS = {
    "name-version": lambda m: f"models:/{m.name}/{m.version}",
    "name-alias": lambda m: f"models:/{m.name}@champion",
    "logged-model-id": lambda m: f"models:/{m.model_id}",
    "run-relative": lambda m: f"runs:/{m.run_id}/model",
}


def export(rich_model, uri: str, dest, **options):
    from mlflow_archive_plugin import export_model

    options.setdefault("tracking_uri", rich_model.url)
    return export_model(uri, None if dest is None else str(dest), **options)


def read_metadata(folder_archive: str) -> dict:
    return json.loads((Path(folder_archive) / METADATA_FILE).read_text(encoding="utf-8"))


@pytest.mark.parametrize("form", list(URI_FORMS))
def test_every_uri_form_exports_the_same_model_version(form, rich_model, tmp_path):
    uri = URI_FORMS[form](rich_model)
    result = export(rich_model, uri, tmp_path / "archive", container="folder")
    document = read_metadata(result.location)
    registered = document.get("registered_model") or {}
    version = document.get("model_version") or {}
    assert (registered.get("name"), str(version.get("version"))) == (
        rich_model.name,
        rich_model.version,
    ), f"{uri}: registered_model={registered!r} model_version={version!r}"
    assert (document.get("logged_model") or {}).get("model_id") == rich_model.model_id
    assert (document.get("run") or {}).get("run_id") == rich_model.run_id
    assert (result.model_name, str(result.model_version)) == (rich_model.name, rich_model.version)


def test_existing_folder_destination_gets_name_derived_from_model(rich_model, tmp_path):
    result = export(rich_model, rich_model.uri, tmp_path)
    location = Path(result.location)
    assert location.parent == tmp_path
    assert location.is_file()
    assert location.name.startswith(rich_model.name)
    assert location.name.endswith(".zip")
    assert rich_model.version in location.name.removeprefix(rich_model.name)


def test_default_destination_is_working_directory(rich_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = export(rich_model, rich_model.uri, None)
    location = Path(result.location).resolve()
    assert location.parent == tmp_path.resolve()
    assert location.is_file()


def test_tar_gz_container_gets_tar_gz_name(rich_model, tmp_path):
    result = export(rich_model, rich_model.uri, tmp_path, container="tar.gz")
    assert Path(result.location).name.endswith(".tar.gz")


def test_existing_destination_file_is_refused_without_force(rich_model, tmp_path):
    from mlflow_archive_plugin import ArchiveError

    dest = tmp_path / "taken.zip"
    dest.write_bytes(b"someone else's file")
    with pytest.raises(ArchiveError):
        export(rich_model, rich_model.uri, dest)
    assert dest.read_bytes() == b"someone else's file"


def test_force_replaces_existing_destination_file(rich_model, tmp_path):
    dest = tmp_path / "taken.zip"
    dest.write_bytes(b"someone else's file")
    result = export(rich_model, rich_model.uri, dest, force=True)
    assert Path(result.location) == dest
    assert dest.read_bytes()[:4] == b"PK\x03\x04"


UNKNOWN_URIS = {
    "missing-model": lambda m: f"models:/{unique('no-such-model')}/1",
    "missing-version": lambda m: f"models:/{m.name}/99",
    "missing-alias": lambda m: f"models:/{m.name}@no-such-alias",
    "missing-logged-model": lambda m: "models:/m-0123456789abcdef0123456789abcdef",
    "missing-run": lambda m: "runs:/0123456789abcdef0123456789abcdef/model",
}


@pytest.mark.parametrize("form", list(UNKNOWN_URIS))
def test_unknown_uri_raises_one_line_archive_error(form, rich_model, tmp_path):
    from mlflow_archive_plugin import ArchiveError

    with pytest.raises(ArchiveError) as excinfo:
        export(rich_model, UNKNOWN_URIS[form](rich_model), tmp_path / "out.zip")
    message = str(excinfo.value)
    assert message.strip()
    assert "\n" not in message.strip()
    assert not (tmp_path / "out.zip").exists()
