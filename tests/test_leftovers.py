"""Crashes leave nothing behind for long (issue 17, item 3).

Exports and imports are killed with SIGKILL half way (real processes, a real MLflow store);
what they leave is named for its owner, and `mlflow-archive clean` (or the next export to the
same destination) removes it once the owner is gone, keeping what a live process writes. On
S3 (moto's server) an unfinished multipart upload is aborted once it is old enough.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from conftest import child_env, cli, global_tracking_uri, unique
from mlflow import MlflowClient
from mlflow.entities import ViewType
from s3_server import moto_s3_in_environment

from mlflow_archive_plugin.mlflow_side.registry import INCOMPLETE_TAG
from mlflow_archive_plugin.storage.location import PARTIAL_NAME, host_name, owner_tag

WEIGHTS_MIB = 256


class _Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    """A logged model with 256 MiB of random weights in a local store: seconds to export."""
    root = tmp_path_factory.mktemp("leftovers")
    uri = f"sqlite:///{root / 'store.db'}"
    weights = root / "weights.bin"
    with weights.open("wb") as handle:
        for _ in range(WEIGHTS_MIB):
            handle.write(os.urandom(1024**2))
    experiment = MlflowClient(uri).create_experiment(
        unique("big"), artifact_location=(root / "artifacts").as_uri())
    # a module fixture runs before the per-test restore: the global URI is put back here
    with global_tracking_uri(uri), mlflow.start_run(experiment_id=experiment):
        info = mlflow.pyfunc.log_model(name="model", python_model=_Echo(),
                                       artifacts={"weights": str(weights)},
                                       pip_requirements=["mlflow"])
    weights.unlink()
    return f"models:/{info.model_id}", uri


def spawn(args: list[str], cwd: Path, tmp: Path) -> subprocess.Popen:
    tmp.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "mlflow_archive_plugin.cli", *args],
                            cwd=cwd, env=child_env(TMPDIR=str(tmp)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def kill_when(proc: subprocess.Popen, seen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not seen():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (exit {proc.returncode}) before {what}: "
                        f"{proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def killed_export(big_model, sandbox: Path) -> tuple[int, Path]:
    model_uri, uri = big_model
    out = sandbox / "out"
    out.mkdir(parents=True, exist_ok=True)
    proc = spawn(["export", model_uri, "-o", str(out / "model.zip"), "--tracking-uri", uri,
                  "-q"], sandbox, sandbox / "tmp")
    kill_when(proc, lambda: any(p.stat().st_size > 1024**2 for p in out.iterdir()
                                if ".partial-" in p.name), "a partial file of a MiB")
    return proc.pid, out


def test_a_killed_export_leaves_leftovers_named_for_their_owner(big_model, tmp_path):
    pid, out = killed_export(big_model, tmp_path)
    [name] = partials(out)
    match = PARTIAL_NAME.match(name)
    assert match and match.group("name") == "model.zip", name
    assert (int(match.group("pid")), match.group("host")) == (pid, host_name())
    scratch = [p.name for p in (tmp_path / "tmp").iterdir()]
    assert any(n.startswith(f"mlflow-archive-export-{pid}-") for n in scratch), scratch
    assert not (out / "model.zip").exists()


def test_clean_removes_what_the_killed_export_left_and_a_re_export_succeeds(
        big_model, tmp_path):
    pid, out = killed_export(big_model, tmp_path)
    proc = cli("clean", str(out), "--tmp-dir", str(tmp_path / "tmp"), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    removed = json.loads(proc.stdout)["removed"]
    assert len(removed) == 2, removed
    assert any(line.startswith("partial file") and f"process {pid} " in line
               for line in removed), removed
    assert any(line.startswith("temporary folder") for line in removed), removed
    assert partials(out) == []
    assert list((tmp_path / "tmp").iterdir()) == []
    model_uri, uri = big_model
    again = cli("export", model_uri, "-o", str(out / "model.zip"), "--tracking-uri", uri, "-q",
                cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.zip"]


def test_the_next_export_to_the_destination_removes_its_dead_partial(big_model, tmp_path):
    _, out = killed_export(big_model, tmp_path)
    assert len(partials(out)) == 1
    model_uri, uri = big_model
    again = cli("export", model_uri, "-o", str(out / "model.zip"), "--tracking-uri", uri, "-q",
                cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.zip"]


def test_clean_keeps_what_a_live_process_or_a_recent_foreign_one_writes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    live = out / f".a.zip.partial-{'1' * 12}-{owner_tag()}"  # this very process: alive
    foreign = out / f".b.zip.partial-{'2' * 12}-4242-77@another-host"
    legacy = out / f".c.zip.partial-{'3' * 12}"  # named before owners were recorded
    unrelated = out / "notes.partial-txt"
    for path in (live, foreign, legacy, unrelated):
        path.write_bytes(b"x")
    proc = cli("clean", str(out), "--tmp-dir", str(tmp_path), cwd=tmp_path)
    assert (proc.returncode, proc.stdout.strip()) == (0, "nothing to clean"), proc.stderr
    old = time.time() - 3 * 3600
    for path in (foreign, legacy):
        os.utime(path, (old, old))
    # the temporary folder is the test's own: another process's leftovers in TMPDIR
    # (a killed run's) are not this test's to count or remove
    proc = cli("clean", str(out), "--older-than", "2", "--dry-run", "--tmp-dir", str(tmp_path),
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("would remove") == 2, proc.stdout
    assert foreign.exists() and legacy.exists()
    proc = cli("clean", str(out), "--older-than", "2", "--tmp-dir", str(tmp_path),
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([live.name, unrelated.name])


def test_clean_aborts_an_old_unfinished_upload_on_s3(tmp_path):
    with moto_s3_in_environment(tmp_path / "moto") as s3:
        client = s3.client()
        started = client.create_multipart_upload(Bucket=s3.bucket, Key="models/m.zip")
        client.upload_part(Bucket=s3.bucket, Key="models/m.zip", PartNumber=1,
                           UploadId=started["UploadId"], Body=b"x" * 1024)
        other = client.create_multipart_upload(Bucket=s3.bucket, Key="elsewhere/n.zip")
        option = ["--storage-option", f"endpoint_url={s3.endpoint}"]
        env = s3.env()
        # moto lists every upload as initiated on 2010-11-10 (a fixed value in its responses),
        # so that an upload too young to abort cannot be shown on it; --dry-run keeps it.
        kept = cli("clean", f"s3://{s3.bucket}/models/", "--dry-run", *option, cwd=tmp_path,
                   env=env)
        assert kept.returncode == 0, kept.stderr
        assert "would remove multipart upload" in kept.stdout, kept.stdout
        assert s3.pending_uploads("models/") == ["models/m.zip"]
        proc = cli("clean", f"s3://{s3.bucket}/models/", "--older-than", "0", *option,
                   cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr
        assert "multipart upload" in proc.stdout and "models/m.zip" in proc.stdout, proc.stdout
        assert s3.pending_uploads("models/") == []
        assert s3.pending_uploads("elsewhere/") == ["elsewhere/n.zip"]  # not under DEST
        client.abort_multipart_upload(Bucket=s3.bucket, Key="elsewhere/n.zip",
                                      UploadId=other["UploadId"])


def test_clean_removes_what_a_killed_import_left_in_the_registry(big_model, tmp_path):
    model_uri, uri = big_model
    archive = tmp_path / "big.zip"
    done = cli("export", model_uri, "-o", str(archive), "--tracking-uri", uri, "-q",
               cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    target = f"sqlite:///{tmp_path / 'target.db'}"
    MlflowClient(target).search_experiments()  # the schema exists before the import races it
    client = MlflowClient(target)

    def marked_runs() -> list:
        experiments = [e.experiment_id for e in client.search_experiments()]
        return client.search_runs(experiments, f"tags.`{INCOMPLETE_TAG}` LIKE '%'")

    proc = spawn(["import", str(archive), "--tracking-uri", target, "-q"], tmp_path,
                 tmp_path / "tmp")
    kill_when(proc, lambda: bool(marked_runs()), "a run marked incomplete")
    [left] = marked_runs()
    assert client.search_model_versions() == []
    young = cli("clean", "--tracking-uri", target, "--tmp-dir", str(tmp_path / "tmp"),
                "--json", cwd=tmp_path)
    assert young.returncode == 0, young.stderr
    assert not any("run " in line for line in json.loads(young.stdout)["removed"])
    proc = cli("clean", "--tracking-uri", target, "--older-than", "0", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    removed = json.loads(proc.stdout)["removed"]
    assert any(line.startswith(f"run {left.info.run_id}") for line in removed), removed
    assert client.get_run(left.info.run_id).info.lifecycle_stage == "deleted"
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    assert client.search_logged_models(experiments, filter_string=(
        f"tags.`{INCOMPLETE_TAG}` LIKE '%'")) == []
    # the same archive imports whole afterwards
    again = cli("import", str(archive), "--tracking-uri", target, "-q", cwd=tmp_path,
                timeout=300)
    assert again.returncode == 0, again.stderr
    assert len(client.search_model_versions()) == 1
