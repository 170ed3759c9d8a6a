"""A TCP proxy on 127.0.0.1 between the driver and one etcd member, for failure tests.

It forwards both directions unchanged, except that what the server sends can be
rewritten (``rewrite``), paced (``rate`` bytes per second) and watched (``on_bytes`` is
called with the running total the server has sent).  Every socket and thread it makes
is closed and joined in :meth:`close`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable


class Proxy:
    def __init__(
        self,
        upstream_port: int,
        *,
        rewrite: Callable[[bytes], bytes] | None = None,
        rate: float | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.rewrite = rewrite
        self.rate = rate
        self.on_bytes = on_bytes
        self.sent = 0  # bytes the server sent through us
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="proxy-accept")
        self._accepter.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.settimeout(None)  # blocking; reads wait in select() so close() is noticed
            with self._lock:
                self._sockets += [client, server]
            for src, dst, down in ((client, server, False), (server, client, True)):
                t = threading.Thread(target=self._pump, args=(src, dst, down), name="proxy-pump")
                self._threads.append(t)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        started = time.monotonic()
        try:
            while not self._closing.is_set():
                if not select.select([src], [], [], 0.2)[0]:
                    continue
                data = src.recv(16384)
                if not data:
                    break
                if down:
                    if self.rewrite is not None:
                        data = self.rewrite(data)
                    with self._lock:
                        self.sent += len(data)
                        total = self.sent
                    if self.rate:  # pace: never ahead of rate * elapsed
                        ahead = total / self.rate - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                    if self.on_bytes is not None:
                        self.on_bytes(total)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closing.set()
        self._accepter.join(timeout=10)
        for t in self._threads:
            t.join(timeout=10)
        with self._lock:
            for s in self._sockets:
                s.close()
        self._listener.close()
