"""The red team's key and storage defects (D6, D8, D9): malformed material refused at
apply, accepted the Kubernetes way, read fresh by a running runner, and a gone location
that never stops a pass.  Each test failed before its fix."""

from __future__ import annotations

import base64
import datetime as dt
import os
from pathlib import Path

import attrs
import pytest

from cozybackup_core import ApplicationRef, BackupJob, StorageLocation
from cozybackup_core._api.errors import ValidationError
from cozybackup_core._api.types import BackupJobSpec, ObjectMeta
from cozybackup_core._engine.runner import Runner
from cozybackup_core.testing import LocalPlatform, key_secret_yaml, local_location_yaml

from support.cli import cli
from support.drivers import FILES, FilesDriver
from support.manifests import FILES_CLASS, directory_app, directory_class

NS = "tenant-a"


def location(
    keys: list[tuple[str, str]], name: str = "cozy-backups", dedup: bool | None = None
) -> str:
    items = ", ".join(f"{{id: {i}, secretRef: {{name: {s}}}}}" for i, s in keys)
    return local_location_yaml(name, deduplication=dedup) + f"  encryption: {{keys: [{items}]}}\n"


def data_secret(name: str, raw: bytes) -> str:
    """A key Secret as Kubernetes users write one: ``data`` holds the raw bytes, base64."""
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: {name}}}
data: {{key: {base64.b64encode(raw).decode()}}}
"""


def app_yaml(data: Path) -> str:
    return f"""
apiVersion: local.backups.cozystack.io/v1alpha1
kind: Application
metadata: {{name: app1, namespace: {NS}}}
spec: {{apiGroup: apps.example.com, kind: Directory, connection: {{path: "{data}"}}}}
"""


JOB = f"""apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata: {{name: b1, namespace: {NS}}}
spec: {{applicationRef: {{apiGroup: apps.example.com, kind: Directory, name: app1}}, backupClassName: files}}
"""
RESTORE = f"""apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata: {{name: r1, namespace: {NS}}}
spec: {{backupRef: {{name: b1}}}}
"""


def submit(plat: LocalPlatform, ref: ApplicationRef, name: str, backup_class: str) -> None:
    """A Pending BackupJob, for a runner's pass to pick up."""
    plat.host.objects.create(
        BackupJob(
            metadata=ObjectMeta(name=name, namespace=NS),
            spec=BackupJobSpec(application_ref=ref, backup_class_name=backup_class),
        )
    )


def join(*docs: str) -> str:
    return "\n---\n".join(d.strip() for d in docs) + "\n"


# -- D6: a key Secret written the Kubernetes way


def test_d6_raw_key_bytes_in_data_back_up_and_restore(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "app"
    data.mkdir()
    (data / "f.bin").write_bytes(os.urandom(50_000))
    raw = bytes(range(200, 232))  # not UTF-8, as random key bytes usually are not
    admin = join(data_secret("backup-key", raw), location([("k1", "backup-key")]), FILES_CLASS)
    out = cli(home, "apply", "-f", "-", stdin=join(admin, app_yaml(data)))
    assert out.returncode == 0, out.stderr
    cli(home, "apply", "-f", "-", stdin=JOB)
    run = cli(home, "run", "--once")
    assert run.returncode == 0 and "backupjob/b1 Succeeded" in run.stdout, run.stderr
    before = (data / "f.bin").read_bytes()
    (data / "f.bin").write_bytes(b"changed")
    cli(home, "apply", "-f", "-", stdin=RESTORE)
    assert cli(home, "run", "--once", "-q").returncode == 0
    assert (data / "f.bin").read_bytes() == before


def test_d6_key_material_that_is_no_key_is_refused_at_apply(tmp_path: Path) -> None:
    home = tmp_path / "home"
    short = join(data_secret("backup-key", os.urandom(16)), location([("k1", "backup-key")]))
    out = cli(home, "apply", "-f", "-", stdin=short)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error: spec.encryption.keys[0]: Secret backup-key key 'key' must be 32 bytes" in (
        out.stderr
    )
    assert not (home / "state").exists() or not any((home / "state").rglob("*.yaml"))
    # A stored location's Secret replaced by a bad one is refused the same way.
    good = join(data_secret("backup-key", os.urandom(32)), location([("k1", "backup-key")]))
    assert cli(home, "apply", "-f", "-", stdin=good).returncode == 0
    again = cli(home, "apply", "-f", "-", stdin=data_secret("backup-key", b"short"))
    assert again.returncode == 2 and "keys[0]" in again.stderr


def test_d6_data_that_is_not_base64_names_the_key(tmp_path: Path) -> None:
    bad = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {password: 'not base64!'}\n"
    out = cli(tmp_path / "home", "apply", "-f", "-", stdin=bad)
    assert out.returncode == 2
    assert "error: data.password: is not valid base64" in out.stderr


# -- D9: a running runner reads Secrets fresh


