"""What the benchmarks share: synthetic weights, the practical floor, measured child processes
and real ``mlflow server`` processes on 127.0.0.1.

Standard library only, so a child running under another environment's Python (the
``torchserve`` tox environment's, for torch-model-archiver) can import it too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1024 * 1024
SERVER_START_TIMEOUT = 120.0
# No traffic beyond loopback, no telemetry, no progress bars in anything a benchmark starts.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_ARCHIVE_NO_PROGRESS": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def write_random(path: Path, size_mib: int) -> Path:
    """``size_mib`` MiB of incompressible bytes, written a MiB at a time (never held whole)."""
    with path.open("wb") as handle:
        for _ in range(size_mib):
            handle.write(os.urandom(CHUNK))
    return path


def zip_floor(model: Path, out: Path) -> None:
    """What a careful hand-written exporter costs: zipfile STORED plus SHA-256 of each file."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in sorted(p for p in model.rglob("*") if p.is_file()):
            digest = hashlib.sha256()
            name = f"model/{path.relative_to(model).as_posix()}"
            with path.open("rb") as source, archive.open(name, "w", force_zip64=True) as sink:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    sink.write(chunk)


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment without a tracking URI, quiet, and loopback never proxied."""
    env = {key: value for key, value in os.environ.items() if key not in _URI_VARS}
    for var in ("NO_PROXY", "no_proxy"):
        hosts = [host for host in env.get(var, "").split(",") if host]
        env[var] = ",".join([*hosts, "127.0.0.1", "localhost"])
    return {**env, **QUIET_ENV, **extra}


def report(path: str, seconds: float | None, start_kib: int | None = None, **extra) -> None:
    """Child side: write the timed section's seconds and the RSS it started from as JSON."""
    Path(path).write_text(json.dumps({"seconds": seconds, "start_kib": start_kib, **extra}))


def peak_kib() -> int:
    """This process's peak RSS so far, in KiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class ChildFailed(RuntimeError):
    """A measured command exited non-zero; the message holds the end of its output."""


def run_measured(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> dict:
    """Run ``argv`` to completion; its wall time, peak RSS and whatever it reported.

    Peak RSS comes from ``wait4``: the largest of the child and every descendant it waited
    for, in KiB. A child may report the seconds of its timed section (after its imports) and
    the RSS it had then, by writing JSON to the file named in ``BENCH_REPORT``; a command
    that does not (tar, a shell) is timed by its wall clock.
    """
    with tempfile.TemporaryDirectory(prefix="bench-child-") as scratch:
        out, err, report_file = (Path(scratch, name) for name in ("out", "err", "report"))
        with out.open("wb") as stdout, err.open("wb") as stderr:
            started = time.perf_counter()
            proc = subprocess.Popen(argv, env={**env, "BENCH_REPORT": str(report_file)},
                                    cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout,
                                    stderr=stderr)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            tail = (out.read_text(errors="replace")[-1500:] + err.read_text(errors="replace")
                    [-3000:])
            raise ChildFailed(f"{' '.join(argv[:6])} ... exited {proc.returncode}:\n{tail}")
        reported = json.loads(report_file.read_text()) if report_file.exists() else {}
        return {**reported, "seconds": reported.get("seconds") or wall, "wall": wall,
                "peak_kib": usage.ru_maxrss, "stdout": out.read_text(errors="replace")}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (closed again before returning)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class MlflowServer:
    """A running ``mlflow server``: SQLite backend, artifacts served from ``root/artifacts``."""

    url: str
    root: Path
    process: subprocess.Popen

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.root / "server.log").read_text(errors="replace")
                             .splitlines()[-lines:])
        return "<no server log>"

    def stop(self) -> None:
        """Stop the server's process group (it was started in a session of its own)."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)


def start_mlflow_server(python: str, root: Path, workers: int = 1,
                        served: bool = True) -> MlflowServer:
    """Start ``mlflow server`` on a free loopback port, as the tests do; wait for /health.

    With ``served`` (the default) clients reach artifacts through the server's proxy;
    without, the artifact root is a local folder clients read and write themselves."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        python, "-m", "mlflow", "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        *(["--artifacts-destination", str(root / "artifacts")] if served else
          ["--default-artifact-root", str(root / "artifacts"), "--no-serve-artifacts"]),
        "--workers", str(workers),
    ]  # fmt: skip
    with (root / "server.log").open("wb") as log:
        # MLflow's job runner (huey consumers, several processes importing MLflow for seconds
        # after the server answers) has nothing to do with models, and would only eat CPU
        # while the measurements run.
        env = child_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", root, process)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}:\n"
                               + server.log_tail())
        with (contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, OSError),
              opener.open(f"{server.url}/health", timeout=2) as response):
            if response.status == 200:
                return server
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"mlflow server not healthy after {SERVER_START_TIMEOUT:.0f}s:\n"
                               + server.log_tail())
        time.sleep(0.25)
