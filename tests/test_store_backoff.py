"""A location that cannot be opened (an S3 endpoint that is down) costs the controller's own
work one attempt per backoff, not one per stage, tenant and pass; jobs always try."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from cozybackup_core import (
    ArtifactRecord,
    ArtifactStore,
    BackupJob,
    LocalObjectRef,
    ObjectMeta,
    StorageError,
    StorageLocation,
)
from cozybackup_core._api.types import (
    ArtifactRecordSpec,
    ArtifactRecordStatus,
    BackupJobSpec,
    ObjectRef,
)
from cozybackup_core._engine.prune import collect_garbage
from cozybackup_core._engine.runner import Runner
from cozybackup_core.testing import LocalPlatform

from support.drivers import FilesDriver
from support.manifests import FILES_CLASS, directory_app

NS = "tenant-a"
FAR = """
apiVersion: v1
kind: Secret
metadata: {name: far-creds}
stringData: {accessKeyId: far-key-id, secretAccessKey: far-secret-key}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {name: far}
spec:
  provider: S3
  endpoint: "http://127.0.0.1:9"
  bucket: far-bucket
  credentialsSecretRef: {name: far-creds}
"""


@attrs.define
class DeadS3:
    """``ArtifactStore.s3`` counting its attempts.  With ``real`` it is the real client,
    against a port of 127.0.0.1 nothing listens on (each attempt pays its retries); else
    it fails as that does, at once.  ``up`` brings the location back (a local store)."""

    root: Path
    real: Callable[..., ArtifactStore]
    attempts: int = 0
    up: bool = False
    connect: bool = False

    def __call__(self, **kwargs: Any) -> ArtifactStore:
        self.attempts += 1
        if self.up:
            return ArtifactStore.local(str(self.root))
        if self.connect:
            return self.real(**kwargs)
        raise StorageError(
            "the backup storage is unreachable", admin_detail="ConnectionRefusedError(111)"
        )


@pytest.fixture
def platform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[LocalPlatform, DeadS3, list[dt.datetime]]:
    now = [dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.timezone.utc)]
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,), clock=lambda: now[0])
    dead = DeadS3(tmp_path / "far", ArtifactStore.s3)
    monkeypatch.setattr(ArtifactStore, "s3", dead)
    plat.apply(FILES_CLASS, FAR)
    return plat, dead, now


def _record_on_far(plat: LocalPlatform) -> None:
    """A committed backup's record on the dead location: retention's collection, usage and
    the orphan sweep all open its store."""
    record = plat.host.objects.create(
        ArtifactRecord(
            metadata=ObjectMeta(name="on-far"),
            spec=ArtifactRecordSpec(
                storage_ref=LocalObjectRef(name="far"),
                namespace=NS,
                application_kind="Directory",
                application_name="old",
                job_ref=ObjectRef(kind="BackupJob", namespace=NS, name="old"),
                backup_name="old",
            ),
        )
    )
    plat.host.objects.update_status(
        attrs.evolve(record, status=ArtifactRecordStatus(phase="Committed"))
    )


def _far(plat: LocalPlatform) -> StorageLocation:
    loc = plat.host.objects.get(StorageLocation, None, "far")
    assert loc is not None
    return loc


def test_the_controllers_own_work_waits_out_a_doubling_backoff(
    platform: tuple[LocalPlatform, DeadS3, list[dt.datetime]],
) -> None:
    plat, dead, now = platform
    engine = plat.engine
    _record_on_far(plat)
    with engine.background():
        assert collect_garbage(engine) == {}  # logged, not raised
        assert dead.attempts == 1
        with pytest.raises(StorageError) as err:
            engine.store_for(_far(plat))
        assert dead.attempts == 1  # the same error at once
        assert str(err.value) == "the backup storage is unreachable"
        assert err.value.admin_detail == ("ConnectionRefusedError(111); not tried again for 60 s")
        assert engine.usages() == []
        assert dead.attempts == 1
    # A job always tries; its failure is the location's second in a row: two minutes.
    with pytest.raises(StorageError):
        engine.store_for(_far(plat))
    assert dead.attempts == 2
    with engine.background():
        for wait, tried in ((61, 2), (60, 3), (121, 3), (120, 4)):
            now[0] += dt.timedelta(seconds=wait)
            with pytest.raises(StorageError, match="unreachable"):
                engine.store_for(_far(plat))
            assert dead.attempts == tried  # tried at +2 min (then 4 min), at +6 (then 8)
        now[0] += dt.timedelta(minutes=8)
        dead.up = True
        assert engine.store_for(_far(plat)) is engine.store_for(_far(plat))
        assert dead.attempts == 5
    # Back up: forgotten.  Down again on the next pass: one minute again, not four.
    engine.invalidate_stores()
    dead.up = False
    with engine.background():
        with pytest.raises(StorageError):
            engine.store_for(_far(plat))
        with pytest.raises(StorageError) as err:
            engine.store_for(_far(plat))
    assert dead.attempts == 6
    assert err.value.admin_detail is not None and "60 s" in err.value.admin_detail


def test_a_dead_location_costs_a_pass_one_attempt_and_jobs_elsewhere_run(
    platform: tuple[LocalPlatform, DeadS3, list[dt.datetime]], tmp_path: Path
) -> None:
    plat, dead, _ = platform
    dead.connect = True
    _record_on_far(plat)
    ref = directory_app(plat, tmp_path / "app", b"live data")
    plat.host.objects.create(
        BackupJob(
            metadata=ObjectMeta(name="b1", namespace=NS),
            spec=BackupJobSpec(application_ref=ref, backup_class_name="files"),
        )
    )
    report = Runner(plat.engine, drills=False).run_pass()
    assert {j.metadata.name: j.status.phase for j in report.finished} == {"b1": "Succeeded"}
    # Collection tried it; usage (this tenant's committed backup there) did not again.
    assert dead.attempts == 1
    job = plat.host.objects.get(BackupJob, NS, "b1")
    assert job is not None and "far" not in (job.status.message or "")
