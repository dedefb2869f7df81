"""A real TorchServe on 127.0.0.1 for the compatibility tests (``tox -e torchserve``).

The env has the real ``torch-model-archiver`` and ``torchserve`` (plus the CPU ``torch`` its
Python worker imports) and needs Java 17 (``java`` on PATH, or ``JAVA_HOME``).

Every instance is private to its test: all of its ports (HTTP, gRPC, worker) are free
loopback ports, and its working directory, logs, ``java.io.tmpdir`` (worker sockets,
extracted ``.mar`` files) and TorchServe's pid file (``$TMPDIR/.model_server.pid``, global
by default) live in a directory of its own, so instances never clash with each other, with
another test run, or with a TorchServe started by hand. ``torchserve --start --foreground``
runs as a child in a new session; stopping SIGKILLs that process group (the ``torchserve``
wrapper, the Java frontend and the Python workers) and waits until it is empty.

``from conftest import ...`` in this folder resolves to THIS module: pytest imports every
``conftest.py`` outside a package as module ``conftest`` and drops the parent's from
``sys.modules`` before loading this one. So the names this module does not define are looked
up in ``tests/conftest.py`` (the module pytest loaded, not a second copy): ``from conftest
import unique, cli`` works here as it does in ``tests/``. The parent's fixtures (``server_a``,
``rich_model``, ...) reach these tests through pytest's conftest chain as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TORCHSERVE_START_TIMEOUT = 120.0
STOP_GRACE_SECONDS = 10.0
LOG_TAIL_LINES = 80

# --------------------------------------------------------------- the parent conftest's names

_PARENT_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"
_parent: Any = None


def pytest_configure(config: pytest.Config) -> None:
    """Find the ``tests/conftest.py`` module pytest loaded (pytest keeps it as a plugin)."""
    global _parent
    for plugin in config.pluginmanager.get_plugins():
        source = getattr(plugin, "__file__", None)
        if source and Path(source).resolve() == _PARENT_CONFTEST:
            _parent = plugin
            return


def __getattr__(name: str) -> Any:
    # Module-level __getattr__ (PEP 562): only reached for names this module does not define.
    # pytest's own conftest variables and hooks are never forwarded, or tests/conftest.py's
    # collect_ignore would be read a second time relative to this folder.
    if (
        _parent is not None
        and not name.startswith(("_", "pytest_", "collect_ignore"))
        and hasattr(_parent, name)
    ):
        return getattr(_parent, name)
    raise AttributeError(f"module {__name__!r} ({__file__}) has no attribute {name!r}")


# --------------------------------------------------------------------------- helpers

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class TorchServeStartError(RuntimeError):
    """TorchServe did not come up (the message carries the tail of its logs)."""


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all held open until all are chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


def _http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP errors are answers too, not exceptions."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def _decode(raw: bytes) -> Any:
    """Parsed JSON if the body is JSON, else the text."""
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


# Console lines that bury the useful ones: one per request (our own readiness polls
# included) and per metric.
_NOISE = (" ACCESS_LOG - ", " TS_METRICS - ", " MODEL_METRICS - ", "[METRICS]")


def _log_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return [f"<no {path}>"]
    return [line for line in text.splitlines() if not any(n in line for n in _NOISE)]


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is still in process group ``pgid``."""
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - TorchServe tests run on Linux
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def torchserve_executable() -> str:
    """The ``torchserve`` of the interpreter running the tests (its Python worker then runs
    with this same interpreter, which has torch)."""
    beside = Path(sys.executable).parent / "torchserve"
    found = str(beside) if beside.is_file() else shutil.which("torchserve")
    if found is None:
        pytest.fail(
            "torchserve is not installed in this environment: run these tests with "
            "`tox -e torchserve` (or `make test`)",
            pytrace=False,
        )
    return found


def java_executable() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not os.access(java, os.X_OK):
        pytest.fail(
            f"TorchServe needs Java 17: no java (JAVA_HOME={java_home!r}, PATH has none)",
            pytrace=False,
        )
    return java


# --------------------------------------------------------------------------- the server


