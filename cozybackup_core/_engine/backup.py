"""A BackupJob, from pending to a recorded Backup.

The order is the whole crash-safety argument:

1. an ``ArtifactRecord`` (phase Writing) is stored *before* the first byte is uploaded;
2. the driver streams into the artifact; ``manifest.json`` is written last (the commit);
3. the record becomes Committed, then the ``Backup`` is created, then the job Succeeded.

After a crash, ``recovery.recover()`` finds every record still Writing and either finishes
the job (the manifest exists and every stream verifies) or removes the partial data.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid

import attrs

from .._api.errors import CozyError, PermanentError, QuotaExceededError
from .._api.types import (
    ANNOTATION_JOB_UID,
    ANNOTATION_STORED_BYTES,
    LABEL_CLASS,
    ArtifactRecord,
    ArtifactRecordSpec,
    ArtifactRecordStatus,
    Backup,
    BackupJob,
    LocalObjectRef,
    ObjectMeta,
    ObjectRef,
    label_value,
)
from .._api.units import human_bytes, parse_bytes
from .._api.wire import unstructure
from .._catalog.catalog import Resolved
from .._drivers.contract import (
    AppLocation,
    BackupContext,
    Deadline,
    Driver,
    PriorBackup,
    ToolRequest,
)
from .._storage.store import ArtifactKey, Manifest, checksum_of
from .services import Services

log = logging.getLogger("cozybackup.engine")


def made_by(backup: Backup, job: BackupJob) -> bool:
    """Whether ``backup`` was made by this very job (by uid, not by name)."""
    uid = backup.metadata.annotations.get(ANNOTATION_JOB_UID)
    return uid is not None and uid == job.metadata.uid


def run_backup(svc: Services, job: BackupJob) -> BackupJob:
    ns = job.metadata.namespace or ""
    redact = svc.redactor()
    existing = svc.host.objects.get(Backup, ns, job.metadata.name)
    if existing is not None and made_by(existing, job):
        # Idempotent: this job's own Backup exists (a retry after the record was written).
        return svc.finish(
            job,
            True,
            "Completed",
            f"Backup {job.metadata.name} is ready",
            redact,
            backup_ref=LocalObjectRef(name=job.metadata.name),
        )
    if existing is not None:
        # Another job's (a deleted job of the same name): never adopted.
        return svc.finish(
            job,
            False,
            "Conflict",
            f"a Backup named {job.metadata.name} already exists, made by another BackupJob; "
            "use another name",
            redact,
        )
    driver: Driver | None = None
    try:
        resolved = svc.catalog().resolve(job.spec.backup_class_name, job.spec.application_ref)
        driver = resolved.driver
        app = svc.host.locate(ns, job.spec.application_ref)
        check_quota(svc, job, resolved)
    except Exception as exc:
        reason, msg = svc.failure(exc, driver, job)
        return svc.finish(job, False, reason, msg, redact)
    redact = svc.redactor(app)
    job = svc.start(job)
    if svc.executor is not None:
        # The data moves in a worker; the runner records its end (workers.reconcile).
        tool = resolved.driver.tool_container(
            resolved.parameters, ToolRequest(io="out", application=app)
        )
        svc.executor.launch(job, app, svc.config.backup_timeout, tool)
        return job
    started = time.monotonic()
    deadline = Deadline.after(svc.config.backup_timeout)  # covers every attempt
    try:
        backup, manifest = svc.with_retries(
            lambda: _attempt(svc, job, resolved, app, deadline), deadline
        )
    except Exception as exc:
        reason, msg = svc.failure(exc, driver, job)
        return svc.finish(job, False, reason, msg, redact)
    took = time.monotonic() - started
    # Deduplicated, most of what a backup references may be shared: say what was new.
    new = "" if manifest.new_bytes is None else f", {human_bytes(manifest.added_bytes)} of it new"
    msg = (
        f"Backup {backup.metadata.name} is ready: {human_bytes(manifest.size_bytes)} "
        f"({human_bytes(manifest.stored_bytes)} stored{new}) in {took:.1f}s"
    )
    return svc.finish(
        job,
        True,
        "Completed",
        msg,
        redact,
        backup_ref=LocalObjectRef(name=backup.metadata.name),
    )


def check_quota(svc: Services, job: BackupJob, resolved: Resolved) -> None:
    """Refuse, before anything is written, a backup that would take its tenant past its
    class's quota: what the tenant's data takes on the class's storage now, plus what the
    application's newest backup of this class stored (the best guess of what this one
    adds; nothing for a first backup, which is refused only at or over the quota)."""
    bc = svc.catalog().classes.get(job.spec.backup_class_name)
    quota = bc.spec.quota if bc is not None else None
    if quota is None:
        return
    ns = job.metadata.namespace or ""
    allowed = parse_bytes(quota.storage_per_tenant)
    used = svc.store_for(resolved.storage).tenant_bytes(ns)
    same = [
        b
        for b in _same_class(svc, job)
        if b.metadata.annotations.get(ANNOTATION_STORED_BYTES, "").isdigit()
    ]
    newest = max(same, key=lambda b: b.spec.taken_at, default=None)
    expected = int(newest.metadata.annotations[ANNOTATION_STORED_BYTES]) if newest else 0
    if used >= allowed or used + expected > allowed:
        last = (
            f"; the last backup of this application stored {human_bytes(expected)}"
            if newest
            else ""
        )
        raise QuotaExceededError(
            f"this namespace's backups use {human_bytes(used)} of the "
            f"{human_bytes(allowed)} BackupClass {job.spec.backup_class_name} allows{last}; "
            "delete or unpin Backups, or ask the platform operator for a larger quota"
        )


def _same_class(svc: Services, job: BackupJob) -> list[Backup]:
    """The Backups of the job's application made with the job's BackupClass."""
    return [
        b
        for b in svc.host.objects.list(Backup, job.metadata.namespace or "")
        if b.spec.application_ref == job.spec.application_ref
        and b.metadata.labels.get(LABEL_CLASS) == label_value(job.spec.backup_class_name)
    ]


def _prior(svc: Services, job: BackupJob, resolved: Resolved) -> PriorBackup | None:
    """The application's newest Ready Backup of the job's class and strategy, opened (see
    ``BackupContext.prior``); None when there is none or it cannot be opened, and the
    driver then backs up everything."""
    ready = [
        b
        for b in _same_class(svc, job)
        if b.status.phase == "Ready" and b.spec.strategy_ref == resolved.binding.strategy_ref
    ]
    newest = max(ready, key=lambda b: b.spec.taken_at, default=None)
    if newest is None:
        return None
    try:
        reader = svc.open_backup(newest)
        reader.unlock()
    except CozyError as exc:
        log.warning("Backup %s cannot be built on: %s", newest.metadata.name, exc)
        return None
    return PriorBackup(
        name=newest.metadata.name,
        taken_at=newest.spec.taken_at,
        driver_metadata=reader.manifest.driver_metadata,
        artifact=reader,
    )


def _attempt(
    svc: Services, job: BackupJob, resolved: Resolved, app: AppLocation, deadline: Deadline
) -> tuple[Backup, Manifest]:
    ns = job.metadata.namespace or ""
    objs = svc.host.objects
    store = svc.store_for(resolved.storage)
    uid = str(uuid.uuid4())
    key = ArtifactKey(namespace=ns, kind=app.ref.kind, application=app.ref.name, uid=uid)
    record = objs.create(
        ArtifactRecord(
            metadata=ObjectMeta(name=uid, annotations={ANNOTATION_JOB_UID: job.metadata.uid or ""}),
            spec=ArtifactRecordSpec(
                storage_ref=LocalObjectRef(name=resolved.storage.metadata.name),
                namespace=ns,
                application_kind=app.ref.kind,
                application_name=app.ref.name,
                job_ref=ObjectRef(kind="BackupJob", namespace=ns, name=job.metadata.name),
                backup_name=job.metadata.name,
            ),
        )
    )
    progress = svc.progress(job)
    writer = store.writer(key, on_bytes=progress.advance)
    taken_at = svc.host.now()
    try:
        svc.notify(job, "writing")
        ctx = BackupContext(
            application=app,
            parameters=resolved.parameters,
            artifact=writer,
            progress=progress,
            log=logging.getLogger(f"cozybackup.driver.{resolved.driver.name}"),
            deadline=deadline,
            tool=svc.tool,
            prior=functools.partial(_prior, svc, job, resolved),
        )
        resolved.driver.backup(ctx)
        # Tenant-visible on the Backup: scrubbed like every other tenant text.
        redact = svc.redactor(app)
        ctx.deadline.check()
        if writer.empty:
            raise PermanentError(f"the {resolved.driver.name} driver produced no data")
        if writer.server_streams:
            progress.stage("inventorying the server's files")
            writer.inventory_server_side(progress.advance)
        manifest = Manifest(
            format_version=1,
            backup_uid=uid,
            namespace=ns,
            application={
                "apiGroup": app.ref.api_group,
                "kind": app.ref.kind,
                "name": app.ref.name,
            },
            driver={"name": resolved.driver.name, "version": resolved.driver.version},
            strategy_ref=unstructure(resolved.binding.strategy_ref),
            parameters=resolved.parameters_snapshot,
            taken_at=unstructure(taken_at),
            streams=tuple(writer.streams),
            server_files=tuple(writer.server_files),
            encryption=writer.encryption,
            tool_versions=dict(ctx.tool_versions),
            driver_metadata=redact.scrub(dict(ctx.metadata)),
            resources=redact.scrub(dict(ctx.resources)),
            warnings=tuple(
                {"reason": w.reason, "message": redact(w.message)} for w in ctx.warnings
            ),
            new_bytes=writer.added_bytes if writer.deduplicate else None,
        )
        progress.stage("committing")
        raw = writer.commit(manifest)
    except BaseException:
        writer.abort()
        svc.discard(store, key, record)
        raise
    checksum = checksum_of(raw)
    svc.notify(job, "committed")
    objs.update_status(
        attrs.evolve(
            record,
            status=ArtifactRecordStatus(
                phase="Committed", checksum=checksum, size_bytes=manifest.size_bytes
            ),
        )
    )
    backup = svc.record_backup(job, resolved.binding.strategy_ref, manifest, uid, checksum)
    return backup, manifest
