"""Export from server_a, import into server_b, and compare what arrived field by field.

The archive-level part runs for zip, tar.gz and folder containers; the registry-level
comparison runs once, on the zip archive imported under the model's original name.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    CHECKSUM_FILE,
    METADATA_FILE,
    digest_of,
    download_model,
    load_and_predict,
    tree_hashes,
    unique,
)
from mlflow import MlflowClient

pytestmark = pytest.mark.server

CONTAINERS = ["zip", "tar.gz", "folder"]
SUFFIX = {"zip": ".zip", "tar.gz": ".tar.gz", "folder": ""}
METADATA_KEYS = {
    "schema_version",
    "registered_model",
    "model_version",
    "logged_model",
    "run",
    "mlmodel",
    "files",
    "lineage",
}


def extract(location: str, container: str, dst: Path) -> Path:
    """The archive's files in a plain folder, unpacked with the standard library only."""
    if container == "folder":
        return Path(location)
    dst.mkdir(parents=True, exist_ok=True)
    if container == "zip":
        with zipfile.ZipFile(location) as zf:
            zf.extractall(dst)
    else:
        with tarfile.open(location) as tf:
            tf.extractall(dst, filter="data")
    return dst


def checksum_entries(root: Path) -> dict[str, str]:
    """path -> sha256 from a sha256sum-format checksum.txt (``<hex>  <path>`` lines)."""
    entries = {}
    for line in (root / CHECKSUM_FILE).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        digest, path = line.split(maxsplit=1)
        entries[path.lstrip("*").strip()] = digest
    return entries


def stored_model_files(model_dir: Path) -> dict[str, str]:
    """sha256 of every file of a downloaded model, except ``registered_model_meta``: MLflow
    writes that one on the client while downloading ``models:/<name>/<version>``, naming the
    registry entry that was downloaded, so it differs between registries by design."""
    hashes = tree_hashes(model_dir)
    hashes.pop("registered_model_meta", None)
    return hashes


def client_for(url: str) -> MlflowClient:
    return MlflowClient(tracking_uri=url, registry_uri=url)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, int, float]]:
    return sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))


def user_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if not k.startswith("mlflow.")}


# --------------------------------------------------------------------------- archive level


@pytest.fixture(scope="module", params=CONTAINERS)
def exported(request, rich_model, tmp_path_factory):
    """(container, ExportResult, extracted folder) for the rich model in each container."""
    from mlflow_archive_plugin import export_model

    container = request.param
    workdir = tmp_path_factory.mktemp(f"roundtrip-{container.replace('.', '-')}")
    dest = workdir / f"archive{SUFFIX[container]}"
    result = export_model(
        rich_model.uri, str(dest), container=container, tracking_uri=rich_model.url
    )
    root = extract(result.location, container, workdir / "extracted")
    return container, result, root


def test_export_result_names_model_format_and_container(exported, rich_model):
    container, result, _ = exported
    assert (result.format, result.container) == ("mlflow", container)
    assert (result.model_name, str(result.model_version)) == (rich_model.name, rich_model.version)


def test_export_result_size_and_sha256_describe_the_archive_bytes(exported):
    container, result, _ = exported
    location = Path(result.location)
    if container == "folder":
        assert location.is_dir()
        assert result.sha256 is None
    else:
        assert location.is_file()
        assert result.size == location.stat().st_size
        assert result.sha256 == hashlib.sha256(location.read_bytes()).hexdigest()


def test_export_result_digest_is_sha256_of_checksum_txt_without_the_export_note(exported):
    _, result, root = exported
    checksums = (root / CHECKSUM_FILE).read_bytes()
    assert b"  mlflow-archive-export.json\n" in checksums
    assert result.digest == digest_of(checksums)
    assert result.digest != hashlib.sha256(checksums).hexdigest()


def test_export_result_file_count_matches_files_in_archive(exported):
    _, result, root = exported
    assert result.file_count == len(tree_hashes(root))


def test_archive_root_holds_metadata_checksum_and_mlflow_model(exported):
    _, _, root = exported
    assert (root / METADATA_FILE).is_file()
    assert (root / CHECKSUM_FILE).is_file()
    assert (root / "model" / "MLmodel").is_file()


def test_metadata_document_has_every_section(exported):
    _, _, root = exported
    document = json.loads((root / METADATA_FILE).read_text(encoding="utf-8"))
    assert set(document) >= METADATA_KEYS


