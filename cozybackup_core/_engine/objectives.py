"""Objectives: the RPO and RTO a BackupClass promises (``objectives: {rpo: 26h, rto: 1h}``),
proven on every pass for every Plan's application and shown on the Plan.

* **Measured RPO** — the age of the application's newest good Backup: Ready, and its last
  check (checksums or a drill), if any, did not fail.  The Plan's status keeps the time
  that Backup was taken (``since``), not the age, so it is written only when that Backup
  or the verdict changes, not on every pass; readers (``cozybackup status``, metrics)
  compute the age.
* **Measured RTO** — the duration of the newest passed restore drill of the application,
  scaled to the newest Backup's size where it grew since the drilled one; ``method`` says
  which drill and how it was scaled.  No passed drill: ``RTOUnproven``.
* **Condition** ``ObjectivesMet`` on the Plan, ``True`` or ``False`` with the reason of
  the first objective missed (``RPOExceeded``, ``RTOUnproven``, ``RTOExceeded``) and by how
  much; an event when it changes.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterable

import attrs

from .._api.types import (
    ApplicationRef,
    Backup,
    Condition,
    Objectives,
    ObjectivesStatus,
    Plan,
    RPOStatus,
    RTOStatus,
)
from .._api.units import human_age, human_bytes, parse_duration
from .._catalog.catalog import Catalog
from .port import Host

log = logging.getLogger("cozybackup.objectives")

CONDITION = "ObjectivesMet"

AppKey = tuple[str, str, str, str]  # namespace, apiGroup, kind, name


def _app_key(namespace: str | None, ref: ApplicationRef) -> AppKey:
    return (namespace or "", ref.api_group, ref.kind, ref.name)


def _size(backup: Backup) -> int:
    return backup.status.artifact.size_bytes if backup.status.artifact else 0


def good(backup: Backup) -> bool:
    """Ready, and not found bad by its last check."""
    v = backup.status.last_verified
    return backup.status.phase == "Ready" and (v is None or v.result == "Passed")


def rpo_status(target: str, backups: Iterable[Backup], now: dt.datetime) -> RPOStatus:
    taken = [b.spec.taken_at for b in backups if good(b)]
    since = max(taken, default=None)
    met = since is not None and now - since <= parse_duration(target)
    return RPOStatus(target=target, since=since, met=met)


def rto_status(target: str, backups: list[Backup]) -> RTOStatus:
    drilled = [
        b
        for b in backups
        if b.status.last_drill is not None
        and b.status.last_drill.result == "Passed"
        and b.status.last_drill.duration_seconds
    ]
    if not drilled:
        return RTOStatus(target=target, method="no restore drill has passed")
    drill = max(drilled, key=lambda b: b.status.last_drill.time)  # type: ignore[union-attr]
    took = drill.status.last_drill.duration_seconds  # type: ignore[union-attr]
    assert took is not None
    ready = [b for b in backups if b.status.phase == "Ready"]
    newest = max(ready, key=lambda b: b.spec.taken_at) if ready else drill
    drilled_size, newest_size = _size(drill), _size(newest)
    scale = newest_size / drilled_size if drilled_size and newest_size > drilled_size else 1.0
    measured = math.ceil(took * scale)
    method = (
        f"restore drill of Backup {drill.metadata.name} ({human_bytes(drilled_size)}) "
        f"took {human_age(dt.timedelta(seconds=took))}"
    )
    if scale > 1:
        method += f", scaled by {scale:.2f} to the newest Backup's {human_bytes(newest_size)}"
    met = measured <= parse_duration(target).total_seconds()
    return RTOStatus(target=target, measured_seconds=measured, method=method, met=met)


def judge(
    objectives: Objectives, backups: list[Backup], now: dt.datetime
) -> tuple[ObjectivesStatus, str, str, str]:
    """The status, and the condition's status, reason and message."""
    rpo = rpo_status(objectives.rpo, backups, now) if objectives.rpo else None
    rto = rto_status(objectives.rto, backups) if objectives.rto else None
    missed: list[tuple[str, str]] = []
    said: list[str] = []
    if rpo is not None:
        if rpo.since is None:
            missed.append(("RPOExceeded", f"RPO {rpo.target}: no good backup yet"))
        else:
            age = now - rpo.since
            if rpo.met:
                said.append(f"RPO {rpo.target}: newest good backup {human_age(age)} old")
            else:
                over = age - parse_duration(rpo.target)
                missed.append(
                    (
                        "RPOExceeded",
                        f"RPO {rpo.target}: newest good backup is {human_age(age)} old, "
                        f"{human_age(over)} past the objective",
                    )
                )
    if rto is not None:
        if rto.measured_seconds is None:
            missed.append(
                (
                    "RTOUnproven",
                    f"RTO {rto.target}: unproven, no restore drill has passed "
                    "(the class's verification.restoreDrill makes them)",
                )
            )
        elif rto.met:
            said.append(f"RTO {rto.target}: {rto.method}")
        else:
            late = rto.measured_seconds - parse_duration(rto.target).total_seconds()
            missed.append(
                (
                    "RTOExceeded",
                    f"RTO {rto.target}: a restore takes about "
                    f"{human_age(dt.timedelta(seconds=rto.measured_seconds))}, "
                    f"{human_age(dt.timedelta(seconds=late))} past the objective ({rto.method})",
                )
            )
    status = ObjectivesStatus(rpo=rpo, rto=rto)
    if missed:
        return (
            status,
            "False",
            missed[0][0],
            "; ".join(m for _, m in missed + [("", s) for s in said]),
        )
    return status, "True", CONDITION, "; ".join(said)


