"""Processes killed mid-way (SIGKILL): nothing partial is visible, and a re-run finishes the job.

An export killed while it writes leaves no file at its final name (a local folder) and no
object at its final key (S3); an import killed while it uploads the model's files leaves no
registered version pointing at incomplete files, only a run and a logged model marked
incomplete, which the re-run deletes; ``import-registry`` killed the same way keeps the
versions it finished whole. Each time a re-run completes the job without duplicating
anything, and a further run changes nothing.

Real parts only: the session's mlflow servers (SQLite, served artifacts), a moto S3 server on
loopback, and the CLI in a child process with a session of its own, killed with its whole
process group. Kills are placed by watching what the child writes (its hidden partial file,
a pending multipart upload, the server's staging file for the weights), never by a timer; and
each test checks that the kill landed mid-way (exit status -9, and the state it reached), so a
kill that comes too late fails instead of passing for nothing.

One model big enough to take a while to write (a pyfunc model with WEIGHTS_SIZE bytes of
random weights) is logged once on server_a; the module's exports and imports all carry it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import (
    CHECKSUM_FILE,
    child_env,
    cli,
    digest_of,
    download_model,
    global_tracking_uri,
    register_iris_model,
    registry_census,
    tree_hashes,
    unique,
)
from mlflow import MlflowClient
from mlflow.entities import ViewType
from s3_server import moto_s3_in_environment

from mlflow_archive_plugin.api import verify_archive
from mlflow_archive_plugin.mlflow_side.bulk import INDEX_NAME
from mlflow_archive_plugin.mlflow_side.registry import DIGEST_TAG, INCOMPLETE_TAG

pytestmark = pytest.mark.server

WEIGHTS_SIZE = 128 * 1024 * 1024
# A child is killed once this much of the weights has been written (a small share of them).
KILL_AFTER = 1024 * 1024
POLL_SECONDS = 0.01
# Not a timing assertion: only how long to wait for a child that hangs before giving up.
STUCK_SECONDS = 600
# The file MLflow adds beside a model downloaded through models:/<name>/<version>.
REGISTRY_DOWNLOAD_NOTE = "registered_model_meta"
X = np.arange(12, dtype=np.float64).reshape(4, 3)


class OffsetModel(mlflow.pyfunc.PythonModel):
    """Sums each row and adds the first byte of its weights file: predictions prove that the
    weights it loaded are the ones logged."""

    def load_context(self, context):
        with open(context.artifacts["weights"], "rb") as handle:
            self.offset = handle.read(1)[0]

    def predict(self, context, model_input: np.ndarray, params=None):
        return np.asarray(model_input, dtype=np.float64).sum(axis=1) + self.offset


# --------------------------------------------------------------------------- helpers


@dataclass
class BigModel:
    url: str
    name: str
    run_id: str
    model_id: str
    predictions: np.ndarray

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/1"


@dataclass
class Killed:
    """A child killed once ``seen`` held (None: it never did, and the child ended by itself)."""

    returncode: int
    seen: object
    output: str

    def assert_mid_way(self) -> None:
        detail = f"exit={self.returncode} seen={self.seen!r}\n{self.output}"
        assert self.seen, f"the child ended before the state to kill it in came:\n{detail}"
        assert self.returncode == -signal.SIGKILL, f"the kill came too late:\n{detail}"


def kill_when(args: list[str], cwd: Path, env: dict[str, str],
              condition: Callable[[], object]) -> Killed:
    """Run the CLI with ``args`` and SIGKILL its process group as soon as ``condition()``
    returns something true."""
    log = cwd / f"child-{uuid.uuid4().hex[:8]}.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow_archive_plugin.cli", *args], cwd=str(cwd), env=env,
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )
    seen = None
    try:
        deadline = time.monotonic() + STUCK_SECONDS
        while process.poll() is None and time.monotonic() < deadline:
            seen = condition()
            if seen:
                break
            time.sleep(POLL_SECONDS)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    return Killed(process.returncode, seen, log.read_text(errors="replace"))


def write_random(path: Path, size: int) -> None:
    block = 8 * 1024 * 1024
    with open(path, "wb") as handle:
        for start in range(0, size, block):
            handle.write(os.urandom(min(block, size - start)))


def client_for(url: str) -> MlflowClient:
    return MlflowClient(tracking_uri=url, registry_uri=url)


def growing_file(root: Path, hidden_only: bool = False) -> Callable[[], object]:
    """A condition: some file below ``root`` holds at least KILL_AFTER bytes (its path)."""
    def check() -> object:
        if not root.is_dir():
            return None
        for path in root.rglob("*"):
            if hidden_only and not path.name.startswith("."):
                continue
            with contextlib.suppress(OSError):
                if path.is_file() and path.stat().st_size >= KILL_AFTER:
                    return path
        return None
    return check


def archive_model_files(archive: Path) -> dict[str, tuple[int, str]]:
    """The archive's model files (path below ``model/``) -> (size, sha256 from checksum.txt)."""
    with zipfile.ZipFile(archive) as zf:
        checksums = {}
        for line in zf.read(CHECKSUM_FILE).decode().splitlines():
            digest, path = line.split("  ", 1)
            checksums[path] = digest
        return {
            info.filename.removeprefix("model/"): (info.file_size, checksums[info.filename])
            for info in zf.infolist()
            if info.filename.startswith("model/") and not info.is_dir()
        }