@pytest.mark.parametrize("dedup", [False, None], ids=["streams", "default"])
def test_d9_a_changed_key_secret_takes_effect_on_the_next_pass(
    tmp_path: Path, dedup: bool | None
) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,))
    plat.apply(
        key_secret_yaml("key-one", k1), location([("k1", "key-one")], dedup=dedup), FILES_CLASS
    )
    ref = directory_app(plat, tmp_path / "app", os.urandom(10_000))
    runner = Runner(plat.engine)  # one runner across passes, as `cozybackup run` keeps it
    submit(plat, ref, "b1", "files")
    assert {j.metadata.name: j.status.phase for j in runner.run_pass().finished} == {
        "b1": "Succeeded"
    }
    # The admin replaces the key material in place (same Secret, same key id).
    plat.apply(key_secret_yaml("key-one", k2))
    submit(plat, ref, "b2", "files")
    b2 = runner.run_pass().finished[0]
    fresh = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,))
    if dedup is None:
        # The tenant's repository key is wrapped under the old material: the new one, in
        # effect, cannot open it, so b2 fails before storing anything (rotation, with a
        # new key id beside the old, is how keys change: test_encryption.py).
        assert b2.status.phase == "Failed"
        assert b2.status.conditions[0].reason == "EncryptionKeyUnavailable"
    else:
        # b2 is wrapped under the new material: readable with k2 alone.
        assert b2.status.phase == "Succeeded"
        assert fresh.restore(NS, "b2", "r2").status.phase == "Succeeded"
    assert fresh.restore(NS, "b1", "r1").status.phase == "Failed"  # only with k1


# -- D8: a deleted StorageLocation under retention


def test_d8_a_gone_location_leaves_its_deletions_and_every_other_job_runs(tmp_path: Path) -> None:
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,))
    second = f"""
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {{name: loc2}}
spec: {{provider: Local, path: "{tmp_path / "bucket2"}", bucket: b2}}
"""
    plat.apply(
        second,
        FILES_CLASS,
    )
    ref = directory_app(plat, tmp_path / "app", b"x" * 1000)
    plat.apply(directory_class("on-loc2", "Files", storage="loc2"))  # no retention yet
    for name in ("a-1", "a-2"):
        assert plat.backup(NS, ref, name, "on-loc2").status.phase == "Succeeded"
    # Retention would now delete a-1, but the admin deletes its location first.
    plat.apply(
        directory_class("on-loc2", "Files", storage="loc2").replace(
            "spec:\n", "spec:\n  retention: {keepLast: 1}\n", 1
        )
    )
    plat.host.objects.delete(StorageLocation, None, "loc2")
    runner = Runner(plat.engine)
    for name in ("a-3", "a-4"):  # two passes: the second after a pass that met the gone location
        submit(plat, ref, name, "files")
        report = runner.run_pass()
        assert {j.metadata.name: j.status.phase for j in report.finished} == {name: "Succeeded"}
    left = {b.metadata.name: b.status.phase for b in plat.backups(NS)}
    assert left["a-1"] == "Deleting" and left["a-2"] == "Ready"  # left for the operator


def test_d8_deleting_a_location_in_use_is_refused(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "app"
    data.mkdir()
    (data / "f.bin").write_bytes(b"x" * 1000)
    loc2 = f"""
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {{name: loc2}}
spec: {{provider: Local, path: "{tmp_path / "bucket2"}", bucket: b2}}
"""
    admin = join(loc2, directory_class("files", "Files", storage="loc2"), app_yaml(data))
    assert cli(home, "apply", "-f", "-", stdin=admin).returncode == 0
    cli(home, "apply", "-f", "-", stdin=JOB)
    assert cli(home, "run", "--once", "-q").returncode == 0
    out = cli(home, "delete", "storagelocation", "loc2")
    assert out.returncode == 2
    assert "is still used by BackupClass files, 1 Backup;" in out.stderr
    # Re-pointing the class is not enough: the Backup whose data is there still holds it.
    cli(home, "apply", "-f", "-", stdin=FILES_CLASS)
    assert "1 Backup;" in cli(home, "delete", "storagelocation", "loc2").stderr


# -- D13: a storage fault outside a stream


def test_d13_a_bucket_path_that_cannot_be_made_is_a_storage_error(tmp_path: Path) -> None:
    from cozybackup_core import EngineConfig

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the bucket's directory should be")
    plat = LocalPlatform(
        tmp_path / "home", drivers=(FilesDriver,), config=EngineConfig(attempts=2, backoff=0.01)
    )
    plat.apply(
        f"""
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {{name: blocked}}
spec: {{provider: Local, path: "{blocker / "bk"}", bucket: b}}
""",
        directory_class("files", "Files", storage="blocked"),
    )
    ref = directory_app(plat, tmp_path / "app", b"x" * 100)
    job = plat.backup(NS, ref, "b1", "files")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "StorageUnavailable"
    assert job.status.message == "the backup storage cannot be opened; ask the platform operator"
    assert str(tmp_path) not in plat.tenant_view(NS)


# -- D14: a blocking file in the bucket


@pytest.mark.timeout(60)
@pytest.mark.parametrize("planted", ["fifo", "link"])
@pytest.mark.parametrize("dedup", [False, None], ids=["streams", "default"])
def test_d14_a_fifo_or_link_in_the_bucket_is_refused_not_waited_on(
    tmp_path: Path, planted: str, dedup: bool | None
) -> None:
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,))
    plat.apply(FILES_CLASS, local_location_yaml(deduplication=dedup))
    data = tmp_path / "app"
    ref = directory_app(plat, data, b"x" * 10_000)
    assert plat.backup(NS, ref, "b1", "files").status.phase == "Succeeded"
    # The backup's data: its stream, or the pack holding its chunks.
    [stream] = [p for p in plat.stored_files() if p.parent.name == "streams" or "packs" in p.parts]
    stream.unlink()
    if planted == "fifo":
        os.mkfifo(stream)
    else:
        (tmp_path / "elsewhere").write_bytes(b"not the backup")
        stream.symlink_to(tmp_path / "elsewhere")
    (data / "x.bin").write_bytes(b"current")
    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "ArtifactCorrupt"
    assert (data / "x.bin").read_bytes() == b"current"
    [backup] = plat.backups(NS)
    verified = plat.engine.verify(backup).status.last_verified
    assert verified is not None and verified.result == "Failed"


