"""The ``backups.cozystack.io/v1alpha1`` API as frozen attrs value types.

Field names are snake_case here and camelCase on the wire (see ``_wire``).  Only
invariants are guarded here; I/O and resolution live elsewhere.  Fields marked
*extension* are ours, optional, so every Cozystack manifest still loads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from .fields import (
    CONDITION_TYPE_PATTERN,
    NAME_PATTERN,
    FieldInvalid,
    constrained,
    enum_field,
    group_field,
    kind_field,
    line_field,
    name_field,
    namespace_field,
    optional_ref_field,
    path_field,
    text_field,
)
from .units import BYTES_PATTERN, DURATION_PATTERN

GROUP = "backups.cozystack.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
APPS_GROUP = "apps.cozystack.io"
STRATEGY_GROUP = "strategy.backups.cozystack.io"

# Labels and annotations the platform sets or reads on tenant objects.
LABEL_JOB = "backups.cozystack.io/backup-job"
LABEL_PLAN = "backups.cozystack.io/plan"
LABEL_CLASS = "backups.cozystack.io/backup-class"
ANNOTATION_PINNED = "backups.cozystack.io/pinned"
#: On a Backup: the uid of the BackupJob that made it (a job never adopts another's).
ANNOTATION_JOB_UID = "backups.cozystack.io/backup-job-uid"
#: On a Backup: the stored bytes it added when it was made (deduplicated: its new chunks;
#: else all it stored).  Annotations, not status fields: Cozystack's Backup status has no
#: place for them and its structural schema would prune any we added.
ANNOTATION_STORED_BYTES = "backups.cozystack.io/stored-bytes"
#: On a Backup: the stored bytes no other Backup references, what deleting it would free
#: (measured by each prune pass; absent until the first).
ANNOTATION_UNIQUE_BYTES = "backups.cozystack.io/unique-bytes"
#: On every Backup the engine records on Kubernetes: a Backup deleted there (``kubectl
#: delete``) stays until its data is deleted, then the engine removes this and it goes.
BACKUP_FINALIZER = "backups.cozystack.io/artifact"
#: Kubernetes refuses label values over 63 characters.
LABEL_VALUE_MAX = 63


def label_value(name: str) -> str:
    """``name`` as a label value: itself when it fits in 63 characters, else a cut of it
    and a hash of the whole (names may have 253; labels are informational only)."""
    if len(name) <= LABEL_VALUE_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name[:50].rstrip('.-_')}-{digest}"


#: ``Backup.status.artifact.uri`` is this prefix and the artifact's uid: opaque to tenants.
URI_PREFIX = "cozy://backups/"


def artifact_uid(uri: str | None) -> str | None:
    """The ArtifactRecord name in a Backup's ``status.artifact.uri``; None for a URI that
    is not ours."""
    if uri is None or not uri.startswith(URI_PREFIX):
        return None
    return uri[len(URI_PREFIX) :] or None


def default_apps_group(value: str | None) -> str:
    # Cozystack: an empty apiGroup means the platform's application group.
    return value or APPS_GROUP


# --------------------------------------------------------------------------- references


@attrs.frozen(kw_only=True)
class ApplicationRef:
    """The application a tenant protects, e.g. ``apps.cozystack.io/Postgres db1``."""

    api_group: str = group_field(default=APPS_GROUP, converter=default_apps_group)
    kind: str = kind_field()
    name: str = name_field()

    @property
    def group_kind(self) -> GroupKind:
        return GroupKind(api_group=self.api_group, kind=self.kind)

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


@attrs.frozen(kw_only=True)
class GroupKind:
    """An application kind without a name: what a BackupClass binding matches."""

    api_group: str = group_field(default=APPS_GROUP, converter=default_apps_group)
    kind: str = kind_field()

    def __str__(self) -> str:
        return f"{self.api_group}/{self.kind}"


@attrs.frozen(kw_only=True)
class LocalObjectRef:
    """A reference to an object in the same namespace (planRef, backupRef).

    As in Cozystack (``corev1.LocalObjectReference``) ``name`` may be left out or empty
    (``planRef: {}``): an optional reference so written is no reference
    (``optional_ref_field``);
    a required one (``backupRef``) fails its job with a reason that says so."""

    name: str = name_field(default="", empty=True)


@attrs.frozen(kw_only=True)
class StrategyRef:
    """Which strategy (driver) does the work.  ``kind`` selects the driver."""

    api_group: str = group_field(default=STRATEGY_GROUP)
    kind: str = kind_field()
    name: str = name_field()


# --------------------------------------------------------------------------- metadata


_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_DNS_NAME = re.compile(NAME_PATTERN)
_ANNOTATIONS_MAX = 256 * 1024  # Kubernetes' limit for all annotations of an object


def _check_key(field: str, key: object) -> None:
    # Kubernetes qualified names: an optional DNS prefix and "/", then up to 63 characters.
    if not isinstance(key, str):
        raise FieldInvalid(field, "keys must be strings")
    prefix, slash, name = key.rpartition("/")
    if (
        (slash and not prefix)
        or (prefix and (len(prefix) > 253 or not _DNS_NAME.match(prefix)))
        or (len(name) > 63 or not _LABEL_NAME.match(name))
    ):
        raise FieldInvalid(field, f"{key[:80]!r} is not a valid key ([prefix/]name)")


def _check_labels(_inst: Any, attribute: attrs.Attribute[Any], value: Mapping[str, str]) -> None:
    for k, v in value.items():
        _check_key(attribute.name, k)
        # Values hold object names here, so up to 253 characters (Kubernetes allows 63:
        # the Kubernetes host must shorten longer ones).
        if not isinstance(v, str) or len(v) > 253 or (v and not _LABEL_NAME.match(v)):
            raise FieldInvalid(attribute.name, f"the value of {k!r} is not a valid label value")


def _check_annotations(
    _inst: Any, attribute: attrs.Attribute[Any], value: Mapping[str, str]
) -> None:
    size = 0
    for k, v in value.items():
        _check_key(attribute.name, k)
        if not isinstance(v, str):
            raise FieldInvalid(attribute.name, f"the value of {k!r} must be a string")
        size += len(k) + len(v)
    if size > _ANNOTATIONS_MAX:
        raise FieldInvalid(attribute.name, f"must total at most {_ANNOTATIONS_MAX} characters")


@attrs.frozen(kw_only=True)
class ObjectMeta:
    """The part of Kubernetes ObjectMeta we use.  Unknown keys are accepted and dropped."""

    name: str = name_field()
    namespace: str | None = namespace_field(default=None)
    #: Kept as written; the name it stood for is made when the manifest is loaded
    #: (``wire.load``), as the API server makes it on create.
    generate_name: str | None = line_field(default=None, max_length=253)
    uid: str | None = line_field(default=None, max_length=64)
    labels: Mapping[str, str] = attrs.field(factory=dict, validator=_check_labels)
    annotations: Mapping[str, str] = attrs.field(factory=dict, validator=_check_annotations)
    resource_version: str | None = line_field(default=None, max_length=64)
    generation: int | None = None
    creation_timestamp: dt.datetime | None = None
    #: Kept through every update (a PUT without them would drop them); the engine adds
    #: and removes only its own (``BACKUP_FINALIZER``).
    finalizers: tuple[str, ...] = ()
    #: Set by the API server when a delete waits for finalizers.
    deletion_timestamp: dt.datetime | None = None


@attrs.frozen(kw_only=True)
class Condition:
    """A standard Kubernetes condition (reason is CamelCase, no spaces)."""

    #: As ``metav1.Condition`` allows: another controller's types may carry a domain.
    type: str = constrained(
        pattern=CONDITION_TYPE_PATTERN,
        maxLength=316,
        **{"x-describe": "is not a condition type (CamelCase, optionally domain/Type)"},
    )
    status: str = enum_field("True", "False", "Unknown")
    reason: str = attrs.field(
        default="", validator=attrs.validators.matches_re(r"^([A-Za-z][A-Za-z0-9_,:]*)?$")
    )
    message: str = text_field(default="")
    last_transition_time: dt.datetime | None = None
    observed_generation: int | None = None


@attrs.frozen(kw_only=True)
class Progress:
    """*Extension*: how far long work has got."""

    stage: str = text_field(default="", max_length=253)
    bytes_done: int = 0
    bytes_total: int | None = None
    updated_at: dt.datetime | None = None


# --------------------------------------------------------------------------- BackupJob


JOB_PHASES = ("Pending", "Running", "Succeeded", "Failed")


@attrs.frozen(kw_only=True)
class BackupJobSpec:
    application_ref: ApplicationRef
    backup_class_name: str = name_field()
    plan_ref: LocalObjectRef | None = optional_ref_field()


@attrs.frozen(kw_only=True)
class BackupJobStatus:
    phase: str | None = enum_field(*JOB_PHASES, default=None)
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    message: str | None = text_field(default=None)
    backup_ref: LocalObjectRef | None = optional_ref_field()
    conditions: tuple[Condition, ...] = ()
    progress: Progress | None = None  # extension


@attrs.frozen(kw_only=True)
class BackupJob:
    api_version: ClassVar[str] = API_VERSION
    kind: ClassVar[str] = "BackupJob"
    namespaced: ClassVar[bool] = True
    tenant_visible: ClassVar[bool] = True

    metadata: ObjectMeta
    spec: BackupJobSpec
    status: BackupJobStatus = attrs.field(factory=BackupJobStatus)


# --------------------------------------------------------------------------- Plan


@attrs.frozen(kw_only=True)
class Schedule:
    type: str = enum_field("cron", "", default="cron")  # Cozystack allows "" (cron)
    #: Five fields or an ``@daily``-style descriptor; ``CRON_TZ=Zone/Name`` may prefix it.
    #: Optional as in Cozystack: a Plan without one makes no backups (and says so).
    cron: str = line_field(default="", max_length=256)
    #: *Extension*: IANA zone the cron is read in (default UTC).
    time_zone: str | None = line_field(default=None, max_length=64)


@attrs.frozen(kw_only=True)
class PlanSpec:
    application_ref: ApplicationRef
    backup_class_name: str = name_field()
    schedule: Schedule
    # Extensions, with the defaults a backup product should have:
    suspend: bool = False
    #: Forbid: no new job while one of this Plan's is pending or running (the slot is
    #: recorded as missed).  Allow: run anyway.  Replace: drop a still-pending job for the
    #: new one (a running job is never interrupted).
    concurrency_policy: str = enum_field("Forbid", "Allow", "Replace", default="Forbid")
    #: A slot that could not start within this many seconds is recorded as missed, not run.
    starting_deadline_seconds: int | None = constrained(default=None, minimum=1, maximum=31_622_400)


@attrs.frozen(kw_only=True)
class RPOStatus:
    """*Extension*: the recovery point objective of a Plan's application.  The age is
    measured against ``since`` when read (the status changes only when the newest good
    Backup or the verdict does, not on every pass)."""

    target: str
    #: ``takenAt`` of the newest Ready Backup whose last check did not fail; None: none.
    since: dt.datetime | None = None
    met: bool = False


@attrs.frozen(kw_only=True)
class RTOStatus:
    """*Extension*: the recovery time objective: the newest passed drill's duration,
    scaled to the newest Backup's size where it grew since (``method`` says how)."""

    target: str
    measured_seconds: int | None = None
    method: str = text_field(default="")
    met: bool = False


