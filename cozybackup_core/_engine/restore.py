"""A RestoreJob: every byte verified before the target is touched, then the driver."""

from __future__ import annotations

import logging
import time

from .._api.errors import ArtifactCorruptError, NotFoundError, UnsupportedError, ValidationError
from .._api.types import Backup, BackupJob, RestoreJob
from .._api.units import human_bytes
from .._drivers.contract import Deadline, Driver, RestoreContext, ToolRequest
from .._storage.archive import SegmentArchive
from .restore_options import read_options
from .services import Services


def run_restore(svc: Services, job: RestoreJob) -> RestoreJob:
    ns = job.metadata.namespace or ""
    redact = svc.redactor()
    driver: Driver | None = None
    try:
        if not job.spec.backup_ref.name:  # Cozystack's schema lets `backupRef: {}` through
            raise ValidationError([("spec.backupRef.name", "empty: name the Backup to restore")])
        backup = svc.host.objects.get(Backup, ns, job.spec.backup_ref.name)
        maker = svc.host.objects.get(BackupJob, ns, job.spec.backup_ref.name)
        if (
            backup is None
            and maker is not None
            and maker.status.phase in (None, "Pending", "Running")
        ):
            return job  # its Backup is still being made: stay Pending for the next pass
        if backup is None:
            raise NotFoundError(
                f"Backup {job.spec.backup_ref.name} does not exist in namespace {ns}"
            )
        source = backup.spec.application_ref
        target_ref = job.spec.target_application_ref or source
        in_place = job.spec.target_application_ref is None or target_ref == source
        if target_ref.group_kind != source.group_kind:
            raise ValidationError(
                [
                    (
                        "spec.targetApplicationRef.kind",
                        f"must be {source.kind} ({source.api_group}), the kind of Backup {backup.metadata.name}",
                    )
                ]
            )
        driver = svc.plugins.registry.for_strategy(
            backup.spec.strategy_ref.kind, backup.spec.strategy_ref.api_group
        )
        caps = driver.capabilities
        if in_place and not caps.in_place_restore:
            raise UnsupportedError(
                f"the {driver.name} driver cannot restore in place; set spec.targetApplicationRef to restore into a copy"
            )
        if not in_place and not caps.to_copy_restore:
            raise UnsupportedError(f"the {driver.name} driver cannot restore into a copy")
        options = read_options(job.spec.options, ns, driver)
        reader = svc.open_backup(backup)
        params = svc.restore_parameters(backup, driver, reader.manifest)
        target = svc.host.locate(ns, target_ref)
    except Exception as exc:
        reason, msg = svc.failure(exc, driver, job)
        return svc.finish(job, False, reason, msg, redact)
    redact = svc.redactor(target)
    job = svc.start(job)
    if options.unknown:
        svc.host.event(
            job,
            "Warning",
            "UnknownRestoreOption",
            f"spec.options: {', '.join(options.unknown)} not understood by the "
            f"{driver.name} strategy; ignored",
        )
    timeout = svc.config.restore_timeout
    if options.timeout_seconds is not None:  # the tenant may ask for less, not more
        timeout = min(timeout, options.timeout_seconds)
    if svc.executor is not None:
        # The data moves in a worker; the runner records its end (workers.reconcile).
        request = ToolRequest(
            io="in",
            application=target,
            in_place=in_place,
            source=source,
            taken_at=backup.spec.taken_at,
        )
        svc.executor.launch(job, target, timeout, driver.tool_container(params, request))
        return job
    progress = svc.progress(job)
    started = time.monotonic()
    try:
        # Every byte is checked before the target is touched.
        progress.stage("verifying", bytes_total=reader.manifest.stored_bytes)
        reader.unlock()  # a missing or wrong key fails here, before any byte is read
        reader.verify_stored(progress.advance)
        svc.notify(job, "verified")
        progress.stage("restoring", bytes_total=reader.manifest.size_bytes)
        reader.on_bytes = progress.advance
        svc.notify(job, "restoring")
        ctx = RestoreContext(
            target=target,
            source=source,
            in_place=in_place,
            parameters=params,
            artifact=reader,
            # The driver's own record, with its types (the Backup's copy is strings).
            driver_metadata=reader.manifest.driver_metadata,
            taken_at=backup.spec.taken_at,
            progress=progress,
            log=logging.getLogger(f"cozybackup.driver.{driver.name}"),
            deadline=Deadline.after(timeout),
            options=options.for_driver,
            recovery_time=options.recovery_time,
            archive=_archive(svc, backup, driver),
            tool=svc.tool,
        )
        driver.restore(ctx)
    except ArtifactCorruptError as exc:
        # Name the Backup: the job's message is what tells the tenant which one is damaged.
        named = ArtifactCorruptError(
            f"Backup {backup.metadata.name}: {exc.message}", admin_detail=exc.admin_detail
        )
        reason, msg = svc.failure(named, driver, job)
        return svc.finish(job, False, reason, msg, redact)
    except Exception as exc:
        reason, msg = svc.failure(exc, driver, job)
        return svc.finish(job, False, reason, msg, redact)
    took = time.monotonic() - started
    where = "in place" if in_place else f"into {target_ref.kind} {target_ref.name}"
    msg = f"restored Backup {backup.metadata.name} {where}: {human_bytes(reader.manifest.size_bytes)} in {took:.1f}s"
    warnings = [{"reason": w.reason, "message": w.message} for w in ctx.warnings]
    return svc.finish(job, True, "Completed", msg, redact, warnings=warnings)


def _archive(svc: Services, backup: Backup, driver: Driver) -> SegmentArchive | None:
    """The source application's continuous archive, for a driver that restores to a moment."""
    if not driver.capabilities.point_in_time:
        return None
    store, key, _ = svc.artifact_of(backup)
    return SegmentArchive.of(store, key, driver.name)
