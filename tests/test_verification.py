"""Verification with a real driver (SQLite from plugins-example): checksum re-reads and
scheduled restore drills, recorded in Backup.status.lastVerified."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest
from cozybackup_sqlite import SQLiteDriver

from cozybackup_core import Backup
from cozybackup_core.testing import LocalPlatform, local_location_yaml

from support.drivers import FILES, FilesDriver

UTC = dt.timezone.utc
NS = "tenant-a"
CLASS = """
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {name: sqlite}
spec:
  verification: {restoreDrill: true, every: 1d}
  strategies:
  - application: {apiGroup: apps.example.com, kind: SQLiteDatabase}
    strategyRef: {kind: SQLite, name: sqlite}
"""


#: Both formats: the default (chunks in the tenant's repository) and the stream format.
FORMATS = pytest.mark.parametrize("dedup", [True, False], ids=["chunks", "streams"])


def _setup(tmp_path: Path, now: list[dt.datetime], dedup: bool = True) -> LocalPlatform:
    plat = LocalPlatform(
        tmp_path / "home", drivers=(SQLiteDriver, FilesDriver), clock=lambda: now[0]
    )
    plat.apply(CLASS, local_location_yaml(deduplication=dedup))
    db = tmp_path / "app.sqlite"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE u(x);")
    con.executemany("INSERT INTO t(v) VALUES (?)", [(f"row {i}",) for i in range(1000)])
    con.commit()
    con.close()
    ref = plat.declare_app(
        NS, "db", "SQLiteDatabase", {"path": str(db)}, api_group="apps.example.com"
    )
    assert plat.backup(NS, ref, "b1", "sqlite").status.phase == "Succeeded"
    return plat


def _stored_data(plat: LocalPlatform) -> Path:
    """The one file holding the backup's data: its pack, or its stream."""
    [found] = [p for p in plat.stored_files() if p.suffix == ".zst" or "packs" in p.parts]
    return found


def _backup(plat: LocalPlatform, name: str = "b1") -> Backup:
    b = plat.host.objects.get(Backup, NS, name)
    assert b is not None
    return b


@FORMATS
def test_checksum_verification_is_recorded(tmp_path: Path, dedup: bool) -> None:
    now = [dt.datetime(2026, 11, 24, 10, 0, tzinfo=UTC)]
    plat = _setup(tmp_path, now, dedup)
    v = plat.engine.verify(_backup(plat)).status.last_verified
    assert v is not None and (v.method, v.result, v.time) == ("Checksums", "Passed", now[0])
    stream = _stored_data(plat)
    raw = bytearray(stream.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    stream.write_bytes(bytes(raw))
    v = plat.engine.verify(_backup(plat)).status.last_verified
    assert v is not None and v.result == "Failed"
    assert "corrupted" in v.message or "does not match" in v.message


def test_scheduled_restore_drill(tmp_path: Path) -> None:
    now = [dt.datetime(2026, 11, 24, 10, 0, tzinfo=UTC)]
    plat = _setup(tmp_path, now)
    [drilled] = plat.engine.run_due_drills()
    v = drilled.status.last_verified
    assert v is not None and (v.method, v.result) == ("RestoreDrill", "Passed"), v
    assert "integrity check passed, 2 tables" in v.message
    assert str(tmp_path) not in v.message
    now[0] += dt.timedelta(hours=12)
    assert plat.engine.run_due_drills() == []  # passed within `every`
    now[0] += dt.timedelta(hours=13)
    assert len(plat.engine.run_due_drills()) == 1
    events = plat.host.events(NS, "Backup", "b1")
    assert [e["reason"] for e in events] == ["Verified", "Verified"]


@FORMATS
def test_drill_of_a_corrupted_backup_fails_and_says_so(tmp_path: Path, dedup: bool) -> None:
    now = [dt.datetime(2026, 11, 24, 10, 0, tzinfo=UTC)]
    plat = _setup(tmp_path, now, dedup)
    stream = _stored_data(plat)
    stream.write_bytes(stream.read_bytes()[:-50])
    [drilled] = plat.engine.run_due_drills()
    v = drilled.status.last_verified
    assert v is not None and v.result == "Failed"
    # The stream's checksum, or the pack found shorter than its index says.
    assert any(word in v.message for word in ("checksum", "corrupted", "truncated")), v.message


def test_drill_without_driver_support_is_reported(tmp_path: Path) -> None:
    now = [dt.datetime(2026, 11, 24, 10, 0, tzinfo=UTC)]
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,), clock=lambda: now[0])
    plat.apply(
        CLASS.replace("SQLiteDatabase", "Directory").replace("kind: SQLite,", "kind: Files,")
    )
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    ref = plat.declare_app(
        NS, "d", "Directory", {"path": str(tmp_path / "d")}, api_group=FILES.api_group
    )
    plat.backup(NS, ref, "b1", "sqlite")
    [drilled] = plat.engine.run_due_drills()
    v = drilled.status.last_verified
    assert v is not None and v.result == "Failed"
    assert v.message == "the files driver cannot create a scratch target for drills"


def test_plan_fires_and_the_runner_backs_it_up_under_forbid(tmp_path: Path) -> None:
    """A Plan with a real driver: the slot's job runs; a slot due while one is still
    pending is held back and recorded; the next pass runs again."""
    from cozybackup_core import Plan, fire_due_plans

    now = [dt.datetime(2026, 11, 24, 9, 59, tzinfo=UTC)]
    plat = _setup(tmp_path, now)
    plat.apply("""
apiVersion: backups.cozystack.io/v1alpha1
kind: Plan
metadata: {name: hourly, namespace: tenant-a}
spec:
  applicationRef: {apiGroup: apps.example.com, kind: SQLiteDatabase, name: db}
  backupClassName: sqlite
  schedule: {cron: "0 * * * *"}
""")
    now[0] = dt.datetime(2026, 11, 24, 10, 0, 5, tzinfo=UTC)
    [job] = fire_due_plans(plat.host)
    now[0] = dt.datetime(2026, 11, 24, 11, 0, 5, tzinfo=UTC)
    assert fire_due_plans(plat.host) == []  # the 10:00 job has not run yet: Forbid
    plan = plat.host.objects.get(Plan, NS, "hourly")
    assert plan is not None and plan.status.missed_runs == 1
    done = plat.engine.run_once()
    assert [(j.metadata.name, j.status.phase) for j in done] == [(job.metadata.name, "Succeeded")]
    backup = _backup(plat, job.metadata.name)
    assert backup.spec.plan_ref is not None and backup.spec.plan_ref.name == "hourly"
    now[0] = dt.datetime(2026, 11, 24, 12, 0, 5, tzinfo=UTC)
    [second] = fire_due_plans(plat.host)
    assert second.metadata.name == "hourly-202611241200"
    plan = plat.host.objects.get(Plan, NS, "hourly")
    assert plan is not None and plan.status.last_successful_time is not None