def archive_digest(archive: Path) -> str:
    with zipfile.ZipFile(archive) as zf:
        return digest_of(zf.read(CHECKSUM_FILE))


def listed_files(client: MlflowClient, model_id: str, path: str | None = None) -> dict[str, int]:
    """Every file the artifact store holds for a logged model -> its size."""
    found = {}
    for info in client.list_logged_model_artifacts(model_id, path):
        if info.is_dir:
            found.update(listed_files(client, model_id, info.path))
        else:
            found[info.path] = info.file_size
    return found


def visible_versions(client: MlflowClient, name: str) -> dict[int, object]:
    return {int(v.version): v for v in client.search_model_versions(f"name = '{name}'")}


def assert_holds_files(client: MlflowClient, version, archive: Path) -> None:
    """The version's model files are the archive's: every one of them, at its size."""
    model_id = version.source.removeprefix("models:/")
    expected = {path: size for path, (size, _) in archive_model_files(archive).items()}
    assert listed_files(client, model_id) == expected, f"version {version.version}"


def live_runs_and_models(client: MlflowClient, experiment_id: str) -> tuple[list, list]:
    runs = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY)
    return runs, list(client.search_logged_models([experiment_id]))


def artifact_dir(server, experiment_id: str) -> Path:
    """Where a server with served artifacts keeps an experiment's files."""
    location = client_for(server.url).get_experiment(experiment_id).artifact_location
    assert location.startswith("mlflow-artifacts:/"), location
    return server.root / "artifacts" / location.removeprefix("mlflow-artifacts:/").strip("/")


# --------------------------------------------------------------------------- the big model


@pytest.fixture(scope="module")
def big(server_a, tmp_path_factory) -> BigModel:
    """A pyfunc model with WEIGHTS_SIZE bytes of random weights, version 1 of its name."""
    folder = tmp_path_factory.mktemp("weights")
    weights = folder / "weights.bin"
    write_random(weights, WEIGHTS_SIZE)
    offset = weights.read_bytes()[:1][0]
    name = unique("faults-big")
    with global_tracking_uri(server_a.url), mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(
            name="model", python_model=OffsetModel(), artifacts={"weights": str(weights)},
            pip_requirements=["mlflow"], registered_model_name=name,
        )
    weights.unlink()
    return BigModel(server_a.url, name, run.info.run_id, info.model_id, X.sum(axis=1) + offset)


