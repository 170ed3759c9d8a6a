"""Objectives (RPO/RTO) judged on every pass and shown on the Plan, with a real driver
(SQLite from plugins-example, which drills) and a clock the test moves."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

from cozybackup_sqlite import SQLiteDriver

from cozybackup_core import Plan, Runner
from cozybackup_core.testing import LocalPlatform

UTC = dt.timezone.utc
NS = "tenant-a"
CLASS = """
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {name: sqlite}
spec:
  objectives: {rpo: 26h, rto: 1h}
  strategies:
  - application: {apiGroup: apps.example.com, kind: SQLiteDatabase}
    strategyRef: {kind: SQLite, name: sqlite}
    verification: {restoreDrill: {drill}, every: 1d}
"""
PLAN = """
apiVersion: backups.cozystack.io/v1alpha1
kind: Plan
metadata: {name: nightly, namespace: tenant-a}
spec:
  applicationRef: {apiGroup: apps.example.com, kind: SQLiteDatabase, name: db}
  backupClassName: sqlite
  schedule: {cron: "0 2 * * *"}
"""


def setup(tmp_path: Path, now: list[dt.datetime], drill: bool) -> tuple[LocalPlatform, Runner]:
    plat = LocalPlatform(tmp_path / "home", drivers=(SQLiteDriver,), clock=lambda: now[0])
    plat.apply(CLASS.replace("{drill}", "true" if drill else "false"))
    db = tmp_path / "app.sqlite"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    con.executemany("INSERT INTO t(v) VALUES (?)", [(f"row {i}",) for i in range(500)])
    con.commit()
    con.close()
    plat.declare_app(NS, "db", "SQLiteDatabase", {"path": str(db)}, api_group="apps.example.com")
    plat.apply(PLAN)
    return plat, Runner(plat.engine)


def verdict(plat: LocalPlatform) -> tuple[str, str, str]:
    plan = plat.host.objects.get(Plan, NS, "nightly")
    assert plan is not None
    [c] = [c for c in plan.status.conditions if c.type == "ObjectivesMet"]
    return c.status, c.reason, c.message


def reasons(plat: LocalPlatform) -> list[str]:
    return [e["reason"] for e in plat.host.events(NS, "Plan", "nightly")]


def test_rpo_flips_when_the_newest_good_backup_ages_past_it_and_back(tmp_path: Path) -> None:
    now = [dt.datetime(2026, 12, 6, 1, 0, tzinfo=UTC)]
    plat, runner = setup(tmp_path, now, drill=True)
    runner.run_pass()
    status, reason, message = verdict(plat)
    assert (status, reason) == ("False", "RPOExceeded")
    assert "no good backup yet" in message
    now[0] = dt.datetime(2026, 12, 6, 2, 0, 30, tzinfo=UTC)  # the Plan's slot: a backup
    report = runner.run_pass()
    assert [j.status.phase for j in report.finished] == ["Succeeded"]
    runner.run_pass()  # the drill of the new backup (due: none passed yet)
    status, reason, message = verdict(plat)
    assert (status, reason) == ("True", "ObjectivesMet"), message
    plan = plat.host.objects.get(Plan, NS, "nightly")
    assert plan is not None and plan.status.objectives is not None
    rto = plan.status.objectives.rto
    assert rto is not None and rto.met and rto.measured_seconds is not None
    assert rto.method.startswith("restore drill of Backup nightly-202612060200")
    written = plan.metadata.resource_version
    runner.run_pass()  # at rest: the Plan is not rewritten
    again = plat.host.objects.get(Plan, NS, "nightly")
    assert again is not None and again.metadata.resource_version == written

    # The next night's run is missed (suspended): past 26h the RPO is exceeded.
    plat.apply(PLAN.replace("schedule:", "suspend: true\n  schedule:"))
    now[0] = dt.datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
    runner.run_pass()
    status, reason, message = verdict(plat)
    assert (status, reason) == ("False", "RPOExceeded")
    # taken at 02:00:30 the day before: 26h 59m 30s old
    assert "RPO 26h: newest good backup is 26h old, 59m past the objective" in message
    assert reasons(plat).count("RPOExceeded") == 2  # once at first, once now
    plat.apply(PLAN)  # resumed: the next slot makes a good backup, and it is met again
    now[0] = dt.datetime(2026, 12, 8, 2, 0, 30, tzinfo=UTC)
    runner.run_pass()
    runner.run_pass()
    assert verdict(plat)[:2] == ("True", "ObjectivesMet")


def test_without_a_passed_drill_the_rto_is_unproven(tmp_path: Path) -> None:
    now = [dt.datetime(2026, 12, 6, 1, 59, tzinfo=UTC)]
    plat, runner = setup(tmp_path, now, drill=False)
    now[0] = dt.datetime(2026, 12, 6, 2, 0, 30, tzinfo=UTC)
    runner.run_pass()
    status, reason, message = verdict(plat)
    assert (status, reason) == ("False", "RTOUnproven")
    assert "RPO 26h: newest good backup" in message  # the RPO is met and said too
