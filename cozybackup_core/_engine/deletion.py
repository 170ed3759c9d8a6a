"""Deleting a Backup and its data, crash-safely; sweeping data no Backup points at.

Order: Backup -> phase Deleting (no restore can start from it), record -> Deleting,
artifact deleted, record deleted, Backup deleted.  A crash anywhere leaves a Deleting
Backup or record that the next pass (or recovery) finishes; a Backup is never left
pointing at missing data while claiming to be Ready.

On Kubernetes every Backup the engine records carries ``BACKUP_FINALIZER``: deleted with
``kubectl delete`` it waits (``deletionTimestamp``) until a pass has deleted its data the
same way, then the finalizer is removed and it goes.

An *orphan* is a committed artifact that no Backup points at, once its job is over: a
Backup deleted without our finalizer, or refused by the API server after the artifact
was committed; or a partial one whose job is gone (deleted while its worker wrote it).  Left alone it would be stored, and paid for, for ever; the sweep deletes
it by the same crash-safe steps, after a grace period that covers a job between its
commit and its Backup.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Any

import attrs

from .._api.errors import CozyError, NotFoundError
from .._api.types import (
    ANNOTATION_JOB_UID,
    BACKUP_FINALIZER,
    ArtifactRecord,
    Backup,
    BackupJob,
    Condition,
    artifact_uid,
)
from .._storage.store import ArtifactKey
from .services import Services

log = logging.getLogger("cozybackup.deletion")

#: How long a committed artifact may stay without a Backup before it is an orphan.
ORPHAN_GRACE = dt.timedelta(hours=1)


def delete_backup(svc: Services, backup: Backup, reason: str) -> None:
    now = svc.host.now()
    cond = Condition(
        type="Deleting",
        status="True",
        reason="RetentionPolicy",
        message=reason,
        last_transition_time=now,
    )
    backup = svc.host.objects.update_status(
        attrs.evolve(
            backup, status=attrs.evolve(backup.status, phase="Deleting", conditions=(cond,))
        )
    )
    svc.host.event(backup, "Normal", "Pruned", f"deleted by the retention policy: {reason}")
    _finish(svc, backup)


def finish_deletions(svc: Services) -> list[str]:
    """Complete every deletion a crash interrupted, and every Backup deleted with kubectl
    (it waits on ``BACKUP_FINALIZER`` until its data is gone)."""
    done = []
    for backup in svc.host.objects.list(Backup):
        what = f"Backup {backup.metadata.namespace}/{backup.metadata.name}"
        if backup.status.phase == "Deleting":
            done.append(_isolated(what, _finish, svc, backup))
        elif backup.metadata.deletion_timestamp is not None and (
            BACKUP_FINALIZER in backup.metadata.finalizers
        ):
            done.append(_isolated(what, _deleted_by_user, svc, backup))
    for record in svc.host.objects.list(ArtifactRecord):
        if record.status.phase == "Deleting":
            what = f"artifact {record.metadata.name}"
            done.append(_isolated(what, _delete_record, svc, record))
    return done


def _deleted_by_user(svc: Services, backup: Backup) -> None:
    """A Backup someone deleted (it waits on our finalizer): its data goes first."""
    cond = Condition(
        type="Deleting",
        status="True",
        reason="Deleted",
        message="the Backup was deleted; its data is being deleted",
        last_transition_time=svc.host.now(),
    )
    backup = svc.host.objects.update_status(
        attrs.evolve(
            backup, status=attrs.evolve(backup.status, phase="Deleting", conditions=(cond,))
        )
    )
    _finish(svc, backup)


def _isolated(what: str, fn: Callable[..., None], *args: Any) -> str:
    """One deletion; a failure is noted and left for a later pass, the others go on."""
    try:
        fn(*args)
    except CozyError as exc:
        log.warning("%s: deletion not finished: %s (%s)", what, exc, exc.admin_detail)
        return f"{what}: deletion not finished: {exc}"
    except Exception:
        ref = uuid.uuid4().hex[:12]
        log.exception("%s: deletion failed (reference %s)", what, ref)
        return f"{what}: deletion failed (reference {ref}); left for a later pass"
    return f"{what}: deletion finished"


def _finish(svc: Services, backup: Backup) -> None:
    art = backup.status.artifact
    uid = artifact_uid(art.uri if art else None)
    if uid is not None:
        record = svc.host.objects.get(ArtifactRecord, None, uid)
        if record is not None:
            if record.status.phase != "Deleting":
                record = svc.host.objects.update_status(
                    attrs.evolve(record, status=attrs.evolve(record.status, phase="Deleting"))
                )
            _delete_record(svc, record)
    if BACKUP_FINALIZER in backup.metadata.finalizers:
        # The data is gone: the Backup may go (at once, when a delete was waiting on us).
        keep = tuple(f for f in backup.metadata.finalizers if f != BACKUP_FINALIZER)
        try:
            backup = svc.host.objects.update_status(
                attrs.evolve(backup, metadata=attrs.evolve(backup.metadata, finalizers=keep))
            )
        except NotFoundError:
            return
        if backup.metadata.deletion_timestamp is not None and not keep:
            return
    try:
        svc.host.objects.delete(Backup, backup.metadata.namespace, backup.metadata.name)
    except NotFoundError:
        pass  # the finalizer was the last thing keeping it


def _delete_record(svc: Services, record: ArtifactRecord) -> None:
    store = svc.store_of(record)
    if store is None:
        raise CozyError(
            f"artifact {record.metadata.name}: its storage location is gone; left for the operator"
        )
    store.delete(ArtifactKey.of(record))
    svc.host.objects.delete(ArtifactRecord, None, record.metadata.name)


def sweep_orphans(svc: Services) -> list[str]:
    """Delete every orphaned artifact (see the module docstring); a note for each."""
    objs = svc.host.objects
    pointed = {artifact_uid(b.status.artifact.uri) for b in objs.list(Backup) if b.status.artifact}
    cutoff = svc.host.now() - ORPHAN_GRACE
    notes = []
    for record in objs.list(ArtifactRecord):
        made = record.metadata.creation_timestamp
        if record.status.phase == "Deleting" or record.metadata.name in pointed:
            continue
        if made is None or made > cutoff:
            continue
        spec = record.spec
        job = objs.get(BackupJob, spec.namespace, spec.job_ref.name)
        if record.status.phase == "Writing":
            if job is not None and job.metadata.uid == record.metadata.annotations.get(
                ANNOTATION_JOB_UID
            ):
                continue  # its job exists: recovery or its runner settles it
        elif job is not None and job.status.phase in (None, "Pending", "Running"):
            continue  # its job may still write the Backup
        what = (
            f"orphaned artifact {record.metadata.name} of {spec.namespace}/{spec.application_name}"
        )
        notes.append(_isolated(what, _delete_orphan, svc, record))
    return notes


def _delete_orphan(svc: Services, record: ArtifactRecord) -> None:
    record = svc.host.objects.update_status(
        attrs.evolve(record, status=attrs.evolve(record.status, phase="Deleting"))
    )
    _delete_record(svc, record)
