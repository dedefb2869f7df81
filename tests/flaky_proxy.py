"""A loopback HTTP reverse proxy that fails a fraction of requests on purpose.

Every request goes to the target over a fresh connection and every response closes its
connection, so each request is counted and failed or passed on its own, whatever the client
does with keep-alive. ``fail_every=3`` fails requests 1, 4, 7 ... (a retry of a failed one
always passes); ``fail_every=1`` fails them all. A failed request is answered ``503`` or, in
``mode="reset"``, its connection is reset before any response. Only ever connects to
127.0.0.1.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
               "trailer", "upgrade"}


class FlakyProxy:
    def __init__(self, target_port: int, fail_every: int, mode: str = "503") -> None:
        self.target_port = target_port
        self.fail_every = fail_every
        self.mode = mode
        self.requests = 0
        self.failed = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                body = self._body()
                with proxy._lock:
                    proxy.requests += 1
                    fail = (proxy.requests - 1) % proxy.fail_every == 0
                    if fail:
                        proxy.failed += 1
                if fail:
                    self._fail()
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.target_port,
                                                      timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"}
                    if body is not None:
                        headers["Content-Length"] = str(len(body))
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()
                self.close_connection = True

            def _body(self) -> bytes | None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = self.headers.get("Content-Length")
                return self.rfile.read(int(length)) if length else None

            def _fail(self) -> None:
                self.close_connection = True
                if proxy.mode == "reset":
                    with contextlib.suppress(OSError):
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   struct.pack("ii", 1, 0))
                        self.connection.close()
                    return
                self.send_response(503, "Service Unavailable")
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def flaky_proxy(target_port: int, fail_every: int, mode: str = "503") -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(target_port, fail_every, mode)
    try:
        yield proxy
    finally:
        proxy.stop()
