"""The engine: one object a host program holds, over the services every operation shares.

Each operation lives in its own module and depends only on :class:`Services`:
``jobs`` (the queue; ``backup`` and ``restore``), ``recovery``, ``prune`` (over
``deletion``), ``usage``, ``drills`` and ``rekey``.  :class:`Engine` only composes them; a pass of
them all, in order, is :class:`~cozybackup_core.Runner`.
"""

from __future__ import annotations

import threading
import time

from .._api.types import Backup, BackupJob, Plan, RestoreJob
from . import (
    archive_retention,
    deletion,
    drills,
    expiry,
    jobs,
    objectives,
    prune,
    recovery,
    rekey,
    usage,
    workers,
)
from .backup import run_backup
from .prune import Frees, PruneAction
from .restore import run_restore
from .services import EngineConfig, Job, Services

__all__ = ["Engine", "EngineConfig"]


#: Seconds between two collections and accountings when retention deleted nothing
#: (Backups made meanwhile change what the others alone hold; orphans swept leave garbage).
COLLECT_EVERY = 3600.0


class Engine(Services):
    """The services plus every operation on them."""

    _collected_at: float | None = None

    def run_once(self, stop: threading.Event | None = None) -> list[Job]:
        """Run every pending job (see ``jobs.run_once``); returns the jobs finished."""
        return jobs.run_once(self, stop)

    def run_job(self, job: Job) -> Job:
        return jobs.run_job(self, job)

    def run_backup(self, job: BackupJob) -> BackupJob:
        return run_backup(self, job)

    def run_restore(self, job: RestoreJob) -> RestoreJob:
        return run_restore(self, job)

    def prune(self, dry_run: bool = False, collect: bool | None = None) -> list[PruneAction]:
        """Apply every class's retention policy (or, with ``dry_run``, only report it);
        then collect the garbage of every deduplicating repository and measure what each
        Backup alone holds (``usage``).  Both read every committed manifest, so a pass
        does them only when ``collect`` says so or, when it says nothing, when retention
        deleted something or ``COLLECT_EVERY`` has passed since the last time."""
        actions = prune.prune(self, dry_run)
        if dry_run:
            return actions
        last = self._collected_at
        if collect is None:
            collect = (
                last is None
                or any(a.delete for a in actions)
                or time.monotonic() - last >= COLLECT_EVERY
            )
        if collect:
            prune.collect_garbage(self)
            usage.record_usage(self)
            self._collected_at = time.monotonic()
        return actions

    def retention_frees(self, actions: list[PruneAction]) -> Frees:
        """What the deletions among ``actions`` (a dry run's) would free in storage."""
        return prune.frees(self, actions)

    def prune_archives(
        self, actions: list[PruneAction], dry_run: bool = False
    ) -> list[archive_retention.ArchiveAction]:
        """Expire what of each continuous archive no Backup kept by ``actions`` needs."""
        return archive_retention.prune_archives(self, actions, dry_run)

    def rekey(self) -> tuple[int, int, list[str]]:
        """Re-wrap every encrypted backup's data key under its location's active key."""
        return rekey.rekey(self)

    def verify(self, backup: Backup, drill: bool = False) -> Backup:
        """Re-read every checksum (or, with ``drill``, restore into a scratch target) and
        record the result on the Backup's ``status.lastVerified``."""
        return drills.drill(self, backup) if drill else drills.verify_checksums(self, backup)

    def run_due_drills(self) -> list[Backup]:
        return drills.run_due_drills(self)

    def evaluate_objectives(self) -> list[Plan]:
        """Judge every Plan's RPO and RTO (``objectives``); the Plans rewritten."""
        return objectives.evaluate(self.host, self.catalog())

    def expire_finished(self) -> list[str]:
        """Delete jobs finished longer than ``EngineConfig.finished_job_ttl`` ago."""
        return expiry.expire_finished(self)

    def reconcile_workers(self) -> list[Job]:
        """Record the end of every worker that ended (only with an executor)."""
        return workers.reconcile(self)

    def sweep_orphans(self) -> list[str]:
        """Delete committed artifacts no Backup points at, once their job is over."""
        return deletion.sweep_orphans(self)

    def recover(self) -> list[str]:
        """Settle what a crashed run left behind.  Call with no other runner active."""
        return recovery.recover(self)
