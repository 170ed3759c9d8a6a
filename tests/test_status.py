"""``cozybackup status``: where each application stands, read by a person at 2 a.m. or by a
check (exit 1 when an objective is missed).  The CLI runs on the real clock, so the
platform's clock is set hours before it (margins of hours, never a timing assertion)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from test_objectives import NS, UTC, setup

from support.cli import cli


def test_status_says_what_is_protected_and_exits_1_when_an_objective_is_missed(
    tmp_path: Path,
) -> None:
    real = dt.datetime.now(UTC)
    now = [real - dt.timedelta(hours=30)]
    plat, runner = setup(tmp_path, now, drill=True)
    app = plat.declare_app(
        NS,
        "db",
        "SQLiteDatabase",
        {"path": str(tmp_path / "app.sqlite")},
        api_group="apps.example.com",
    )
    assert plat.backup(NS, app, "b1", "sqlite").status.phase == "Succeeded"
    now[0] = real - dt.timedelta(hours=29)
    runner.run_pass()  # the drill, and the objectives judged

    missed = cli(plat.home, "status")
    assert missed.returncode == 1, missed.stderr
    lines = missed.stdout.splitlines()
    assert lines[0].split() == [
        "NAMESPACE",
        "APPLICATION",
        "BACKUPS",
        "SIZE",
        "LAST",
        "GOOD",
        "VERIFIED",
        "DRILL",
        "RPO",
        "RTO",
        "OBJECTIVES",
    ]
    [row] = lines[1:]
    assert row.split()[:2] == [NS, "SQLiteDatabase/db"]
    assert re.search(
        r"\b1 .* (29|30)h ago .* Passed 29h ago in \d+s +(29|30)h/26h +\d+s/1h +"
        r"MISSED: RPO (29|30)h > 26h$",
        row,
    ), row
    assert "1 application missing an objective" in missed.stderr

    now[0] = real - dt.timedelta(hours=1)
    assert plat.backup(NS, app, "b2", "sqlite").status.phase == "Succeeded"
    runner.run_pass()
    met = cli(plat.home, "status", "-o", "json")
    assert met.returncode == 0, met.stderr
    [doc] = json.loads(met.stdout)
    assert doc["applicationRef"] == {
        "apiGroup": "apps.example.com",
        "kind": "SQLiteDatabase",
        "name": "db",
    }
    assert doc["backups"] >= 2 and doc["sizeBytes"] > 0  # the Plan may have fired too
    assert doc["plans"] == ["nightly"]
    assert (doc["objectivesMet"], doc["objectives"]) == (True, "met")
    assert doc["lastDrill"]["result"] == "Passed"


def test_status_of_an_empty_namespace_says_so(tmp_path: Path) -> None:
    now = [dt.datetime.now(UTC)]
    plat, _ = setup(tmp_path, now, drill=False)
    out = cli(plat.home, "status", "-n", "tenant-nobody")
    assert out.returncode == 0
    assert out.stdout == ""
    assert "No protected applications in namespace tenant-nobody" in out.stderr
    # The Plan alone makes its application one to report (nothing backed up yet).
    listed = cli(plat.home, "status", "-n", NS)
    assert listed.returncode == 0, listed.stderr
    [row] = listed.stdout.splitlines()[1:]
    assert re.search(r"SQLiteDatabase/db +0 +- +never +never +- +", row), row
