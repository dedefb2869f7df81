"""Real servers on 127.0.0.1 for remote-location tests: S3 (moto), HTTP, FTP, and a proxy
that cuts connections.

Nothing here mocks a client library: s3fs, fsspec's HTTP and FTP file systems talk to real
servers over loopback sockets. The S3 server is moto in server mode, in its own process, with
IAM authentication switched on once a user, its access key and a bucket exist, so wrong
credentials are refused as AWS would refuse them. The environment these helpers give clients
points every AWS SDK at that server and away from anything beyond loopback (no instance
metadata lookups, no shared config or credentials files).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT = 30.0
REGION = "us-east-1"

# What every AWS SDK in the test process and its children must see: no instance metadata
# service (169.254.169.254 is off loopback), no user's ~/.aws files, loopback never proxied.
ISOLATED_AWS_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
}
# Anything that would send an SDK elsewhere or give it other credentials.
SCRUBBED_AWS_VARS = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "FSSPEC_S3", "FSSPEC_S3_ENDPOINT_URL",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def stop_process_group(process: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the process group a server was started in (``start_new_session``), then
    SIGKILL it if it has not ended within ``grace`` seconds."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


def _wait_until(ready, process: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process_group(process)
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{what} did not start:\n{tail}")
        time.sleep(0.1)


def _spawn(command: list[str], log: Path, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as sink:
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                env=env, cwd=str(cwd) if cwd else None, start_new_session=True)


# --------------------------------------------------------------------------- S3 (moto)


@dataclass
class MotoS3:
    """A moto server process: its endpoint, one bucket and the only credentials it accepts."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    log: Path

    def env(self, **overrides: str) -> dict[str, str]:
        """Variables that give an AWS SDK these credentials and nothing beyond loopback."""
        return {**ISOLATED_AWS_ENV, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, **overrides}

    def storage_options(self, **extra) -> dict:
        """fsspec storage options for this server (credentials come from the environment)."""
        return {"endpoint_url": self.endpoint, **extra}

    def client(self):
        """A boto3 S3 client with the accepted credentials, for checking what is stored."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key)

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in the bucket."""
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def pending_uploads(self, prefix: str = "") -> list[str]:
        """Keys of multipart uploads begun and neither completed nor aborted."""
        answer = self.client().list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return sorted(upload["Key"] for upload in answer.get("Uploads", []))

    def stop(self) -> None:
        stop_process_group(self.process)