# -- D11: bounded tenant state


def test_d11_finished_jobs_expire_after_their_time_and_backups_stay(tmp_path: Path) -> None:
    from cozybackup_core import EngineConfig, RestoreJob

    now = [dt.datetime(2026, 12, 5, 8, 0, tzinfo=dt.timezone.utc)]
    plat = LocalPlatform(
        tmp_path / "home",
        drivers=(FilesDriver,),
        clock=lambda: now[0],
        config=EngineConfig(finished_job_ttl=3600.0),
    )
    plat.apply(FILES_CLASS)
    ref = directory_app(plat, tmp_path / "app", b"x" * 100)
    assert plat.backup(NS, ref, "old", "files").status.phase == "Succeeded"
    assert plat.restore(NS, "old", "r-old").status.phase == "Succeeded"
    now[0] += dt.timedelta(minutes=59)
    submit(plat, ref, "young", "files")
    runner = Runner(plat.engine)
    assert runner.run_pass().expired == ()
    now[0] += dt.timedelta(minutes=2)  # "old" and "r-old" now finished 61 minutes ago
    report = runner.run_pass()
    assert sorted(report.expired) == [f"{NS}/old", f"{NS}/r-old"]
    assert [j.metadata.name for j in plat.host.objects.list(BackupJob, NS)] == ["young"]
    assert plat.host.objects.list(RestoreJob, NS) == []
    assert sorted(b.metadata.name for b in plat.backups(NS)) == ["old", "young"]


def test_d11_a_namespace_holds_a_bounded_number_of_live_objects(tmp_path: Path) -> None:
    from cozybackup_core._engine.admission import admit

    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,))
    plat.apply(FILES_CLASS)
    ref = ApplicationRef(api_group=FILES.api_group, kind="Directory", name="app1")
    jobs = [
        BackupJob(
            metadata=ObjectMeta(name=f"j-{i}", namespace=NS),
            spec=BackupJobSpec(application_ref=ref, backup_class_name="files"),
        )
        for i in range(6)
    ]
    store = plat.host.objects
    admitted = admit(jobs[:5], plat.engine.catalog(), store.get, listing=store.list, live_limit=5)
    for job, _ in admitted:
        store.create(job)
    with pytest.raises(ValidationError) as err:
        admit(jobs[5:], plat.engine.catalog(), store.get, listing=store.list, live_limit=5)
    [(field, message)] = err.value.problems
    assert field == "metadata.namespace" and "already has 5 Plans and unfinished jobs" in message
    # One apply of many counts them as it goes.
    with pytest.raises(ValidationError):
        admit(jobs, plat.engine.catalog(), lambda *a: None, listing=lambda *a: [], live_limit=5)
    # Another tenant is not affected.
    other = attrs.evolve(jobs[5], metadata=ObjectMeta(name="j-5", namespace="tenant-b"))
    assert admit([other], plat.engine.catalog(), store.get, listing=store.list, live_limit=5)


def test_d11_run_takes_the_time_to_live_as_a_duration(tmp_path: Path) -> None:
    for bad in ("0s", "soon", "-1d"):
        out = cli(tmp_path / "home", "run", "--once", "--job-ttl", bad)
        assert out.returncode == 2 and "--job-ttl" in out.stderr, out.stderr
    assert cli(tmp_path / "home", "run", "--once", "-q", "--job-ttl", "never").returncode == 0
