"""Committed data that no Backup points at is swept once its job is over (a Backup
deleted with kubectl, or refused by the API server after its artifact was committed)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import attrs

from cozybackup_core import ArtifactRecord, Backup, BackupJob
from cozybackup_core._api.types import artifact_uid
from cozybackup_core._engine.runner import Runner
from cozybackup_core.testing import LocalPlatform

from support.drivers import FilesDriver
from support.manifests import FILES_CLASS, directory_app

NS = "tenant-a"


def bucket_files(home: Path) -> set[str]:
    return {
        str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and "buckets" in p.parts
    }


def test_an_orphan_is_swept_after_the_grace_period_and_nothing_else_is(tmp_path: Path) -> None:
    now = [dt.datetime(2026, 12, 5, 8, 0, tzinfo=dt.timezone.utc)]
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,), clock=lambda: now[0])
    plat.apply(FILES_CLASS)
    ref = directory_app(plat, tmp_path / "app", b"x" * 1000)
    objs = plat.host.objects
    for name in ("kept", "deleted", "running"):
        assert plat.backup(NS, ref, name, "files").status.phase == "Succeeded"

    def record_of(name: str) -> str:
        backup = objs.get(Backup, NS, name)
        assert backup is not None and backup.status.artifact is not None
        uid = artifact_uid(backup.status.artifact.uri)
        assert uid is not None
        return uid

    records = {name: record_of(name) for name in ("kept", "deleted", "running")}
    with_data = bucket_files(tmp_path / "home")
    # A tenant deletes a Backup object directly; another one's job is still Running
    # (between its commit and its Backup, as far as the sweep can tell).
    objs.delete(Backup, NS, "deleted")
    objs.delete(Backup, NS, "running")
    job = objs.get(BackupJob, NS, "running")
    assert job is not None
    objs.update_status(attrs.evolve(job, status=attrs.evolve(job.status, phase="Running")))

    runner = Runner(plat.engine, drills=False)
    now[0] += dt.timedelta(minutes=59)
    assert runner.run_pass().swept == ()  # within the grace period
    now[0] += dt.timedelta(minutes=2)
    report = runner.run_pass()
    assert report.swept == (
        f"orphaned artifact {records['deleted']} of {NS}/{ref.name}: deletion finished",
    )
    names = {r.metadata.name for r in objs.list(ArtifactRecord)}
    assert names == {records["kept"], records["running"]}
    gone = with_data - bucket_files(tmp_path / "home")
    assert gone and all(records["deleted"] in path for path in gone)
    # The kept Backup still restores.
    assert plat.restore(NS, "kept", "r").status.phase == "Succeeded"


def test_a_partial_artifact_whose_job_was_deleted_is_swept(tmp_path: Path) -> None:
    """A job deleted while its worker wrote: the record stays Writing, its job gone."""
    from cozybackup_core._api.types import (
        ANNOTATION_JOB_UID,
        ArtifactRecordSpec,
        LocalObjectRef,
        ObjectMeta,
        ObjectRef,
    )

    now = [dt.datetime(2026, 12, 5, 8, 0, tzinfo=dt.timezone.utc)]
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,), clock=lambda: now[0])
    plat.apply(FILES_CLASS)
    ref = directory_app(plat, tmp_path / "app", b"x")
    assert plat.backup(NS, ref, "alive", "files").status.phase == "Succeeded"
    alive = plat.host.objects.get(BackupJob, NS, "alive")
    assert alive is not None
    for name, job_name, uid in (
        ("of-gone", "gone", "u-gone"),
        ("of-alive", "alive", alive.metadata.uid),
    ):
        plat.host.objects.create(
            ArtifactRecord(
                metadata=ObjectMeta(name=name, annotations={ANNOTATION_JOB_UID: uid or ""}),
                spec=ArtifactRecordSpec(
                    storage_ref=LocalObjectRef(name="cozy-backups"),
                    namespace=NS,
                    application_kind=ref.kind,
                    application_name=ref.name,
                    job_ref=ObjectRef(kind="BackupJob", namespace=NS, name=job_name),
                    backup_name=job_name,
                ),
            )
        )
    runner = Runner(plat.engine, drills=False)
    assert runner.run_pass().swept == ()
    now[0] += dt.timedelta(hours=2)
    swept = runner.run_pass().swept
    assert swept == (f"orphaned artifact of-gone of {NS}/{ref.name}: deletion finished",)
    names = {r.metadata.name for r in plat.host.objects.list(ArtifactRecord)}
    assert "of-alive" in names and "of-gone" not in names