@attrs.frozen(kw_only=True)
class ObjectivesStatus:
    rpo: RPOStatus | None = None
    rto: RTOStatus | None = None


@attrs.frozen(kw_only=True)
class PlanStatus:
    last_schedule_time: dt.datetime | None = None
    next_schedule_time: dt.datetime | None = None
    last_successful_time: dt.datetime | None = None
    #: *Extension*: slots that produced no job (runner down, deadline, Forbid), ever.
    missed_runs: int = 0
    last_missed_time: dt.datetime | None = None
    objectives: ObjectivesStatus | None = None  # extension
    conditions: tuple[Condition, ...] = ()


@attrs.frozen(kw_only=True)
class Plan:
    api_version: ClassVar[str] = API_VERSION
    kind: ClassVar[str] = "Plan"
    namespaced: ClassVar[bool] = True
    tenant_visible: ClassVar[bool] = True

    metadata: ObjectMeta
    spec: PlanSpec
    status: PlanStatus = attrs.field(factory=PlanStatus)


# --------------------------------------------------------------------------- Backup


@attrs.frozen(kw_only=True)
class Artifact:
    """Where the bytes are, as far as a tenant may know: an opaque id, a size, a digest."""

    uri: str = text_field(max_length=512)
    size_bytes: int = 0
    checksum: str = text_field(default="", max_length=128)


