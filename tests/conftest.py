"""Shared fixtures: real ``mlflow server`` processes on 127.0.0.1 and one rich model.

Nothing here mocks MLflow. Two tracking servers (SQLite backend, served artifacts) are
started once per session; a model with a full set of registry metadata is logged once
on ``server_a`` and exported once per container, and every test module reuses them.
Tests use unique registered-model names, so they can share the servers.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, ViewType
from mlflow.tracking._model_registry import utils as _registry_utils
from mlflow.tracking._tracking_service import utils as _tracking_utils
from s3_server import stop_process_group

# Compatibility suites need the real tools (torch-model-archiver, torchserve ...), which live
# in their own tox environments; each sets MLFLOW_ARCHIVE_COMPAT to the suite it runs.
COMPAT_SUITES = ("torchserve", "bentoml")
collect_ignore = [suite for suite in COMPAT_SUITES
                  if os.environ.get("MLFLOW_ARCHIVE_COMPAT") != suite]

# No traffic beyond loopback: MLflow's usage telemetry is switched off for this process
# and for every child (servers, CLI runs), and loopback never goes through a proxy.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"
for _var in ("NO_PROXY", "no_proxy"):
    _hosts = [h for h in os.environ.get(_var, "").split(",") if h]
    os.environ[_var] = ",".join([*_hosts, "127.0.0.1", "localhost"])

SERVER_START_TIMEOUT = 90.0
_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")

# Archive file names every native archive carries at its root.
METADATA_FILE = "mlflow-archive.json"
CHECKSUM_FILE = "checksum.txt"


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (closed again before returning)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


EXPORT_NOTE = "mlflow-archive-export.json"


def digest_of(checksums: bytes) -> str:
    """An archive's digest as the README defines it: SHA-256 of its checksum.txt without the
    line of the export note (``grep -v '  mlflow-archive-export.json$' | sha256sum``)."""
    kept = [line for line in checksums.splitlines(keepends=True)
            if line.rstrip(b"\n") [-len(EXPORT_NOTE) - 2:] != f"  {EXPORT_NOTE}".encode()]
    return hashlib.sha256(b"".join(kept)).hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    """relative POSIX path -> sha256 of every regular file below ``root``."""
    root = Path(root)
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def child_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: no inherited tracking/registry URI."""
    env = {k: v for k, v in os.environ.items() if k not in _URI_VARS}
    env.update(extra)
    return env


@contextlib.contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (tracking and registry) at ``uri``, then restore everything."""
    saved_env = {k: os.environ.get(k) for k in _URI_VARS}
    saved_tracking = _tracking_utils._tracking_uri
    saved_registry = _registry_utils._registry_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_tracking)
        _registry_utils._registry_uri = saved_registry
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def register_iris_model(tracking_uri: str, name: str) -> None:
    """Log a small fitted LogisticRegression and register it as ``name`` version 1."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    with global_tracking_uri(tracking_uri), mlflow.start_run():
        mlflow.sklearn.log_model(LogisticRegression(max_iter=200).fit(X, y), name="model",
                                 registered_model_name=name)


def load_and_predict(model_uri: str, tracking_uri: str, X: np.ndarray) -> np.ndarray:
    with global_tracking_uri(tracking_uri):
        model = mlflow.pyfunc.load_model(model_uri)
        return np.asarray(model.predict(X))


def download_model(model_uri: str, tracking_uri: str, dst: Path) -> Path:
    """Download a ``models:/`` URI's files from ``tracking_uri``.

    MLflow resolves ``models:/`` URIs through the *global* registry URI whatever
    ``tracking_uri=`` says, so the global URIs point at the server while it runs.
    """
    dst.mkdir(parents=True, exist_ok=True)
    with global_tracking_uri(tracking_uri):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=model_uri,
            dst_path=str(dst),
            tracking_uri=tracking_uri,
            registry_uri=tracking_uri,
        )
    return Path(local)


