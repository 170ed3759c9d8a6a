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
from collections.abc import Callable

import attrs

from .._api.errors import CozyError
from .._api.types import Backup, BackupJob
from .engine import Engine
from .plans import fire_due_plans
from .prune import PruneAction
from .services import Job

log = logging.getLogger("cozybackup.runner")


@attrs.frozen(kw_only=True)
class PassReport:
    """What one pass did."""

    fired: tuple[BackupJob, ...] = ()
    finished: tuple[Job, ...] = ()
    drills: tuple[Backup, ...] = ()
    pruned: tuple[PruneAction, ...] = ()
    #: Set when the pass stopped early on a platform error (the API server went away...):
    #: the admin-facing text; the next pass tries again.
    error: str | None = None

    @property
    def failed(self) -> int:
        return sum(j.status.phase == "Failed" for j in self.finished)


class Runner:
    """Runs passes of an :class:`Engine` until told to stop."""

    def __init__(self, engine: Engine, *, drills: bool = True, retention: bool = True) -> None:
        self.engine = engine
        self.drills = drills
        self.retention = retention
        self._recovered = False

    def recover(self) -> list[str]:
        """Settle what a crashed run left behind (once; later calls return ``[]``).  Call
        it with no other runner active: the embedding program holds whatever lock that needs."""
        if self._recovered:
            return []
        self._recovered = True
        return self.engine.recover()

    def run_pass(self, stop: threading.Event | None = None) -> PassReport:
        """One pass.  A platform error (:class:`CozyError` from the host or storage outside
        any job) ends the pass and is reported in ``error``; a job's own failure is the
        job's, recorded on it."""
        fired: list[BackupJob] = []
        finished: list[Job] = []
        drills: list[Backup] = []
        pruned: list[PruneAction] = []
        try:
            fired = fire_due_plans(self.engine.host)
            finished = self.engine.run_once(stop)
            if stop is None or not stop.is_set():
                if self.drills:
                    drills = self.engine.run_due_drills()
                if self.retention:
                    pruned = [a for a in self.engine.prune() if a.delete]
        except CozyError as exc:
            log.error("pass stopped early: %s (%s)", exc, exc.admin_detail)
            return PassReport(
                fired=tuple(fired),
                finished=tuple(finished),
                drills=tuple(drills),
                error=f"{exc}" + (f" ({exc.admin_detail})" if exc.admin_detail else ""),
            )
        return PassReport(
            fired=tuple(fired), finished=tuple(finished), drills=tuple(drills), pruned=tuple(pruned)
        )

    def serve(
        self,
        stop: threading.Event,
        interval: float,
        *,
        once: bool = False,
        on_pass: Callable[[PassReport], None] | None = None,
    ) -> list[PassReport]:
        """Recover, then run a pass every ``interval`` seconds until ``stop`` is set (or
        after one pass with ``once``).  Running jobs finish first: a job in progress when
        ``stop`` is set completes, and jobs not yet started stay Pending.  Returns the
        reports of the passes when ``once``, else ``[]`` (``on_pass`` sees each one)."""
        kept: list[PassReport] = []
        self.recover()
        while True:
            report = self.run_pass(stop)
            if on_pass is not None:
                on_pass(report)
            if once:
                kept.append(report)
                return kept
            if stop.wait(interval):
                return kept
