"""The engine: one object a host program holds, over the services every operation shares.

Each operation lives in its own module and depends only on :class:`Services`:
``jobs`` (the queue; ``backup`` and ``restore``), ``recovery``, ``prune`` (over
``deletion``), ``drills`` and ``rekey``.  :class:`Engine` only composes them; a pass of
them all, in order, is :class:`~cozybackup_core.Runner`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .._api.types import Backup, BackupJob, RestoreJob
from .._plugins.host import PluginHost
from . import drills, jobs, prune, recovery, rekey
from .backup import run_backup
from .port import Host
from .progress import ProgressUpdate
from .restore import run_restore
from .services import EngineConfig, Job, Services

__all__ = ["Engine", "EngineConfig"]


class Engine(Services):
    """The services plus every operation on them."""

    def __init__(
        self,
        host: Host,
        plugins: PluginHost,
        config: EngineConfig | None = None,
        on_progress: Callable[[ProgressUpdate], None] | None = None,
    ) -> None:
        super().__init__(host, plugins, config, on_progress)

    def run_once(self, stop: threading.Event | None = None) -> list[Job]:
        """Run every pending job (see ``jobs.run_once``); returns the jobs finished."""
        return jobs.run_once(self, stop)

    def run_job(self, job: Job) -> Job:
        return jobs.run_job(self, job)

    def run_backup(self, job: BackupJob) -> BackupJob:
        return run_backup(self, job)

    def run_restore(self, job: RestoreJob) -> RestoreJob:
        return run_restore(self, job)

    def prune(self, dry_run: bool = False) -> list[prune.PruneAction]:
        """Apply every class's retention policy (or, with ``dry_run``, only report it)."""
        return prune.prune(self, dry_run)

    def rekey(self) -> tuple[int, int, list[str]]:
        """Re-wrap every encrypted backup's data key under its location's active key."""
        return rekey.rekey(self)

    def verify(self, backup: Backup, drill: bool = False) -> Backup:
        """Re-read every checksum (or, with ``drill``, restore into a scratch target) and
        record the result on the Backup's ``status.lastVerified``."""
        return drills.drill(self, backup) if drill else drills.verify_checksums(self, backup)

    def run_due_drills(self) -> list[Backup]:
        return drills.run_due_drills(self)

    def recover(self) -> list[str]:
        """Settle what a crashed run left behind.  Call with no other runner active."""
        return recovery.recover(self)
