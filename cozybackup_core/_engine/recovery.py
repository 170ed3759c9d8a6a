"""Crash recovery: settle what a killed run left behind.

Runs before a runner processes anything, while it holds the runner lock, so every job
still ``Running`` has no live owner.  See the ordering argument in ``backup.py``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import attrs

from .._api.errors import CozyError
from .._api.types import (
    ANNOTATION_JOB_UID,
    URI_PREFIX,
    Artifact,
    ArtifactRecord,
    ArtifactRecordStatus,
    Backup,
    BackupJob,
    BackupStatus,
    LocalObjectRef,
    RestoreJob,
    StrategyRef,
)
from .._api.wire import structure
from .._storage.store import ArtifactKey, checksum_of
from .backup import made_by
from .deletion import finish_deletions
from .redact import Redactor
from .services import Services

log = logging.getLogger("cozybackup.recovery")


def recover(svc: Services) -> list[str]:
    """Settle what a crashed run left behind.  Call with no other runner active."""
    objs = svc.host.objects
    notes: list[str] = []
    try:
        redact = svc.redactor()
    except Exception:
        log.exception("recovery: the redactor could not be built; masking nothing extra")
        redact = Redactor()
    # Jobs whose worker still exists are adopted, not settled: the worker may be running
    # (and writing its artifact); ``workers.reconcile`` records its end.
    jobs: list[BackupJob | RestoreJob] = [*objs.list(BackupJob), *objs.list(RestoreJob)]
    adopted = {
        (j.kind, j.metadata.namespace, j.metadata.name)
        for j in jobs
        if j.status.phase == "Running" and _has_worker(svc, j)
    }

    def mine(record: ArtifactRecord) -> bool:
        ref = record.spec.job_ref
        return (ref.kind, ref.namespace, ref.name) not in adopted

    for record in objs.list(ArtifactRecord):
        if record.status.phase == "Committed" or not mine(record):
            continue
        notes.extend(_isolated(record, "", _recover_record_notes, svc, record))
    for record in objs.list(ArtifactRecord):
        if record.status.phase == "Committed" and mine(record):
            notes.extend(_isolated(record, "", _recover_committed, svc, record, redact))
    # Listed again: settling the records above completed some of them.
    now_running: list[BackupJob | RestoreJob] = [*objs.list(BackupJob), *objs.list(RestoreJob)]
    for job in now_running:
        key = (job.kind, job.metadata.namespace, job.metadata.name)
        if job.status.phase == "Running" and key not in adopted:
            notes.extend(_isolated(job, job.metadata.namespace, interrupt_job, svc, job, redact))

    notes.extend(finish_deletions(svc))
    return notes


def _has_worker(svc: Services, job: Any) -> bool:
    return svc.executor is not None and svc.executor.state(job) is not None


def settle(
    svc: Services,
    job: Any,
    redact: Redactor,
    completed: str | None = None,
    *,
    interrupt: bool = True,
) -> None:
    """Settle one job's artifacts as recovery would: partial ones removed, a committed one
    turned into its Backup while the job is Running (which then completes); a job still
    Running after that is interrupted (unless ``interrupt`` is false: the caller finishes
    it).  ``completed`` is the message of a job completed from its committed artifact (by
    default, that it completed after an interruption)."""
    objs = svc.host.objects

    def records() -> list[ArtifactRecord]:
        ref = (job.metadata.namespace, job.metadata.name)
        return [
            r
            for r in objs.list(ArtifactRecord)
            if (r.spec.job_ref.namespace, r.spec.job_ref.name) == ref
            and r.spec.job_ref.kind == job.kind
        ]

    for record in records():
        if record.status.phase != "Committed":
            _isolated(record, "", _recover_record_notes, svc, record)
    for record in records():
        if record.status.phase == "Committed":
            _isolated(record, "", _recover_committed, svc, record, redact, completed)
    current = objs.get(type(job), job.metadata.namespace, job.metadata.name)
    if interrupt and current is not None and current.status.phase == "Running":
        interrupt_job(svc, current, redact)


def _isolated(obj: Any, ns: str | None, fn: Callable[..., list[str]], *args: Any) -> list[str]:
    """One object's recovery; a failure is noted and the others go on."""
    try:
        return fn(*args)
    except Exception:
        ref = uuid.uuid4().hex[:12]
        log.exception("recovery of %s %s failed (reference %s)", obj.kind, obj.metadata.name, ref)
        where = f"{ns}/" if ns else ""
        return [
            f"{obj.kind} {where}{obj.metadata.name}: could not be recovered (reference {ref}); left for the next run"
        ]


