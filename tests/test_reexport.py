"""A fresh export of the same version is recognised (issue 18, item 7).

The digest covers the model's files and registry facts, not when the archive was made: the
export's own facts (time, plugin and MLflow versions) sit in ``mlflow-archive-export.json``,
whose line in ``checksum.txt`` the digest leaves out. Archives written before (no such file)
keep the digest they had: SHA-256 of their whole ``checksum.txt``.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile

import pytest
from conftest import unique
from mlflow import MlflowClient

from mlflow_archive_plugin import export_model, import_archive, inspect_archive

NOTE = "mlflow-archive-export.json"


@pytest.fixture(scope="module")
def two_exports(rich_model, tmp_path_factory):
    """The rich version exported twice, a second apart, in each of three formats."""
    root = tmp_path_factory.mktemp("reexport")
    exports = {}
    for fmt in ("mlflow", "mar", "bentoml"):
        for folder in ("first", "second"):
            (root / fmt / folder).mkdir(parents=True)
        first = export_model(rich_model.uri, root / fmt / "first", format=fmt,
                             tracking_uri=rich_model.url, progress=False)
        time.sleep(1.1)  # exported_at has whole seconds
        second = export_model(rich_model.uri, root / fmt / "second", format=fmt,
                              tracking_uri=rich_model.url, progress=False)
        exports[fmt] = (first, second)
    return exports


@pytest.mark.parametrize("fmt", ["mlflow", "mar", "bentoml"])
def test_two_exports_of_one_version_have_one_digest(two_exports, fmt):
    first, second = two_exports[fmt]
    assert first.sha256 != second.sha256  # the export notes differ ...
    assert first.digest == second.digest  # ... and the digest leaves them out


def test_the_export_note_holds_the_export_facts_outside_the_document(two_exports):
    first, second = two_exports["mlflow"]
    notes = []
    for result in (first, second):
        with zipfile.ZipFile(result.location) as archive:
            document = json.loads(archive.read("mlflow-archive.json"))
            notes.append(json.loads(archive.read(NOTE)))
            listed = archive.read("checksum.txt").decode()
        assert document["schema_version"] == 3
        assert "exported_at" not in document["lineage"]
        assert f"  {NOTE}\n" in listed
        kept = "".join(line for line in listed.splitlines(keepends=True)
                       if not line.endswith(f"  {NOTE}\n"))
        assert result.digest == hashlib.sha256(kept.encode()).hexdigest()
    assert notes[0]["exported_at"] < notes[1]["exported_at"]
    assert notes[0]["plugin_version"] and notes[0]["mlflow_version"]
    info = inspect_archive(first.location)
    assert info.metadata["lineage"]["exported_at"] == notes[0]["exported_at"]


def test_importing_both_exports_gives_one_version(two_exports, server_b):
    name = unique("reexported")
    first, second = two_exports["mlflow"]
    one = import_archive(first.location, name=name, tracking_uri=server_b.url, progress=False)
    two = import_archive(second.location, name=name, tracking_uri=server_b.url,
                         progress=False)
    assert (one.version, one.reused) == ("1", False)
    assert (two.version, two.reused) == ("1", True)
    client = MlflowClient(server_b.url, server_b.url)
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    tags = client.get_model_version(name, "1").tags
    assert tags["mlflow_archive.source.exported_at"] == json.loads(
        zipfile.ZipFile(first.location).read(NOTE))["exported_at"]


def test_an_archive_without_an_export_note_keeps_its_old_digest(two_exports, tmp_path):
    """An archive of schema 1 or 2 (no note): the digest of its whole checksum.txt."""
    from mlflow_archive_plugin.storage.integrity import content_digest

    listed = b"0" * 64 + b"  model/MLmodel\n" + b"1" * 64 + b"  mlflow-archive.json\n"
    assert content_digest(listed) == hashlib.sha256(listed).hexdigest()
    noted = listed + b"2" * 64 + f"  {NOTE}\n".encode()
    assert content_digest(noted) == hashlib.sha256(listed).hexdigest()
    # a file whose name merely ends like the note's is still covered
    other = listed + b"3" * 64 + f"  model/{NOTE}\n".encode()
    assert content_digest(other) != hashlib.sha256(listed).hexdigest()
