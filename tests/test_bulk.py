"""export-registry and import-registry between two real mlflow servers, and through S3.

One small sklearn model is logged once on server_a; every registered model here is made of
versions created from that same source (cheap), each model under its own unique name, so the
module shares the session's servers with the other tests. The main round trip goes through
the CLI; re-runs, version numbering and S3 go through the Python API in this process.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import (
    cli,
    register_iris_model,
    registered_model_exists,
    registry_census,
    stderr_lines,
    unique,
)
from mlflow import MlflowClient
from s3_server import moto_s3_in_environment

from mlflow_archive_plugin.errors import CorruptArchiveError
from mlflow_archive_plugin.mlflow_side.bulk import (
    INDEX_FORMAT,
    INDEX_NAME,
    archive_file_name,
    export_registry,
    import_registry,
)
from mlflow_archive_plugin.mlflow_side.registry import DIGEST_TAG

pytestmark = pytest.mark.server

SOURCE_VERSION_TAG = "mlflow_archive.source.version"
# A model version source that needs no files: for target versions made outside the import.
FOREIGN_SOURCE = "s3://elsewhere/model"


def client_for(url: str) -> MlflowClient:
    return MlflowClient(tracking_uri=url, registry_uri=url)


def versions_of(client: MlflowClient, name: str) -> dict[int, object]:
    """Visible versions of ``name`` by number."""
    return {int(v.version): v for v in client.search_model_versions(f"name = '{name}'")}


@dataclass
class SourceRegistry:
    url: str
    big: str  # 11 versions: 10 must come after 9
    small: str  # 2 versions
    gappy: str  # only versions 3 and 5 left
    crowded: str  # 2 versions; the target already used those numbers
    fine: str
    broken: str
    remote: str  # 2 versions, exported to S3


@pytest.fixture(scope="module")
def source(server_a) -> SourceRegistry:
    """A registry on server_a: a handful of models with 1 to 11 versions, aliases and
    descriptions, every version made from one logged model."""
    url = server_a.url
    names = SourceRegistry(url, *(unique(prefix) for prefix in (
        "big", "small", "gappy", "crowded", "fine", "broken", "remote")))
    register_iris_model(url, names.big)
    client = client_for(url)
    first = client.get_model_version(names.big, "1")
    model_id = first.source.removeprefix("models:/")

    def add(name: str, count: int, **extra) -> None:
        for _ in range(count):
            client.create_model_version(name, first.source, run_id=first.run_id,
                                        model_id=model_id, **extra)

    for number in range(2, 12):
        add(names.big, 1, tags={"n": str(number)},
            description="the tenth" if number == 10 else None)
    client.update_registered_model(names.big, description="eleven versions")
    client.set_registered_model_alias(names.big, "champion", "10")
    client.set_registered_model_alias(names.big, "first", "1")
    for name in (names.small, names.gappy, names.crowded, names.fine, names.broken,
                 names.remote):
        client.create_registered_model(name)
    add(names.small, 2)
    client.update_registered_model(names.small, description="two versions")
    client.set_registered_model_alias(names.small, "prod", "2")
    add(names.gappy, 5)
    for number in ("1", "2", "4"):
        client.delete_model_version(names.gappy, number)
    client.set_registered_model_alias(names.gappy, "best", "5")
    add(names.crowded, 2)
    client.set_registered_model_alias(names.crowded, "newest", "2")
    add(names.fine, 1)
    add(names.broken, 1)
    add(names.remote, 2)
    client.set_registered_model_alias(names.remote, "live", "1")
    return names


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory):
    """big and small exported by the CLI, two workers: (folder, process, its JSON)."""
    folder = tmp_path_factory.mktemp("registry") / "export"
    proc = cli("export-registry", "--model", source.big, "--model", source.small, "-o",
               str(folder), "--workers", "2", "--tracking-uri", source.url, "--json",
               cwd=folder.parent)
    assert proc.returncode == 0, proc.stderr
    return folder, proc, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def index(exported) -> dict:
    folder, _, _ = exported
    return json.loads((folder / INDEX_NAME).read_text())


@pytest.fixture(scope="module")
def imported(exported, server_b):
    """The export imported into server_b by the CLI: (process, its JSON, census after)."""
    folder, _, _ = exported
    proc = cli("import-registry", str(folder), "--tracking-uri", server_b.url, "--json",
               cwd=folder.parent)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(proc.stdout), registry_census(server_b.url)


# --------------------------------------------------------------------------- export


def test_export_registry_writes_one_archive_per_version(exported, source):
    folder, _, result = exported
    expected = {f"{source.big}-v{n}.zip" for n in range(1, 12)}
    expected |= {f"{source.small}-v1.zip", f"{source.small}-v2.zip"}
    assert {p.name for p in folder.iterdir()} == expected | {INDEX_NAME}
    assert result["counts"] == {"exported": 13}
    assert result["failures"] == [] and result["ok"] is True


def test_index_lists_versions_in_numeric_order_with_archive_and_digest(index, exported, source):
    _, _, result = exported
    big = next(model for model in index["models"] if model["name"] == source.big)
    assert [v["version"] for v in big["versions"]] == [str(n) for n in range(1, 12)]
    assert big["versions"][9]["archive"] == f"{source.big}-v10.zip"
    digests = {(v["name"], v["version"]): v["digest"] for v in result["versions"]}
    assert all(v["digest"] == digests[(source.big, v["version"])] for v in big["versions"])


def test_index_holds_descriptions_aliases_and_the_source_uri(index, source):
    models = {model["name"]: model for model in index["models"]}
    assert index["schema_version"] == 1
    assert index["source_tracking_uri"] == source.url
    assert models[source.big]["description"] == "eleven versions"
    assert models[source.big]["aliases"] == {"champion": "10", "first": "1"}
    assert models[source.small]["aliases"] == {"prod": "2"}


def test_export_prints_one_json_object(exported):
    _, proc, result = exported
    assert proc.stdout.strip().count("\n") == 0
    assert result["operation"] == "export" and result["index"].endswith(INDEX_NAME)


def test_rerun_of_export_skips_intact_archives_and_redoes_a_damaged_one(exported, source,
                                                                      tmp_path):
    folder, _, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    damaged = copy / f"{source.big}-v5.zip"
    damaged.write_bytes(damaged.read_bytes()[:200])
    result = export_registry(copy, [source.big, source.small], tracking_uri=source.url)
    assert result.counts == {"skipped": 12, "exported": 1}
    assert [(o.name, o.version) for o in result.versions if o.status == "exported"] == [
        (source.big, "5")]
    assert zipfile.is_zipfile(damaged)


def test_export_of_an_unknown_model_fails_it_and_exports_the_others(source, tmp_path):
    missing = unique("no-such-model")
    result = export_registry(tmp_path, [missing, source.fine], tracking_uri=source.url)
    assert [failure.line() for failure in result.failures] == [
        f"{missing}: no such registered model"]
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert [model["name"] for model in index["models"]] == [source.fine]
    assert index["failed"] == [{"name": missing, "version": None,
                                "error": "no such registered model"}]


def test_archive_file_names_are_distinct_for_names_that_look_alike():
    assert archive_file_name("iris", "10") == "iris-v10.zip"
    assert archive_file_name("a/b", "1") != archive_file_name("a_b", "1") == "a_b-v1.zip"
    assert archive_file_name("iris", "2", "mar") == "iris-v2.mar"


# --------------------------------------------------------------------------- import


def test_an_index_naming_an_archive_outside_its_folder_is_refused(tmp_path):
    (tmp_path / INDEX_NAME).write_text(json.dumps({
        "format": INDEX_FORMAT, "schema_version": 1,
        "models": [{"name": "m", "aliases": {}, "versions": [
            {"version": "1", "archive": "../elsewhere.zip", "digest": "0" * 64}]}],
    }))
    with pytest.raises(CorruptArchiveError, match="not a file beside the index"):
        import_registry(tmp_path, tracking_uri="http://127.0.0.1:9")


def test_import_registry_recreates_every_model_and_version(imported, source, server_b):
    _, result, _ = imported
    client = client_for(server_b.url)
    assert result["counts"] == {"imported": 13}
    assert sorted(versions_of(client, source.big)) == list(range(1, 12))
    assert sorted(versions_of(client, source.small)) == [1, 2]


def test_versions_arrive_in_numeric_order_ten_after_nine(imported, source, server_b):
    big = versions_of(client_for(server_b.url), source.big)
    assert {n: v.tags[SOURCE_VERSION_TAG] for n, v in big.items()} == {
        n: str(n) for n in range(1, 12)}
    assert big[10].tags["n"] == "10" and big[10].description == "the tenth"


def test_aliases_point_at_the_versions_made_from_theirs(imported, source, server_b):
    client = client_for(server_b.url)
    big = client.get_registered_model(source.big)
    assert {k: str(v) for k, v in big.aliases.items()} == {"champion": "10", "first": "1"}
    assert client.get_model_version_by_alias(source.big, "champion").tags["n"] == "10"
    assert {k: str(v) for k, v in client.get_registered_model(source.small).aliases.items()} \
        == {"prod": "2"}


def test_registered_model_descriptions_arrive(imported, source, server_b):
    client = client_for(server_b.url)
    assert client.get_registered_model(source.big).description == "eleven versions"
    assert client.get_registered_model(source.small).description == "two versions"


def test_rerun_of_import_registers_nothing(imported, exported, server_b):
    folder, _, _ = exported
    _, _, census = imported
    result = import_registry(folder, tracking_uri=server_b.url, workers=2)
    assert result.counts == {"reused": 13}
    assert registry_census(server_b.url) == census


def test_preserve_version_numbers_fills_gaps_and_reports_numbers_taken(source, server_b,
                                                                        tmp_path):
    client = client_for(server_b.url)
    client.create_registered_model(source.crowded)
    for _ in range(3):  # the target already used 1, 2 and 3
        client.create_model_version(source.crowded, FOREIGN_SOURCE)
    export_registry(tmp_path, [source.gappy, source.crowded], tracking_uri=source.url)

    result = import_registry(tmp_path, tracking_uri=server_b.url,
                             preserve_version_numbers=True)

    gappy = versions_of(client, source.gappy)
    assert sorted(gappy) == [3, 5]  # the placeholders for 1, 2 and 4 are gone again
    assert all(DIGEST_TAG in v.tags for v in gappy.values())
    assert str(client.get_registered_model(source.gappy).aliases["best"]) == "5"
    assert [(o.name, o.version, o.target_version) for o in result.renumbered] == [
        (source.crowded, "1", "4"), (source.crowded, "2", "5")]
    assert str(client.get_registered_model(source.crowded).aliases["newest"]) == "5"


def test_a_failing_model_is_reported_while_the_others_import(source, server_b, tmp_path):
    folder = tmp_path / "export"
    export_registry(folder, [source.fine, source.broken], tracking_uri=source.url)
    tamper(folder / f"{source.broken}-v1.zip")

    proc = cli("import-registry", str(folder), "--tracking-uri", server_b.url,
               cwd=tmp_path)

    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in stderr_lines(proc) if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {source.broken} v1: "), proc.stderr
    assert f"imported {source.fine} v1 -> models:/{source.fine}/1" in proc.stdout
    assert "1 failed" in proc.stdout
    assert registered_model_exists(server_b.url, source.fine)
    assert not registered_model_exists(server_b.url, source.broken)


def tamper(archive: Path) -> None:
    """Rewrite ``archive`` with one byte of its MLmodel changed: checksum.txt no longer holds."""
    with zipfile.ZipFile(archive) as original:
        members = [(info, original.read(info)) for info in original.infolist()]
    with zipfile.ZipFile(archive, "w") as changed:
        for info, data in members:
            changed.writestr(info, data + b"\n" if info.filename == "model/MLmodel" else data)


# --------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on loopback, its credentials in this process's environment."""
    with moto_s3_in_environment(tmp_path_factory.mktemp("moto-bulk")) as server:
        yield server


def test_registry_round_trip_through_s3(s3, source, server_b):
    dest = f"s3://{s3.bucket}/registry/"
    options = s3.storage_options()
    first = export_registry(dest, [source.remote], tracking_uri=source.url,
                            storage_options=options)
    again = export_registry(dest, [source.remote], tracking_uri=source.url,
                            storage_options=options)
    result = import_registry(dest, tracking_uri=server_b.url, storage_options=options)

    assert s3.keys("registry/") == sorted(
        ["registry/" + INDEX_NAME, f"registry/{source.remote}-v1.zip",
         f"registry/{source.remote}-v2.zip"])
    assert (first.counts, again.counts) == ({"exported": 2}, {"skipped": 2})
    assert result.counts == {"imported": 2}
    client = client_for(server_b.url)
    assert sorted(versions_of(client, source.remote)) == [1, 2]
    assert str(client.get_registered_model(source.remote).aliases["live"]) == "1"
