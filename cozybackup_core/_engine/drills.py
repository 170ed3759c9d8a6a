"""Verification: checksum re-reads and restore drills, recorded on the Backup.

A drill restores a Backup into a throwaway target (the driver's ``scratch_target``), runs
the driver's ``smoke_check`` and records the result in ``Backup.status.lastVerified``.  The
target never is the tenant's application.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import attrs

from .._api.errors import CozyError
from .._api.types import Backup, Verification
from .._api.units import parse_duration
from .._drivers.contract import AppLocation, Deadline, RestoreContext
from .redact import chosen_by_tenant
from .services import Services

log = logging.getLogger("cozybackup.verify")


class _Quiet:
    def stage(self, name: str, *, bytes_total: int | None = None) -> None:
        log.debug("drill: %s", name)

    def advance(self, nbytes: int) -> None:
        pass


def record(
    svc: Services, backup: Backup, method: str, ok: bool, message: str, took: float | None = None
) -> Backup:
    v = Verification(
        time=svc.host.now(),
        method=method,
        result="Passed" if ok else "Failed",
        message=svc.redactor()(message, keep=chosen_by_tenant(backup))[:1000],
        duration_seconds=None if took is None else max(1, round(took)),
    )
    current = (
        svc.host.objects.get(Backup, backup.metadata.namespace, backup.metadata.name) or backup
    )
    status = attrs.evolve(current.status, last_verified=v)
    if method == "RestoreDrill":
        status = attrs.evolve(status, last_drill=v)
    updated = svc.host.objects.update_status(attrs.evolve(current, status=status))
    svc.host.event(
        updated,
        "Normal" if ok else "Warning",
        "Verified" if ok else "VerificationFailed",
        f"{method}: {v.message}",
    )
    return updated


def verify_checksums(svc: Services, backup: Backup) -> Backup:
    start = time.monotonic()
    try:
        m = svc.open_backup(backup)
        m.verify()
    except CozyError as exc:
        return record(svc, backup, "Checksums", False, str(exc))
    took = time.monotonic() - start
    return record(
        svc,
        backup,
        "Checksums",
        True,
        f"{len(m.manifest.streams)} stream(s), {m.manifest.size_bytes} bytes match their checksums ({took:.1f}s)",
        took,
    )


def drill(svc: Services, backup: Backup) -> Backup:
    """Restore ``backup`` into a scratch target and smoke-check it."""
    start = time.monotonic()
    try:
        driver = svc.plugins.registry.for_strategy(
            backup.spec.strategy_ref.kind, backup.spec.strategy_ref.api_group
        )
        reader = svc.open_backup(backup)
        reader.verify()
        params = svc.restore_parameters(backup, driver, reader.manifest)
        like = AppLocation(
            ref=backup.spec.application_ref, namespace=backup.metadata.namespace or ""
        )
        with (
            tempfile.TemporaryDirectory(prefix="cozybackup-drill-") as tmp,
            driver.scratch_target(Path(tmp), like) as target,
        ):
            driver.restore(
                RestoreContext(
                    target=target,
                    source=backup.spec.application_ref,
                    in_place=False,
                    parameters=params,
                    artifact=reader,
                    driver_metadata=reader.manifest.driver_metadata,
                    taken_at=backup.spec.taken_at,
                    progress=_Quiet(),
                    log=logging.getLogger(f"cozybackup.driver.{driver.name}"),
                    deadline=Deadline.after(svc.config.restore_timeout),
                )
            )
            summary = driver.smoke_check(target, reader.manifest.driver_metadata)
    except CozyError as exc:
        return record(svc, backup, "RestoreDrill", False, str(exc))
    except Exception:
        log.exception(
            "restore drill of %s/%s failed", backup.metadata.namespace, backup.metadata.name
        )
        return record(
            svc,
            backup,
            "RestoreDrill",
            False,
            "internal error during the drill; see the controller log",
        )
    took = time.monotonic() - start
    return record(svc, backup, "RestoreDrill", True, f"{summary} ({took:.1f}s)", took)


def due_drills(svc: Services) -> list[Backup]:
    """The newest Ready Backup of each application whose class asks for drills, when no
    drill of that application passed within the policy's ``every``."""
    groups = svc.ready_backups_by_application()
    now = svc.host.now()
    catalog = svc.catalog()
    due = []
    for backups in groups.values():
        try:
            policy = catalog.verification_for(backups[0])
            if policy is None or not policy.restore_drill:
                continue
            every = parse_duration(policy.every)
        except Exception:
            log.exception("drill policy of %s could not be read", backups[0].metadata.name)
            continue
        recent = [
            b.status.last_verified.time
            for b in backups
            if b.status.last_verified and b.status.last_verified.method == "RestoreDrill"
        ]
        if recent and now - max(recent) < every:
            continue
        due.append(max(backups, key=lambda b: (b.spec.taken_at, b.metadata.name)))
    return due


def run_due_drills(svc: Services) -> list[Backup]:
    done = []
    for b in due_drills(svc):
        try:
            done.append(drill(svc, b))
        except Exception:
            log.exception("drill of %s/%s failed", b.metadata.namespace, b.metadata.name)
    return done
