"""Plans: cron schedules that stamp out BackupJobs.

Job names are deterministic per slot (``<plan>-<yyyymmddhhmm>``), so a restart never
creates a duplicate.  This is the minimal scheduler (latest due slot only, like a
Kubernetes CronJob without catch-up); missed-run policies come with retention.
"""

from __future__ import annotations

import datetime as dt

import attrs
from croniter import croniter

from ._errors import ConflictError, ValidationError
from ._host import Host
from ._types import BackupJob, BackupJobSpec, Condition, LocalObjectRef, ObjectMeta, Plan

LABEL_PLAN = "backups.cozystack.io/plan"


def check_cron(expr: str) -> None:
    """Raise a field-path error if ``expr`` is not a valid cron expression."""
    if not croniter.is_valid(expr):
        raise ValidationError(
            [
                (
                    "spec.schedule.cron",
                    f'{expr[:80]!r} is not a valid cron expression (5 fields, e.g. "0 2 * * *")',
                )
            ]
        )


def slot_job_name(plan: str, slot: dt.datetime) -> str:
    return f"{plan[:240]}-{slot.strftime('%Y%m%d%H%M')}"


def fire_due_plans(host: Host) -> list[BackupJob]:
    """Create the BackupJob of each Plan's latest due slot, once."""
    created: list[BackupJob] = []
    now = host.now()
    for plan in host.objects.list(Plan):
        if plan.spec.suspend:
            continue
        try:
            check_cron(plan.spec.schedule.cron)
        except ValidationError as exc:
            cond = Condition(
                type="Ready",
                status="False",
                reason="InvalidSchedule",
                message=str(exc),
                last_transition_time=now,
            )
            if plan.status.conditions != (cond,):
                host.objects.update_status(
                    attrs.evolve(plan, status=attrs.evolve(plan.status, conditions=(cond,)))
                )
            continue
        base = plan.status.last_schedule_time or plan.metadata.creation_timestamp or now
        slot: dt.datetime = croniter(plan.spec.schedule.cron, now).get_prev(dt.datetime)
        nxt: dt.datetime = croniter(plan.spec.schedule.cron, now).get_next(dt.datetime)
        status = attrs.evolve(
            plan.status,
            next_schedule_time=nxt,
            conditions=(
                Condition(
                    type="Ready",
                    status="True",
                    reason="Scheduled",
                    message="",
                    last_transition_time=plan.status.conditions[0].last_transition_time
                    if plan.status.conditions
                    else now,
                ),
            ),
        )
        if slot > base:
            ns = plan.metadata.namespace
            job = BackupJob(
                metadata=ObjectMeta(
                    name=slot_job_name(plan.metadata.name, slot),
                    namespace=ns,
                    labels={LABEL_PLAN: plan.metadata.name},
                ),
                spec=BackupJobSpec(
                    application_ref=plan.spec.application_ref,
                    backup_class_name=plan.spec.backup_class_name,
                    plan_ref=LocalObjectRef(name=plan.metadata.name),
                ),
            )
            try:
                created.append(host.objects.create(job))
            except ConflictError:
                pass  # already created before a restart
            status = attrs.evolve(status, last_schedule_time=slot)
        if status != plan.status:
            host.objects.update_status(attrs.evolve(plan, status=status))
    return created
