"""Progress of long work: kept in job status (throttled) and shown by the CLI."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import attrs


@attrs.frozen(kw_only=True)
class ProgressUpdate:
    kind: str
    namespace: str
    name: str
    stage: str
    bytes_done: int
    bytes_total: int | None
    elapsed: float


class Progress:
    """Implements :class:`ProgressReporter` for one job."""

    def __init__(
        self,
        kind: str,
        namespace: str,
        name: str,
        publish: Callable[[ProgressUpdate], None],
        interval: float = 2.0,
    ) -> None:
        self._ident = (kind, namespace, name)
        self._publish = publish
        self._interval = interval
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._last = 0.0
        self.stage_name = "starting"
        self.bytes_done = 0
        self.bytes_total: int | None = None

    def stage(self, name: str, *, bytes_total: int | None = None) -> None:
        with self._lock:
            self.stage_name = name[:200]
            if bytes_total is not None:  # a new measured phase counts from zero
                self.bytes_done = 0
                self.bytes_total = bytes_total
        self._emit(force=True)

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_done += nbytes
        self._emit()

    def _emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        kind, ns, name = self._ident
        self._publish(
            ProgressUpdate(
                kind=kind,
                namespace=ns,
                name=name,
                stage=self.stage_name,
                bytes_done=self.bytes_done,
                bytes_total=self.bytes_total,
                elapsed=now - self._start,
            )
        )
