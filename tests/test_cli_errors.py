"""The ``mlflow-archive`` CLI on bad input: one ``error: `` line, non-zero exit, no traceback.

Every run is a real subprocess (``python -m mlflow_archive_plugin.cli``); damaged archives
are made from real exports, and imports of them must leave the target registry untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from conftest import (
    CHECKSUM_FILE,
    METADATA_FILE,
    assert_user_error,
    child_env,
    cli,
    free_port,
    registry_census,
    unique,
)

pytestmark = pytest.mark.server

EXPORT_JSON_KEYS = {"location", "format", "container", "size", "sha256", "file_count", "digest"}
IMPORT_JSON_KEYS = {"name", "version", "model_uri", "reused"}


# --------------------------------------------------------------------------- damaged archives


def largest_model_file(root: Path) -> Path:
    """The biggest file under ``model/`` other than MLmodel: the serialized estimator."""
    candidates = [p for p in (root / "model").rglob("*") if p.is_file() and p.name != "MLmodel"]
    return max(candidates, key=lambda p: p.stat().st_size)


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        original = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([original[0] ^ 0xFF]))


@pytest.fixture(scope="module")
def rich_tar(rich_model, tmp_path_factory):
    from mlflow_archive_plugin import export_model

    dest = tmp_path_factory.mktemp("cli-tar") / "rich.tar"
    return export_model(rich_model.uri, str(dest), container="tar", tracking_uri=rich_model.url)


@pytest.fixture(params=["folder", "tar"])
def flipped(request, rich_folder, rich_tar, tmp_path) -> tuple[Path, str]:
    """(archive with one byte flipped inside a model file, that file's archive path)."""
    if request.param == "folder":
        archive = tmp_path / "flipped"
        shutil.copytree(rich_folder.location, archive)
        victim = largest_model_file(archive)
        flip_byte(victim, victim.stat().st_size // 2)
        return archive, victim.relative_to(archive).as_posix()
    archive = tmp_path / "flipped.tar"
    shutil.copyfile(rich_tar.location, archive)
    with tarfile.open(archive) as tf:
        members = [
            m for m in tf.getmembers()
            if m.isfile() and "model/" in m.name and not m.name.endswith("MLmodel")
        ]  # fmt: skip
        victim = max(members, key=lambda m: m.size)
    flip_byte(archive, victim.offset_data + victim.size // 2)
    return archive, victim.name.removeprefix("./")


@pytest.fixture
def truncated_zip(rich_zip, tmp_path) -> Path:
    data = Path(rich_zip.location).read_bytes()
    path = tmp_path / "truncated.zip"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def random_bytes(tmp_path) -> Path:
    path = tmp_path / "noise.bin"
    path.write_bytes(os.urandom(64 * 1024))
    return path


@pytest.fixture
def malformed_metadata(rich_folder, tmp_path) -> Path:
    """A folder archive whose mlflow-archive.json is broken but checksum.txt agrees with it."""
    archive = tmp_path / "malformed"
    shutil.copytree(rich_folder.location, archive)
    metadata = archive / METADATA_FILE
    text = metadata.read_text(encoding="utf-8")
    metadata.write_text(text[: len(text) // 2] + ',,"}', encoding="utf-8")
    new_digest = hashlib.sha256(metadata.read_bytes()).hexdigest()
    lines = []
    for line in (archive / CHECKSUM_FILE).read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        lines.append(f"{new_digest}  {name}" if name.lstrip("*") == METADATA_FILE else line)
    (archive / CHECKSUM_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    # Only the JSON is wrong: every checksum still matches its file.
    for line in lines:
        digest, _, name = line.partition("  ")
        assert hashlib.sha256((archive / name).read_bytes()).hexdigest() == digest, name
    return archive


DAMAGED = ["truncated_zip", "random_bytes", "malformed_metadata"]


# --------------------------------------------------------------------------- model URIs, servers


def test_unknown_model_uri_is_one_line_error(rich_model, tmp_path):
    proc = cli(
        "export", f"models:/{unique('no-such-model')}/1", "-o", str(tmp_path / "out.zip"),
        "--tracking-uri", rich_model.url,
        cwd=tmp_path,
    )  # fmt: skip
    assert_user_error(proc)
    assert not (tmp_path / "out.zip").exists()


@pytest.mark.parametrize("command", ["export", "import"])
def test_unreachable_tracking_server_fails_within_a_minute(command, rich_zip, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    env = child_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    if command == "export":
        args = ["export", "models:/anything/1", "-o", str(tmp_path / "out.zip")]
    else:
        args = ["import", rich_zip.location]
    started = time.monotonic()
    try:
        proc = cli(*args, "--tracking-uri", closed, cwd=tmp_path, env=env, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`mlflow-archive {command}` against a closed port ran for over 60 s")
    assert_user_error(proc)
    assert time.monotonic() - started < 60


def test_existing_destination_without_force_is_left_alone(rich_model, tmp_path):
    dest = tmp_path / "taken.zip"
    original = os.urandom(4096)
    dest.write_bytes(original)
    proc = cli(
        "export", rich_model.uri, "-o", str(dest), "--tracking-uri", rich_model.url,
        cwd=tmp_path,
    )  # fmt: skip
    assert_user_error(proc)
    assert dest.read_bytes() == original


# --------------------------------------------------------------------------- damaged archives


def test_verify_names_file_with_flipped_byte(flipped, tmp_path):
    archive, victim = flipped
    proc = cli("verify", str(archive), cwd=tmp_path)
    assert_user_error(proc)
    assert victim in proc.stdout + proc.stderr


def test_verify_api_reports_only_the_flipped_file(flipped):
    from mlflow_archive_plugin import verify_archive

    archive, victim = flipped
    report = verify_archive(str(archive))
    assert report.ok is False
    assert len(report.problems) == 1
    assert victim in report.problems[0]


def test_import_of_flipped_archive_registers_nothing(flipped, server_b, tmp_path):
    archive, _ = flipped
    before = registry_census(server_b.url)
    proc = cli(
        "import", str(archive), "--name", unique("flipped"), "--tracking-uri", server_b.url,
        cwd=tmp_path,
    )  # fmt: skip
    assert_user_error(proc)
    assert registry_census(server_b.url) == before


@pytest.mark.parametrize("damage", DAMAGED)
@pytest.mark.parametrize("command", ["verify", "inspect"])
def test_damaged_archive_is_one_line_error(command, damage, request, tmp_path):
    archive = request.getfixturevalue(damage)
    assert_user_error(cli(command, str(archive), cwd=tmp_path))


@pytest.mark.parametrize("damage", DAMAGED)
def test_import_of_damaged_archive_registers_nothing(damage, request, server_b, tmp_path):
    archive = request.getfixturevalue(damage)
    before = registry_census(server_b.url)
    proc = cli(
        "import", str(archive), "--name", unique("damaged"), "--tracking-uri", server_b.url,
        cwd=tmp_path,
    )  # fmt: skip
    assert_user_error(proc)
    assert registry_census(server_b.url) == before


# --------------------------------------------------------------------------- --json output


def test_export_json_prints_one_object_with_result_keys(rich_model, tmp_path):
    proc = cli(
        "export", rich_model.uri, "-o", str(tmp_path / "out.zip"),
        "--tracking-uri", rich_model.url, "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert isinstance(document, dict)
    assert set(document) >= EXPORT_JSON_KEYS
    assert Path(document["location"]) == tmp_path / "out.zip"
    assert document["sha256"] == hashlib.sha256((tmp_path / "out.zip").read_bytes()).hexdigest()


def test_import_json_prints_one_object_with_result_keys(rich_zip, server_b, tmp_path):
    name = unique("json")
    proc = cli(
        "import", rich_zip.location, "--name", name, "--tracking-uri", server_b.url, "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert isinstance(document, dict)
    assert set(document) >= IMPORT_JSON_KEYS
    assert (document["name"], str(document["version"]), document["reused"]) == (name, "1", False)
    assert document["model_uri"] == f"models:/{name}/1"