def registry_census(tracking_uri: str) -> dict[str, int]:
    """Counts of everything an import could create on a registry, deleted runs included."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiments = client.search_experiments(view_type=ViewType.ALL, max_results=50000)
    experiment_ids = [e.experiment_id for e in experiments]
    runs = client.search_runs(experiment_ids, run_view_type=ViewType.ALL, max_results=50000)
    logged_models = client.search_logged_models(experiment_ids, max_results=50000)
    return {
        "registered_models": len(client.search_registered_models(max_results=1000)),
        "model_versions": len(client.search_model_versions(max_results=10000)),
        "runs": len(runs),
        "logged_models": len(logged_models),
    }


def registered_model_exists(tracking_uri: str, name: str) -> bool:
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    escaped = name.replace("'", "\\'")
    return bool(client.search_registered_models(filter_string=f"name = '{escaped}'"))


def cli(*args: str, cwd: Path, timeout: float = 120, env: dict | None = None):
    """Run ``python -m mlflow_archive_plugin.cli ARGS`` and return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "mlflow_archive_plugin.cli", *args],
        cwd=str(cwd),
        env=env if env is not None else child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def assert_user_error(proc: subprocess.CompletedProcess) -> str:
    """A user error: non-zero exit, one ``error: `` line on stderr, no traceback."""
    detail = f"exit={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode != 0, detail
    assert "Traceback" not in proc.stderr, detail
    lines = stderr_lines(proc)
    assert len(lines) == 1, detail
    assert lines[0].startswith("error: "), detail
    assert len(lines[0]) > len("error: "), detail
    # The CLI's catch-all for bugs says "error: unexpected <Exception>"; a user's mistake
    # must be recognised as one (an ArchiveError), not fall through to it.
    assert not lines[0].startswith("error: unexpected "), detail
    return lines[0]


# --------------------------------------------------------------------------- servers


@dataclass
class MlflowServer:
    url: str
    root: Path
    process: subprocess.Popen
    log_path: Path

    def stderr_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no server log>"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        # The server's data lives in a temp folder that is thrown away: a short grace period
        # is enough (uvicorn otherwise waits on the tests' keep-alive connections).
        stop_process_group(self.process, grace=3)


