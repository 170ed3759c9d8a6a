"""Minimal Plan firing (the full scheduler is issue #7): one job per due slot, never twice."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cozybackup_core import BackupJob, Plan, fire_due_plans
from cozybackup_core.testing import LocalPlatform

from conftest import SEEDS
from support.drivers import FilesDriver

UTC = dt.timezone.utc


def test_plan_fires_once_per_slot_with_deterministic_names(tmp_path: Path) -> None:
    now = [dt.datetime(2026, 11, 24, 1, 0, tzinfo=UTC)]
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,), clock=lambda: now[0])
    plat.apply((SEEDS / "plan-maria-nightly.yaml").read_text())  # created at 01:00
    assert fire_due_plans(plat.host) == []  # 01:00, before the 02:00 slot
    now[0] = dt.datetime(2026, 11, 24, 2, 0, 30, tzinfo=UTC)
    [job] = fire_due_plans(plat.host)
    assert job.metadata.name == "maria-nightly-backups-202611240200"
    assert job.spec.plan_ref is not None and job.spec.plan_ref.name == "maria-nightly-backups"
    assert fire_due_plans(plat.host) == []  # a second tick (or a restart) creates nothing
    stored = plat.host.objects.get(Plan, "tenant-user1", "maria-nightly-backups")
    assert stored is not None
    assert stored.status.last_schedule_time == dt.datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    assert stored.status.next_schedule_time == dt.datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
    assert len(plat.host.objects.list(BackupJob, "tenant-user1")) == 1


def test_invalid_cron_becomes_a_condition_naming_the_field(tmp_path: Path) -> None:
    plat = LocalPlatform(tmp_path / "home")
    text = (SEEDS / "plan-maria-nightly.yaml").read_text().replace('"0 2 * * *"', '"0 25 * * *"')
    plat.apply(text)
    assert fire_due_plans(plat.host) == []
    stored = plat.host.objects.get(Plan, "tenant-user1", "maria-nightly-backups")
    assert stored is not None
    [cond] = stored.status.conditions
    assert (cond.type, cond.status, cond.reason) == ("Ready", "False", "InvalidSchedule")
    assert cond.message.startswith(
        "spec.schedule.cron: '0 25 * * *' is not a valid cron expression"
    )


def test_the_runner_wakes_for_the_next_plan_slot_whatever_its_interval(tmp_path: Path) -> None:
    """Slot to job does not wait for the interval: the pause ends half a second after the
    next slot of any Plan (and is never under a second, even for a slot in the past)."""
    from cozybackup_core._engine.runner import Runner

    from support.manifests import FILES_CLASS

    now = [dt.datetime(2026, 12, 5, 8, 0, 20, tzinfo=dt.timezone.utc)]
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,), clock=lambda: now[0])
    plat.apply(FILES_CLASS)
    runner = Runner(plat.engine, drills=False)
    assert runner.pause(300) == 300  # no Plan
    plat.apply(
        """
apiVersion: backups.cozystack.io/v1alpha1
kind: Plan
metadata: {name: p, namespace: tenant-a}
spec:
  applicationRef: {apiGroup: apps.example.com, kind: Directory, name: d}
  backupClassName: files
  schedule: {type: cron, cron: "*/5 * * * *"}
"""
    )
    runner.run_pass()  # the Plan's next slot is recorded: 08:05:00
    assert runner.pause(300) == 280.5
    assert runner.pause(60) == 60
    now[0] = dt.datetime(2026, 12, 5, 8, 4, 59, 900000, tzinfo=dt.timezone.utc)
    assert runner.pause(300) == 1.0