@attrs.frozen(kw_only=True)
class BackupSpec:
    application_ref: ApplicationRef
    plan_ref: LocalObjectRef | None = optional_ref_field()
    strategy_ref: StrategyRef
    taken_at: dt.datetime
    driver_metadata: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class Verification:
    """*Extension*: the last check of a Backup: its checksums, or a full restore drill."""

    time: dt.datetime
    method: str = enum_field("Checksums", "RestoreDrill")
    result: str = enum_field("Passed", "Failed")
    message: str = text_field(default="")
    #: How long it took (a drill's is the application's measured restore time).
    duration_seconds: int | None = None


@attrs.frozen(kw_only=True)
class BackupStatus:
    #: ``Pending`` is Cozystack's (a driver's Backup not yet complete); ours are written
    #: ``Ready`` in one step, ``Deleting`` while retention removes them.
    phase: str | None = enum_field("Pending", "Ready", "Deleting", "Failed", default=None)
    artifact: Artifact | None = None
    last_verified: Verification | None = None  # extension
    #: *Extension*: the last restore drill of this Backup (``lastVerified`` may be a later
    #: checksum check); what an application's measured RTO comes from.
    last_drill: Verification | None = None
    conditions: tuple[Condition, ...] = ()
    #: Cozystack's free-form record of what a driver made (VM disks and addresses,
    #: database snapshots); kept as written.
    underlying_resources: Mapping[str, Any] | None = None


