"""The red team's input defects (D7, D15 to D20): refused at apply with the field named, or
survived, never a traceback.  Each test failed before its fix."""

from __future__ import annotations

import datetime as dt
import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from cozybackup_core import load_yaml
from cozybackup_core._api.errors import ValidationError
from cozybackup_core._api.types import Retention
from cozybackup_core._policy.retention import Candidate, decide
from cozybackup_core.hosts.local import LocalHost

from support.cli import cli

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 5, 8, 0, tzinfo=UTC)

JOB = """\
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata:
  name: j1
  namespace: tenant-a
  labels: {team: blue}
spec:
  applicationRef: {apiGroup: apps.cozystack.io, kind: Postgres, name: db}
  backupClassName: cozy-default
"""


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as err:
        load_yaml(text)
    return err.value.problems


# -- D7: a retention age past the calendar


def test_d7_max_age_longer_than_a_century_is_refused_with_its_field(tmp_path: Path) -> None:
    text = """\
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {name: forever}
spec:
  strategies: [{application: {kind: Postgres}, strategyRef: {kind: Files, name: files},
                retention: {maxAge: 5218w}}]
  retention: {maxAge: 999999d}
  verification: {restoreDrill: true, every: 99999w}
"""
    out = cli(tmp_path / "home", "apply", "-f", "-", stdin=text)
    assert out.returncode == 2, out
    assert out.stderr.splitlines() == [
        "error: spec.retention.maxAge: '999999d' is longer than 36525 days (a century)",
        "error: spec.verification.every: '99999w' is longer than 36525 days (a century)",
        "error: spec.strategies[0].retention.maxAge: '5218w' is longer than 36525 days (a century)",
    ]


def test_d7_a_stored_overflowing_max_age_keeps_everything_instead_of_raising() -> None:
    # A class stored before the bound (or by another host) must not stop retention.
    policy = Retention(keep_daily=1)
    object.__setattr__(policy, "max_age", "999999d")
    backups = [Candidate(f"b{i}", NOW - dt.timedelta(days=i)) for i in range(3)]
    keep, delete = decide(backups, policy, NOW)
    assert set(keep) == {"b0"} and set(delete) == {"b1", "b2"}  # the count rule applies


# -- D15 / D16: input that crashed apply, or was read differently than it looks


def test_d16_a_key_given_twice_is_refused() -> None:
    text = JOB.replace(
        "  backupClassName: cozy-default\n", "  backupClassName: shown\n  backupClassName: used\n"
    )
    [(_, message)] = problems(text)
    assert "duplicate key 'backupClassName'" in message


def test_d15_deep_nesting_is_a_one_line_error() -> None:
    [(_, message)] = problems("[" * 500 + "]" * 500)
    assert "nested deeper than" in message


def test_yaml_merge_keys_still_load() -> None:
    text = JOB.replace(
        "  labels: {team: blue}\n", "  labels: &l {team: blue}\n  annotations:\n    <<: *l\n"
    )
    [obj] = load_yaml(text)
    assert obj.metadata.annotations == {"team": "blue"}


def test_d15_non_utf8_file_and_deep_nesting_through_the_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(JOB.encode() + b"# \xff\xfe\n")
    out = cli(tmp_path / "home", "apply", "-f", str(bad))
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: {bad}: not UTF-8 text (byte {len(JOB) + 2})"
    deep = cli(tmp_path / "home", "apply", "-f", "-", stdin="[" * 2000 + "]" * 2000)
    assert deep.returncode == 2 and "Traceback" not in deep.stderr
    assert len(deep.stderr.splitlines()) == 1


# -- D17: a full disk; torn event lines


def test_d17_a_torn_event_line_loses_only_itself(tmp_path: Path) -> None:
    host = LocalHost(tmp_path / "home")
    [job] = load_yaml(JOB)
    job = host.objects.create(job)
    host.event(job, "Normal", "First", "first event")
    events = tmp_path / "home" / "events" / "tenant-a.jsonl"
    with events.open("a") as f:
        f.write('{"time": "2026-12-05T08:00:00Z", "message": "torn by a full di')
    host.event(job, "Normal", "After", "after the tear")
    reasons = [e["reason"] for e in host.events("tenant-a")]
    assert reasons == ["First", "After"]
    lines = events.read_text().splitlines()
    assert json.loads(lines[-1])["reason"] == "After"