def interrupt_job(svc: Services, job: Any, redact: Redactor) -> list[str]:
    if isinstance(job, BackupJob):
        svc.finish(
            job,
            False,
            "Interrupted",
            "the backup was interrupted before it completed and no Backup was "
            "recorded; create a new BackupJob to try again",
            redact,
        )
        return [f"BackupJob {job.metadata.namespace}/{job.metadata.name}: interrupted"]
    svc.finish(
        job,
        False,
        "Interrupted",
        "the restore was interrupted; the target application may hold "
        "partially restored data; create the RestoreJob again to retry",
        redact,
    )
    return [f"RestoreJob {job.metadata.namespace}/{job.metadata.name}: interrupted"]


def _maker(svc: Services, record: ArtifactRecord) -> BackupJob | None:
    """The job that wrote ``record``: same name *and* uid (a job re-created under the
    name of a deleted one is another job).  Records written before uids were recorded
    match by name."""
    spec = record.spec
    job = svc.host.objects.get(BackupJob, spec.namespace, spec.job_ref.name)
    uid = record.metadata.annotations.get(ANNOTATION_JOB_UID)
    if job is not None and uid is not None and uid != job.metadata.uid:
        return None
    return job


def _recover_record_notes(svc: Services, record: ArtifactRecord) -> list[str]:
    return [_recover_record(svc, record)]


def _recover_record(svc: Services, record: ArtifactRecord) -> str:
    objs = svc.host.objects
    spec = record.spec
    storage = svc.catalog().storages.get(spec.storage_ref.name)
    key = ArtifactKey.of(record)
    if storage is None:
        return f"artifact {record.metadata.name}: storage location gone, left for the operator"
    store = svc.store_for(storage)
    job = _maker(svc, record)
    if (
        record.status.phase == "Writing"
        and job is not None
        and job.status.phase == "Running"
        and store.is_committed(key)
    ):
        # Crashed between the manifest and the record: finish only if every byte verifies.
        try:
            reader = store.reader(key)
            reader.verify()
        except CozyError:
            pass
        else:
            checksum = checksum_of(reader.manifest_bytes)
            record = objs.update_status(
                attrs.evolve(
                    record,
                    status=ArtifactRecordStatus(
                        phase="Committed",
                        checksum=checksum,
                        size_bytes=reader.manifest.size_bytes,
                    ),
                )
            )
            return f"artifact {record.metadata.name}: complete and verified, kept"
    store.delete(key)
    objs.delete(ArtifactRecord, None, record.metadata.name)
    return f"artifact {record.metadata.name}: partial data removed"


def _recover_committed(
    svc: Services, record: ArtifactRecord, redact: Redactor, message: str | None = None
) -> list[str]:
    objs = svc.host.objects
    spec = record.spec
    job = _maker(svc, record)
    backup = objs.get(Backup, spec.namespace, spec.backup_name)
    if job is None or job.status.phase != "Running":
        return []
    if backup is not None and not made_by(backup, job):
        return []  # another job's Backup: never adopted
    if backup is None:
        storage = svc.catalog().storages[spec.storage_ref.name]
        key = ArtifactKey.of(record)
        reader = svc.store_for(storage).reader(key)
        m = reader.manifest
        strategy = structure(dict(m.strategy_ref), StrategyRef)
        backup = svc.record_backup(
            job, strategy, m, record.metadata.name, record.status.checksum or ""
        )
    elif backup.status.artifact is None:
        # A host that writes status apart from the object (Kubernetes' status subresource)
        # was stopped between the two writes: the record holds what the status needs.
        backup = objs.update_status(
            attrs.evolve(
                backup,
                status=BackupStatus(
                    phase="Ready",
                    artifact=Artifact(
                        uri=URI_PREFIX + record.metadata.name,
                        size_bytes=record.status.size_bytes or 0,
                        checksum=record.status.checksum or "",
                    ),
                ),
            )
        )
    svc.finish(
        job,
        True,
        "Completed",
        message or f"Backup {backup.metadata.name} is ready (completed after an interruption)",
        redact,
        backup_ref=LocalObjectRef(name=backup.metadata.name),
    )
    return [f"BackupJob {spec.namespace}/{job.metadata.name}: completed after interruption"]