@attrs.frozen(kw_only=True)
class Backup:
    api_version: ClassVar[str] = API_VERSION
    kind: ClassVar[str] = "Backup"
    namespaced: ClassVar[bool] = True
    tenant_visible: ClassVar[bool] = True
    #: As in Cozystack's CRD: a Backup is written whole, status included, in one call (no
    #: status subresource), so no crash can leave one without its status.
    status_subresource: ClassVar[bool] = False

    metadata: ObjectMeta
    spec: BackupSpec
    status: BackupStatus = attrs.field(factory=BackupStatus)


def has_status_subresource(cls: type[Any]) -> bool:
    """Whether a kind's status is written through ``/status`` (every kind with a status
    but Backup)."""
    return bool(getattr(cls, "status_subresource", True)) and "status" in attrs.fields_dict(cls)


# --------------------------------------------------------------------------- RestoreJob


@attrs.frozen(kw_only=True)
class RestoreJobSpec:
    backup_ref: LocalObjectRef
    target_application_ref: ApplicationRef | None = None
    #: Cozystack's free-form restore knobs (``recoveryTime``, ``restoreTimeoutSeconds``,
    #: ``targetNamespace``, driver-specific ones); null and ``{}`` mean none.
    options: Mapping[str, Any] | None = None


@attrs.frozen(kw_only=True)
class RestoreJobStatus:
    phase: str | None = enum_field(*JOB_PHASES, default=None)
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    message: str | None = text_field(default=None)
    conditions: tuple[Condition, ...] = ()
    progress: Progress | None = None  # extension


@attrs.frozen(kw_only=True)
class RestoreJob:
    api_version: ClassVar[str] = API_VERSION
    kind: ClassVar[str] = "RestoreJob"
    namespaced: ClassVar[bool] = True
    tenant_visible: ClassVar[bool] = True

    metadata: ObjectMeta
    spec: RestoreJobSpec
    status: RestoreJobStatus = attrs.field(factory=RestoreJobStatus)


# --------------------------------------------------------------------------- BackupClass


_COUNT = {"minimum": 1, "maximum": 100_000}


@attrs.frozen(kw_only=True)
class Retention:
    """*Extension*: which Backups to keep, per application (restic/borg semantics).

    Count rules keep the newest Backup of each of the last N hours/days/weeks/months/years
    (UTC) and the last N overall; with none set, every Backup is kept until ``maxAge``.
    ``maxAge`` (``90d``, ``12h``, ``2w``) deletes what is older, whatever the counts.  Never
    deleted: the newest Backup, the newest ``minCount``, and pinned Backups
    (annotation ``backups.cozystack.io/pinned: "true"``).
    """

    keep_last: int | None = constrained(default=None, **_COUNT)
    keep_hourly: int | None = constrained(default=None, **_COUNT)
    keep_daily: int | None = constrained(default=None, **_COUNT)
    keep_weekly: int | None = constrained(default=None, **_COUNT)
    keep_monthly: int | None = constrained(default=None, **_COUNT)
    keep_yearly: int | None = constrained(default=None, **_COUNT)
    max_age: str | None = constrained(
        default=None,
        pattern=DURATION_PATTERN,
        maxLength=32,
        **{"x-describe": "is not a duration such as 90d, 12h or 2w3d"},
    )
    min_count: int = constrained(default=1, minimum=1, maximum=100_000)


