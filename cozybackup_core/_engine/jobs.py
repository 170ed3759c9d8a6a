"""The job queue: pending BackupJobs, then pending RestoreJobs, one application at a time."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, cast

from .._api.errors import DriverNotFoundError
from .._api.types import ApplicationRef, Backup, BackupJob, RestoreJob
from .backup import run_backup
from .redact import Redactor
from .restore import run_restore
from .services import Job, Services

log = logging.getLogger("cozybackup.jobs")


def run_once(svc: Services, stop: threading.Event | None = None) -> list[Job]:
    """Process every pending BackupJob, then every pending RestoreJob; returns the
    jobs finished.

    Backups go first so that a RestoreJob applied together with the BackupJob that
    makes its Backup finds it.  Within a phase, jobs for the same application run one
    after another in creation order, jobs for different applications in parallel on
    ``config.workers`` threads: never two at once for one application.  Once ``stop``
    is set, running jobs finish and no new one starts (they stay Pending).
    """
    objs = svc.host.objects
    if svc.executor is not None:
        return _dispatch(svc, stop)
    finished: list[Job] = []
    backups: list[Job] = [j for j in objs.list(BackupJob) if j.status.phase in (None, "Pending")]
    finished += _run_phase(svc, backups, stop)
    restores: list[Job] = [j for j in objs.list(RestoreJob) if j.status.phase in (None, "Pending")]
    finished += _run_phase(svc, restores, stop)
    return finished


def _run_phase(svc: Services, pending: list[Job], stop: threading.Event | None) -> list[Job]:
    queues: dict[tuple[str, ...], list[Job]] = {}
    for job in sorted(pending, key=_created):
        queues.setdefault(_key(svc, job), []).append(job)
    finished: list[Job] = []

    def drain(queue: list[Job]) -> None:
        for job in queue:
            if stop is not None and stop.is_set():
                return
            done = run_job(svc, job)
            if done.status.phase in ("Succeeded", "Failed"):
                finished.append(done)

    if len(queues) <= 1 or svc.config.workers <= 1:
        for queue in queues.values():
            drain(queue)
    else:
        with ThreadPoolExecutor(svc.config.workers, thread_name_prefix="cozy-job") as pool:
            futures = [pool.submit(drain, q) for q in queues.values()]
            # Wait with a timeout: a signal the kernel hands to a pool thread runs its
            # Python handler only when the main thread wakes, and SIGTERM must stop the
            # queues now, not when every running job is over.
            while wait(futures, timeout=1.0).not_done:
                pass
            for f in futures:
                f.result()
    return finished


def _dispatch(svc: Services, stop: threading.Event | None) -> list[Job]:
    """With workers: start pending jobs (backups first, oldest first) while the caps allow,
    one job per application at a time; returns the jobs that ended before any worker
    started (a missing application, an unknown class...).  Each Running job is one
    worker: ``config.workers`` caps them all, ``config.workers_per_tenant`` one tenant's."""
    objs = svc.host.objects
    jobs: list[Job] = [*objs.list(BackupJob), *objs.list(RestoreJob)]
    running = [j for j in jobs if j.status.phase == "Running"]
    busy = {_key(svc, j) for j in running}
    per_tenant = Counter(j.metadata.namespace for j in running)
    cap_tenant = svc.config.workers_per_tenant
    pending = [j for j in jobs if j.status.phase in (None, "Pending")]
    pending.sort(key=lambda j: (not isinstance(j, BackupJob), *_created(j)))
    finished: list[Job] = []
    for job in pending:
        if (stop is not None and stop.is_set()) or len(running) >= svc.config.workers:
            break
        key = _key(svc, job)
        ns = job.metadata.namespace
        if key in busy or (cap_tenant is not None and per_tenant[ns] >= cap_tenant):
            continue
        done = run_job(svc, job)
        if done.status.phase in ("Succeeded", "Failed"):
            finished.append(done)
        elif done.status.phase == "Running":
            running.append(done)
            busy.add(key)
            per_tenant[ns] += 1
    return finished


def _key(svc: Services, job: Job) -> tuple[str, ...]:
    try:
        return _app_key(svc, job)
    except Exception:  # noqa: BLE001 - the job runs alone; run_job reports the fault
        return (job.metadata.namespace or "", "?", job.metadata.name)


def _app_key(svc: Services, job: Job) -> tuple[str, ...]:
    ns = job.metadata.namespace or ""
    ref: ApplicationRef | None
    if isinstance(job, BackupJob):
        ref = job.spec.application_ref
    else:
        backup = svc.host.objects.get(Backup, ns, job.spec.backup_ref.name)
        ref = job.spec.target_application_ref or (backup.spec.application_ref if backup else None)
        if ref is None:
            return (ns, "?", job.metadata.name)
    return (ns, ref.api_group, ref.kind, ref.name)


def run_job(svc: Services, job: Job) -> Job:
    """Run one job.  Whatever goes wrong is the job's: it is recorded on the job (Failed,
    with a reference for the operator), and never stops the other jobs."""
    if svc.config.leave_unserved and not _served(svc, job):
        return job  # another controller's: not even a status write
    try:
        claimed: Job | None = svc.claim(cast(Any, job))
    except Exception as exc:  # noqa: BLE001 - the platform refused; retried next pass
        log.warning("could not claim %s %s: %s", job.kind, job.metadata.name, exc)
        return job
    if claimed is None:
        return job  # another runner took it, or it changed: the next pass looks again
    job = claimed
    try:
        if isinstance(job, BackupJob):
            return run_backup(svc, job)
        return run_restore(svc, job)
    except Exception as exc:  # noqa: BLE001 - logged by failure(), recorded on the job
        reason, msg = svc.failure(exc, None, job)
        try:
            failed: Job = svc.finish(cast(Any, job), False, reason, msg, Redactor())
            return failed
        except Exception:
            log.exception("could not record the failure of %s %s", job.kind, job.metadata.name)
            return job


def _served(svc: Services, job: Job) -> bool:
    """Whether an installed driver serves ``job``'s strategy (its class's binding, or the
    strategy its Backup was made with).  Any other fault is the job's to report: True."""
    try:
        if isinstance(job, BackupJob):
            svc.catalog().resolve(job.spec.backup_class_name, job.spec.application_ref)
        else:
            backup = svc.host.objects.get(Backup, job.metadata.namespace, job.spec.backup_ref.name)
            if backup is not None:
                ref = backup.spec.strategy_ref
                svc.plugins.registry.for_strategy(ref.kind, ref.api_group)
    except DriverNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - reported by run_backup/run_restore
        return True
    return True


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _created(obj: Any) -> tuple[dt.datetime, str]:
    return (obj.metadata.creation_timestamp or _EPOCH, obj.metadata.name)
