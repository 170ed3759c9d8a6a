"""The run loop every host program shares: ``cozybackup run``, ``cozybackup controller``
and any custom controller that embeds the engine.

A pass, in order: fire due Plans, run pending jobs, then (unless stopping) due restore
drills and retention.  Recovery runs once, before the first pass.  Signal handling, locks
and where the reports go stay with the program that embeds the runner (as kopf's
embedding guide has it): it sets ``stop`` and reads the :class:`PassReport`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import attrs

from .._api.errors import CozyError
from .._api.types import Backup, BackupJob, Plan
from .engine import Engine
from .plans import fire_due_plans, next_slot
from .prune import PruneAction
from .services import Job
from .streaming import ArchiveLag, StreamHost

log = logging.getLogger("cozybackup.runner")
_T = TypeVar("_T")


@attrs.frozen(kw_only=True)
class PassReport:
    """What one pass did."""

    fired: tuple[BackupJob, ...] = ()
    finished: tuple[Job, ...] = ()
    drills: tuple[Backup, ...] = ()
    #: Plans whose objectives' verdict (or what it rests on) changed.
    objectives: tuple[Plan, ...] = ()
    pruned: tuple[PruneAction, ...] = ()
    #: Finished jobs deleted after their time to live (``namespace/name``).
    expired: tuple[str, ...] = ()
    #: Orphaned artifacts swept (committed data no Backup points at), one note each.
    swept: tuple[str, ...] = ()
    #: Streamers started, stopped or failed (continuous archiving), one note each.
    streams: tuple[str, ...] = ()
    #: Each running streamer's lag, as it said this pass.
    archive_lags: tuple[ArchiveLag, ...] = ()
    #: Set when the pass stopped early on a platform error (the API server went away...):
    #: the admin-facing text; the next pass tries again.
    error: str | None = None

    @property
    def failed(self) -> int:
        return sum(j.status.phase == "Failed" for j in self.finished)


class Runner:
    """Runs passes of an :class:`Engine` until told to stop."""

    def __init__(
        self,
        engine: Engine,
        *,
        drills: bool = True,
        retention: bool = True,
        streams_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        self.drills = drills
        self.retention = retention
        self._recovered = False
        #: Streamers (continuous archiving) run only where a directory for them is given.
        self.streams = StreamHost(engine, streams_dir) if streams_dir is not None else None

    def recover(self) -> list[str]:
        """Settle what a crashed run left behind (once; later calls return ``[]``).  Call
        it with no other runner active: the embedding program holds whatever lock that needs."""
        if self._recovered:
            return []
        self._recovered = True
        errors: list[str] = []
        notes = self._stage("recovery", errors, self.engine.recover, [])
        return notes + [f"recovery stopped early: {e}" for e in errors]

    def run_pass(self, stop: threading.Event | None = None) -> PassReport:
        """One pass.  Every stage runs, and every object within a stage is isolated: a
        Plan, job, drill or retention group that fails is recorded on itself (or logged)
        and the others go on.  A platform error outside any object (the API server went
        away...) ends only its stage and is reported in ``error``; the next pass tries
        again.  Nothing raises out of a pass."""
        fired: list[BackupJob] = []
        finished: list[Job] = []
        drills: list[Backup] = []
        judged: list[Plan] = []
        pruned: list[PruneAction] = []
        expired: list[str] = []
        swept: list[str] = []
        errors: list[str] = []
        # Secrets are read fresh every pass: a rotated key or credential takes effect on
        # the next job, not on the next restart.
        self.engine.invalidate_stores()
        fired = self._stage("plans", errors, lambda: fire_due_plans(self.engine.host), [])
        finished = self._stage("workers", errors, self.engine.reconcile_workers, [])
        streams = self._stage("streams", errors, self._reconcile_streams, [])
        finished += self._stage("jobs", errors, lambda: self.engine.run_once(stop), [])
        if stop is None or not stop.is_set():
            # The controller's own work: a location that failed to open is left alone
            # until its backoff has passed (``stores.py``); jobs above always try.
            with self.engine.background():
                if self.drills:
                    drills = self._stage("drills", errors, self.engine.run_due_drills, [])
                if self.retention:
                    pruned = self._stage("retention", errors, self._retention, [])
                judged = self._stage("objectives", errors, self.engine.evaluate_objectives, [])
                expired = self._stage("expiry", errors, self.engine.expire_finished, [])
                if self.retention:
                    swept = self._stage("orphans", errors, self.engine.sweep_orphans, [])
        return PassReport(
            fired=tuple(fired),
            finished=tuple(finished),
            drills=tuple(drills),
            objectives=tuple(judged),
            pruned=tuple(pruned),
            expired=tuple(expired),
            swept=tuple(swept),
            streams=tuple(streams),
            archive_lags=self.streams.reported_lags() if self.streams is not None else (),
            error="; ".join(errors) or None,
        )

    def _retention(self) -> list[PruneAction]:
        actions = self.engine.prune()
        self.engine.prune_archives(actions)
        return [a for a in actions if a.delete]

    def _reconcile_streams(self) -> list[str]:
        return self.streams.reconcile() if self.streams is not None else []

    def close(self) -> None:
        """Stop the streamers (they resume where they were on the next run)."""
        if self.streams is not None:
            self.streams.stop_all()

    @staticmethod
    def _stage(
        name: str, errors: list[str], fn: Callable[[], list[_T]], empty: list[_T]
    ) -> list[_T]:
        try:
            return fn()
        except CozyError as exc:
            log.error("%s stopped early: %s (%s)", name, exc, exc.admin_detail)
            errors.append(f"{exc}" + (f" ({exc.admin_detail})" if exc.admin_detail else ""))
        except Exception:
            ref = uuid.uuid4().hex[:12]
            log.exception("%s stopped early (reference %s)", name, ref)
            errors.append(f"internal error in {name}; see the log under reference {ref}")
        return empty

    def serve(
        self,
        stop: threading.Event,
        interval: float,
        *,
        once: bool = False,
        on_pass: Callable[[PassReport], None] | None = None,
        wake: threading.Event | None = None,
    ) -> list[PassReport]:
        """Recover, then run a pass every ``interval`` seconds until ``stop`` is set (or
        after one pass with ``once``).  Running jobs finish first: a job in progress when
        ``stop`` is set completes, and jobs not yet started stay Pending.  Returns the
        reports of the passes when ``once``, else ``[]`` (``on_pass`` sees each one)."""
        kept: list[PassReport] = []
        self.recover()
        try:
            while True:
                report = self.run_pass(stop)
                if on_pass is not None:
                    on_pass(report)
                if once:
                    kept.append(report)
                    return kept
                if self._rest(stop, wake, self.pause(interval)):
                    return kept
        finally:
            self.close()

    @staticmethod
    def _rest(stop: threading.Event, wake: threading.Event | None, seconds: float) -> bool:
        """Wait ``seconds``, less when ``wake`` is set (a host saw a new job); True when
        stopped."""
        if wake is None:
            return stop.wait(seconds)
        deadline = time.monotonic() + seconds
        while not stop.is_set() and not wake.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            stop.wait(min(left, 0.5))
        wake.clear()
        return stop.is_set()

    def pause(self, interval: float) -> float:
        """Seconds until the next pass: ``interval``, or less when a Plan's slot comes
        sooner (half a second after it), so a Plan fires on time whatever the interval;
        at least one second."""
        try:
            slot = next_slot(self.engine.host)
        except Exception:  # noqa: BLE001 - the next pass reports a platform error
            return interval
        if slot is None:
            return interval
        until = (slot - self.engine.host.now()).total_seconds() + 0.5
        return max(1.0, min(interval, until))
