"""The engine: BackupJob and RestoreJob state machines, crash recovery.

Talks to the world only through the host port (``_host.Host``).  The order of a backup
is the whole crash-safety argument:

1. an ``ArtifactRecord`` (phase Writing) is stored *before* the first byte is uploaded;
2. the driver streams into the artifact; ``manifest.json`` is written last (the commit);
3. the record becomes Committed, then the ``Backup`` is created, then the job Succeeded.

After a crash, ``recover()`` finds every record still Writing and either finishes the job
(the manifest exists and every stream verifies) or removes the partial data and fails it.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from ._classes import Catalog, Resolved, parameters_for
from ._crypto import KeyRing, parse_key
from ._driver import AppLocation, BackupContext, Deadline, Driver, RestoreContext
from ._errors import (
    ArtifactCorruptError,
    CozyError,
    NotFoundError,
    PermanentError,
    TransientError,
    UnsupportedError,
    ValidationError,
)
from ._host import Host
from ._plugins import PluginHost
from ._progress import Progress, ProgressUpdate
from ._redact import Redactor, sensitive_values
from ._storage import ArtifactKey, ArtifactReader, ArtifactStore, Manifest, checksum_of
from ._types import (
    LABEL_CLASS,
    LABEL_JOB,
    LABEL_PLAN,
    URI_PREFIX,
    Artifact,
    ArtifactRecord,
    ArtifactRecordSpec,
    ArtifactRecordStatus,
    Backup,
    BackupClass,
    BackupJob,
    BackupSpec,
    BackupStatus,
    Condition,
    EncryptionSpec,
    LocalObjectRef,
    ObjectMeta,
    ObjectRef,
    RestoreJob,
    StorageLocation,
    StorageLocationSpec,
    StrategyRef,
)
from ._types import Progress as ProgressStatus
from ._wire import camel, structure, unstructure

if TYPE_CHECKING:
    from ._prune import PruneAction

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


def _condition(type_: str, reason: str, message: str, now: Any) -> Condition:
    return Condition(
        type=type_, status="True", reason=reason, message=message, last_transition_time=now
    )


class Engine:
    def __init__(
        self,
        host: Host,
        plugins: PluginHost,
        config: EngineConfig | None = None,
        on_progress: Callable[[ProgressUpdate], None] | None = None,
    ) -> None:
        self.host = host
        self.plugins = plugins
        self.config = config or EngineConfig()
        self.on_progress = on_progress
        # Keyed by the whole spec: an admin's edit takes effect without a restart.
        self._stores: dict[tuple[str, StorageLocationSpec], ArtifactStore] = {}
        self._status_lock = threading.Lock()

    # ------------------------------------------------------------------ catalog & storage

    def catalog(self) -> Catalog:
        objs = self.host.objects
        return Catalog.build(
            self.plugins.registry, objs.list(BackupClass), objs.list(StorageLocation)
        )

    def store_for(self, loc: StorageLocation) -> ArtifactStore:
        name = (loc.metadata.name, loc.spec)
        if name not in self._stores:
            spec = loc.spec
            if spec.provider == "Local":
                root = spec.path or self.host.local_bucket_path(spec.bucket)
                if spec.prefix:
                    root = f"{root.rstrip('/')}/{spec.prefix.strip('/')}"
                store = ArtifactStore.local(root)
            else:
                creds = (
                    self.host.secret(spec.credentials_secret_ref.name)
                    if spec.credentials_secret_ref
                    else {}
                )
                store = ArtifactStore.s3(
                    endpoint=spec.endpoint,
                    bucket=spec.bucket,
                    prefix=spec.prefix,
                    key=creds.get("accessKeyId", ""),
                    secret=creds.get("secretAccessKey", ""),
                    region=spec.region,
                    server_side=spec.server_side_access,
                )
            if spec.encryption is not None:
                store.keyring = self._keyring(spec.encryption)
            self._stores[name] = store
        return self._stores[name]

    def _keyring(self, spec: EncryptionSpec) -> KeyRing:
        """The admin's keys from their Secrets.  A missing or malformed one is left out:
        backups wrapped only under it cannot be read, and if it is the active key no
        backup can be written; both fail with a message naming it to the operator."""
        keys = []
        for ref in spec.keys:
            try:
                keys.append((ref.id, parse_key(self.host.secret(ref.secret_ref.name)["key"])))
            except (CozyError, KeyError, ValueError) as exc:
                log.error(
                    "encryption key %s (Secret %s) is unusable: %s",
                    ref.id,
                    ref.secret_ref.name,
                    exc,
                )
        return KeyRing(keys=tuple(keys), active=spec.keys[0].id, per_tenant=spec.per_tenant_keys)

    def redactor(self, *locations: AppLocation) -> Redactor:
        r = Redactor()
        for loc in self.catalog().storages.values():
            s = loc.spec
            r.add(s.endpoint, s.bucket, s.path, s.prefix)
            secret_names = [s.credentials_secret_ref.name] if s.credentials_secret_ref else []
            if s.encryption:
                secret_names += [k.secret_ref.name for k in s.encryption.keys]
            for secret in secret_names:
                try:
                    r.add(*self.host.secret(secret).values())
                except CozyError:
                    pass
            if s.provider == "Local" and not s.path:
                r.add(self.host.local_bucket_path(s.bucket))
        for store in self._stores.values():
            r.add(store.root)
            if store.keyring:
                for _, raw in store.keyring.keys:
                    r.add(base64.b64encode(raw).decode(), raw.hex())
        for app in locations:
            r.add(*sensitive_values(app.connection, app.credentials))
        return r

    # ------------------------------------------------------------------ the loop

    def run_once(self, stop: threading.Event | None = None) -> list[Job]:
        """Process every pending BackupJob, then every pending RestoreJob; returns the
        jobs finished.

        Backups go first so that a RestoreJob applied together with the BackupJob that
        makes its Backup finds it.  Within a phase, jobs for the same application run one
        after another in creation order, jobs for different applications in parallel on
        ``config.workers`` threads: never two at once for one application.  Once ``stop``
        is set, running jobs finish and no new one starts (they stay Pending).
        """
        objs = self.host.objects
        finished: list[Job] = []
        backups: list[Job] = [
            j for j in objs.list(BackupJob) if j.status.phase in (None, "Pending")
        ]
        finished += self._run_phase(backups, stop)
        restores: list[Job] = [
            j for j in objs.list(RestoreJob) if j.status.phase in (None, "Pending")
        ]
        finished += self._run_phase(restores, stop)
        return finished

    def _run_phase(self, pending: list[Job], stop: threading.Event | None) -> list[Job]:
        queues: dict[tuple[str, ...], list[Job]] = {}
        for job in sorted(pending, key=_created):
            queues.setdefault(self._app_key(job), []).append(job)
        finished: list[Job] = []

        def drain(queue: list[Job]) -> None:
            for job in queue:
                if stop is not None and stop.is_set():
                    return
                done = self.run_job(job)
                if done.status.phase in ("Succeeded", "Failed"):
                    finished.append(done)

        if len(queues) <= 1 or self.config.workers <= 1:
            for queue in queues.values():
                drain(queue)
        else:
            with ThreadPoolExecutor(self.config.workers, thread_name_prefix="cozy-job") as pool:
                for f in [pool.submit(drain, q) for q in queues.values()]:
                    f.result()
        return finished

    def _app_key(self, job: Job) -> tuple[str, ...]:
        ns = job.metadata.namespace or ""
        if isinstance(job, BackupJob):
            ref = job.spec.application_ref
        else:
            target = job.spec.target_application_ref
            backup = self.host.objects.get(Backup, ns, job.spec.backup_ref.name)
            ref = target or (backup.spec.application_ref if backup else None)  # type: ignore[assignment]
            if ref is None:
                return (ns, "?", job.metadata.name)
        return (ns, ref.api_group, ref.kind, ref.name)

    def run_job(self, job: Job) -> Job:
        if isinstance(job, BackupJob):
            return self.run_backup(job)
        return self.run_restore(job)

    # ------------------------------------------------------------------ status helpers

    def _set_status(self, job: J, **changes: Any) -> J:
        with self._status_lock:
            current = self.host.objects.get(type(job), job.metadata.namespace, job.metadata.name)
            base = current if current is not None else job
            new = attrs.evolve(base, status=attrs.evolve(base.status, **changes))
            return self.host.objects.update_status(new)

    def _start(self, job: J) -> J:
        now = self.host.now()
        job = self._set_status(
            job,
            phase="Running",
            started_at=now,
            completed_at=None,
            message="started",
            conditions=(_condition("Running", "Started", "the job is running", now),),
            progress=ProgressStatus(stage="starting", updated_at=now),
        )
        self.host.event(job, "Normal", "Started", f"{job.kind} started")
        self._notify(job, "started")
        return job

    def _finish(
        self, job: J, ok: bool, reason: str, message: str, redact: Redactor, **extra: Any
    ) -> J:
        now = self.host.now()
        message = redact(message)
        cond = _condition("Complete" if ok else "Failed", reason, message, now)
        job = self._set_status(
            job,
            phase="Succeeded" if ok else "Failed",
            completed_at=now,
            message=message,
            conditions=(cond,),
            **extra,
        )
        self.host.event(job, "Normal" if ok else "Warning", reason, message)
        self._notify(job, "finished")
        return job

    def _notify(self, job: Any, stage: str) -> None:
        self.plugins.notify_stage(job.kind, job.metadata.namespace or "", job.metadata.name, stage)

    def _progress(self, job: Any) -> Progress:
        def publish(update: ProgressUpdate) -> None:
            try:
                self._set_status(
                    job,
                    progress=ProgressStatus(
                        stage=update.stage,
                        bytes_done=update.bytes_done,
                        bytes_total=update.bytes_total,
                        updated_at=self.host.now(),
                    ),
                )
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

    def _failure(self, exc: BaseException, driver: Driver | None, job: Any) -> tuple[str, str]:
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

    def _with_retries(self, fn: Callable[[], Any], deadline: Deadline) -> Any:
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

    # ------------------------------------------------------------------ backup

    def run_backup(self, job: BackupJob) -> BackupJob:
        ns = job.metadata.namespace or ""
        redact = self.redactor()
        existing = self.host.objects.get(Backup, ns, job.metadata.name)
        if existing is not None and existing.metadata.labels.get(LABEL_JOB) == job.metadata.name:
            # Idempotent: the Backup exists (a retry after the record was written).
            return self._finish(
                job,
                True,
                "Completed",
                f"Backup {job.metadata.name} is ready",
                redact,
                backup_ref=LocalObjectRef(name=job.metadata.name),
            )
        if existing is not None:
            return self._finish(
                job, False, "Conflict", f"a Backup named {job.metadata.name} already exists", redact
            )
        driver: Driver | None = None
        try:
            resolved = self.catalog().resolve(job.spec.backup_class_name, job.spec.application_ref)
            driver = resolved.driver
            app = self.host.locate(ns, job.spec.application_ref)
        except Exception as exc:
            reason, msg = self._failure(exc, driver, job)
            return self._finish(job, False, reason, msg, redact)
        redact = self.redactor(app)
        job = self._start(job)
        started = time.monotonic()
        deadline = Deadline.after(self.config.backup_timeout)  # covers every attempt
        try:
            backup, manifest = self._with_retries(
                lambda: self._backup_attempt(job, resolved, app, deadline), deadline
            )
        except Exception as exc:
            reason, msg = self._failure(exc, driver, job)
            return self._finish(job, False, reason, msg, redact)
        took = time.monotonic() - started
        msg = (
            f"Backup {backup.metadata.name} is ready: {_size(manifest.size_bytes)} "
            f"({_size(manifest.stored_bytes)} stored) in {took:.1f}s"
        )
        return self._finish(
            job,
            True,
            "Completed",
            msg,
            redact,
            backup_ref=LocalObjectRef(name=backup.metadata.name),
        )

    def _backup_attempt(
        self, job: BackupJob, resolved: Resolved, app: AppLocation, deadline: Deadline
    ) -> tuple[Backup, Manifest]:
        ns = job.metadata.namespace or ""
        objs = self.host.objects
        store = self.store_for(resolved.storage)
        uid = str(uuid.uuid4())
        key = ArtifactKey(namespace=ns, kind=app.ref.kind, application=app.ref.name, uid=uid)
        record = objs.create(
            ArtifactRecord(
                metadata=ObjectMeta(name=uid),
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
        progress = self._progress(job)
        writer = store.writer(key, on_bytes=progress.advance)
        taken_at = self.host.now()
        try:
            self._notify(job, "writing")
            ctx = BackupContext(
                application=app,
                parameters=resolved.parameters,
                artifact=writer,
                progress=progress,
                log=logging.getLogger(f"cozybackup.driver.{resolved.driver.name}"),
                deadline=deadline,
            )
            resolved.driver.backup(ctx)
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
                # Tenant-visible on the Backup: scrubbed like every other tenant text.
                driver_metadata=self.redactor(app).scrub(dict(ctx.metadata)),
            )
            progress.stage("committing")
            raw = writer.commit(manifest)
        except BaseException:
            self._discard(store, key, record)
            raise
        checksum = checksum_of(raw)
        self._notify(job, "committed")
        objs.update_status(
            attrs.evolve(
                record,
                status=ArtifactRecordStatus(
                    phase="Committed", checksum=checksum, size_bytes=manifest.size_bytes
                ),
            )
        )
        backup = self._record_backup(job, resolved.binding.strategy_ref, manifest, uid, checksum)
        return backup, manifest

    def _record_backup(
        self, job: BackupJob, strategy_ref: StrategyRef, manifest: Manifest, uid: str, checksum: str
    ) -> Backup:
        labels = {LABEL_JOB: job.metadata.name, LABEL_CLASS: job.spec.backup_class_name}
        if job.spec.plan_ref:
            labels[LABEL_PLAN] = job.spec.plan_ref.name
        backup = self.host.objects.create(
            Backup(
                metadata=ObjectMeta(
                    name=job.metadata.name, namespace=job.metadata.namespace, labels=labels
                ),
                spec=BackupSpec(
                    application_ref=job.spec.application_ref,
                    plan_ref=job.spec.plan_ref,
                    strategy_ref=strategy_ref,
                    taken_at=structure(manifest.taken_at, dt.datetime),
                    driver_metadata=dict(manifest.driver_metadata),
                ),
                status=BackupStatus(
                    phase="Ready",
                    artifact=Artifact(
                        uri=URI_PREFIX + uid, size_bytes=manifest.size_bytes, checksum=checksum
                    ),
                ),
            )
        )
        self._notify(job, "recorded")
        return backup

    def _discard(self, store: ArtifactStore, key: ArtifactKey, record: ArtifactRecord) -> None:
        try:
            store.delete(key)
            self.host.objects.delete(ArtifactRecord, None, record.metadata.name)
        except Exception:
            # Left as Writing: the next recover() pass removes it.
            log.exception("could not remove partial artifact %s", record.metadata.name)

    # ------------------------------------------------------------------ restore

    def _artifact_of(self, backup: Backup) -> tuple[ArtifactStore, ArtifactKey, ArtifactRecord]:
        art = backup.status.artifact
        if backup.status.phase != "Ready" or art is None or not art.uri.startswith(URI_PREFIX):
            raise PermanentError(
                f"Backup {backup.metadata.name} is not ready (phase {backup.status.phase or 'unknown'})"
            )
        uid = art.uri[len(URI_PREFIX) :]
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
        key = ArtifactKey(
            namespace=record.spec.namespace,
            kind=record.spec.application_kind,
            application=record.spec.application_name,
            uid=uid,
        )
        return self.store_for(storage), key, record

    def open_backup(self, backup: Backup) -> ArtifactReader:
        """A reader for the named Backup whose manifest matches the recorded checksum."""
        store, key, _ = self._artifact_of(backup)
        reader = store.reader(key)
        assert backup.status.artifact is not None
        if checksum_of(reader.manifest_bytes) != backup.status.artifact.checksum:
            raise ArtifactCorruptError(
                f"the manifest of Backup {backup.metadata.name} does not match its recorded checksum"
            )
        return reader

    def verify_backup(
        self, namespace: str, name: str, on_bytes: Callable[[int], None] = lambda n: None
    ) -> Manifest:
        backup = self.host.objects.get(Backup, namespace, name)
        if backup is None:
            raise NotFoundError(f"Backup {name} does not exist in namespace {namespace}")
        reader = self.open_backup(backup)
        reader.verify(on_bytes)
        return reader.manifest

    def _restore_parameters(self, backup: Backup, driver: Driver, manifest: Manifest) -> Any:
        """The class's current parameters if it still binds this kind to the same driver
        (restore-time settings can change after the backup); else the snapshot taken at
        backup time, keeping only the fields this driver version still knows."""
        class_name = backup.metadata.labels.get(LABEL_CLASS)
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

    def run_restore(self, job: RestoreJob) -> RestoreJob:
        ns = job.metadata.namespace or ""
        redact = self.redactor()
        driver: Driver | None = None
        try:
            backup = self.host.objects.get(Backup, ns, job.spec.backup_ref.name)
            maker = self.host.objects.get(BackupJob, ns, job.spec.backup_ref.name)
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
            driver = self.plugins.registry.for_strategy(backup.spec.strategy_ref.kind)
            caps = driver.capabilities
            if in_place and not caps.in_place_restore:
                raise UnsupportedError(
                    f"the {driver.name} driver cannot restore in place; set spec.targetApplicationRef to restore into a copy"
                )
            if not in_place and not caps.to_copy_restore:
                raise UnsupportedError(f"the {driver.name} driver cannot restore into a copy")
            reader = self.open_backup(backup)
            params = self._restore_parameters(backup, driver, reader.manifest)
            target = self.host.locate(ns, target_ref)
        except Exception as exc:
            reason, msg = self._failure(exc, driver, job)
            return self._finish(job, False, reason, msg, redact)
        redact = self.redactor(target)
        job = self._start(job)
        progress = self._progress(job)
        started = time.monotonic()
        try:
            # Every byte is checked before the target is touched.
            progress.stage("verifying", bytes_total=reader.manifest.stored_bytes)
            reader.unlock()  # a missing or wrong key fails here, before any byte is read
            reader.verify_stored(progress.advance)
            self._notify(job, "verified")
            progress.stage("restoring", bytes_total=reader.manifest.size_bytes)
            reader.on_bytes = progress.advance
            self._notify(job, "restoring")
            ctx = RestoreContext(
                target=target,
                source=source,
                in_place=in_place,
                parameters=params,
                artifact=reader,
                driver_metadata=backup.spec.driver_metadata,
                taken_at=backup.spec.taken_at,
                progress=progress,
                log=logging.getLogger(f"cozybackup.driver.{driver.name}"),
                deadline=Deadline.after(self.config.restore_timeout),
            )
            driver.restore(ctx)
        except Exception as exc:
            reason, msg = self._failure(exc, driver, job)
            return self._finish(job, False, reason, msg, redact)
        took = time.monotonic() - started
        where = "in place" if in_place else f"into {target_ref.kind} {target_ref.name}"
        msg = f"restored Backup {backup.metadata.name} {where}: {_size(reader.manifest.size_bytes)} in {took:.1f}s"
        return self._finish(job, True, "Completed", msg, redact)

    # ------------------------------------------------------------------ retention

    def prune(self, dry_run: bool = False) -> list[PruneAction]:
        """Apply every class's retention policy (or, with ``dry_run``, only report it)."""
        from ._prune import prune

        return prune(self, dry_run)

    # ------------------------------------------------------------------ key rotation

    def rekey(self) -> tuple[int, int, list[str]]:
        """Re-wrap every committed encrypted backup's data key under its location's active
        key, so older keys can be retired.  Only ``keys.json`` objects are rewritten.
        Returns (re-wrapped, already current, problems naming the backups left as they were)."""
        storages = self.catalog().storages
        changed = current = 0
        problems: list[str] = []
        for record in self.host.objects.list(ArtifactRecord):
            if record.status.phase != "Committed":
                continue
            loc = storages.get(record.spec.storage_ref.name)
            if loc is None or loc.spec.encryption is None:
                continue
            key = ArtifactKey(
                namespace=record.spec.namespace,
                kind=record.spec.application_kind,
                application=record.spec.application_name,
                uid=record.metadata.name,
            )
            try:
                if self.store_for(loc).rekey(key):
                    changed += 1
                else:
                    current += 1
            except CozyError as exc:
                problems.append(
                    f"{record.spec.namespace}/{record.spec.backup_name}: {exc}"
                    + (f" ({exc.admin_detail})" if exc.admin_detail else "")
                )
        return changed, current, problems

    # ------------------------------------------------------------------ verification

    def verify(self, backup: Backup, drill: bool = False) -> Backup:
        """Re-read every checksum (or, with ``drill``, restore into a scratch target) and
        record the result on the Backup's ``status.lastVerified``."""
        from ._drills import drill as run_drill
        from ._drills import verify_checksums

        return run_drill(self, backup) if drill else verify_checksums(self, backup)

    def run_due_drills(self) -> list[Backup]:
        from ._drills import run_due_drills

        return run_due_drills(self)

    # ------------------------------------------------------------------ crash recovery

    def recover(self) -> list[str]:
        """Settle what a crashed run left behind.  Call with no other runner active."""
        from ._recovery import recover

        return recover(self)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _created(obj: Any) -> tuple[dt.datetime, str]:
    return (obj.metadata.creation_timestamp or _EPOCH, obj.metadata.name)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