def start_mlflow_server(root: Path, **env: str) -> MlflowServer:
    """Start ``mlflow server`` on a free loopback port and wait until /health answers 200;
    ``env`` adds variables to its environment."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = root / "server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'x.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--workers", "1",
    ]  # fmt: skip
    log = open(log_path, "wb")  # noqa: SIM115 - the server owns it for its whole life
    try:
        process = subprocess.Popen(
            command,
            cwd=str(root),
            env=child_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()
    server = MlflowServer(f"http://127.0.0.1:{port}", root, process, log_path)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"mlflow server exited with {process.returncode} before it was healthy:\n"
                + server.stderr_tail()
            )
        try:
            with opener.open(f"{server.url}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(
                f"mlflow server not healthy after {SERVER_START_TIMEOUT:.0f}s:\n"
                + server.stderr_tail()
            )
        time.sleep(0.25)


@pytest.fixture(scope="session")
def server_a(tmp_path_factory) -> Iterator[MlflowServer]:
    server = start_mlflow_server(tmp_path_factory.mktemp("server_a"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server_b(tmp_path_factory) -> Iterator[MlflowServer]:
    server = start_mlflow_server(tmp_path_factory.mktemp("server_b"))
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def _session_working_directory(tmp_path_factory) -> Iterator[None]:
    """Run the session in a scratch directory, so a stray default ``mlflow.db`` or ``mlruns``
    (MLflow's defaults are relative to the working directory) never lands in the checkout."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


@pytest.fixture(autouse=True)
def _restore_global_tracking_uri() -> Iterator[None]:
    """Whatever a test (or the code under test) does, the next test starts from the same URIs
    and the same active experiment (``mlflow.set_experiment`` is process-global too)."""
    from mlflow.tracking import fluent

    saved_env = {k: os.environ.get(k) for k in (*_URI_VARS, "MLFLOW_EXPERIMENT_ID",
                                                 "MLFLOW_EXPERIMENT_NAME")}
    saved_tracking = _tracking_utils._tracking_uri
    saved_registry = _registry_utils._registry_uri
    saved_experiment = fluent._active_experiment_id
    yield
    _tracking_utils._tracking_uri = saved_tracking
    _registry_utils._registry_uri = saved_registry
    fluent._active_experiment_id = saved_experiment
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# --------------------------------------------------------------------------- the rich model

METRIC_T0 = 1_600_000_000_000  # explicit, long-past timestamps (ms) so "now" cannot match


@dataclass
class RichModel:
    name: str
    version: str
    run_id: str
    model_id: str
    experiment_id: str
    X: np.ndarray
    predictions: np.ndarray
    url: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@pytest.fixture(scope="session")
def rich_model(server_a) -> RichModel:
    """A registered sklearn model on server_a with every kind of metadata set, as version 2."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    url = server_a.url
    name = unique("iris-rich")
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    X_all, y_all = load_iris(return_X_y=True)
    model = LogisticRegression(C=0.5, max_iter=300).fit(X_all, y_all)
    X = X_all[::30][:5]
    experiment_id = client.create_experiment(unique("rich-exp"))

    with global_tracking_uri(url):
        # Version 1: a plain model, so the exported version (2) is not the first one.
        with mlflow.start_run(experiment_id=experiment_id, run_name="plain-run"):
            mlflow.sklearn.log_model(
                LogisticRegression(max_iter=300).fit(X_all, y_all),
                name="model",
                pip_requirements=["scikit-learn"],
                registered_model_name=name,
            )

        with mlflow.start_run(experiment_id=experiment_id, run_name="rich-run") as run:
            run_id = run.info.run_id
            mlflow.log_params({"C": 0.5, "max_iter": 300, "solver": "lbfgs"})
            mlflow.set_tags({"team": "ml-platform", "purpose": "archive round trip"})
            history = [
                Metric("loss", 0.9, METRIC_T0 + 1_000, 0),
                Metric("loss", 0.5, METRIC_T0 + 2_500, 1),
                Metric("loss", 1 / 3, METRIC_T0 + 4_000, 2),
                Metric("loss", 0.125, METRIC_T0 + 9_999, 7),
                Metric("lr", 0.01, METRIC_T0 + 1_000, 0),
                Metric("lr", 0.001, METRIC_T0 + 5_000, 10),
            ]
            client.log_batch(run_id, metrics=history)
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                params={"regularization": "l2", "C": 0.5},
                model_type="classifier",
                input_example=X[:2],
                registered_model_name=name,
            )
            model_id = info.model_id
            client.set_logged_model_tags(model_id, {"stage": "candidate", "dataset": "iris"})
            client.log_metric(
                run_id,
                "val_accuracy",
                float(model.score(X_all, y_all)),
                timestamp=METRIC_T0 + 20_000,
                step=3,
                model_id=model_id,
            )

    version = "2"
    client.update_registered_model(name, description="Iris classifier \u2014 round trips \u2713")
    client.set_registered_model_tag(name, "domain", "botany")
    client.set_registered_model_tag(name, "owner", "alice")
    client.update_model_version(name, version, description="Version 2: C=0.5, l2")
    client.set_model_version_tag(name, version, "validated", "true")
    client.set_model_version_tag(name, version, "reviewer", "bob")
    client.set_registered_model_alias(name, "champion", version)
    client.set_registered_model_alias(name, "stable", version)
    client.set_registered_model_alias(name, "legacy", "1")

    mv = client.get_model_version(name, version)
    assert mv.run_id == run_id, "fixture sanity: version 2 must be the rich run's model"
    return RichModel(
        name=name,
        version=version,
        run_id=run_id,
        model_id=model_id,
        experiment_id=experiment_id,
        X=X,
        predictions=np.asarray(model.predict(X)),
        url=url,
    )


@pytest.fixture(scope="session")
def export_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exports")


def _export(rich_model: RichModel, dest: Path, container: str):
    from mlflow_archive_plugin import export_model

    return export_model(rich_model.uri, str(dest), container=container, tracking_uri=rich_model.url)


@pytest.fixture(scope="session")
def rich_zip(rich_model, export_root):
    """The rich model exported once as a zip archive (an ExportResult)."""
    return _export(rich_model, export_root / "rich.zip", "zip")


@pytest.fixture(scope="session")
def rich_folder(rich_model, export_root):
    """The rich model exported once as a folder archive (an ExportResult)."""
    return _export(rich_model, export_root / "rich-folder", "folder")
