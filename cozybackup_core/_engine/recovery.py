"""Crash recovery: settle what a killed run left behind.

Runs before a runner processes anything, while it holds the runner lock, so every job
still ``Running`` has no live owner.  See the ordering argument in ``backup.py``.
"""

from __future__ import annotations

import attrs

from .._api.errors import CozyError
from .._api.types import (
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
from .deletion import finish_deletions
from .redact import Redactor
from .services import Services


def recover(svc: Services) -> list[str]:
    """Settle what a crashed run left behind.  Call with no other runner active."""
    objs = svc.host.objects
    notes: list[str] = []
    redact = svc.redactor()
    for record in objs.list(ArtifactRecord):
        if record.status.phase == "Committed":
            continue
        notes.append(_recover_record(svc, record))
    for record in objs.list(ArtifactRecord):
        if record.status.phase == "Committed":
            notes.extend(_recover_committed(svc, record, redact))
    for job in objs.list(BackupJob):
        if job.status.phase == "Running":
            svc.finish(
                job,
                False,
                "Interrupted",
                "the backup was interrupted before it completed and no Backup was "
                "recorded; create a new BackupJob to try again",
                redact,
            )
            notes.append(f"BackupJob {job.metadata.namespace}/{job.metadata.name}: interrupted")
    for rjob in objs.list(RestoreJob):
        if rjob.status.phase == "Running":
            svc.finish(
                rjob,
                False,
                "Interrupted",
                "the restore was interrupted; the target application may hold "
                "partially restored data; create the RestoreJob again to retry",
                redact,
            )
            notes.append(f"RestoreJob {rjob.metadata.namespace}/{rjob.metadata.name}: interrupted")

    notes.extend(finish_deletions(svc))
    return notes


def _recover_record(svc: Services, record: ArtifactRecord) -> str:
    objs = svc.host.objects
    spec = record.spec
    storage = svc.catalog().storages.get(spec.storage_ref.name)
    key = ArtifactKey.of(record)
    if storage is None:
        return f"artifact {record.metadata.name}: storage location gone, left for the operator"
    store = svc.store_for(storage)
    job = objs.get(BackupJob, spec.namespace, spec.job_ref.name)
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


def _recover_committed(svc: Services, record: ArtifactRecord, redact: Redactor) -> list[str]:
    objs = svc.host.objects
    spec = record.spec
    job = objs.get(BackupJob, spec.namespace, spec.job_ref.name)
    backup = objs.get(Backup, spec.namespace, spec.backup_name)
    if job is None or job.status.phase != "Running":
        return []
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
        f"Backup {backup.metadata.name} is ready (completed after an interruption)",
        redact,
        backup_ref=LocalObjectRef(name=backup.metadata.name),
    )
    return [f"BackupJob {spec.namespace}/{job.metadata.name}: completed after interruption"]
