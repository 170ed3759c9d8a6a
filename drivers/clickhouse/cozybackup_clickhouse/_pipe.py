"""Overlap the network with the artifact stream's compression and hashing.

Reading a result and compressing it in one thread leaves each waiting for the other.
zstd, hashlib and socket reads release the GIL, so a second thread with a small bounded
queue between the two lets them run at once; memory stays at ``depth`` chunks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from types import TracebackType
from typing import IO

_DONE = object()


class WriteBehind:
    """``write()`` hands chunks to a thread that writes them into ``sink``."""

    def __init__(self, sink: IO[bytes], depth: int = 4) -> None:
        self._sink = sink
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._drain, name="cozy-clickhouse-writer")

    def __enter__(self) -> WriteBehind:
        self._thread.start()
        return self

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def _drain(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is None and not self._abandoned:
                try:
                    self._sink.write(chunk)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the producer
                    self._error = exc

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # On failure the stream is discarded anyway: do not finish writing the queue.
        self._abandoned = exc_type is not None
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc_type is None:
            raise self._error


def read_ahead(chunks: Iterable[bytes], depth: int = 4) -> Generator[bytes, None, None]:
    """Iterate ``chunks`` on another thread, ``depth`` chunks ahead of the consumer.

    An exception of the source is raised to the consumer at the point it occurred; a
    consumer that stops early (``close()``) stops the reader too.
    """
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def run() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        q.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            item: object = _DONE
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            item = exc
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    thread = threading.Thread(target=run, name="cozy-clickhouse-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        stop.set()
        thread.join()
