"""A writer thread between the snapshot stream and the artifact.

The artifact stream compresses and hashes what it is given.  Done in the thread that
iterates the gRPC stream, receiving waits for compression; with a writer thread (zstd
and hashlib release the GIL) both overlap.  At most ``depth`` chunks wait in between.
"""

from __future__ import annotations

import queue
import threading
from typing import IO


class ThreadedWriter:
    """``write()`` hands chunks to a thread that writes them to ``sink``; use as a
    context manager.  A failure of the sink is raised by the next ``write`` or on exit."""

    def __init__(self, sink: IO[bytes], depth: int = 64) -> None:
        self._sink = sink
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._drain, name="cozy-etcd-writer")

    def __enter__(self) -> ThreadedWriter:
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
                except BaseException as exc:  # noqa: BLE001 - re-raised by the producer
                    self._error = exc

    def __exit__(self, *exc_info: object) -> None:
        # On failure the stream is discarded anyway: do not finish writing the queue.
        self._abandoned = exc_info[0] is not None
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc_info[0] is None:
            raise self._error