@attrs.frozen(kw_only=True)
class VerificationPolicy:
    """*Extension*: opt-in restore drills.  The newest Backup of each application is
    restored into a throwaway target and smoke-checked when no drill passed within
    ``every``; the result is recorded in ``Backup.status.lastVerified``."""

    restore_drill: bool = False
    every: str = constrained(
        default="7d",
        pattern=DURATION_PATTERN,
        maxLength=32,
        **{"x-describe": "is not a duration such as 7d or 12h"},
    )


def _duration_field() -> Any:
    return constrained(
        default=None,
        pattern=DURATION_PATTERN,
        maxLength=32,
        **{"x-describe": "is not a duration such as 26h or 90m"},
    )


@attrs.frozen(kw_only=True)
class Objectives:
    """*Extension*: what the platform promises each application, proven on every pass
    (``_engine/objectives``).  ``rpo``: the newest good Backup is never older than this;
    ``rto``: a restore takes no longer (measured by restore drills)."""

    rpo: str | None = _duration_field()
    rto: str | None = _duration_field()


@attrs.frozen(kw_only=True)
class StrategyBinding:
    """One entry of ``BackupClass.spec.strategies``: first match wins."""

    application: GroupKind
    strategy_ref: StrategyRef
    parameters: Mapping[str, Any] = attrs.field(factory=dict)
    # extension: a dedicated StorageLocation
    storage_ref: LocalObjectRef | None = optional_ref_field()
    retention: Retention | None = None  # extension: overrides the class's
    verification: VerificationPolicy | None = None  # extension: overrides the class's
    objectives: Objectives | None = None  # extension: overrides the class's


@attrs.frozen(kw_only=True)
class Quota:
    """*Extension*: what one tenant's backups may take in storage.  A backup of this class
    that would take the tenant past ``storagePerTenant`` on the class's storage location
    (what the tenant's backups use there, plus what the application's last backup
    stored) fails before writing anything, with reason ``QuotaExceeded``."""

    storage_per_tenant: str = constrained(
        pattern=BYTES_PATTERN,
        maxLength=24,
        **{"x-describe": "is not a size such as 500Mi, 100Gi or 2T"},
    )


@attrs.frozen(kw_only=True)
class BackupClassSpec:
    strategies: tuple[StrategyBinding, ...]
    # extension: the default StorageLocation
    storage_ref: LocalObjectRef | None = optional_ref_field()
    retention: Retention | None = None  # extension: for every binding without its own
    verification: VerificationPolicy | None = None  # extension: likewise
    objectives: Objectives | None = None  # extension: likewise
    quota: Quota | None = None  # extension: per tenant, over every binding


@attrs.frozen(kw_only=True)
class BackupClassStatus:
    """Cozystack's: observations about the class (nothing writes them yet)."""

    conditions: tuple[Condition, ...] = ()


@attrs.frozen(kw_only=True)
class BackupClass:
    api_version: ClassVar[str] = API_VERSION
    kind: ClassVar[str] = "BackupClass"
    namespaced: ClassVar[bool] = False
    tenant_visible: ClassVar[bool] = False

    metadata: ObjectMeta
    spec: BackupClassSpec
    status: BackupClassStatus = attrs.field(factory=BackupClassStatus)


# --------------------------------------------------------------------------- admin-only


@attrs.frozen(kw_only=True)
class SecretKeyRef:
    name: str = name_field()


@attrs.frozen(kw_only=True)
class EncryptionKeyRef:
    """One key-encryption key: a Secret whose ``key`` is 32 random bytes, base64."""

    id: str = name_field()
    secret_ref: SecretKeyRef