def evaluate(host: Host, catalog: Catalog) -> list[Plan]:
    """Judge every Plan whose class declares objectives; returns the Plans rewritten.
    One Plan's failure is logged and the others go on."""
    now = host.now()
    by_app: dict[AppKey, list[Backup]] = {}
    for b in host.objects.list(Backup):
        by_app.setdefault(_app_key(b.metadata.namespace, b.spec.application_ref), []).append(b)
    changed = []
    for plan in host.objects.list(Plan):
        try:
            updated = _evaluate_one(host, catalog, plan, by_app, now)
        except Exception:
            log.exception("objectives of Plan %s/%s", plan.metadata.namespace, plan.metadata.name)
            continue
        if updated is not None:
            changed.append(updated)
    return changed


def objectives_for(catalog: Catalog, plan: Plan) -> Objectives | None:
    bc = catalog.classes.get(plan.spec.backup_class_name)
    if bc is None:
        return None
    binding = catalog.binding_for(bc.metadata.name, plan.spec.application_ref.group_kind)
    found = (binding.objectives if binding else None) or bc.spec.objectives
    return found if found is not None and (found.rpo or found.rto) else None


def _evaluate_one(
    host: Host,
    catalog: Catalog,
    plan: Plan,
    by_app: dict[AppKey, list[Backup]],
    now: dt.datetime,
) -> Plan | None:
    objectives = objectives_for(catalog, plan)
    others = tuple(c for c in plan.status.conditions if c.type != CONDITION)
    old = next((c for c in plan.status.conditions if c.type == CONDITION), None)
    if objectives is None:
        if plan.status.objectives is None and old is None:
            return None
        status = attrs.evolve(plan.status, objectives=None, conditions=others)
        return host.objects.update_status(attrs.evolve(plan, status=status))
    backups = by_app.get(_app_key(plan.metadata.namespace, plan.spec.application_ref), [])
    judged, cond_status, reason, message = judge(objectives, backups, now)
    if old is not None and (old.status, old.reason) == (cond_status, reason):
        cond = attrs.evolve(old, message=message)
    else:
        cond = Condition(
            type=CONDITION,
            status=cond_status,
            reason=reason,
            message=message,
            last_transition_time=now,
        )
    # The message holds ages, which change every pass: it is rewritten only with a change
    # of the verdict or of what it rests on, so a Plan at rest is not written each pass.
    if (
        judged == plan.status.objectives
        and old is not None
        and (old.status, old.reason)
        == (
            cond.status,
            cond.reason,
        )
    ):
        return None
    status = attrs.evolve(plan.status, objectives=judged, conditions=(*others, cond))
    updated = host.objects.update_status(attrs.evolve(plan, status=status))
    if old is None or (old.status, old.reason) != (cond.status, cond.reason):
        host.event(updated, "Normal" if cond_status == "True" else "Warning", reason, message)
    return updated
