"""What every engine operation shares: the services object.

Backup, restore, recovery, retention and drills each depend on :class:`Services` and on
nothing of each other: the catalog, the stores (with explicit invalidation), the
redactor, job start/finish and status writes, recording a Backup and opening one for
restore.  The crash-safety order is described in ``backup.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from .._api.errors import (
    ArtifactCorruptError,
    ConflictError,
    CozyError,
    NotFoundError,
    PermanentError,
    StorageError,
    TransientError,
)
from .._api.types import (
    ANNOTATION_JOB_UID,
    ANNOTATION_STORED_BYTES,
    LABEL_CLASS,
    LABEL_JOB,
    LABEL_PLAN,
    URI_PREFIX,
    Artifact,
    ArtifactRecord,
    Backup,
    BackupClass,
    BackupJob,
    BackupSpec,
    BackupStatus,
    Condition,
    ObjectMeta,
    RestoreJob,
    StorageLocation,
    StrategyRef,
    artifact_uid,
    label_value,
)
from .._api.types import Progress as ProgressStatus
from .._api.wire import camel, metadata_strings, structure
from .._catalog.catalog import Catalog, parameters_for
from .._drivers.contract import AppLocation, Deadline, Driver
from .._drivers.toolpipe import ToolPipe
from .._plugins.host import PluginHost
from .._storage.providers import store_secrets
from .._storage.store import ArtifactKey, ArtifactReader, ArtifactStore, Manifest, checksum_of
from .._storage.usage import TenantUsage, tenant_usage
from .executor import Executor
from .port import Host
from .progress import Progress, ProgressUpdate
from .redact import Redactor, chosen_by_tenant, sensitive_values
from .stores import StoreCache

log = logging.getLogger("cozybackup.engine")

Job = BackupJob | RestoreJob
J = TypeVar("J", BackupJob, RestoreJob)


@attrs.frozen(kw_only=True)
class EngineConfig:
    backup_timeout: float = 12 * 3600.0
    restore_timeout: float = 12 * 3600.0
    #: Attempts for transient (storage) errors, with exponential backoff from ``backoff``.
    attempts: int = 3
    backoff: float = 5.0
    workers: int = 2
    progress_interval: float = 2.0
    #: Seconds after which a finished BackupJob or RestoreJob is deleted (its Backup
    #: stays); None keeps them forever.
    finished_job_ttl: float | None = 14 * 86400.0
    #: With an executor (worker Jobs): at most this many workers of one tenant at once
    #: (``workers`` caps them all); None for no per-tenant cap.
    workers_per_tenant: int | None = None
    #: Coexisting with another backup controller (Cozystack's own): a job whose strategy
    #: no installed driver serves is left to it, untouched (never claimed, never failed).
    leave_unserved: bool = False


def _condition(type_: str, reason: str, message: str, now: Any, status: str = "True") -> Condition:
    return Condition(
        type=type_, status=status, reason=reason, message=message, last_transition_time=now
    )


def _ready(job: Any, state: str, message: str, now: Any) -> Condition:
    """Cozystack's ``Ready`` condition (what ``kubectl wait --for=condition=Ready`` and
    its console read): ``BackupCompleted``/``BackupFailed`` on a BackupJob,
    ``RestoreCompleted``/``RestoreFailed`` on a RestoreJob, ``Running`` while it runs."""
    stem = "Backup" if job.kind == "BackupJob" else "Restore"
    status, reason = {
        "Running": ("False", "Running"),
        "Succeeded": ("True", f"{stem}Completed"),
        "Failed": ("False", f"{stem}Failed"),
    }[state]
    return _condition("Ready", reason, message, now, status)


class Services:
    def __init__(
        self,
        host: Host,
        plugins: PluginHost,
        config: EngineConfig | None = None,
        on_progress: Callable[[ProgressUpdate], None] | None = None,
    ) -> None:
        self.host = host
        self.plugins = plugins
        self.storage = plugins.storage
        self.config = config or EngineConfig()
        self.on_progress = on_progress
        self.stores = StoreCache(self._open_store, host.now)
        #: Where data moves: None inline (this process), else a host's workers.
        self.executor: Executor | None = None
        #: In a worker whose driver's tool runs in a container beside it: its end.
        self.tool: ToolPipe | None = None
        self._status_lock = threading.Lock()

    def catalog(self) -> Catalog:
        objs = self.host.objects
        return Catalog.build(
            self.plugins.registry, objs.list(BackupClass), objs.list(StorageLocation)
        )

    def _open_store(self, loc: StorageLocation) -> ArtifactStore:
        try:
            return self.storage.open(loc.spec, self.host)
        except OSError as exc:
            # A read-only or misplaced bucket path is the storage's fault, not the
            # driver's: retried, then reported as such (the path only in the log).
            raise StorageError(
                "the backup storage cannot be opened; ask the platform operator",
                admin_detail=f"StorageLocation {loc.metadata.name}: {exc}",
            ) from exc

    def store_for(self, loc: StorageLocation) -> ArtifactStore:
        """The store of a location (``stores.py``: opened once per pass; inside
        :meth:`background`, a location that just failed to open fails at once)."""
        return self.stores.store_for(loc)

    def background(self) -> contextlib.AbstractContextManager[None]:
        """Around the controller's own work (retention, collection, usage, drills,
        orphans): a location that failed to open is not tried again before its backoff."""
        return self.stores.background()

    def invalidate_stores(self) -> None:
        """Forget every open store, so the next job re-reads credentials and keys."""
        self.stores.clear()

    def redactor(self, *locations: AppLocation) -> Redactor:
        r = Redactor()
        for loc in self.catalog().storages.values():
            r.add(*self.storage.sensitive(loc.spec, self.host))
        for _, store in self.stores.open_stores():
            r.add(*store_secrets(store))
        for app in locations:
            r.add(*sensitive_values(app.connection, app.credentials))
        return r

    def set_status(self, job: J, **changes: Any) -> J:
        with self._status_lock:
            current = self.host.objects.get(type(job), job.metadata.namespace, job.metadata.name)
            base = current if current is not None else job
            new = attrs.evolve(base, status=attrs.evolve(base.status, **changes))
            return self.host.objects.update_status(new)

    def claim(self, job: J) -> J | None:
        """Take a Pending job for this runner: its status written with the resourceVersion
        it was listed with, so where the host checks versions (Kubernetes) a job another
        runner took, or that changed since, is refused (None: left for the next pass).
        This is what keeps two controllers from ever running one job twice."""
        now = self.host.now()
        claimed = attrs.evolve(
            job,
            status=attrs.evolve(
                job.status,
                phase="Running",
                message="starting",
                conditions=(
                    _condition("Running", "Claimed", "the job is starting", now),
                    _ready(job, "Running", "the job is starting", now),
                ),
            ),
        )
        try:
            with self._status_lock:
                return self.host.objects.update_status(claimed)
        except (ConflictError, NotFoundError):
            return None

    def start(self, job: J) -> J:
        now = self.host.now()
        job = self.set_status(
            job,
            phase="Running",
            started_at=now,
            completed_at=None,
            message="started",
            conditions=(
                _condition("Running", "Started", "the job is running", now),
                _ready(job, "Running", "the job is running", now),
            ),
            progress=ProgressStatus(stage="starting", updated_at=now),
        )
        self.host.event(job, "Normal", "Started", f"{job.kind} started")
        self.notify(job, "started")
        return job

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
        now = self.host.now()
        if warnings:
            n = len(warnings)
            message += f" ({n} warning{'s' if n != 1 else ''}: see the events)"
        message = redact(message, keep=chosen_by_tenant(job))
        cond = _condition("Complete" if ok else "Failed", reason, message, now)
        job = self.set_status(
            job,
            phase="Succeeded" if ok else "Failed",
            completed_at=now,
            message=message,
            # Ours first (its type says the outcome), then Cozystack's Ready.
            conditions=(cond, _ready(job, "Succeeded" if ok else "Failed", message, now)),
            **extra,
        )
        self.host.event(job, "Normal" if ok else "Warning", reason, message)
        for w in warnings:
            self.host.event(job, "Warning", w["reason"], redact(w["message"]))
        self.notify(job, "finished")
        return job

    def notify(self, job: Any, stage: str) -> None:
        self.plugins.notify_stage(job.kind, job.metadata.namespace or "", job.metadata.name, stage)

    def progress(self, job: Any) -> Progress:
        def publish(update: ProgressUpdate) -> None:
            try:
                self.publish_progress(job, update)
            except CozyError:
                log.warning("could not record progress of %s", job.metadata.name)
            if self.on_progress:
                self.on_progress(update)

        return Progress(
            job.kind,
            job.metadata.namespace or "",
            job.metadata.name,
            publish,
            self.config.progress_interval,
        )

    def publish_progress(self, job: Any, update: ProgressUpdate) -> None:
        """Where a job's progress goes: its status."""
        self.set_status(
            job,
            progress=ProgressStatus(
                stage=update.stage,
                bytes_done=update.bytes_done,
                bytes_total=update.bytes_total,
                updated_at=self.host.now(),
            ),
        )

    def failure(self, exc: BaseException, driver: Driver | None, job: Any) -> tuple[str, str]:
        """(reason, tenant-safe message) for an exception; details go to the platform log."""
        if isinstance(exc, CozyError):
            if exc.admin_detail:
                log.warning(
                    "%s %s/%s: %s (%s)",
                    job.kind,
                    job.metadata.namespace,
                    job.metadata.name,
                    exc,
                    exc.admin_detail,
                )
            return exc.reason, exc.message
        ref = uuid.uuid4().hex[:12]
        log.error(
            "%s %s/%s failed (ref %s):\n%s",
            job.kind,
            job.metadata.namespace,
            job.metadata.name,
            ref,
            "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
        who = f"the {driver.name} driver" if driver else "cozybackup"
        return "InternalError", (
            f"internal error in {who}; the platform operator can find the details in the "
            f"controller log under reference {ref}"
        )

    def with_retries(self, fn: Callable[[], Any], deadline: Deadline) -> Any:
        """Retry transient failures with exponential backoff, within the job's deadline:
        a storage outage longer than the deadline fails the job, it does not hang it."""
        delay = self.config.backoff
        for attempt in range(1, self.config.attempts + 1):
            try:
                return fn()
            except TransientError as exc:
                if attempt == self.config.attempts or deadline.remaining() <= delay:
                    raise
                log.warning(
                    "transient error (attempt %d): %s %s", attempt, exc, exc.admin_detail or ""
                )
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def record_backup(
        self, job: BackupJob, strategy_ref: StrategyRef, manifest: Manifest, uid: str, checksum: str
    ) -> Backup:
        """Write the Backup of a committed artifact (a single create), and say what the
        driver warned of."""
        backup = self.host.objects.create(
            self.backup_object(job, strategy_ref, manifest, uid, checksum)
        )
        for warning in manifest.warnings:
            self.host.event(job, "Warning", warning["reason"], warning["message"])
        self.notify(job, "recorded")
        return backup

    def backup_object(
        self, job: BackupJob, strategy_ref: StrategyRef, manifest: Manifest, uid: str, checksum: str
    ) -> Backup:
        """The Backup ``record_backup`` writes."""
        labels = {
            LABEL_JOB: label_value(job.metadata.name),
            LABEL_CLASS: label_value(job.spec.backup_class_name),
        }
        if job.spec.plan_ref:
            labels[LABEL_PLAN] = label_value(job.spec.plan_ref.name)
        return Backup(
            metadata=ObjectMeta(
                name=job.metadata.name,
                namespace=job.metadata.namespace,
                labels=labels,
                annotations={
                    ANNOTATION_JOB_UID: job.metadata.uid or "",
                    ANNOTATION_STORED_BYTES: str(manifest.added_bytes),
                },
            ),
            spec=BackupSpec(
                application_ref=job.spec.application_ref,
                plan_ref=job.spec.plan_ref,
                strategy_ref=strategy_ref,
                taken_at=structure(manifest.taken_at, dt.datetime),
                driver_metadata=metadata_strings(manifest.driver_metadata),
            ),
            status=BackupStatus(
                phase="Ready",
                artifact=Artifact(
                    uri=URI_PREFIX + uid, size_bytes=manifest.size_bytes, checksum=checksum
                ),
                underlying_resources=underlying_resources(strategy_ref, manifest),
            ),
        )

    def discard(self, store: ArtifactStore, key: ArtifactKey, record: ArtifactRecord) -> None:
        try:
            store.delete(key)
            self.host.objects.delete(ArtifactRecord, None, record.metadata.name)
        except Exception:
            # Left as Writing: the next recover() pass removes it.
            log.exception("could not remove partial artifact %s", record.metadata.name)

    def artifact_of(self, backup: Backup) -> tuple[ArtifactStore, ArtifactKey, ArtifactRecord]:
        art = backup.status.artifact
        uid = artifact_uid(art.uri if art else None)
        if backup.status.phase != "Ready" or uid is None:
            raise PermanentError(
                f"Backup {backup.metadata.name} is not ready (phase {backup.status.phase or 'unknown'})"
            )
        record = self.host.objects.get(ArtifactRecord, None, uid)
        if (
            record is None
            or record.status.phase != "Committed"
            or record.spec.namespace != backup.metadata.namespace
        ):
            raise ArtifactCorruptError(
                f"the data of Backup {backup.metadata.name} is missing from storage"
            )
        storage = self.catalog().storages.get(record.spec.storage_ref.name)
        if storage is None:
            raise NotFoundError(
                f"the storage holding Backup {backup.metadata.name} is no longer configured; ask the platform operator"
            )
        return self.store_for(storage), ArtifactKey.of(record), record

    def open_backup(self, backup: Backup) -> ArtifactReader:
        """A reader for the named Backup whose manifest matches the recorded checksum."""
        store, key, _ = self.artifact_of(backup)
        reader = store.reader(key)
        assert backup.status.artifact is not None
        if checksum_of(reader.manifest_bytes) != backup.status.artifact.checksum:
            raise ArtifactCorruptError(
                f"the manifest of Backup {backup.metadata.name} does not match its recorded checksum"
            )
        return reader

    def store_of(self, record: ArtifactRecord) -> ArtifactStore | None:
        """The store holding a record's artifact; None when its location is gone."""
        storage = self.catalog().storages.get(record.spec.storage_ref.name)
        return None if storage is None else self.store_for(storage)

    def ready_backups_by_application(self) -> dict[tuple[str, str, str], list[Backup]]:
        """Ready Backups grouped by (namespace, class, application), the unit that
        retention and drills decide for."""
        groups: dict[tuple[str, str, str], list[Backup]] = {}
        for b in self.host.objects.list(Backup):
            if b.status.phase == "Ready":
                ref = b.spec.application_ref
                key = (
                    b.metadata.namespace or "",
                    b.metadata.labels.get(LABEL_CLASS, ""),
                    f"{ref.api_group}/{ref.kind}/{ref.name}",
                )
                groups.setdefault(key, []).append(b)
        return groups

    def locations_in_use(self) -> dict[str, StorageLocation]:
        """The locations that hold (or held, in this process) an artifact: those an
        ArtifactRecord names, and those whose store is open.  Never the others: opening a
        Local location creates its directory."""
        names = {r.spec.storage_ref.name for r in self.host.objects.list(ArtifactRecord)}
        names.update(name for name, _ in self.stores.open_stores())
        return {n: loc for n, loc in sorted(self.catalog().storages.items()) if n in names}

    def usages(self) -> list[tuple[str, TenantUsage]]:
        """``(location, usage)`` of every namespace that has committed backups, per
        location (``_storage/usage.py``); a location that cannot be read is logged and
        left out."""
        pairs = sorted(
            {
                (r.spec.storage_ref.name, r.spec.namespace)
                for r in self.host.objects.list(ArtifactRecord)
                if r.status.phase == "Committed"
            }
        )
        storages = self.catalog().storages
        out = []
        unopened: set[str] = set()
        for location, namespace in pairs:
            loc = storages.get(location)
            if loc is None or location in unopened:
                continue
            try:
                store = self.store_for(loc)
            except StorageError as exc:
                unopened.add(location)  # not once more for each of its other tenants
                log.warning("usage in %s not measured: %s (%s)", location, exc, exc.admin_detail)
                continue
            try:
                out.append((location, tenant_usage(store, namespace)))
            except CozyError as exc:
                log.warning(
                    "usage of %s in %s not measured: %s (%s)",
                    namespace,
                    location,
                    exc,
                    exc.admin_detail,
                )
        return out

    def verify_backup(
        self, namespace: str, name: str, on_bytes: Callable[[int], None] = lambda n: None
    ) -> Manifest:
        backup = self.host.objects.get(Backup, namespace, name)
        if backup is None:
            raise NotFoundError(f"Backup {name} does not exist in namespace {namespace}")
        reader = self.open_backup(backup)
        reader.verify(on_bytes)
        return reader.manifest

    def restore_parameters(self, backup: Backup, driver: Driver, manifest: Manifest) -> Any:
        """The class's current parameters if it still binds this kind to the same driver
        (restore-time settings can change after the backup); else the snapshot taken at
        backup time, keeping only the fields this driver version still knows."""
        bc = self.catalog().class_of(backup)
        class_name = bc.metadata.name if bc is not None else None
        if class_name:
            try:
                resolved = self.catalog().resolve(class_name, backup.spec.application_ref)
            except CozyError:
                resolved = None
            if resolved is not None and resolved.driver is driver:
                return resolved.parameters
        known = {camel(f.name) for f in attrs.fields(driver.parameters_type)}
        dropped = sorted(set(manifest.parameters) - known)
        if dropped:
            log.warning(
                "Backup %s: parameters %s are unknown to %s %s; using defaults",
                backup.metadata.name,
                dropped,
                driver.name,
                driver.version,
            )
        snapshot = {k: v for k, v in manifest.parameters.items() if k in known}
        return parameters_for(driver, snapshot, "parameters")


def underlying_resources(strategy_ref: StrategyRef, manifest: Manifest) -> dict[str, Any] | None:
    """Cozystack's ``status.underlyingResources``: a self-typed object (the strategy's
    apiVersion and kind, so a consumer dispatches on it) holding what the driver
    described, and the warnings the backup carries."""
    if not manifest.resources and not manifest.warnings:
        return None
    described: dict[str, Any] = {
        "apiVersion": f"{strategy_ref.api_group}/v1alpha1",
        "kind": strategy_ref.kind,
        **manifest.resources,
    }
    if manifest.warnings:
        described["warnings"] = [dict(w) for w in manifest.warnings]
    return described
