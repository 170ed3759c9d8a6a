"""A small HTTP proxy on 127.0.0.1 that injects storage faults in front of a real S3 server.

Each request is shown to ``proxy.fault`` (a callable) before it is forwarded; it may answer
with an error status (5xx, throttling), reset the connection, delay the request, or let it
through.  The Host header is forwarded unchanged, so AWS signatures (which cover it) still
verify upstream.  Every request is logged for assertions.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Request:
    n: int  # 1-based, in arrival order
    method: str
    path: str
    query: dict[str, str]

    @property
    def is_part_upload(self) -> bool:
        return self.method == "PUT" and "partNumber" in self.query


@dataclass(frozen=True)
class Status:
    """Answer with this status instead of forwarding (e.g. 503 SlowDown)."""

    code: int
    s3_code: str = "ServiceUnavailable"


@dataclass(frozen=True)
class Reset:
    """Drop the connection with a TCP RST, before any response byte."""


@dataclass(frozen=True)
class Delay:
    """Wait, then forward."""

    seconds: float


Fault = Status | Reset | Delay | None


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    fault: Callable[[Request], Fault] = lambda r: None
    log: list[tuple[Request, str]] = field(default_factory=list)
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _count: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def next_request(self, method: str, target: str) -> Request:
        url = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        with self._lock:
            self._count += 1
            return Request(self._count, method, url.path, query)

    def record(self, req: Request, outcome: str) -> None:
        with self._lock:
            self.log.append((req, outcome))

    def requests(self, outcome: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r, o in self.log if outcome is None or o == outcome]


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _handle(self) -> None:
            req = proxy.next_request(self.command, self.path)
            body = self._body()
            action = proxy.fault(req)
            if isinstance(action, Reset):
                proxy.record(req, "reset")
                # SO_LINGER 0: close() sends RST, as a crashed load balancer would.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                self.connection.close()
                return
            if isinstance(action, Status):
                proxy.record(req, f"status {action.code}")
                payload = (
                    f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{action.s3_code}</Code>'
                    f"<Message>injected</Message></Error>"
                ).encode()
                self.send_response(action.code)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                return
            if isinstance(action, Delay):
                time.sleep(action.seconds)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            proxy.record(req, "delayed" if isinstance(action, Delay) else "forwarded")
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            # A HEAD answer has no body but tells the object's length: pass that on.
            length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else len(data)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler


@contextmanager
def fault_proxy(upstream_endpoint: str) -> Iterator[FaultProxy]:
    url = urllib.parse.urlsplit(upstream_endpoint)
    assert url.hostname == "127.0.0.1" and url.port
    proxy = FaultProxy(upstream=(url.hostname, url.port))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    server.daemon_threads = True
    proxy.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="fault-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
