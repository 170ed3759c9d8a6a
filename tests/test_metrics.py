"""The metrics endpoint after a backup, a failed backup and a drill: parsed with
prometheus-client's own parser; every series a tenant's application has; no label value
names storage; /healthz and /readyz."""

from __future__ import annotations

import datetime as dt
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from test_objectives import NS, UTC, setup

from cozybackup_core import PassReport, Runner
from cozybackup_core._engine.metrics import Metrics, MetricsServer


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_scrape_shows_backups_failures_drills_and_objectives(tmp_path: Path) -> None:
    now = [dt.datetime(2026, 12, 6, 1, 59, tzinfo=UTC)]
    plat, _ = setup(tmp_path, now, drill=True)
    gone = plat.declare_app(
        NS,
        "gone",
        "SQLiteDatabase",
        {"path": str(tmp_path / "nope.sqlite")},
        api_group="apps.example.com",
    )
    metrics = Metrics(plat.engine)
    runner = Runner(plat.engine)
    ready = [False]
    server = MetricsServer(metrics, ("127.0.0.1", 0), lambda: ready[0], stale_after=3600).start()
    base = f"http://127.0.0.1:{server.address[1]}"
    try:
        assert status_of(f"{base}/readyz") == 503
        now[0] = dt.datetime(2026, 12, 6, 2, 0, 30, tzinfo=UTC)
        failed = plat.backup(NS, gone, "broken", "sqlite")  # no such database file
        assert failed.status.phase == "Failed"
        metrics.observe(PassReport(finished=(failed,)))
        metrics.observe(runner.run_pass())  # the Plan's backup
        metrics.observe(runner.run_pass())  # its drill
        ready[0] = True
        assert status_of(f"{base}/readyz") == 200
        assert status_of(f"{base}/healthz") == 200
        got = scrape(f"{base}/metrics")
    finally:
        server.stop()

    app = {"namespace": NS, "application_kind": "SQLiteDatabase", "application": "db"}
    jobs = {
        (s["result"], s["reason"]): v
        for s, v in got["cozybackup_jobs_total"]
        if s["application"] == "db"
    }
    assert jobs == {("Succeeded", "Completed"): 1.0}
    durations = got["cozybackup_job_duration_seconds_count"]
    assert ({"job": "backup", **app}, 1.0) in durations
    [(_, read)] = got["cozybackup_backup_bytes_total"]
    assert read > 0
    taken = dt.datetime(2026, 12, 6, 2, 0, 30, tzinfo=UTC).timestamp()
    assert got["cozybackup_last_success_timestamp_seconds"] == [(app, taken)]
    assert got["cozybackup_drill_passed"] == [(app, 1.0)]
    assert got["cozybackup_backups"] == [(app, 1.0)]
    plan = {**app, "plan": "nightly", "class": "sqlite"}
    assert got["cozybackup_rpo_target_seconds"] == [(plan, 26 * 3600.0)]
    assert got["cozybackup_rto_target_seconds"] == [(plan, 3600.0)]
    assert got["cozybackup_objectives_met"] == [(plan, 1.0)]
    assert got["cozybackup_plan_missed_runs_total"] == [(plan, 0.0)]
    failures = [
        (s["result"], s["reason"], v)
        for s, v in got["cozybackup_jobs_total"]
        if s["application"] == "gone"
    ]
    assert failures == [("Failed", failed.status.conditions[0].reason, 1.0)]
    # Nothing in any label names storage.
    storage = [str(plat.home), "buckets", "cozy-backups", str(tmp_path)]
    labels = [v for series in got.values() for s, _ in series for v in s.values()]
    assert not [v for v in labels if any(x in v for x in storage)]


def test_healthz_fails_when_the_runner_stops_passing(tmp_path: Path) -> None:
    now = [dt.datetime(2026, 12, 6, 1, 59, tzinfo=UTC)]
    plat, _ = setup(tmp_path, now, drill=False)
    metrics = Metrics(plat.engine)
    server = MetricsServer(metrics, ("127.0.0.1", 0), lambda: True, stale_after=0.0).start()
    try:
        assert status_of(f"http://127.0.0.1:{server.address[1]}/healthz") == 503
        assert status_of(f"http://127.0.0.1:{server.address[1]}/nothing") == 404
    finally:
        server.stop()