@attrs.frozen(kw_only=True)
class EncryptionSpec:
    """*Extension*, admin-only: client-side encryption of every stream.

    Each Backup gets a fresh data key, wrapped by the first of ``keys`` (the active one);
    the others still unwrap older Backups until ``cozybackup rekey`` has re-wrapped them.
    With ``perTenantKeys`` every namespace gets its own key, derived from the admin's.
    """

    keys: tuple[EncryptionKeyRef, ...]
    per_tenant_keys: bool = False

    def __attrs_post_init__(self) -> None:
        ids = [k.id for k in self.keys]
        if not ids:
            raise FieldInvalid("keys", "must list at least one key")
        if len(set(ids)) != len(ids):
            raise FieldInvalid("keys", "key ids must be unique")


@attrs.frozen(kw_only=True)
class StorageLocationSpec:
    """*Extension*, admin-only: where artifacts go.

    ``provider: Local`` keeps the bucket as a directory (``path``, or under the host's
    home when empty); ``provider: S3`` talks to ``endpoint`` with the access key pair
    in ``credentialsSecretRef`` (keys ``accessKeyId`` and ``secretAccessKey``).
    ``serverSideAccess`` lets drivers hand those credentials to the application's own
    server (ClickHouse's native BACKUP): use it only on a bucket of its own.
    ``encryption`` encrypts every stream before it leaves the process.
    ``deduplication`` (on by default) stores new backups' streams as content-defined
    chunks in one repository per tenant namespace, so data a tenant already stored is
    not stored again; ``false`` keeps the stream format (one compressed object per
    stream).  Backups in either format restore whatever the setting is now, and what an
    application's server writes itself (``serverSideAccess``) is never chunked.
    """

    provider: str = enum_field("Local", "S3", default="Local")
    bucket: str = name_field()
    prefix: str = path_field(default="")
    path: str | None = line_field(default=None, max_length=4096)
    endpoint: str | None = line_field(default=None, max_length=2048)
    region: str | None = line_field(default=None, max_length=64)
    credentials_secret_ref: SecretKeyRef | None = None
    server_side_access: bool = False
    encryption: EncryptionSpec | None = None
    deduplication: bool = True

    def __attrs_post_init__(self) -> None:
        if self.server_side_access and self.provider != "S3":
            raise FieldInvalid("server_side_access", "needs provider: S3")
        if self.server_side_access and self.encryption is not None:
            # What a server writes by itself cannot be encrypted by the platform.
            raise FieldInvalid("server_side_access", "cannot be combined with encryption")


@attrs.frozen(kw_only=True)
class StorageLocation:
    api_version: ClassVar[str] = API_VERSION
    kind: ClassVar[str] = "StorageLocation"
    namespaced: ClassVar[bool] = False
    tenant_visible: ClassVar[bool] = False

    metadata: ObjectMeta
    spec: StorageLocationSpec


@attrs.frozen(kw_only=True)
class ObjectRef:
    kind: str = kind_field()
    namespace: str = namespace_field()
    name: str = name_field()


@attrs.frozen(kw_only=True)
class ArtifactRecordSpec:
    """Platform-only index entry: which location and path hold one backup's artifact.

    Written *before* any byte is uploaded (phase ``Writing``), so that after a crash the
    engine can find and remove partial data; ``Committed`` once the manifest is stored.
    """

    storage_ref: LocalObjectRef
    namespace: str = namespace_field()
    application_kind: str = kind_field()
    application_name: str = name_field()
    job_ref: ObjectRef
    backup_name: str = name_field()


@attrs.frozen(kw_only=True)
class ArtifactRecordStatus:
    phase: str = enum_field("Writing", "Committed", "Deleting", default="Writing")
    checksum: str | None = text_field(default=None, max_length=128)
    size_bytes: int | None = None


@attrs.frozen(kw_only=True)
class ArtifactRecord:
    api_version: ClassVar[str] = API_VERSION
    kind: ClassVar[str] = "ArtifactRecord"
    namespaced: ClassVar[bool] = False
    tenant_visible: ClassVar[bool] = False

    metadata: ObjectMeta
    spec: ArtifactRecordSpec
    status: ArtifactRecordStatus = attrs.field(factory=ArtifactRecordStatus)


Resource = BackupJob | Plan | Backup | RestoreJob | BackupClass | StorageLocation | ArtifactRecord
KINDS: dict[str, type[Any]] = {
    cls.kind: cls
    for cls in (BackupJob, Plan, Backup, RestoreJob, BackupClass, StorageLocation, ArtifactRecord)
}