@pytest.fixture(scope="module")
def children_tmp(tmp_path_factory) -> Iterator[Path]:
    """TMPDIR of the children. A killed child cannot remove its temporary folders (a download
    or an extraction of the whole model), so they are collected here and removed at the end."""
    folder = tmp_path_factory.mktemp("children-tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- export, local


@pytest.fixture(scope="module")
def killed_export(big, children_tmp, tmp_path_factory):
    """The big model exported into a folder, killed while writing, then exported again:
    (the kill, the folder's names just after it, the re-run's process, its JSON)."""
    folder = tmp_path_factory.mktemp("export-local") / "out"
    folder.mkdir()
    args = ["export", big.uri, "-o", f"{folder}/", "--tracking-uri", big.url, "--json", "-q"]
    env = child_env(TMPDIR=str(children_tmp))
    killed = kill_when(args, folder.parent, env, growing_file(folder, hidden_only=True))
    after_kill = sorted(p.name for p in folder.iterdir())
    rerun = cli(*args, cwd=folder.parent, env=env, timeout=STUCK_SECONDS)
    result = json.loads(rerun.stdout) if rerun.returncode == 0 else None
    return killed, after_kill, rerun, result


def test_killed_export_leaves_no_file_at_the_final_name(killed_export, big):
    killed, after_kill, _, _ = killed_export
    killed.assert_mid_way()
    assert f"{big.name}-v1.zip" not in after_kill
    assert [name for name in after_kill if not name.startswith(".")] == []


def test_export_rerun_after_a_kill_writes_an_archive_that_verifies(killed_export, big):
    _, _, rerun, result = killed_export
    assert rerun.returncode == 0, rerun.stderr
    assert Path(result["location"]).name == f"{big.name}-v1.zip"
    report = verify_archive(result["location"])
    assert report.ok, report.problems
    assert report.digest == result["digest"]
    sizes = [size for size, _ in archive_model_files(Path(result["location"])).values()]
    assert WEIGHTS_SIZE in sizes


@pytest.fixture(scope="module")
def big_archive(killed_export) -> Path:
    _, _, rerun, result = killed_export
    assert rerun.returncode == 0, rerun.stderr
    return Path(result["location"])


# --------------------------------------------------------------------------- export, S3


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server, with this process's environment (and so the children's) holding its
    credentials."""
    with moto_s3_in_environment(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="module")
def killed_s3_export(big, s3, children_tmp, tmp_path_factory):
    """The big model exported to S3, killed while its upload is pending, then exported again:
    (the kill, the keys under its prefix just after it, the final key, the re-run's process)."""
    prefix = f"{unique('faults')}/"
    final_key = f"{prefix}{big.name}-v1.zip"
    args = ["export", big.uri, "-o", f"s3://{s3.bucket}/{prefix}", "--tracking-uri", big.url,
            "--storage-option", f"endpoint_url={s3.endpoint}", "--json", "-q"]
    env = child_env(TMPDIR=str(children_tmp))
    cwd = tmp_path_factory.mktemp("export-s3")
    client = s3.client()

    def uploading() -> list[str]:
        """Keys of multipart uploads begun under the prefix and not completed."""
        answer = client.list_multipart_uploads(Bucket=s3.bucket, Prefix=prefix)
        return [upload["Key"] for upload in answer.get("Uploads", [])]

    killed = kill_when(args, cwd, env, uploading)
    after_kill = s3.keys(prefix)
    rerun = cli(*args, cwd=cwd, env=env, timeout=STUCK_SECONDS)
    return killed, after_kill, final_key, rerun


def test_killed_s3_export_leaves_no_object_at_the_final_key(killed_s3_export):
    killed, after_kill, final_key, _ = killed_s3_export
    killed.assert_mid_way()
    assert killed.seen == [final_key]  # killed while the archive was going up
    assert after_kill == []


def test_s3_export_rerun_after_a_kill_publishes_an_archive_that_verifies(killed_s3_export, s3):
    _, _, final_key, rerun = killed_s3_export
    assert rerun.returncode == 0, rerun.stderr
    assert s3.keys(final_key.rsplit("/", 1)[0] + "/") == [final_key]
    report = verify_archive(f"s3://{s3.bucket}/{final_key}",
                            storage_options=s3.storage_options())
    assert report.ok, report.problems
    assert report.digest == json.loads(rerun.stdout)["digest"]


# --------------------------------------------------------------------------- import


@dataclass
class KilledImport:
    name: str
    killed: Killed
    experiment_id: str
    runs_after_kill: list
    models_after_kill: list
    versions_after_kill: dict


@pytest.fixture(scope="module")
def killed_import(big, big_archive, server_b, children_tmp, tmp_path_factory) -> KilledImport:
    """The big archive imported into server_b, killed while the weights go up."""
    client = client_for(server_b.url)
    experiment_id = client.create_experiment(big.name)  # the import's own experiment
    args = ["import", str(big_archive), "--experiment", big.name, "--tracking-uri",
            server_b.url, "--json", "-q"]
    killed = kill_when(args, tmp_path_factory.mktemp("import"),
                       child_env(TMPDIR=str(children_tmp)),
                       growing_file(artifact_dir(server_b, experiment_id)))
    runs, models = live_runs_and_models(client, experiment_id)
    return KilledImport(big.name, killed, experiment_id, runs, models,
                        visible_versions(client, big.name))


def test_killed_import_registers_no_version(killed_import):
    killed_import.killed.assert_mid_way()
    assert killed_import.versions_after_kill == {}
    # Killed mid-way: the run and the logged model were made, the files were going up.
    assert len(killed_import.runs_after_kill) == 1
    assert [m.status for m in killed_import.models_after_kill] == ["PENDING"]


def test_killed_import_leaves_its_run_and_logged_model_marked_incomplete(killed_import,
                                                                         big_archive):
    digest = archive_digest(big_archive)
    [run] = killed_import.runs_after_kill
    [model] = killed_import.models_after_kill
    assert run.data.tags.get(INCOMPLETE_TAG) == digest
    assert model.tags.get(INCOMPLETE_TAG) == digest


@pytest.fixture(scope="module")
def import_rerun(killed_import, big_archive, server_b, children_tmp, tmp_path_factory):
    """The same import run again after the kill, then a third time: (its JSON, the third
    run's JSON, the census before and after the third run)."""
    killed_import.killed.assert_mid_way()
    args = ["import", str(big_archive), "--experiment", killed_import.name, "--tracking-uri",
            server_b.url, "--json", "-q"]
    cwd = tmp_path_factory.mktemp("import-rerun")
    env = child_env(TMPDIR=str(children_tmp))
    second = cli(*args, cwd=cwd, env=env, timeout=STUCK_SECONDS)
    assert second.returncode == 0, second.stderr
    before = registry_census(server_b.url)
    third = cli(*args, cwd=cwd, env=env, timeout=STUCK_SECONDS)
    assert third.returncode == 0, third.stderr
    return json.loads(second.stdout), json.loads(third.stdout), before, \
        registry_census(server_b.url)


@pytest.fixture(scope="module")
def reimported_files(import_rerun, server_b, tmp_path_factory) -> Path:
    """The files of the version the re-run registered, downloaded from server_b."""
    second, _, _, _ = import_rerun
    return download_model(second["model_uri"], server_b.url,
                          tmp_path_factory.mktemp("reimported"))


def test_import_rerun_after_a_kill_registers_the_version_with_every_file(
        import_rerun, reimported_files, big, big_archive, server_b):
    second, _, _, _ = import_rerun
    assert (second["name"], second["reused"]) == (big.name, False)
    version = client_for(server_b.url).get_model_version(big.name, second["version"])
    assert version.tags[DIGEST_TAG] == archive_digest(big_archive)
    downloaded = tree_hashes(reimported_files)
    del downloaded[REGISTRY_DOWNLOAD_NOTE]
    hashes = {path: sha256 for path, (_, sha256) in archive_model_files(big_archive).items()}
    assert downloaded == hashes


def test_version_imported_after_a_kill_predicts_with_its_weights(reimported_files, big):
    predictions = mlflow.pyfunc.load_model(str(reimported_files)).predict(X)
    np.testing.assert_array_equal(predictions, big.predictions)


def test_third_import_reuses_the_version_and_creates_nothing(import_rerun):
    second, third, before, after = import_rerun
    assert third["reused"] is True
    assert third["model_uri"] == second["model_uri"]
    assert after == before


def test_import_rerun_after_a_kill_leaves_one_run_and_one_logged_model(
        import_rerun, killed_import, server_b):
    second, _, _, _ = import_rerun
    client = client_for(server_b.url)
    version = client.get_model_version(killed_import.name, second["version"])
    runs, models = live_runs_and_models(client, killed_import.experiment_id)
    assert [run.info.run_id for run in runs] == [version.run_id]
    assert [f"models:/{model.model_id}" for model in models] == [version.source]
    assert INCOMPLETE_TAG not in runs[0].data.tags
    assert INCOMPLETE_TAG not in models[0].tags


# --------------------------------------------------------------------------- import-registry


@pytest.fixture(scope="module")
def bulk_export(big, children_tmp, tmp_path_factory) -> tuple[str, Path, dict]:
    """A registered model on server_a whose version 2 is the big model and versions 1 and 3
    a small one, exported by export-registry: (its name, the folder, the index)."""
    name = unique("faults-bulk")
    register_iris_model(big.url, name)
    client = client_for(big.url)
    small = client.get_model_version(name, "1")
    client.create_model_version(name, f"models:/{big.model_id}", run_id=big.run_id,
                                model_id=big.model_id)
    client.create_model_version(name, small.source, run_id=small.run_id,
                                model_id=small.source.removeprefix("models:/"))
    client.set_registered_model_alias(name, "champion", "2")
    folder = tmp_path_factory.mktemp("registry") / "export"
    proc = cli("export-registry", "--model", name, "-o", str(folder), "--tracking-uri",
               big.url, "--json", "-q", cwd=folder.parent,
               env=child_env(TMPDIR=str(children_tmp)), timeout=STUCK_SECONDS)
    assert proc.returncode == 0, proc.stderr
    return name, folder, json.loads((folder / INDEX_NAME).read_text())


@dataclass
class BulkImport:
    name: str
    experiment_id: str
    killed: Killed
    versions_after_kill: dict
    rerun: dict
    third: dict
    census_before_third: dict
    census_after_third: dict


@pytest.fixture(scope="module")
def bulk_import(bulk_export, server_b, children_tmp, tmp_path_factory) -> BulkImport:
    """import-registry into server_b killed while version 2's weights go up, then run again
    twice."""
    name, folder, _ = bulk_export
    client = client_for(server_b.url)
    # where the import puts the runs: the source runs' experiment (Default), by name
    experiment_id = client.get_experiment_by_name("Default").experiment_id
    args = ["import-registry", str(folder), "--tracking-uri", server_b.url, "--json", "-q"]
    cwd = tmp_path_factory.mktemp("import-registry")
    env = child_env(TMPDIR=str(children_tmp))
    killed = kill_when(args, cwd, env, growing_file(artifact_dir(server_b, experiment_id)))
    versions_after_kill = visible_versions(client, name)
    killed.assert_mid_way()
    rerun = cli(*args, cwd=cwd, env=env, timeout=STUCK_SECONDS)
    assert rerun.returncode == 0, rerun.stderr
    before = registry_census(server_b.url)
    third = cli(*args, cwd=cwd, env=env, timeout=STUCK_SECONDS)
    assert third.returncode == 0, third.stderr
    return BulkImport(name, experiment_id, killed, versions_after_kill,
                      json.loads(rerun.stdout), json.loads(third.stdout), before,
                      registry_census(server_b.url))


def index_versions(index: dict) -> list[dict]:
    [model] = index["models"]
    return model["versions"]


def test_killed_import_registry_keeps_only_the_version_it_finished(bulk_import, bulk_export,
                                                                   server_b):
    _, folder, index = bulk_export
    bulk_import.killed.assert_mid_way()
    first = index_versions(index)[0]
    assert list(bulk_import.versions_after_kill) == [1]
    version = bulk_import.versions_after_kill[1]
    assert version.tags[DIGEST_TAG] == first["digest"]
    assert_holds_files(client_for(server_b.url), version, folder / first["archive"])


def test_import_registry_rerun_after_a_kill_completes_the_versions_in_order(
        bulk_import, bulk_export, server_b):
    _, folder, index = bulk_export
    assert bulk_import.rerun["counts"] == {"reused": 1, "imported": 2}
    client = client_for(server_b.url)
    versions = visible_versions(client, bulk_import.name)
    expected = index_versions(index)
    assert sorted(versions) == [1, 2, 3]
    assert [versions[n].tags[DIGEST_TAG] for n in (1, 2, 3)] == [v["digest"] for v in expected]
    for number, source in zip(sorted(versions), expected, strict=True):
        assert_holds_files(client, versions[number], folder / source["archive"])
    assert client.get_registered_model(bulk_import.name).aliases == {"champion": "2"}


def test_import_registry_rerun_after_a_kill_duplicates_nothing(bulk_import, big, server_b):
    runs, models = live_runs_and_models(client_for(server_b.url), bulk_import.experiment_id)
    versions = visible_versions(client_for(server_b.url), bulk_import.name)
    # Default is shared with other imports: count the runs made from this model's source runs
    source = client_for(big.url)
    sources = {source.get_model_version(bulk_import.name, str(n)).run_id for n in (1, 2, 3)}
    assert len(sources) == 2  # versions 1 and 3 share a run
    runs = [run for run in runs
            if run.data.tags.get("mlflow_archive.source.run_id") in sources]
    run_ids = {run.info.run_id for run in runs}
    models = [model for model in models if model.source_run_id in run_ids]
    assert sorted(run.info.run_id for run in runs) == sorted(v.run_id for v in versions.values())
    assert sorted(f"models:/{m.model_id}" for m in models) == sorted(
        v.source for v in versions.values())
    assert not any(INCOMPLETE_TAG in run.data.tags for run in runs)
    assert not any(INCOMPLETE_TAG in model.tags for model in models)


def test_third_import_registry_run_changes_nothing(bulk_import):
    assert bulk_import.third["counts"] == {"reused": 3}
    assert bulk_import.census_after_third == bulk_import.census_before_third