def test_d17_a_full_disk_in_the_cli_is_one_line_without_the_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert cli(home, "apply", "-f", "-", stdin=JOB).returncode == 0
    # RLIMIT_FSIZE of one byte: every write of a state file fails as on a full disk
    # (EFBIG; Python ignores SIGXFSZ), whoever runs the test.
    out = subprocess.run(
        [sys.executable, "-m", "cozybackup_core.cli", "--home", str(home), "apply", "-f", "-"],
        input=JOB.replace("j1", "j2"),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1)),
    )
    assert out.returncode == 1, out
    assert out.stderr.strip() == "error: File too large"
    state = home / "state" / "BackupJob" / "tenant-a"
    assert [p.name for p in state.iterdir()] == ["j1.yaml"]  # no temporary debris


# -- D18: a runner loop without a pause


@pytest.mark.parametrize("interval", ["0", "-5", "0.5", "abc"])
def test_d18_interval_below_a_second_is_refused(tmp_path: Path, interval: str) -> None:
    out = cli(tmp_path / "home", "run", "--interval", interval)
    assert out.returncode == 2
    assert "--interval" in out.stderr and "Traceback" not in out.stderr


# -- D19: label changes to an existing job


def test_d19_label_changes_to_a_job_are_applied_and_platform_labels_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli(home, "apply", "-f", "-", stdin=JOB)
    host = LocalHost(home)
    [job] = host.objects.list(type(load_yaml(JOB)[0]), "tenant-a")
    host.objects.set_metadata(
        type(job)(
            metadata=job.metadata.__class__(
                name="j1",
                namespace="tenant-a",
                labels={**job.metadata.labels, "backups.cozystack.io/plan": "nightly"},
            ),
            spec=job.spec,
        )
    )
    same = cli(home, "apply", "-f", "-", stdin=JOB)
    assert same.stdout.strip() == "backupjob/j1 unchanged"
    out = cli(home, "apply", "-f", "-", stdin=JOB.replace("team: blue", "team: green"))
    assert out.stdout.strip() == "backupjob/j1 configured", out.stderr
    [job] = host.objects.list(type(job), "tenant-a")
    assert job.metadata.labels == {"team": "green", "backups.cozystack.io/plan": "nightly"}
    changed = cli(home, "apply", "-f", "-", stdin=JOB.replace("name: db", "name: other"))
    assert changed.returncode == 2 and "immutable" in changed.stderr


# -- D20: crons that croniter accepts and nobody means


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("1-0 * * * *", "minute range 1-0 is reversed"),
        ("0 0 * * fri-mon", "day of week range fri-mon is reversed"),
        ("*/99999999999999999999 * * * *", "minute step 999999999999 is not between 1 and 60"),
        ("0 */25 * * *", "hour step 25 is not between 1 and 24"),
    ],
)
def test_d20_odd_crons_are_refused(cron: str, says: str) -> None:
    text = f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: Plan
metadata: {{name: p, namespace: tenant-a}}
spec:
  applicationRef: {{kind: Postgres, name: db}}
  backupClassName: cozy-default
  schedule: {{cron: "{cron}"}}
"""
    from cozybackup_core._engine.plans import check_cron

    [plan] = load_yaml(text)
    with pytest.raises(ValidationError) as err:
        check_cron(plan.spec.schedule.cron, plan.spec.schedule.time_zone)
    [(field, message)] = err.value.problems
    assert field == "spec.schedule.cron" and says in message


@pytest.mark.parametrize(
    "cron", ["0 2 * * mon-fri", "*/15 * * * *", "0 0 1 jan-dec *", "0 */24 * * *"]
)
def test_d20_ordinary_crons_still_pass(cron: str) -> None:
    from cozybackup_core._engine.plans import check_cron

    check_cron(cron, None)
