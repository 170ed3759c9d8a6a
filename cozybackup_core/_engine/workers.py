"""Jobs whose data moves in workers: the worker's side (:class:`WorkerServices`, the same
backup and restore code with every tenant-visible write turned into a report) and the
runner's side (:func:`reconcile`, which records each worker's end on its job).

A worker writes artifacts and ArtifactRecords (platform objects) and nothing a tenant
reads: no job status, no Backup, no event.  The runner, the only writer of those, turns
the worker's reports into them: so redaction, events and the Backup's creation stay in one
place, and a worker that is killed leaves nothing the runner cannot settle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import attrs

from .._api.errors import CozyError
from .._api.types import Backup, BackupJob, RestoreJob
from .._api.types import Progress as ProgressStatus
from .executor import Outcome, WorkerState
from .progress import ProgressUpdate
from .recovery import settle
from .redact import Redactor
from .services import Job, Services

log = logging.getLogger("cozybackup.workers")

J = TypeVar("J")


class WorkerServices(Services):
    """The services a worker runs one job with: reads as usual; instead of writing job
    status, events or the Backup, it reports progress and the outcome through ``report``
    (``report(kind, payload)`` with kind ``progress`` or ``outcome``)."""

    def __init__(
        self, *args: Any, report: Callable[[str, Mapping[str, Any]], None], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.report = report
        self.outcome: Outcome | None = None

    def set_status(self, job: J, **changes: Any) -> J:
        return job  # the runner's to write

    def start(self, job: J) -> J:
        return job  # the runner started it before launching this worker

    def finish(
        self,
        job: J,
        ok: bool,
        reason: str,
        message: str,
        redact: Redactor,
        *,
        warnings: Sequence[Mapping[str, str]] = (),
        **extra: Any,
    ) -> J:
        j: Any = job
        said = tuple({"reason": w["reason"], "message": redact(w["message"])} for w in warnings)
        self.outcome = Outcome(ok=ok, reason=reason, message=redact(message), warnings=said)
        self.report("outcome", attrs.asdict(self.outcome))
        self.notify(j, "finished")
        return job

    def record_backup(self, job: BackupJob, *args: Any, **kwargs: Any) -> Backup:
        # The runner creates the Backup from the committed record when this worker ends.
        return self.backup_object(job, *args, **kwargs)

    def publish_progress(self, job: Any, update: ProgressUpdate) -> None:
        self.report(
            "progress",
            {
                "stage": update.stage,
                "bytesDone": update.bytes_done,
                "bytesTotal": update.bytes_total,
            },
        )


def run_in_worker(svc: WorkerServices, job: Job) -> Outcome:
    """Run one job's data move here; its outcome (also reported)."""
    from .backup import run_backup
    from .restore import run_restore

    try:
        if isinstance(job, BackupJob):
            run_backup(svc, job)
        else:
            run_restore(svc, job)
    except Exception as exc:  # noqa: BLE001 - logged by failure(), reported as the outcome
        reason, msg = svc.failure(exc, None, job)
        svc.finish(cast(Any, job), False, reason, msg, Redactor())
    if svc.outcome is None:  # a restore whose Backup is not there yet: nothing ran
        svc.finish(cast(Any, job), False, "NotReady", "the job could not start", Redactor())
    assert svc.outcome is not None
    return svc.outcome


# --------------------------------------------------------------------------- the runner's side


def reconcile(svc: Services) -> list[Job]:
    """Record the end of every worker that ended; copy the progress of the others.
    Returns the jobs finished.  One job's failure is logged and the others go on."""
    executor = svc.executor
    if executor is None:
        return []
    finished: list[Job] = []
    running: list[Job] = [
        *(j for j in svc.host.objects.list(BackupJob) if j.status.phase == "Running"),
        *(j for j in svc.host.objects.list(RestoreJob) if j.status.phase == "Running"),
    ]
    for job in running:
        try:
            done = _reconcile_one(svc, job, executor.state(job))
        except Exception:
            log.exception("could not reconcile the worker of %s %s", job.kind, job.metadata.name)
            continue
        if done is not None:
            finished.append(done)
            executor.release(job)
    # A job deleted while its worker ran: the worker is stopped (its partial artifact,
    # whose job is gone, is removed by the orphan sweep).
    for name in executor.cancel_strays(running):
        log.warning("stopped worker %s: its job was deleted while it ran", name)
    return finished


def _reconcile_one(svc: Services, job: Job, state: WorkerState | None) -> Job | None:
    if state is not None and state.active:
        if state.progress:
            _copy_progress(svc, job, state.progress)
        return None
    # Built only for a worker that ended: it reads the catalog and the storage Secrets.
    redact = svc.redactor()
    if state is None:
        # No worker: the runner stopped between starting the job and launching it, or the
        # worker's record is gone.  Settled as a crash recovery would.
        settle(svc, job, redact)
        return _current(svc, job)
    outcome = state.outcome
    if outcome is None:
        log.warning(
            "the worker of %s %s/%s ended without an outcome: %s",
            job.kind,
            job.metadata.namespace,
            job.metadata.name,
            state.detail,
        )
        outcome = Outcome(
            ok=False,
            reason="WorkerFailed",
            message="the job's worker stopped before it finished; create the job again to retry",
        )
    # Settled as recovery would, while the job is still Running: a partial artifact goes; a
    # committed one (even from a worker killed right after its commit) is verified and
    # becomes the Backup, completing the job.
    settle(svc, job, redact, completed=outcome.message if outcome.ok else None, interrupt=False)
    current = _current(svc, job)
    if current.status.phase != "Running":
        return current
    if isinstance(job, BackupJob) and outcome.ok:
        outcome = Outcome(
            ok=False,
            reason="WorkerFailed",
            message="the job's worker reported success but stored no backup; create the job again",
        )
    return cast(
        Job,
        svc.finish(
            cast(Any, current),
            outcome.ok,
            outcome.reason,
            outcome.message,
            redact,
            warnings=outcome.warnings,
        ),
    )


def _copy_progress(svc: Services, job: Job, progress: Mapping[str, Any]) -> None:
    new = ProgressStatus(
        stage=str(progress.get("stage") or "")[:253],
        bytes_done=int(progress.get("bytesDone") or 0),
        bytes_total=(
            int(progress["bytesTotal"]) if progress.get("bytesTotal") is not None else None
        ),
        updated_at=svc.host.now(),
    )
    old = job.status.progress
    if old is not None and (old.stage, old.bytes_done, old.bytes_total) == (
        new.stage,
        new.bytes_done,
        new.bytes_total,
    ):
        return
    try:
        svc.set_status(cast(Any, job), progress=new)
    except CozyError as exc:
        log.warning("could not record progress of %s: %s", job.metadata.name, exc)


def _current(svc: Services, job: Job) -> Job:
    got: Job | None = svc.host.objects.get(type(job), job.metadata.namespace, job.metadata.name)
    return got if got is not None else job
