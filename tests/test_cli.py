"""The ``cozybackup`` CLI, run as a real subprocess against a temp home."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import FILES_CLASS, SEEDS
from support.cli import cli
from support.manifests import directory_class


def test_help_lists_every_command(tmp_path: Path) -> None:
    out = cli(tmp_path, "--help")
    assert out.returncode == 0
    for command in ("apply", "get", "describe", "run", "verify", "drivers", "crds", "install"):
        assert command in out.stdout
    assert "COZYBACKUP_HOME" in out.stdout


def test_seed_manifests_apply_unchanged_and_fail_honestly_without_a_driver(tmp_path: Path) -> None:
    out = cli(tmp_path, "apply", "-f", str(SEEDS))
    assert out.returncode == 0, out.stderr
    assert "backupjob/oneshot-mariadb created" in out.stdout
    assert "plan/maria-nightly-backups created" in out.stdout
    again = cli(tmp_path, "apply", "-f", str(SEEDS))
    assert "backupjob/oneshot-mariadb unchanged" in again.stdout
    run = cli(tmp_path, "run", "--once", "-q")
    assert run.returncode == 1
    got = json.loads(
        cli(
            tmp_path, "get", "backupjob", "oneshot-mariadb", "-n", "tenant-user1", "-o", "json"
        ).stdout
    )
    assert got["status"]["phase"] == "Failed"
    assert got["status"]["conditions"][0]["reason"] in ("StrategyNotServed", "NotFound")
    restore = json.loads(
        cli(
            tmp_path, "get", "restorejob", "rollback-mariadb", "-n", "tenant-user1", "-o", "json"
        ).stdout
    )
    assert (
        restore["status"]["message"]
        == "Backup oneshot-mariadb does not exist in namespace tenant-user1"
    )
    listed = yaml.safe_load(cli(tmp_path, "get", "backupjobs", "-A", "-o", "yaml").stdout)
    assert (listed["apiVersion"], listed["kind"]) == ("v1", "List")
    for doc in listed["items"]:
        assert (
            doc["spec"]
            == yaml.safe_load((SEEDS / "backupjob-oneshot-mariadb.yaml").read_text())["spec"]
        )


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (
            "apiVersion: backups.cozystack.io/v1alpha1\nkind: Plan\nmetadata: {name: p, namespace: t}\n"
            "spec: {applicationRef: {kind: MariaDB, name: m}, backupClassName: cozy-default, schedule: {cron: '61 * * * *'}}\n",
            "error: spec.schedule.cron: '61 * * * *' is not a valid cron expression",
        ),
        (
            "apiVersion: backups.cozystack.io/v1alpha1\nkind: BackupJob\nmetadata: {name: j, namespace: t}\n"
            "spec: {applicationRef: {kind: MariaDB}, backupClassName: cozy-default}\n",
            "error: spec.applicationRef.name: required",
        ),
        (
            "apiVersion: backups.cozystack.io/v1alpha1\nkind: StorageLocation\nmetadata: {name: s}\n"
            "spec: {bucket: s, deduplication: 'off'}\n",
            "error: spec.deduplication: expected true or false, got str",
        ),
        ("kind: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_input_names_the_field_and_changes_nothing(
    tmp_path: Path, manifest: str, expected: str
) -> None:
    out = cli(tmp_path, "apply", "-f", "-", stdin=manifest)
    assert out.returncode == 2
    assert expected in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*.yaml"))


def test_changing_a_started_jobs_spec_is_refused(tmp_path: Path) -> None:
    job = (SEEDS / "backupjob-oneshot-mariadb.yaml").read_text()
    cli(tmp_path, "apply", "-f", "-", stdin=job)
    out = cli(tmp_path, "apply", "-f", "-", stdin=job.replace("mariadbinstance", "other"))
    assert out.returncode == 2
    assert "spec: BackupJob oneshot-mariadb exists and its spec is immutable" in out.stderr


def test_backup_restore_verify_describe(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "app"
    data.mkdir()
    (data / "f.bin").write_bytes(os.urandom(4_000_000))
    admin = (
        FILES_CLASS
        + f"""---
