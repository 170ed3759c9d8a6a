"""The loop ``run`` and ``controller`` share: signals, progress lines, the metrics server
and the passes, with what each pass did printed as it happens."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._api.errors import ValidationError
from .._api.units import human_bytes
from .._engine.engine import Engine
from .._engine.progress import ProgressUpdate
from .._engine.runner import PassReport, Runner

if TYPE_CHECKING:
    from .._engine.metrics import Metrics


class ProgressPrinter:
    """Progress lines on stderr, in human units (``-q``: none)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()

    def __call__(self, u: ProgressUpdate) -> None:
        if self.quiet:
            return
        total = f" of {human_bytes(u.bytes_total)}" if u.bytes_total else ""
        rate = (
            f" ({human_bytes(int(u.bytes_done / u.elapsed))}/s)"
            if u.elapsed > 0 and u.bytes_done
            else ""
        )
        line = (
            f"{u.kind} {u.namespace}/{u.name}: {u.stage} {human_bytes(u.bytes_done)}{total}{rate}"
        )
        print(line, file=sys.stderr, flush=True)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM/SIGINT: running jobs finish, then the loop ends."""
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        print(
            f"cozybackup: signal {signum}: finishing the current jobs, then stopping",
            file=sys.stderr,
        )
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return stop


@contextlib.contextmanager
def metrics_served(
    address: tuple[str, int] | None,
    engine: Engine,
    ready: Callable[[], bool],
    *,
    active: Callable[[], bool] = lambda: True,
    stale_after: float | None = None,
) -> Iterator[Metrics | None]:
    """The metrics server of ``--metrics-address`` while the block runs (None: not asked)."""
    if address is None:
        yield None
        return
    # Imported when asked for: prometheus_client is a tenth of every command's start-up.
    from .._engine.metrics import Metrics, MetricsServer

    metrics = Metrics(engine, active=active)
    try:
        server = MetricsServer(metrics, address, ready, stale_after).start()
    except OSError as exc:
        raise ValidationError(
            [("--metrics-address", f"cannot listen on {address[0]}:{address[1]}: {exc.strerror}")]
        ) from None
    host, port = server.address
    print(f"serving metrics on http://{host}:{port}/metrics", file=sys.stderr)
    try:
        yield metrics
    finally:
        server.stop()


def serve(
    engine: Engine,
    *,
    interval: float,
    once: bool,
    with_namespace: bool,
    stop: threading.Event | None = None,
    wake: threading.Event | None = None,
    metrics: Metrics | None = None,
    recovered: threading.Event | None = None,
    streams_dir: Path | None = None,
) -> int:
    """The loop of ``run`` and ``controller``: recover once, then passes until stopped;
    what each pass finished, on stdout.  ``streams_dir``: where streamers keep their
    directories (None: no streamer runs, as on the Kubernetes host for now)."""
    stop = stop or stop_on_signals()
    for b in engine.plugins.broken:
        print(f"warning: driver plugin {b.name} is broken: {b.error}", file=sys.stderr)
    runner = Runner(engine, streams_dir=streams_dir)
    for note in runner.recover():
        print(f"recovered: {note}", file=sys.stderr)
    if metrics is not None:
        metrics.heartbeat()
    if recovered is not None:
        recovered.set()

    def report(r: PassReport) -> None:
        if metrics is not None:
            metrics.observe(r)
        for job in r.finished:
            where = f" ({job.metadata.namespace})" if with_namespace else ""
            print(
                f"{job.kind.lower()}/{job.metadata.name}{where} {job.status.phase}: {job.status.message}"
            )
        for checked in r.drills:
            v = checked.status.last_verified
            if v is not None:
                print(
                    f"drill backup/{checked.metadata.name} ({checked.metadata.namespace}): {v.result}: {v.message}"
                )
        for action in r.pruned:
            print(f"pruned backup/{action.backup} ({action.namespace}): {action.reason}")
        for note in r.swept:
            print(f"swept: {note}")
        if r.error:
            print(f"error: the pass stopped early, retrying next pass: {r.error}", file=sys.stderr)

    reports = runner.serve(stop, interval, once=once, on_pass=report, wake=wake)
    return 1 if any(r.failed or r.error for r in reports) else 0
