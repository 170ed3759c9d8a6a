"""The metrics endpoint after a backup, a failed backup and a drill: parsed with
prometheus-client's own parser; every series a tenant's application has; no label value
names storage; /healthz and /readyz."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from test_objectives import NS, UTC, setup

from cozybackup_core import PassReport, Runner
from cozybackup_core._engine.metrics import Metrics, MetricsServer

from support.cli import TESTS, cli
from support.manifests import directory_class


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


def test_a_standby_is_alive_and_reports_no_standing(tmp_path: Path) -> None:
    """A replica waiting for the Lease makes no passes: /healthz must not get it restarted,
    and it reports none of the leader's series (a sum over replicas would double them)."""
    now = [dt.datetime(2026, 12, 6, 1, 59, tzinfo=UTC)]
    plat, _ = setup(tmp_path, now, drill=False)
    now[0] = dt.datetime(2026, 12, 6, 2, 0, 30, tzinfo=UTC)
    Runner(plat.engine).run_pass()  # the Plan's backup: there is something to report
    leading = [False]
    metrics = Metrics(plat.engine, active=lambda: leading[0])
    server = MetricsServer(metrics, ("127.0.0.1", 0), lambda: leading[0], stale_after=0.0)
    base = f"http://127.0.0.1:{server.start().address[1]}"
    try:
        assert status_of(f"{base}/healthz") == 200
        assert status_of(f"{base}/readyz") == 503
        assert "cozybackup_backups" not in scrape(f"{base}/metrics")
        leading[0] = True
        assert status_of(f"{base}/healthz") == 503  # leading, and no pass within 0 s
        assert status_of(f"{base}/readyz") == 200
        assert scrape(f"{base}/metrics")["cozybackup_backups"] == [
            ({"namespace": NS, "application_kind": "SQLiteDatabase", "application": "db"}, 1.0)
        ]
    finally:
        server.stop()


def test_without_a_staleness_limit_healthz_only_says_the_process_answers(tmp_path: Path) -> None:
    """Inline, a pass lasts as long as the backup it runs: its age proves nothing."""
    now = [dt.datetime(2026, 12, 6, 1, 59, tzinfo=UTC)]
    plat, _ = setup(tmp_path, now, drill=False)
    server = MetricsServer(Metrics(plat.engine), ("127.0.0.1", 0), lambda: True, None).start()
    try:
        assert status_of(f"http://127.0.0.1:{server.address[1]}/healthz") == 200
    finally:
        server.stop()


def _serving(proc: subprocess.Popen[str]) -> str:
    """The base URL ``cozybackup run`` says it serves metrics on."""
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"serving metrics on (http://[0-9.:]+)/metrics", line)
        if found:
            return found.group(1)
    raise AssertionError("cozybackup run never said where it serves metrics")


def test_run_serves_metrics_while_it_keeps_going(tmp_path: Path) -> None:
    home = tmp_path / "home"
    admin = directory_class("tool", "Tool", "t") + (
        "---\napiVersion: local.backups.cozystack.io/v1alpha1\nkind: Application\n"
        "metadata: {name: app1, namespace: tenant-a}\n"
        "spec: {apiGroup: apps.example.com, kind: Directory, connection: {script: 'echo dumped'}}\n"
        "---\napiVersion: backups.cozystack.io/v1alpha1\nkind: BackupJob\n"
        "metadata: {name: job1, namespace: tenant-a}\n"
        "spec: {applicationRef: {apiGroup: apps.example.com, kind: Directory, name: app1}, "
        "backupClassName: tool}\n"
    )
    assert cli(home, "apply", "-f", "-", stdin=admin).returncode == 0
    env = {
        **os.environ,
        "COZYBACKUP_HOME": str(home),
        "COZYBACKUP_PLUGINS": "support.drivers",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    argv = ["run", "-q", "--interval", "1", "--metrics-address", "127.0.0.1:0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cozybackup_core.cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = _serving(proc)
        deadline = time.monotonic() + 60
        done: list[tuple[dict[str, str], float]] = []
        while not done and time.monotonic() < deadline:
            series = scrape(f"{base}/metrics").get("cozybackup_jobs_total", [])
            done = [(s, v) for s, v in series if s["result"] == "Succeeded"]
            time.sleep(0.2)
        assert done == [
            (
                {
                    "job": "backup",
                    "namespace": "tenant-a",
                    "application_kind": "Directory",
                    "application": "app1",
                    "result": "Succeeded",
                    "reason": "Completed",
                },
                1.0,
            )
        ]
        assert status_of(f"{base}/readyz") == 200
        assert status_of(f"{base}/healthz") == 200
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0


def test_a_bad_metrics_address_names_the_option(tmp_path: Path) -> None:
    bad = cli(tmp_path / "home", "run", "--once", "--metrics-address", "9090")
    assert bad.returncode == 2
    assert "--metrics-address: '9090' is not HOST:PORT" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = cli(tmp_path / "home", "run", "--once", "--metrics-address", f"127.0.0.1:{port}")
    assert busy.returncode != 0
    assert f"--metrics-address: cannot listen on 127.0.0.1:{port}" in busy.stderr
    assert "Traceback" not in busy.stderr
