"""Overlap the network with the artifact stream's compression and hashing (the backup
side is the core's ``WriteBehind``; this is the restore side).

Reading a result and compressing it in one thread leaves each waiting for the other.
zstd, hashlib and socket reads release the GIL, so a second thread with a small bounded
queue between the two lets them run at once; memory stays at ``depth`` chunks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable

_DONE = object()


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