@dataclass
class TorchServe:
    """One running TorchServe. ``stop()`` is idempotent."""

    root: Path
    model_store: Path
    models: dict[str, str]
    process: subprocess.Popen
    inference_url: str
    management_url: str
    metrics_url: str
    config_path: Path
    console_log: Path
    log_dir: Path
    tmp_dir: Path
    _own_tmp_dir: bool = field(default=False, repr=False)

    # ---- requests

    def predict(
        self,
        name: str,
        payload: Any,
        *,
        version: str | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, Any]:
        """POST ``payload`` (JSON-encoded; ``bytes`` are sent as they are) to
        ``/predictions/NAME[/VERSION]``: (HTTP status, parsed JSON or text)."""
        if isinstance(payload, bytes | bytearray):
            body, content_type = bytes(payload), "application/octet-stream"
        else:
            body, content_type = json.dumps(payload).encode(), "application/json"
        url = f"{self.inference_url}/predictions/{name}"
        if version is not None:
            url += f"/{version}"
        status, raw = _http("POST", url, body, {"Content-Type": content_type}, timeout)
        return status, _decode(raw)

    def management(self, method: str, path: str, *, timeout: float = 60.0) -> tuple[int, Any]:
        """A management API call, e.g. ``management("GET", "/models/NAME")``."""
        status, raw = _http(method, f"{self.management_url}{path}", timeout=timeout)
        return status, _decode(raw)

    def describe(self, name: str) -> tuple[int, Any]:
        return self.management("GET", f"/models/{name}")

    # ---- state

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The start of the worker log (a handler's first traceback is there, before the
        retries) and the end of TorchServe's console (frontend, workers, Java errors),
        without access and metrics lines. Full logs: ``console_log`` and ``log_dir``."""
        worker = _log_lines(self.log_dir / "model_log.log")
        console = _log_lines(self.console_log)
        return (
            f"--- {self.log_dir / 'model_log.log'} (first {lines // 2} lines)\n"
            + "\n".join(worker[: lines // 2])
            + f"\n--- {self.console_log} (last {lines} lines)\n"
            + "\n".join(console[-lines:])
        )

    def is_ready(self) -> tuple[bool, str]:
        """(ready, why not): /ping says Healthy and every model has a READY worker."""
        try:
            status, raw = _http("GET", f"{self.inference_url}/ping", timeout=5)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
            return False, f"/ping: {error}"
        ping = _decode(raw)
        if status != 200 or not isinstance(ping, dict) or ping.get("status") != "Healthy":
            return False, f"/ping answered {status}: {ping!r}"
        for name in self.models:
            try:
                status, described = self.describe(name)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
                return False, f"/models/{name}: {error}"
            if status != 200 or not isinstance(described, list) or not described:
                return False, f"/models/{name} answered {status}: {described!r}"
            for entry in described:
                workers = [w.get("status") for w in entry.get("workers", [])]
                if "READY" not in workers:
                    return False, (
                        f"model {name} version {entry.get('modelVersion')}: workers {workers}"
                    )
        return True, ""

    def stop(self, *, graceful: bool = False) -> None:
        """Kill the whole process group: the wrapper, Java and the Python workers.

        SIGKILL by default: nothing of a test server needs saving, its files are private,
        and a graceful stop (SIGTERM, Java's shutdown hooks) costs about 4 s."""
        pgid = self.process.pid  # start_new_session: the wrapper leads its own group
        if graceful:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            while _group_alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._own_tmp_dir:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
        if _group_alive(pgid):
            raise RuntimeError(f"TorchServe process group {pgid} survived SIGKILL")


def _config_text(ports: list[int], extra: Mapping[str, str]) -> str:
    inference, management, metrics, grpc_inference, grpc_management, worker = ports
    settings = {
        "inference_address": f"http://127.0.0.1:{inference}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        # gRPC is always on: 7070/7071 by default, which parallel instances would share.
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": str(grpc_management),
        # Names the workers' unix sockets ($java.io.tmpdir/.ts.sock.PORT); TCP without
        # native IO. Default 9000.
        "initial_worker_port": str(worker),
        "disable_token_authorization": "true",
        "default_workers_per_model": "1",
        # No periodic psutil collector process.
        "disable_system_metrics": "true",
        # Small heap (default: a quarter of RAM); no hsperfdata files in /tmp.
        "vmargs": "-Xmx1g -XX:-UsePerfData",
    }
    settings.update(extra)
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def _launch(
    root: Path, model_store: Path, models: Mapping[str, str], extra: Mapping[str, str]
) -> TorchServe:
    root.mkdir(parents=True, exist_ok=True)
    log_dir = root / "logs"
    log_dir.mkdir(exist_ok=True)
    tmp_dir, own_tmp = root / "tmp", False
    # A unix socket path has at most 107 bytes: fall back to a short private dir.
    if len(str(tmp_dir)) + len("/.ts.sock.65535") > 100:
        tmp_dir, own_tmp = Path(tempfile.mkdtemp(prefix="ts-", dir="/tmp")), True
    tmp_dir.mkdir(exist_ok=True)
    ports = _free_ports(6)
    config_path = root / "config.properties"
    config_path.write_text(_config_text(ports, extra))
    console_log = root / "torchserve.log"

    env = {k: v for k, v in os.environ.items() if k != "TS_CONFIG_FILE"}
    env.update(
        TMPDIR=str(tmp_dir),  # the wrapper's pid file, the worker's tempfile
        TEMP=str(tmp_dir),  # the wrapper turns it into -Djava.io.tmpdir
        LOG_LOCATION=str(log_dir),  # log4j2.xml: ${env:LOG_LOCATION:-logs}
        METRICS_LOCATION=str(log_dir),
    )
    command = [
        torchserve_executable(),
        "--start", "--foreground", "--ncs", "--disable-token-auth",
        "--model-store", str(model_store),
        "--ts-config", str(config_path),
    ]  # fmt: skip
    if models:
        command += ["--models", *(f"{name}={mar}" for name, mar in models.items())]
    log = open(console_log, "wb")  # noqa: SIM115 - the server owns it for its whole life
    try:
        process = subprocess.Popen(
            command,
            cwd=str(root),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        log.close()
    return TorchServe(
        root=root,
        model_store=model_store,
        models=dict(models),
        process=process,
        inference_url=f"http://127.0.0.1:{ports[0]}",
        management_url=f"http://127.0.0.1:{ports[1]}",
        metrics_url=f"http://127.0.0.1:{ports[2]}",
        config_path=config_path,
        console_log=console_log,
        log_dir=log_dir,
        tmp_dir=tmp_dir,
        _own_tmp_dir=own_tmp,
    )


def start_torchserve(
    root: Path,
    model_store: Path,
    models: Mapping[str, str],
    *,
    config: Mapping[str, str] | None = None,
    timeout: float = TORCHSERVE_START_TIMEOUT,
) -> TorchServe:
    """Start TorchServe serving ``models`` ({name: .mar file name in ``model_store``}) and
    wait until it is Healthy and every model has a READY worker. ``config`` adds or overrides
    config.properties keys. ``root`` (created) holds its config, logs and temp files.
    Raises TorchServeStartError, with the tail of its logs, if it does not come up."""
    model_store = Path(model_store).resolve()
    if not model_store.is_dir():
        raise TorchServeStartError(f"model store {model_store} is not a directory")
    for name, mar in models.items():
        if not (model_store / mar).exists():
            raise TorchServeStartError(f"model {name}: {model_store / mar} does not exist")
    java_executable()
    root = Path(root)
    for attempt in range(3):
        server = _launch(root / f"attempt{attempt}", model_store, models, config or {})
        deadline = time.monotonic() + timeout
        why = "not started"
        while True:
            if server.process.poll() is not None:
                server.stop()
                console = server.console_log.read_text(errors="replace")
                if "Address already in use" in console and attempt < 2:
                    break  # lost a race for a free port: again, with new ports
                raise TorchServeStartError(
                    f"torchserve exited with {server.process.returncode} before it was "
                    f"ready ({why}):\n{server.log_tail()}"
                )
            ready, why = server.is_ready()
            if ready:
                return server
            if time.monotonic() > deadline:
                server.stop()
                raise TorchServeStartError(
                    f"TorchServe not ready after {timeout:.0f}s ({why}):\n{server.log_tail()}"
                )
            time.sleep(0.25)
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def running_torchserve(
    root: Path, model_store: Path, models: Mapping[str, str], **kwargs: Any
) -> Iterator[TorchServe]:
    """``start_torchserve`` as a context manager, for fixtures of a wider scope."""
    server = start_torchserve(root, model_store, models, **kwargs)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def torchserve_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., TorchServe]]:
    """Factory: ``torchserve_server(model_store, {name: mar_file}, config=None,
    timeout=120)`` starts a private TorchServe and returns it once every model is READY.
    Every server started through it is stopped (process group killed) after the test."""
    started: list[TorchServe] = []

    def start(model_store: Path, models: Mapping[str, str], **kwargs: Any) -> TorchServe:
        server = start_torchserve(
            tmp_path_factory.mktemp("torchserve"), model_store, models, **kwargs
        )
        started.append(server)
        return server

    yield start
    errors = []
    for server in started:
        try:
            server.stop()
        except Exception as error:  # stop them all, then report
            errors.append(f"{server.root}: {error}")
    if errors:
        pytest.fail("TorchServe teardown: " + "; ".join(errors), pytrace=False)