def test_checksum_txt_lists_every_other_file(exported):
    _, _, root = exported
    expected = set(tree_hashes(root)) - {CHECKSUM_FILE}
    assert set(checksum_entries(root)) == expected


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils sha256sum not installed")
def test_sha256sum_check_passes_on_extracted_archive(exported):
    _, _, root = exported
    proc = subprocess.run(
        ["sha256sum", "--strict", "-c", CHECKSUM_FILE],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_verify_archive_reports_ok_and_checks_every_listed_file(exported):
    from mlflow_archive_plugin import verify_archive

    _, result, root = exported
    report = verify_archive(result.location)
    assert report.ok, report.problems
    assert report.problems == []
    assert report.checked == len(checksum_entries(root))


def test_inspect_archive_reports_layout_container_digest_and_metadata(exported):
    from mlflow_archive_plugin import inspect_archive

    container, result, root = exported
    info = inspect_archive(result.location)
    assert (info.layout, info.container, info.digest) == ("mlflow", container, result.digest)
    document = json.loads((root / METADATA_FILE).read_text(encoding="utf-8"))
    # inspect puts the export note's facts back into the lineage it shows
    document["lineage"].update(json.loads((root / "mlflow-archive-export.json").read_text()))
    assert info.metadata == document


def test_inspect_archive_file_list_matches_archive_bytes(exported):
    from mlflow_archive_plugin import inspect_archive

    _, result, root = exported
    actual = tree_hashes(root)
    listed = {f["path"]: (f["size"], f["sha256"]) for f in inspect_archive(result.location).files}
    model_files = {p for p in actual if p.startswith("model/")}
    assert model_files <= set(listed)
    for path, (size, digest) in listed.items():
        assert (root / path).stat().st_size == size, path
        assert actual[path] == digest, path


def test_import_reproduces_every_model_file_byte_for_byte(exported, rich_model, server_b, tmp_path):
    from mlflow_archive_plugin import import_archive

    container, result, _ = exported
    imported = import_archive(
        result.location,
        name=unique(f"rt-{container.replace('.', '-')}"),
        tracking_uri=server_b.url,
    )
    source = download_model(rich_model.uri, rich_model.url, tmp_path / "source")
    target = download_model(imported.model_uri, server_b.url, tmp_path / "target")
    source_files = stored_model_files(source)
    assert {"MLmodel", "model.skops"} <= set(source_files)
    assert stored_model_files(target) == source_files


# --------------------------------------------------------------------------- registry level


@pytest.fixture(scope="module")
def roundtrip(rich_model, rich_zip, server_b):
    """The session zip archive imported into server_b under the original model name."""
    from mlflow_archive_plugin import import_archive

    return import_archive(rich_zip.location, tracking_uri=server_b.url)


@pytest.fixture(scope="module")
def source_client(rich_model):
    return client_for(rich_model.url)


@pytest.fixture(scope="module")
def target_client(server_b):
    return client_for(server_b.url)


def test_import_result_names_new_version_and_its_uri(roundtrip, rich_model):
    assert roundtrip.name == rich_model.name
    assert roundtrip.version == "1"
    assert roundtrip.model_uri == f"models:/{rich_model.name}/1"
    assert roundtrip.reused is False


def test_import_result_digest_matches_export(roundtrip, rich_zip):
    assert roundtrip.digest == rich_zip.digest


def test_registered_model_description_and_tags_arrive(
    roundtrip, rich_model, source_client, target_client
):
    source = source_client.get_registered_model(rich_model.name)
    target = target_client.get_registered_model(roundtrip.name)
    assert target.description == source.description
    assert source.tags.items() <= target.tags.items()


def test_version_description_and_tags_arrive(roundtrip, rich_model, source_client, target_client):
    source = source_client.get_model_version(rich_model.name, rich_model.version)
    target = target_client.get_model_version(roundtrip.name, roundtrip.version)
    assert target.description == source.description
    assert source.tags
    assert source.tags.items() <= target.tags.items()


def test_version_aliases_arrive_on_the_imported_version_only(
    roundtrip, rich_model, source_client, target_client
):
    source = source_client.get_model_version(rich_model.name, rich_model.version)
    target = target_client.get_model_version(roundtrip.name, roundtrip.version)
    assert sorted(target.aliases) == sorted(source.aliases) == ["champion", "stable"]
    registered = target_client.get_registered_model(roundtrip.name)
    assert registered.aliases == {"champion": roundtrip.version, "stable": roundtrip.version}


def test_version_digest_tag_matches_archive(roundtrip, rich_zip, target_client):
    target = target_client.get_model_version(roundtrip.name, roundtrip.version)
    assert target.tags["mlflow_archive.digest"] == rich_zip.digest


def test_source_tags_hold_original_version_ids_and_times(
    roundtrip, rich_model, source_client, target_client
):
    source = source_client.get_model_version(rich_model.name, rich_model.version)
    tags = target_client.get_model_version(roundtrip.name, roundtrip.version).tags
    assert tags["mlflow_archive.source.version"] == rich_model.version
    assert tags["mlflow_archive.source.run_id"] == rich_model.run_id
    assert tags["mlflow_archive.source.model_id"] == rich_model.model_id
    assert tags["mlflow_archive.source.creation_timestamp"] == str(source.creation_timestamp)
    assert tags.get("mlflow_archive.source.user_id", "") == (source.user_id or "")


def test_source_tracking_uri_tag_names_source_server(roundtrip, rich_model, target_client):
    tags = target_client.get_model_version(roundtrip.name, roundtrip.version).tags
    assert tags["mlflow_archive.source.tracking_uri"].rstrip("/") == rich_model.url


def test_version_links_to_imported_run_and_logged_model(roundtrip, target_client):
    version = target_client.get_model_version(roundtrip.name, roundtrip.version)
    logged = target_client.get_logged_model(roundtrip.model_id)
    assert version.run_id == roundtrip.run_id
    assert roundtrip.model_id in version.source
    assert logged.source_run_id == roundtrip.run_id


def test_run_name_params_and_tags_arrive(roundtrip, rich_model, source_client, target_client):
    source = source_client.get_run(rich_model.run_id)
    target = target_client.get_run(roundtrip.run_id)
    assert target.info.run_name == source.info.run_name == "rich-run"
    assert target.data.params == source.data.params
    assert target.data.tags["mlflow.runName"] == "rich-run"
    assert user_tags(source.data.tags).items() <= target.data.tags.items()


def test_run_metric_histories_arrive_with_steps_and_timestamps(
    roundtrip, rich_model, source_client, target_client
):
    source = source_client.get_run(rich_model.run_id)
    target = target_client.get_run(roundtrip.run_id)
    assert set(target.data.metrics) == set(source.data.metrics)
    for key in source.data.metrics:
        expected = history(source_client, rich_model.run_id, key)
        assert history(target_client, roundtrip.run_id, key) == expected, key
    assert len(source_client.get_metric_history(rich_model.run_id, "loss")) == 4


def test_run_start_end_time_and_status_arrive(roundtrip, rich_model, source_client, target_client):
    source = source_client.get_run(rich_model.run_id).info
    target = target_client.get_run(roundtrip.run_id).info
    assert (target.start_time, target.end_time, target.status) == (
        source.start_time,
        source.end_time,
        source.status,
    )


def test_logged_model_name_params_tags_and_type_arrive(
    roundtrip, rich_model, source_client, target_client
):
    source = source_client.get_logged_model(rich_model.model_id)
    target = target_client.get_logged_model(roundtrip.model_id)
    assert (target.name, target.model_type) == (source.name, source.model_type)
    assert target.params == source.params
    assert user_tags(source.tags) == {"stage": "candidate", "dataset": "iris"}
    assert user_tags(source.tags).items() <= target.tags.items()


def test_logged_model_metrics_arrive(roundtrip, rich_model, source_client, target_client):
    def points(logged):
        return sorted((m.key, m.step, m.timestamp, m.value) for m in logged.metrics or [])

    source = points(source_client.get_logged_model(rich_model.model_id))
    assert any(key == "val_accuracy" for key, *_ in source)
    assert points(target_client.get_logged_model(roundtrip.model_id)) == source


def test_pyfunc_predictions_match_on_both_servers(roundtrip, rich_model, server_b):
    expected = load_and_predict(rich_model.uri, rich_model.url, rich_model.X)
    actual = load_and_predict(roundtrip.model_uri, server_b.url, rich_model.X)
    np.testing.assert_array_equal(actual, expected)
    np.testing.assert_array_equal(actual, rich_model.predictions)


# --------------------------------------------------------------------------- credentials


@pytest.fixture(scope="module")
def exported_with_credentials(rich_model, tmp_path_factory):
    """A folder archive exported through ``http://user:secret@127.0.0.1:<port>``."""
    from mlflow_archive_plugin import export_model

    url = rich_model.url.replace("http://", "http://archive-user:secret@", 1)
    dest = tmp_path_factory.mktemp("credentials") / "archive"
    return export_model(rich_model.uri, str(dest), container="folder", tracking_uri=url)


def test_credentials_never_reach_the_metadata_document(exported_with_credentials):
    text = (Path(exported_with_credentials.location) / METADATA_FILE).read_text(encoding="utf-8")
    assert "127.0.0.1" in text
    assert "secret" not in text


def test_lineage_names_source_server_without_credentials(exported_with_credentials, rich_model):
    document = json.loads(
        (Path(exported_with_credentials.location) / METADATA_FILE).read_text(encoding="utf-8")
    )
    lineage_text = json.dumps(document["lineage"])
    assert rich_model.url.removeprefix("http://") in lineage_text
    assert "archive-user" not in lineage_text
