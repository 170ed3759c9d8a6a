"""The scheduler, property-tested: for any schedule and any sequence of clock jumps and
restarts (including a crash between creating a job and recording it), no slot is run twice
and every slot is either run or counted as missed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cozybackup_core import BackupJob, Plan, ValidationError, fire_due_plans
from cozybackup_core._api.types import Schedule
from cozybackup_core._policy.schedule import decide, parse
from cozybackup_core.testing import LocalPlatform

UTC = dt.timezone.utc
START = dt.datetime(2026, 3, 1, 0, 0, 30, tzinfo=UTC)
CRONS = [
    "* * * * *",
    "*/7 * * * *",
    "0 * * * *",
    "15 2 * * *",
    "@hourly",
    "@daily",
    "CRON_TZ=Europe/Berlin 30 2 * * *",
    "0 0 * * 1",
    "5,35 * * * *",
]


def _plan(cron: str, policy: str = "Allow", deadline: int | None = None) -> str:
    extra = f"  startingDeadlineSeconds: {deadline}\n" if deadline else ""
    return f"""
apiVersion: backups.cozystack.io/v1alpha1
kind: Plan
metadata: {{name: p, namespace: t}}
spec:
  applicationRef: {{kind: Postgres, name: db}}
  backupClassName: cozy-default
  schedule: {{cron: "{cron}"}}
  concurrencyPolicy: {policy}
{extra}"""


def _slots(cron: str, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    spec = parse(Schedule(cron=cron))
    out, t = [], start
    while (t := spec.next_after(t)) <= end:
        out.append(t)
    return out


class Crash(Exception):
    pass


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cron=st.sampled_from(CRONS),
    jumps=st.lists(st.integers(min_value=0, max_value=3 * 24 * 3600), min_size=1, max_size=12),
    crashes=st.lists(st.booleans(), min_size=12, max_size=12),
    deadline=st.sampled_from([None, None, 90, 3600]),
)
def test_no_slot_twice_none_lost(
    tmp_path_factory: pytest.TempPathFactory,
    cron: str,
    jumps: list[int],
    crashes: list[bool],
    deadline: int | None,
) -> None:
    now = [START]
    home = tmp_path_factory.mktemp("home")
    plat = LocalPlatform(home, clock=lambda: now[0])
    plat.apply(_plan(cron, "Allow", deadline))
    for jump, crash in zip(jumps, crashes, strict=False):
        now[0] += dt.timedelta(seconds=jump)
        # A "restart": a new host object over the same state; sometimes the tick dies
        # after creating its job but before the Plan's status is written.
        host = LocalPlatform(home, clock=lambda: now[0]).host
        if crash:
            real = host.objects.update_status

            def dying(obj, real=real):  # type: ignore[no-untyped-def]
                if isinstance(obj, Plan):
                    raise Crash
                return real(obj)

            host.objects.update_status = dying  # type: ignore[method-assign]
        try:
            fire_due_plans(host)
        except Crash:
            pass
    fire_due_plans(LocalPlatform(home, clock=lambda: now[0]).host)  # a last clean tick

    slots = _slots(cron, START, now[0])
    jobs = plat.host.objects.list(BackupJob, "t")
    names = [j.metadata.name for j in jobs]
    assert len(names) == len(set(names))
    slot_names = {f"p-{s.strftime('%Y%m%d%H%M')}" for s in slots}
    assert set(names) <= slot_names, "a job for a time that is not a slot"
    plan = plat.host.objects.get(Plan, "t", "p")
    assert plan is not None
    # Every slot is accounted for: run, or counted as missed (crashes may count twice).
    assert len(jobs) + plan.status.missed_runs >= len(slots)
    if not any(crashes[: len(jumps)]):
        assert len(jobs) + plan.status.missed_runs == len(slots)
    if plan.status.missed_runs:
        assert any(c.type == "Missed" for c in plan.status.conditions)


def test_every_minute_fires_every_minute(tmp_path: Path) -> None:
    now = [START]
    plat = LocalPlatform(tmp_path, clock=lambda: now[0])
    plat.apply(_plan("* * * * *"))
    for _ in range(5):
        now[0] += dt.timedelta(minutes=1)
        assert len(fire_due_plans(plat.host)) == 1
    plan = plat.host.objects.get(Plan, "t", "p")
    assert plan is not None and plan.status.missed_runs == 0


def test_missed_runs_are_caught_up_once_and_recorded(tmp_path: Path) -> None:
    now = [START]
    plat = LocalPlatform(tmp_path, clock=lambda: now[0])
    plat.apply(_plan("0 * * * *"))
    now[0] += dt.timedelta(hours=5, minutes=10)  # the runner was down for five slots
    [job] = fire_due_plans(plat.host)
    assert job.metadata.name == "p-202603010500"
    plan = plat.host.objects.get(Plan, "t", "p")
    assert plan is not None and plan.status.missed_runs == 4
    [missed] = [c for c in plan.status.conditions if c.type == "Missed"]
    assert missed.reason == "CaughtUp" and "4 earlier run(s)" in missed.message


def test_starting_deadline_records_instead_of_running(tmp_path: Path) -> None:
    now = [START]
    plat = LocalPlatform(tmp_path, clock=lambda: now[0])
    plat.apply(_plan("0 * * * *", deadline=300))
    now[0] += dt.timedelta(hours=2, minutes=30)
    assert fire_due_plans(plat.host) == []
    plan = plat.host.objects.get(Plan, "t", "p")
    assert plan is not None and plan.status.missed_runs == 2
    assert [c.reason for c in plan.status.conditions if c.type == "Missed"] == [
        "StartingDeadlineExceeded"
    ]


def test_forbid_holds_back_a_second_job(tmp_path: Path) -> None:
    now = [START]
    plat = LocalPlatform(tmp_path, clock=lambda: now[0])
    plat.apply(_plan("*/10 * * * *", policy="Forbid"))
    now[0] += dt.timedelta(minutes=10)
    assert len(fire_due_plans(plat.host)) == 1  # stays Pending: nothing runs it
    now[0] += dt.timedelta(minutes=10)
    assert fire_due_plans(plat.host) == []
    plan = plat.host.objects.get(Plan, "t", "p")
    assert plan is not None and plan.status.missed_runs == 1
    assert [c.reason for c in plan.status.conditions if c.type == "Missed"] == [
        "ConcurrencyForbidden"
    ]


def test_replace_swaps_a_pending_job(tmp_path: Path) -> None:
    now = [START]
    plat = LocalPlatform(tmp_path, clock=lambda: now[0])
    plat.apply(_plan("*/10 * * * *", policy="Replace"))
    now[0] += dt.timedelta(minutes=10)
    fire_due_plans(plat.host)
    now[0] += dt.timedelta(minutes=10)
    [job] = fire_due_plans(plat.host)
    assert [j.metadata.name for j in plat.host.objects.list(BackupJob, "t")] == [job.metadata.name]


def test_time_zone_is_honoured(tmp_path: Path) -> None:
    now = [dt.datetime(2026, 5, 31, 23, 0, tzinfo=UTC)]
    plat = LocalPlatform(tmp_path, clock=lambda: now[0])
    plat.apply(_plan("CRON_TZ=Europe/Berlin 0 2 * * *"))
    now[0] = dt.datetime(2026, 6, 1, 0, 30, tzinfo=UTC)  # 02:30 in Berlin (CEST)
    [job] = fire_due_plans(plat.host)
    assert job.metadata.name == "p-202606010000"  # 02:00 CEST == 00:00 UTC


@pytest.mark.parametrize(
    ("cron", "zone", "field"),
    [
        ("0 2 * * * *", None, "spec.schedule.cron"),
        ("@reboot", None, "spec.schedule.cron"),
        ("61 * * * *", None, "spec.schedule.cron"),
        ("0 2 * * *", "Mars/Olympus", "spec.schedule.timeZone"),
        ("CRON_TZ=UTC 0 2 * * *", "Europe/Berlin", "spec.schedule.timeZone"),
    ],
)
def test_invalid_schedules_name_the_field(cron: str, zone: str | None, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse(Schedule(cron=cron, time_zone=zone))
    assert info.value.problems[0][0] == field


def test_decide_caps_runaway_catch_up() -> None:
    spec = parse(Schedule(cron="* * * * *"))
    d = decide(spec, START, START + dt.timedelta(days=400))
    assert d.capped and d.run is not None and d.missed >= 99_999
