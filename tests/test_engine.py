"""Engine state machines and failure paths: honest status, nothing half-committed."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from cozybackup_core import ApplicationRef, Backup, BackupJob, EngineConfig, StorageError
from cozybackup_core._api.types import ArtifactRecord
from cozybackup_core.testing import LocalPlatform, local_location_yaml

from support.drivers import FILES
from support.manifests import directory_class

NS = "tenant-a"


def _nothing_committed(platform: LocalPlatform) -> None:
    assert platform.backups(NS) == []
    assert platform.leftovers() == []
    assert platform.host.objects.list(ArtifactRecord) == []


def _declare(platform: LocalPlatform, name: str, kind: str, connection: dict) -> ApplicationRef:  # type: ignore[type-arg]
    return platform.declare_app(
        NS, name, kind, connection, {"password": "hunter2-very-secret"}, api_group=FILES.api_group
    )


def _bind(platform: LocalPlatform, strategy: str) -> None:
    platform.apply(directory_class(strategy.lower(), strategy, "x"))


def test_backup_and_restore_succeed_with_a_backup_record(
    platform: LocalPlatform, files_app
) -> None:  # type: ignore[no-untyped-def]
    ref, data = files_app
    original = {p.name: p.read_bytes() for p in data.iterdir()}
    job = platform.backup(NS, ref, "b1", "files")
    assert job.status.phase == "Succeeded", job.status.message
    assert job.status.backup_ref and job.status.backup_ref.name == "b1"
    assert job.status.started_at and job.status.completed_at
    assert job.status.conditions[0].type == "Complete"
    [backup] = platform.backups(NS)
    assert backup.status.phase == "Ready"
    assert backup.status.artifact and backup.status.artifact.checksum.startswith("sha256:")
    assert backup.status.artifact.size_bytes == sum(len(v) for v in original.values())
    assert backup.spec.driver_metadata == {"files": "2"}  # Cozystack: map[string]string
    for p in data.iterdir():
        p.write_bytes(b"damaged")
    restore = platform.restore(NS, "b1", "r1")
    assert restore.status.phase == "Succeeded", restore.status.message
    assert {p.name: p.read_bytes() for p in data.iterdir()} == original


def test_to_copy_restore_leaves_the_original_alone(
    platform: LocalPlatform, files_app, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ref, data = files_app
    platform.backup(NS, ref, "b1", "files")
    copy = _declare(platform, "copy", "Directory", {"path": str(tmp_path / "copy")})
    (data / "a.bin").write_bytes(b"changed after the backup")
    job = platform.restore(NS, "b1", "r1", target=copy)
    assert job.status.phase == "Succeeded", job.status.message
    assert (data / "a.bin").read_bytes() == b"changed after the backup"
    assert (tmp_path / "copy" / "b.txt").read_text() == "hello\n" * 1000


def test_to_copy_target_of_another_kind_is_refused(platform: LocalPlatform, files_app) -> None:  # type: ignore[no-untyped-def]
    ref, _ = files_app
    platform.backup(NS, ref, "b1", "files")
    job = platform.restore(NS, "b1", "r1", target=ApplicationRef(kind="Postgres", name="db"))
    assert job.status.phase == "Failed"
    assert "spec.targetApplicationRef.kind: must be Directory" in (job.status.message or "")


def test_driver_that_raises(platform: LocalPlatform, tmp_path: Path) -> None:
    _bind(platform, "Raising")
    (tmp_path / "d").mkdir()
    ref = _declare(platform, "app1", "Directory", {"path": str(tmp_path / "d")})
    job = platform.backup(NS, ref, "b1", "raising")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "InternalError"
    assert "internal error in the raising driver" in (job.status.message or "")
    assert "hunter2" not in (job.status.message or "") and str(tmp_path) not in (
        job.status.message or ""
    )
    _nothing_committed(platform)


def test_dump_tool_exiting_non_zero(platform: LocalPlatform) -> None:
    _bind(platform, "Tool")
    ref = _declare(
        platform,
        "app1",
        "Directory",
        {
            "script": "head -c 200000 /dev/zero; echo 'FATAL: password authentication failed' >&2; exit 3"
        },
    )
    job = platform.backup(NS, ref, "b1", "tool")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "DriverFailed"
    assert job.status.message == "the dump tool failed with exit status 3"
    _nothing_committed(platform)


def test_dump_tool_past_its_deadline_is_killed(tmp_path: Path) -> None:
    from support.drivers import ToolDriver

    plat = LocalPlatform(
        tmp_path / "home",
        drivers=(ToolDriver,),
        config=EngineConfig(attempts=1, workers=1, backup_timeout=0.5),
    )
    _bind(plat, "Tool")
    ref = _declare(plat, "app1", "Directory", {"script": "exec sleep 30"})
    job = plat.backup(NS, ref, "b1", "tool")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "DeadlineExceeded"
    _nothing_committed(plat)


def test_storage_write_error(
    platform: LocalPlatform, files_app, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    ref, _ = files_app
    calls = []
    from cozybackup_core._storage import store as _storage

    real = _storage.ArtifactStore.put_atomic

    def failing(self, path, data):  # type: ignore[no-untyped-def]
        calls.append(path)
        raise StorageError(
            "the backup storage could not be written", admin_detail="disk full at " + path
        )

    monkeypatch.setattr(_storage.ArtifactStore, "put_atomic", failing)
    platform.engine.config = attrs.evolve(platform.engine.config, attempts=2, backoff=0.01)
    job = platform.backup(NS, ref, "b1", "files")
    assert len(calls) == 2, "a transient storage error is retried"
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "StorageUnavailable"
    assert "cozy-backups" not in (job.status.message or "")
    _nothing_committed(platform)
    monkeypatch.setattr(_storage.ArtifactStore, "put_atomic", real)


def test_corrupted_artifact_is_refused_before_touching_the_target(
    platform: LocalPlatform, files_app
) -> None:  # type: ignore[no-untyped-def]
    """The stream format, named: one stream damaged (a damaged pack of the default
    format: tests/test_dedup_engine.py)."""
    ref, data = files_app
    platform.apply(local_location_yaml(deduplication=False))
    platform.backup(NS, ref, "b1", "files")
    (data / "b.txt").write_text("newer data")
    stream = next(p for p in platform.stored_files() if p.name == "b.txt.zst")
    raw = bytearray(stream.read_bytes())
    raw[-5] ^= 0x01
    stream.write_bytes(bytes(raw))
    job = platform.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "ArtifactCorrupt"
    assert (data / "b.txt").read_text() == "newer data"


def test_tampered_manifest_is_refused(platform: LocalPlatform, files_app) -> None:  # type: ignore[no-untyped-def]
    ref, _ = files_app
    platform.backup(NS, ref, "b1", "files")
    manifest = next(p for p in platform.stored_files() if p.name == "manifest.json")
    manifest.write_text(manifest.read_text().replace('"files"', '"filez"'))
    job = platform.restore(NS, "b1", "r1")
    assert job.status.conditions[0].reason == "ArtifactCorrupt"


@pytest.mark.parametrize(
    ("klass", "kind", "reason", "text"),
    [
        ("nope", "Directory", "BackupClassNotFound", "BackupClass 'nope' does not exist"),
        ("cozy-default", "Directory", "KindNotSupported", "cannot back up applications of kind"),
        ("cozy-default", "Postgres", "StrategyNotServed", "driver is not installed"),
    ],
)
def test_unknown_class_kind_or_driver(
    platform: LocalPlatform, klass: str, kind: str, reason: str, text: str
) -> None:
    group = "apps.cozystack.io" if kind == "Postgres" else FILES.api_group
    ref = platform.declare_app(NS, "x", kind, {"path": "/nonexistent"}, api_group=group)
    job = platform.backup(NS, ref, "b1", klass)
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == reason
    assert text in (job.status.message or "")


def test_unknown_application(platform: LocalPlatform) -> None:
    job = platform.backup(
        NS, ApplicationRef(api_group=FILES.api_group, kind="Directory", name="ghost"), "b1", "files"
    )
    assert job.status.conditions[0].reason == "NotFound"
    assert job.status.message == "application Directory ghost does not exist in namespace tenant-a"


def test_restore_of_another_namespaces_backup_is_not_found(
    platform: LocalPlatform, files_app
) -> None:  # type: ignore[no-untyped-def]
    ref, _ = files_app
    platform.backup(NS, ref, "b1", "files")
    job = platform.restore("tenant-b", "b1", "r1")
    assert job.status.phase == "Failed"
    assert job.status.message == "Backup b1 does not exist in namespace tenant-b"


def test_backup_job_is_idempotent(platform: LocalPlatform, files_app) -> None:  # type: ignore[no-untyped-def]
    ref, _ = files_app
    job = platform.backup(NS, ref, "b1", "files")
    again = platform.engine.run_backup(
        attrs.evolve(job, status=attrs.evolve(job.status, phase="Pending"))
    )
    assert again.status.phase == "Succeeded"
    assert len(platform.backups(NS)) == 1
    assert len([p for p in platform.stored_files() if p.name == "manifest.json"]) == 1


def test_jobs_of_one_application_run_one_at_a_time(
    platform: LocalPlatform, files_app, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import threading

    from support.drivers import FilesDriver

    ref, _ = files_app
    other = _declare(platform, "app2", "Directory", {"path": str(files_app[1])})
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    lock = threading.Lock()
    real = FilesDriver.backup

    def tracking(self, ctx):  # type: ignore[no-untyped-def]
        name = ctx.application.ref.name
        with lock:
            running[name] = running.get(name, 0) + 1
            peak[name] = max(peak.get(name, 0), running[name])
        try:
            real(self, ctx)
        finally:
            with lock:
                running[name] -= 1

    monkeypatch.setattr(FilesDriver, "backup", tracking)
    platform.engine.config = attrs.evolve(platform.engine.config, workers=4)
    from cozybackup_core import BackupJob as BJ
    from cozybackup_core._api.types import BackupJobSpec, ObjectMeta

    for i in range(3):
        for r in (ref, other):
            platform.host.objects.create(
                BJ(
                    metadata=ObjectMeta(name=f"{r.name}-{i}", namespace=NS),
                    spec=BackupJobSpec(application_ref=r, backup_class_name="files"),
                )
            )
    done = platform.engine.run_once()
    assert sorted(j.status.phase for j in done) == ["Succeeded"] * 6
    assert peak == {"app1": 1, "app2": 1}
    assert len(platform.host.objects.list(Backup, NS)) == 6
    assert all(j.status.phase == "Succeeded" for j in platform.host.objects.list(BackupJob, NS))
