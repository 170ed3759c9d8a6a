"""Admission: the checks an object passes before it is stored, beyond its schema.

``load`` proves a manifest is well-formed; admission decides whether *this* caller may
store it now: platform-made kinds are never applied, a class must resolve, a cron must
parse, a job's spec is immutable, and a tenant may only create its own jobs and Plans
in its own namespace.  Hosts call :func:`admit` for every apply (the embedded CLI does;
a Kubernetes host does it in its admission webhook, with RBAC in front).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .._api.errors import ValidationError
from .._api.types import GROUP, ArtifactRecord, Backup, BackupClass, BackupJob, Plan, RestoreJob
from .._api.units import MAX_DURATION, parse_duration
from .._catalog.catalog import Catalog
from .plans import NO_SCHEDULE, check_cron
from .port import with_metadata

#: What a tenant may create; everything else is the platform's or the operator's.
TENANT_KINDS: tuple[type[Any], ...] = (BackupJob, Plan, RestoreJob)
_PLATFORM_KINDS = (Backup, ArtifactRecord)
#: Kinds whose spec cannot change once created: a job runs the spec it was created with.
IMMUTABLE_SPEC_KINDS: tuple[type[Any], ...] = (BackupJob, RestoreJob)
#: Live tenant objects (Plans, unfinished jobs) one namespace may hold.
MAX_LIVE_PER_NAMESPACE = 500
#: Label and annotation keys the platform sets; a tenant forging them could make a job
#: look like another Plan's, or pin what retention should delete.
RESERVED_PREFIX = f"{GROUP}/"


def admit(
    objs: Sequence[Any],
    catalog: Catalog,
    current: Callable[[type[Any], str | None, str], Any],
    tenant: str | None = None,
    warn: Callable[[str], None] | None = None,
    listing: Callable[[type[Any], str | None], list[Any]] | None = None,
    live_limit: int = MAX_LIVE_PER_NAMESPACE,
) -> list[tuple[Any, str]]:
    """``(object, action)`` for each object (``created``, ``configured`` or ``unchanged``),
    or a :class:`ValidationError` naming the object and field.  Nothing is written here.
    What is accepted but will not be acted on (kubectl's warnings) goes to ``warn``."""
    out: list[tuple[Any, str]] = []
    live: dict[str, int] = {}
    for obj in objs:
        what = f"{obj.kind} {obj.metadata.name}"
        found = _check(obj, catalog, tenant)
        if isinstance(obj, TENANT_KINDS) and obj.status != type(obj.status)():
            # As the API server does for a kind with a status subresource (an exported
            # object applied again): the status is the platform's, dropped on the way in.
            obj = attrs.evolve(obj, status=type(obj.status)())
            found.append(("status", "set by the platform; the applied status is ignored"))
        for path, message in found:
            if warn is not None:
                warn(f"{obj.kind.lower()}/{obj.metadata.name}: {path}: {message}")
        existing = current(type(obj), obj.metadata.namespace, obj.metadata.name)
        if existing is None and listing is not None and isinstance(obj, TENANT_KINDS):
            ns = obj.metadata.namespace
            if ns not in live:  # counted once per namespace and call, then kept up to date
                live[ns] = _live(listing, ns)
            if live[ns] >= live_limit:
                raise ValidationError(
                    [
                        (
                            "metadata.namespace",
                            f"namespace {ns} already has {live[ns]} Plans and unfinished jobs, "
                            f"the most it may have; wait for jobs to finish or delete some",
                        )
                    ]
                )
            live[ns] += 1
        if isinstance(obj, IMMUTABLE_SPEC_KINDS):
            if existing is not None and existing.spec != obj.spec:
                raise ValidationError(
                    [("spec", f"{what} exists and its spec is immutable; create a new one")]
                )
            if existing is None:
                out.append((obj, "created"))
            else:
                merged = _keep_platform_metadata(obj, existing)
                same = _user_metadata(merged) == _user_metadata(existing)
                out.append((existing if same else merged, "unchanged" if same else "configured"))
        else:
            out.append((obj, "configured" if existing is not None else "created"))
    return out


def _live(listing: Callable[[type[Any], str | None], list[Any]], ns: str) -> int:
    """Plans and unfinished jobs of a namespace: every pass reads them all, so one tenant
    holding thousands would slow every tenant's backups."""
    unfinished = sum(
        1
        for cls in (BackupJob, RestoreJob)
        for job in listing(cls, ns)
        if job.status.phase not in ("Succeeded", "Failed")
    )
    return len(listing(Plan, ns)) + unfinished


def _user_metadata(obj: Any) -> tuple[dict[str, str], dict[str, str]]:
    return dict(obj.metadata.labels or {}), dict(obj.metadata.annotations or {})


def _keep_platform_metadata(obj: Any, existing: Any) -> Any:
    """``obj`` with the platform's labels and annotations of ``existing`` kept: a job's
    spec is immutable, but its own labels and annotations may change (kubectl's apply)."""

    def merged(new: Any, old: Any) -> dict[str, str]:
        kept = {k: v for k, v in (old or {}).items() if k.startswith(RESERVED_PREFIX)}
        return {**kept, **(new or {})}

    meta = attrs.evolve(
        obj.metadata,
        labels=merged(obj.metadata.labels, existing.metadata.labels),
        annotations=merged(obj.metadata.annotations, existing.metadata.annotations),
    )
    return with_metadata(obj, meta)


def _check(obj: Any, catalog: Catalog, tenant: str | None) -> list[tuple[str, str]]:
    if isinstance(obj, _PLATFORM_KINDS):
        raise ValidationError(
            [("kind", f"{obj.kind} objects are created by the platform, not applied")]
        )
    if tenant is not None:
        _check_tenant(obj, tenant)
    if isinstance(obj, Plan):
        if not obj.spec.schedule.cron:  # legal in Cozystack's schema: said, not refused
            return [("spec.schedule.cron", f"empty: {NO_SCHEDULE}")]
        check_cron(obj.spec.schedule.cron, obj.spec.schedule.time_zone)
    if isinstance(obj, BackupClass):
        _check_durations(obj)
        return catalog.validate(obj)
    return []


def _check_durations(cls: BackupClass) -> None:
    """Durations past a century mean "forever" and would overflow date arithmetic: refused
    here, not in the type, so a class stored before this check still loads (retention
    treats its ``maxAge`` as nothing being that old)."""
    spec = cls.spec
    places = [("spec", spec.retention, spec.verification)]
    places += [
        (f"spec.strategies[{i}]", b.retention, b.verification)
        for i, b in enumerate(spec.strategies)
    ]
    problems = []
    for where, retention, verification in places:
        for field, value in (
            ("retention.maxAge", retention.max_age if retention else None),
            ("verification.every", verification.every if verification else None),
        ):
            if value is not None and parse_duration(value) > MAX_DURATION:
                problems.append(
                    (
                        f"{where}.{field}",
                        f"{value!r} is longer than {MAX_DURATION.days} days (a century)",
                    )
                )
    if problems:
        raise ValidationError(problems)


def _check_tenant(obj: Any, tenant: str) -> None:
    if not isinstance(obj, TENANT_KINDS):
        raise ValidationError(
            [
                (
                    "kind",
                    f"{obj.kind} objects are managed by the platform operator; "
                    "tenants create BackupJob, Plan and RestoreJob objects",
                )
            ]
        )
    if obj.metadata.namespace != tenant:
        raise ValidationError([("metadata.namespace", f"must be your own namespace {tenant!r}")])
    for field, keys in (
        ("metadata.labels", obj.metadata.labels),
        ("metadata.annotations", obj.metadata.annotations),
    ):
        for key in keys:
            if key.startswith(RESERVED_PREFIX):
                raise ValidationError([(field, f"{key!r} is reserved for the platform")])
