"""kill -9 of ``cozybackup run --once`` at many points, then ``run --once`` again.

After the second run: no job is Running, a Succeeded job has a Backup whose artifact is
complete and verifies, a Failed one has no Backup, and no partial data is left.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest

from cozybackup_core import Backup, BackupJob
from cozybackup_core._api.types import ArtifactRecord
from cozybackup_core.testing import LocalPlatform

from conftest import FILES_CLASS
from support.cli import cli

NS = "tenant-a"
JOB = f"""
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata: {{name: nightly, namespace: {NS}}}
spec:
  applicationRef: {{apiGroup: apps.example.com, kind: Directory, name: app1}}
  backupClassName: files
"""


@pytest.mark.parametrize(
    "kill",
    [
        {"COZYBACKUP_TEST_KILL_AT": "started"},
        {"COZYBACKUP_TEST_KILL_AT": "writing"},
        {"COZYBACKUP_TEST_KILL_AFTER_BYTES": "65536"},
        {"COZYBACKUP_TEST_KILL_AFTER_BYTES": "2000000"},
        {"COZYBACKUP_TEST_KILL_AT": "committed"},
        {"COZYBACKUP_TEST_KILL_AT": "recorded"},
    ],
    ids=lambda k: "-".join(k.values()),
)
def test_kill_9_then_run_once_settles_everything(tmp_path: Path, kill: dict[str, str]) -> None:
    home = tmp_path / "home"
    data = tmp_path / "app"
    data.mkdir()
    (data / "big.bin").write_bytes(os.urandom(3_000_000))
    (data / "small.txt").write_text("x" * 1000)
    plat = LocalPlatform(home)  # only to declare the app; the CLI does the work
    plat.apply(FILES_CLASS, JOB)
    plat.declare_app(NS, "app1", "Directory", {"path": str(data)}, api_group="apps.example.com")

    first = cli(home, "run", "--once", "-q", env=kill)
    assert first.returncode == -9, first.stderr
    job = plat.host.objects.get(BackupJob, NS, "nightly")
    assert job is not None and job.status.phase == "Running"

    second = cli(home, "run", "--once", "-q")
    assert "recovered:" in second.stderr
    job = plat.host.objects.get(BackupJob, NS, "nightly")
    assert job is not None and job.status.phase in ("Succeeded", "Failed")
    backups = plat.host.objects.list(Backup, NS)
    records = plat.host.objects.list(ArtifactRecord)
    manifests = [p for p in plat.stored_files() if p.name == "manifest.json"]
    if job.status.phase == "Succeeded":
        assert [b.metadata.name for b in backups] == ["nightly"]
        assert len(records) == 1 and records[0].status.phase == "Committed"
        assert len(manifests) == 1
        verify = cli(home, "verify", "backup", "nightly", "-n", NS)
        assert verify.returncode == 0, verify.stderr
    else:
        assert job.status.conditions[0].reason == "Interrupted"
        assert backups == [] and records == [] and plat.leftovers() == []
    # Kill points after the commit must not lose the finished backup.
    if kill.get("COZYBACKUP_TEST_KILL_AT") in ("committed", "recorded"):
        assert job.status.phase == "Succeeded"


def test_a_backup_whose_status_write_was_lost_is_completed(tmp_path: Path) -> None:
    """On Kubernetes a Backup's status is a second write; a crash between the two leaves a
    Backup without artifact.  Recovery fills it in from the committed record."""
    from cozybackup_core._api.types import BackupJobStatus, BackupStatus

    from support.drivers import FilesDriver

    data = tmp_path / "app"
    data.mkdir()
    (data / "f.bin").write_bytes(os.urandom(50_000))
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,))
    plat.apply(FILES_CLASS)
    ref = plat.declare_app(
        NS, "app1", "Directory", {"path": str(data)}, api_group="apps.example.com"
    )
    done = plat.backup(NS, ref, "nightly", "files")
    assert done.status.phase == "Succeeded"
    objs = plat.host.objects
    backup = objs.get(Backup, NS, "nightly")
    assert backup is not None and backup.status.artifact is not None
    ready = backup.status.artifact
    objs.update_status(attrs.evolve(backup, status=BackupStatus()))
    objs.update_status(attrs.evolve(done, status=BackupJobStatus(phase="Running")))

    notes = plat.engine.recover()
    assert any("completed after interruption" in n for n in notes)
    backup = objs.get(Backup, NS, "nightly")
    assert backup is not None and backup.status.phase == "Ready"
    assert backup.status.artifact == ready
    job = objs.get(BackupJob, NS, "nightly")
    assert job is not None and job.status.phase == "Succeeded"
    plat.engine.verify_backup(NS, "nightly")
