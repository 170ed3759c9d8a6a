"""Plans: cron schedules that stamp out BackupJobs.

Job names are deterministic per slot (``<plan>-<yyyymmddhhmm>``, UTC), so a restart or
a crash between creating a job and recording it never creates a duplicate.  Every slot
either gets its job or is counted in ``status.missedRuns`` with a condition that says why.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

import attrs

from .._api.errors import ConflictError, CozyError, ValidationError
from .._api.types import (
    LABEL_PLAN,
    BackupJob,
    BackupJobSpec,
    Condition,
    LocalObjectRef,
    ObjectMeta,
    Plan,
    PlanStatus,
    Schedule,
    label_value,
)
from .._policy.schedule import Decision, decide, parse
from .port import Host

log = logging.getLogger("cozybackup.plans")

ACTIVE = (None, "Pending", "Running")


#: The Plan conditions a scheduling tick writes.
_TICK_CONDITIONS = ("Ready", "Missed")
NO_SCHEDULE = "the Plan makes no backups until it has a schedule"


def check_cron(expr: str, time_zone: str | None = None) -> None:
    """Raise a field-path error if the schedule is not valid."""
    parse(Schedule(cron=expr, time_zone=time_zone))


def slot_job_name(plan: str, slot: dt.datetime) -> str:
    # Cut to fit 253 characters; a cut that ends in '.' or '-' would not be a valid name.
    return f"{plan[:240].rstrip('.-')}-{slot.astimezone(dt.timezone.utc).strftime('%Y%m%d%H%M')}"


def _cond(
    type_: str, status: str, reason: str, message: str, now: dt.datetime, old: tuple[Condition, ...]
) -> Condition:
    for c in old:  # keep the transition time while nothing changes
        if c.type == type_ and c.status == status and c.reason == reason:
            return attrs.evolve(c, message=message)
    return Condition(
        type=type_, status=status, reason=reason, message=message, last_transition_time=now
    )


def fire_due_plans(host: Host) -> list[BackupJob]:
    """One scheduling tick over every Plan; returns the BackupJobs created."""
    created: list[BackupJob] = []
    by_plan: dict[tuple[str | None, str], list[BackupJob]] = {}
    for j in host.objects.list(BackupJob):
        if j.spec.plan_ref is not None:
            by_plan.setdefault((j.metadata.namespace, j.spec.plan_ref.name), []).append(j)
    for plan in host.objects.list(Plan):
        mine = by_plan.get((plan.metadata.namespace, plan.metadata.name), [])
        try:
            status, job = _tick(host, plan, mine)
            # Conditions another stage owns (ObjectivesMet) stay as they are.
            kept = (c for c in plan.status.conditions if c.type not in _TICK_CONDITIONS)
            status = attrs.evolve(status, conditions=(*status.conditions, *kept))
            if job is not None:
                created.append(job)
            if status != plan.status:
                host.objects.update_status(attrs.evolve(plan, status=status))
        except Exception as exc:  # noqa: BLE001 - one Plan never stops the others; logged
            _failed(host, plan, exc)
    return created


def next_slot(host: Host) -> dt.datetime | None:
    """The earliest future slot of any Plan (its ``status.nextScheduleTime``), or None."""
    now = host.now()
    times = [t for p in host.objects.list(Plan) if (t := p.status.next_schedule_time) and t > now]
    return min(times, default=None)


def _failed(host: Host, plan: Plan, exc: Exception) -> None:
    """Record on the Plan that it could not be scheduled (tenant-safe text only)."""
    ref = uuid.uuid4().hex[:12]
    log.error(
        "Plan %s/%s could not be scheduled (reference %s)",
        plan.metadata.namespace,
        plan.metadata.name,
        ref,
        exc_info=exc,
    )
    if isinstance(exc, CozyError):
        why = exc.message
    else:
        why = (
            "internal error while scheduling this Plan; the platform operator can find the "
            f"details in the controller log under reference {ref}"
        )
    now = host.now()
    ready = _cond("Ready", "False", "SchedulingFailed", why, now, plan.status.conditions)
    try:
        host.objects.update_status(
            attrs.evolve(plan, status=attrs.evolve(plan.status, conditions=(ready,)))
        )
    except Exception:
        log.exception("could not record the failure on Plan %s", plan.metadata.name)


def _tick(host: Host, plan: Plan, mine: list[BackupJob]) -> tuple[PlanStatus, BackupJob | None]:
    now = host.now()
    st = plan.status
    done = [
        j.status.completed_at
        for j in mine
        if j.status.phase == "Succeeded" and j.status.completed_at
    ]
    if done:
        st = attrs.evolve(st, last_successful_time=max(done))
    if not plan.spec.schedule.cron:
        why = f"spec.schedule.cron is empty: {NO_SCHEDULE}"
        ready = _cond("Ready", "False", "NoSchedule", why, now, st.conditions)
        return attrs.evolve(st, next_schedule_time=None, conditions=(ready,)), None
    try:
        spec = parse(plan.spec.schedule)
    except ValidationError as exc:
        ready = _cond("Ready", "False", "InvalidSchedule", str(exc), now, st.conditions)
        return attrs.evolve(st, next_schedule_time=None, conditions=(ready,)), None
    if plan.spec.suspend:
        ready = _cond(
            "Ready",
            "False",
            "Suspended",
            "spec.suspend is true: no jobs are created",
            now,
            st.conditions,
        )
        # Slots passing while suspended are not missed: the tenant asked for none.
        return attrs.evolve(
            st, last_schedule_time=now, next_schedule_time=None, conditions=(ready,)
        ), None
    base = st.last_schedule_time or plan.metadata.creation_timestamp or now
    d = decide(spec, base, now, plan.spec.starting_deadline_seconds)
    conditions = [
        _cond(
            "Ready",
            "True",
            "Scheduled",
            f"next run at {d.next_slot.isoformat()}",
            now,
            st.conditions,
        )
    ]
    job: BackupJob | None = None
    missed, reason, why = d.missed, "CaughtUp", _caught_up_message(d)
    if d.run is None and d.missed:
        reason, why = (
            "StartingDeadlineExceeded",
            (
                f"{d.missed} run(s) missed, the latest at {d.last_missed.isoformat() if d.last_missed else '?'}: "
                f"they could not start within spec.startingDeadlineSeconds"
            ),
        )
    if d.run is not None:
        active = [j for j in mine if j.status.phase in ACTIVE]
        policy = plan.spec.concurrency_policy
        if policy == "Replace":
            for j in [j for j in active if j.status.phase in (None, "Pending")]:
                host.objects.delete(BackupJob, j.metadata.namespace, j.metadata.name)
            active = [j for j in active if j.status.phase == "Running"]
        if active and policy != "Allow":
            missed += 1
            reason = "ConcurrencyForbidden"
            why = (
                f"the run at {d.run.isoformat()} was skipped: BackupJob {active[0].metadata.name} "
                f"of this Plan is still {active[0].status.phase or 'Pending'}"
            )
            st = attrs.evolve(st, last_missed_time=d.run)
        else:
            job = _create(host, plan, d.run)
    if missed:
        st = attrs.evolve(
            st,
            missed_runs=st.missed_runs + missed,
            last_missed_time=max(filter(None, (st.last_missed_time, d.last_missed))),
        )
        conditions.append(_cond("Missed", "True", reason, why, now, st.conditions))
    else:
        conditions.extend(c for c in st.conditions if c.type == "Missed")  # keep the last report
    return attrs.evolve(
        st,
        last_schedule_time=d.last_slot or st.last_schedule_time,
        next_schedule_time=d.next_slot,
        conditions=tuple(conditions),
    ), job


def _caught_up_message(d: Decision) -> str:
    bound = "at least " if d.capped else ""
    when = d.last_missed.isoformat() if d.last_missed else "?"
    return (
        f"{bound}{d.missed} earlier run(s) were due while no runner was active (the latest at "
        f"{when}); caught up once with the run at {d.run.isoformat() if d.run else '?'}"
    )


def _create(host: Host, plan: Plan, slot: dt.datetime) -> BackupJob | None:
    job = BackupJob(
        metadata=ObjectMeta(
            name=slot_job_name(plan.metadata.name, slot),
            namespace=plan.metadata.namespace,
            labels={LABEL_PLAN: label_value(plan.metadata.name)},
        ),
        spec=BackupJobSpec(
            application_ref=plan.spec.application_ref,
            backup_class_name=plan.spec.backup_class_name,
            plan_ref=LocalObjectRef(name=plan.metadata.name),
        ),
    )
    try:
        return host.objects.create(job)
    except ConflictError:
        return None  # created before a crash or restart: the slot is already served
