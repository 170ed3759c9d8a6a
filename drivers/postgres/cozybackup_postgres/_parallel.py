"""Several databases at a time: the first failure cancels the others.

A cancelled call stops at its next read or write of an artifact stream (the wrappers
below raise :class:`Cancelled` there), which ends the tool feeding or fed by it.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, TypeVar


class Cancelled(Exception):
    """Another database failed: stop this one too."""


class CountingWriter(io.RawIOBase):
    """Writes through to ``target``, counting the bytes, until ``cancel`` is set."""

    def __init__(self, target: IO[bytes], cancel: threading.Event) -> None:
        self.target = target
        self.cancel = cancel
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if self.cancel.is_set():
            raise Cancelled
        n = self.target.write(b)
        self.count += len(b)
        return n if n is not None else len(b)


class CancellableReader(io.RawIOBase):
    """Reads from ``source`` until ``cancel`` is set."""

    def __init__(self, source: IO[bytes], cancel: threading.Event) -> None:
        self.source = source
        self.cancel = cancel

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.cancel.is_set():
            raise Cancelled
        return self.source.read(size)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


T = TypeVar("T")
R = TypeVar("R")


def run_parallel(items: Sequence[T], jobs: int, fn: Callable[[T, threading.Event], R]) -> list[R]:
    """``fn`` over ``items``, ``jobs`` at a time; the first failure cancels the rest.

    Raises the first real failure (not a cancellation) after every started call ended.
    """
    cancel = threading.Event()
    failures: list[BaseException] = []
    lock = threading.Lock()

    def call(item: T) -> R | None:
        if cancel.is_set():
            return None
        try:
            return fn(item, cancel)
        except Cancelled:
            return None
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller
            with lock:
                failures.append(exc)
            cancel.set()
            return None

    if jobs <= 1 or len(items) <= 1:
        results = [call(i) for i in items]
    else:
        with ThreadPoolExecutor(min(jobs, len(items)), thread_name_prefix="cozy-pg") as pool:
            results = list(pool.map(call, items))
    if failures:
        raise failures[0]
    return [r for r in results if r is not None]