def start_moto_s3(root: Path, bucket: str = "archives") -> MotoS3:
    """Start ``moto.server`` on a free loopback port; make a bucket and one IAM user allowed
    every S3 action, then switch authentication on so that any other key is refused."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = root / "moto.log"
    bootstrap = {"AWS_ACCESS_KEY_ID": "bootstrap", "AWS_SECRET_ACCESS_KEY": "bootstrap"}
    server_env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_AWS_VARS}
    server_env.update({**ISOLATED_AWS_ENV, **bootstrap, "MOTO_PORT": str(port)})
    process = _spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                     log, env=server_env)
    opener = _no_proxy_opener()

    def ready() -> bool:
        try:
            with opener.open(f"{endpoint}/moto-api/data.json", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    _wait_until(ready, process, "moto server", log)
    try:
        import boto3

        session = boto3.session.Session(aws_access_key_id="bootstrap",
                                        aws_secret_access_key="bootstrap", region_name=REGION)
        iam = session.client("iam", endpoint_url=endpoint)
        iam.create_user(UserName="archiver")
        key = iam.create_access_key(UserName="archiver")["AccessKey"]
        iam.put_user_policy(UserName="archiver", PolicyName="s3-all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }))
        session.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        # From now on every request must be signed by a known key and be allowed by IAM.
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
            headers={"Content-Type": "application/octet-stream"})
        with opener.open(request, timeout=10) as response:
            assert response.status == 200, response.read()
    except BaseException:
        stop_process_group(process)
        raise
    return MotoS3(endpoint, bucket, key["AccessKeyId"], key["SecretAccessKey"], process, log)


# --------------------------------------------------------------------------- HTTP and FTP

@contextlib.contextmanager
def moto_s3_in_environment(root: Path,
                           endpoint_variables: tuple[str, ...] = ()) -> Iterator[MotoS3]:
    """A moto S3 server whose credentials (and its endpoint in each of ``endpoint_variables``,
    such as MLflow's MLFLOW_S3_ENDPOINT_URL) this process's environment, and
    so its children's, holds while it runs; s3fs's cached file systems are dropped on the way
    in and out, so none keeps another server's credentials. s3fs and moto come with the
    [test] extra: a missing one is an install error, not a skip."""
    import pytest
    import s3fs

    server = start_moto_s3(root)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name in SCRUBBED_AWS_VARS:
                patch.delenv(name, raising=False)
            endpoints = dict.fromkeys(endpoint_variables, server.endpoint)
            for name, value in server.env(**endpoints).items():
                patch.setenv(name, value)
            s3fs.S3FileSystem.clear_instance_cache()
            try:
                yield server
            finally:
                s3fs.S3FileSystem.clear_instance_cache()
    finally:
        server.stop()



@dataclass
class FolderServer:
    """A server process publishing a local folder."""

    url: str
    root: Path
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        stop_process_group(self.process)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_http_server(root: Path, log: Path) -> FolderServer:
    """``python -m http.server`` on loopback serving ``root`` (no range requests)."""
    port = free_port()
    process = _spawn([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                      "--directory", str(root), str(port)], log)
    _wait_until(lambda: _port_open(port), process, "http.server", log)
    return FolderServer(f"http://127.0.0.1:{port}", root, process, log)


_FTP_SERVER = """
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer

port, root, user, password = sys.argv[1:]
authorizer = DummyAuthorizer()
authorizer.add_user(user, password, root, perm="elradfmwMT")
FTPHandler.authorizer = authorizer
FTPHandler.auth_failed_timeout = 0.1  # the default 3 s pause after a wrong password
FTPHandler.permit_foreign_addresses = False
FTPServer(("127.0.0.1", int(port)), FTPHandler).serve_forever()
"""


def start_ftp_server(root: Path, log: Path, user: str, password: str) -> FolderServer:
    """pyftpdlib on loopback with one writable user whose home is ``root``."""
    port = free_port()
    process = _spawn([sys.executable, "-c", _FTP_SERVER, str(port), str(root), user, password],
                     log)
    _wait_until(lambda: _port_open(port), process, "pyftpdlib", log)
    return FolderServer(f"ftp://127.0.0.1:{port}", root, process, log)


# --------------------------------------------------------------------------- cutting proxy


@dataclass
class CuttingProxy:
    """A loopback TCP proxy to ``target_port`` that cuts any connection as soon as it has
    carried ``limit`` bytes towards the server: a network failure in the middle of an upload.

    Small requests (listings, HEAD) pass through untouched; ``cuts`` counts the connections
    cut. Bounded: it only ever connects to 127.0.0.1 and stops with :meth:`stop`.
    """

    target_port: int
    limit: int
    cuts: int = 0
    forwarded: int = 0
    _listener: socket.socket = field(init=False, repr=False)
    _sockets: list[socket.socket] = field(default_factory=list, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stopped: threading.Event = field(default_factory=threading.Event, repr=False)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._spawn(self._accept_loop)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream, True)
            self._spawn(self._pump, upstream, client, False)

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        sent = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if upstream and sent + len(data) > self.limit:
                    sink.sendall(data[: self.limit - sent])
                    with self._lock:
                        self.cuts += 1
                    break
                sink.sendall(data)
                sent += len(data)
                if upstream:
                    with self._lock:
                        self.forwarded += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


@contextlib.contextmanager
def cutting_proxy(target_port: int, limit: int) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(target_port, limit)
    try:
        yield proxy
    finally:
        proxy.stop()