apiVersion: local.backups.cozystack.io/v1alpha1
kind: Application
metadata: {{name: app1, namespace: tenant-a}}
spec: {{apiGroup: apps.example.com, kind: Directory, connection: {{path: "{data}"}}}}
"""
    )
    assert cli(home, "apply", "-f", "-", stdin=admin).returncode == 0
    job = (
        "apiVersion: backups.cozystack.io/v1alpha1\nkind: BackupJob\nmetadata: {name: b1, namespace: tenant-a}\n"
        "spec: {applicationRef: {apiGroup: apps.example.com, kind: Directory, name: app1}, backupClassName: files}\n"
    )
    cli(home, "apply", "-f", "-", stdin=job)
    run = cli(home, "run", "--once")
    assert run.returncode == 0, run.stderr
    assert "backupjob/b1 Succeeded" in run.stdout
    assert "BackupJob tenant-a/b1:" in run.stderr, "progress is shown"
    table = cli(home, "get", "backups", "-n", "tenant-a").stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "PHASE", "APPLICATION"]
    assert "Directory/app1" in table
    header, row = table.splitlines()
    assert header.split()[-4:] == ["SIZE", "STORED", "FREES", "AGE"]
    # 4,000,000 bytes, as a person reads it; stored: compressed (random: about as much);
    # what deleting it frees: not measured before a prune pass.
    assert row.split()[-5:-1] == ["3.8", "MiB", "3.8", "MiB"]
    assert row.split()[-1].endswith("s")  # made seconds ago
    # A reader that leaves early (| head) ends the output quietly, not with a traceback.
    piped = subprocess.run(
        [
            "bash",
            "-c",
            f"set -o pipefail; sleep 0.2 | {sys.executable} -m cozybackup_core.cli "
            "get backups -n tenant-a -o json | true",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COZYBACKUP_HOME": str(home)},
    )
    assert piped.stderr == "" and piped.returncode == 141, piped
    # What get prints as a List, apply takes back.
    listed = cli(home, "get", "backupjobs", "-n", "tenant-a", "-o", "yaml").stdout
    assert cli(home, "apply", "-f", "-", stdin=listed).stdout == "backupjob/b1 unchanged\n"
    assert cli(home, "verify", "backup", "b1", "-n", "tenant-a").returncode == 0
    (data / "f.bin").write_bytes(b"oops")
    cli(
        home,
        "apply",
        "-f",
        "-",
        stdin="apiVersion: backups.cozystack.io/v1alpha1\nkind: RestoreJob\n"
        "metadata: {name: r1, namespace: tenant-a}\nspec: {backupRef: {name: b1}}\n",
    )
    assert cli(home, "run", "--once", "-q").returncode == 0
    assert len((data / "f.bin").read_bytes()) == 4_000_000
    described = cli(home, "describe", "restorejob", "r1", "-n", "tenant-a").stdout
    assert "phase: Succeeded" in described and "Completed" in described.split("Events:")[1]


def test_drivers_lists_broken_plugins(tmp_path: Path) -> None:
    out = cli(tmp_path, "drivers", plugins="support.drivers,no_such_module_xyz")
    assert out.returncode == 1
    assert "files" in out.stdout
    assert "BROKEN no_such_module_xyz: import failed: ModuleNotFoundError" in out.stdout


def test_crds_are_printed(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all(cli(tmp_path, "crds").stdout))
    assert {d["spec"]["names"]["kind"] for d in docs} >= {
        "BackupJob",
        "Plan",
        "Backup",
        "RestoreJob",
        "BackupClass",
    }


def test_second_runner_is_refused(tmp_path: Path) -> None:
    import fcntl

    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / "run.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write("4242")
        f.flush()
        out = cli(tmp_path, "run", "--once")
    assert out.returncode == 1
    assert "another cozybackup run is active on this home (pid 4242)" in out.stderr


def test_sigterm_finishes_the_running_job_and_starts_no_other(tmp_path: Path) -> None:
    import signal
    import time

    home = tmp_path / "home"
    admin = (
        directory_class("tool", "Tool", "t")
        + """---
apiVersion: local.backups.cozystack.io/v1alpha1
kind: Application
metadata: {name: app1, namespace: tenant-a}
spec: {apiGroup: apps.example.com, kind: Directory, connection: {script: "sleep 2; echo dumped"}}
"""
    )
    jobs = "".join(
        f"---\napiVersion: backups.cozystack.io/v1alpha1\nkind: BackupJob\n"
        f"metadata: {{name: job{i}, namespace: tenant-a}}\n"
        f"spec: {{applicationRef: {{apiGroup: apps.example.com, kind: Directory, name: app1}}, backupClassName: tool}}\n"
        for i in (1, 2)
    )
    assert cli(home, "apply", "-f", "-", stdin=admin + jobs).returncode == 0
    env = {
        **os.environ,
        "COZYBACKUP_HOME": str(home),
        "COZYBACKUP_PLUGINS": "support.drivers",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cozybackup_core.cli", "run", "-q", "--interval", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = cli(home, "get", "backupjob", "job1", "-n", "tenant-a", "-o", "json")
            if (
                got.returncode == 0
                and json.loads(got.stdout).get("status", {}).get("phase") == "Running"
            ):
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "finishing the current jobs" in err
    phases = {
        n: json.loads(cli(home, "get", "backupjob", n, "-n", "tenant-a", "-o", "json").stdout)
        .get("status", {})
        .get("phase")
        for n in ("job1", "job2")
    }
    assert phases == {"job1": "Succeeded", "job2": None}
