"""etcd's own cases: multi-member restores, TLS, integrity, failures that commit nothing."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from cozybackup_etcd import SNAPSHOT_STREAM, EtcdDriver, EtcdParameters
from cozybackup_etcd.testing import LocalEtcd, TLSFiles
from tcp_proxy import Proxy

from cozybackup_core import (
    ApplicationRef,
    AppLocation,
    ArtifactRecord,
    Deadline,
    DriverError,
    RestoreContext,
)
from cozybackup_core.testing import LocalPlatform, typed_metadata

from conftest import (
    DEBIAN_BIN,
    DISTRO_BIN,
    HISTORY_KEYS,
    ClusterFactory,
    class_yaml,
    fingerprint,
    write_dataset,
)

NS = "tenant-a"
FOLLOWER_CLASS = class_yaml("etcd-follower", "{snapshotFrom: follower, timeoutSeconds: 600}")


def platform(tmp_path: Path) -> LocalPlatform:
    plat = LocalPlatform(tmp_path / "home", drivers=(EtcdDriver,))
    plat.apply(FOLLOWER_CLASS)
    return plat


def declare(
    plat: LocalPlatform,
    name: str,
    cluster: LocalEtcd,
    *,
    credentials: dict[str, str] | None = None,
    **conn: Any,
) -> ApplicationRef:
    creds = cluster.credentials() if credentials is None else credentials
    return plat.declare_app(NS, name, "Etcd", cluster.connection(**conn), creds)


def assert_nothing_committed(plat: LocalPlatform) -> None:
    assert plat.backups(NS) == []
    assert plat.leftovers() == []
    assert plat.host.objects.list(ArtifactRecord) == []


def assert_tenant_safe(
    plat: LocalPlatform, *clusters: LocalEtcd, extra: tuple[str, ...] = ()
) -> None:
    view = plat.tenant_view(NS)
    secrets = ["127.0.0.1", str(plat.home), "BEGIN", *extra]
    for c in clusters:
        secrets += [str(c.base), *c.endpoints, *(c.peer_url(i) for i in range(len(c.names)))]
    leaks = [s for s in secrets if s in view]
    assert not leaks, f"tenant-visible text contains {leaks}"
    assert "Traceback" not in view


def leftovers(cluster: LocalEtcd) -> list[Path]:
    """Staging or previous data dirs a restore left beside the members' data."""
    return sorted(p for name in cluster.names for p in (cluster.base / name).glob(".*cozybackup*"))


def etcdctl(cluster: LocalEtcd, *args: str) -> Any:
    """The real etcdctl of the cluster's release, JSON output."""
    tls = cluster.tls
    flags = [f"--endpoints={','.join(cluster.endpoints)}", "-w", "json"]
    if tls:
        flags += [f"--cacert={tls.ca}", f"--cert={tls.client_cert}", f"--key={tls.client_key}"]
    out = subprocess.run(
        [str(cluster.bin_dir / "etcdctl"), *flags, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# ---------------------------------------------------------------------------- restores


def test_three_member_restore_forms_a_healthy_cluster(
    etcd_clusters: ClusterFactory, etcd_bin: Path, tmp_path: Path
) -> None:
    plat = platform(tmp_path)
    src = etcd_clusters(etcd_bin, members=3)
    write_dataset(src, seed=1, keys=3000)
    before = fingerprint(src)
    assert before["keys"] == 3000 + len(HISTORY_KEYS) + 2 and len(before["leases"]) == 2
    assert all(len(h) == 4 for h in before["history"].values())
    ref = declare(plat, "tenant-k8s", src)
    job = plat.backup(NS, ref, "b1", "etcd-follower")
    assert job.status.phase == "Succeeded", job.status.message
    meta = typed_metadata(plat.backups(NS)[0].spec.driver_metadata)
    with src.kv() as kv:
        status = kv.status()
    assert meta["members"] == 3 and meta["snapshotFrom"] == "follower"
    assert meta["revision"] == status["revision"] == before["revision"]
    assert meta["clusterId"] == f"{status['clusterId']:016x}"
    assert meta["etcdVersion"] == status["version"]

    # To a copy: a fresh three-member cluster that has never run.
    target = etcd_clusters(etcd_bin, members=3, started=False)
    copy = declare(plat, "tenant-k8s-copy", target)
    job = plat.restore(NS, "b1", "r1", target=copy)
    assert job.status.phase == "Succeeded", job.status.message
    health = etcdctl(target, "endpoint", "health")
    assert sorted(h["endpoint"] for h in health) == sorted(target.endpoints)
    assert all(h["health"] for h in health), health
    members = etcdctl(target, "member", "list")["members"]
    assert sorted(m["name"] for m in members) == list(target.names)
    assert sorted(m["peerURLs"][0] for m in members) == sorted(target.peer_url(i) for i in range(3))
    assert fingerprint(target) == before
    with target.kv() as kv:
        assert kv.status()["clusterId"] != status["clusterId"], "the copy must be a new cluster"
        kv.put(b"/written-after-restore", b"ok")
    assert fingerprint(src) == before, "a to-copy restore changed the source"

    # In place: the running three-member source, changed after the backup.
    write_dataset(src, seed=2, keys=500)
    job = plat.restore(NS, "b1", "r2")
    assert job.status.phase == "Succeeded", job.status.message
    assert fingerprint(src) == before
    assert len(etcdctl(src, "member", "list")["members"]) == 3
    assert leftovers(src) == [] and leftovers(target) == []
    assert_tenant_safe(plat, src, target)


def test_tls_client_certificates(
    etcd_clusters: ClusterFactory,
    etcd_bin: Path,
    tls_files: TLSFiles,
    other_ca_files: TLSFiles,
    tmp_path: Path,
) -> None:
    plat = platform(tmp_path)
    src = etcd_clusters(etcd_bin, tls=tls_files)
    write_dataset(src, seed=3)
    before = fingerprint(src)
    assert src.endpoints[0].startswith("https://")
    job = plat.backup(NS, declare(plat, "secure", src), "b1")
    assert job.status.phase == "Succeeded", job.status.message
    target = etcd_clusters(etcd_bin, tls=tls_files, started=False)
    job = plat.restore(NS, "b1", "r1", target=declare(plat, "secure-copy", target))
    assert job.status.phase == "Succeeded", job.status.message
    assert fingerprint(target) == before

    # A client certificate from another CA, and none at all: refused, tenant-safe.
    foreign = other_ca_files.credentials() | {"ca.crt": tls_files.ca.read_text()}
    bad = declare(plat, "foreign-cert", src, credentials=foreign)
    job = plat.backup(NS, bad, "b2")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "CredentialsRejected", job.status.message
    assert "certificate" in (job.status.message or "")
    no_cert = declare(plat, "no-cert", src, credentials={"ca.crt": tls_files.ca.read_text()})
    job = plat.backup(NS, no_cert, "b3")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "CredentialsRejected", job.status.message
    assert [b.metadata.name for b in plat.backups(NS)] == ["b1"]
    assert_tenant_safe(plat, src, target, extra=(tls_files.client_key.read_text()[30:60],))


def test_follower_preference_falls_back_to_the_leader_alone(
    etcd_clusters: ClusterFactory, tmp_path: Path
) -> None:
    plat = platform(tmp_path)
    src = etcd_clusters(DISTRO_BIN)
    write_dataset(src, seed=4, keys=200)
    job = plat.backup(NS, declare(plat, "single", src), "b1", "etcd-follower")
    assert job.status.phase == "Succeeded", job.status.message
    assert typed_metadata(plat.backups(NS)[0].spec.driver_metadata)["snapshotFrom"] == "leader"


# ---------------------------------------------------------------------------- integrity


class _Source:
    """A backup's streams as the engine hands them to a driver (already verified)."""

    def __init__(self, streams: dict[str, bytes]) -> None:
        self.streams = streams

    def names(self) -> list[str]:
        return list(self.streams)

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        yield io.BytesIO(self.streams[name])


class _Progress:
    def __init__(self) -> None:
        self.stages: list[str] = []

    def stage(self, name: str, *, bytes_total: int | None = None) -> None:
        self.stages.append(name)

    def advance(self, nbytes: int) -> None:
        pass


def _restore_ctx(target: AppLocation, snapshot: bytes, version: str) -> RestoreContext:
    return RestoreContext(
        target=target,
        source=target.ref,
        in_place=True,
        parameters=EtcdParameters(),
        artifact=_Source({SNAPSHOT_STREAM: snapshot}),
        driver_metadata={"etcdVersion": version},
        taken_at=dt.datetime.now(dt.timezone.utc),
        progress=_Progress(),
        log=logging.getLogger("test.etcd"),
        deadline=Deadline.after(120),
    )


def test_corrupted_snapshot_is_refused_before_any_restore_step(
    etcd_clusters: ClusterFactory, etcd_bin: Path, tmp_path: Path
) -> None:
    """A snapshot saved by the real ``etcdctl snapshot save``, one byte flipped: the
    driver refuses it before it stages, stops or rebuilds anything.  The intact file
    then restores (the driver's artifact is the same format as etcdctl's)."""
    cluster = etcd_clusters(etcd_bin)
    write_dataset(cluster, seed=5, keys=500)
    saved = fingerprint(cluster)
    path = tmp_path / "saved.db"
    subprocess.run(
        [str(cluster.bin_dir / "etcdctl"), f"--endpoints={cluster.endpoints[0]}", "snapshot",
         "save", str(path)],
        check=True, capture_output=True, timeout=60, env={**os.environ, "ETCDCTL_API": "3"},
    )  # fmt: skip
    good = path.read_bytes()
    write_dataset(cluster, seed=6, keys=300)
    after = fingerprint(cluster)
    marker = tmp_path / "stop-command-ran"
    stop = ["sh", "-c", f'touch "{marker}" && exec "$@"', "sh", *cluster.control("stop")]
    loc = AppLocation(
        ref=ApplicationRef(kind="Etcd", name="corrupt"),
        namespace=NS,
        connection=cluster.connection(stopCommand=stop),
    )
    version = etcdctl(cluster, "endpoint", "status")[0]["Status"]["version"]
    for damage in ("middle", "trailer", "truncated"):
        bad = bytearray(good)
        if damage == "middle":
            bad[len(bad) // 2] ^= 0x01
        elif damage == "trailer":
            bad[-1] ^= 0x80
        else:
            del bad[-100:]
        ctx = _restore_ctx(loc, bytes(bad), version)
        with pytest.raises(DriverError, match="integrity check") as info:
            EtcdDriver().restore(ctx)
        assert "sha256" in (info.value.admin_detail or "") or "bytes" in (
            info.value.admin_detail or ""
        )
        assert ctx.progress.stages == [], "a restore step started"  # type: ignore[attr-defined]
        assert not marker.exists(), "the cluster was stopped for a corrupt snapshot"
        assert cluster.running() == [0]
        assert fingerprint(cluster) == after
        assert leftovers(cluster) == []
    EtcdDriver().restore(_restore_ctx(loc, good, version))
    assert marker.exists()
    assert fingerprint(cluster) == saved
    assert leftovers(cluster) == []


def test_snapshot_damaged_in_transit_is_not_committed(
    etcd_clusters: ClusterFactory, etcd_bin: Path, tmp_path: Path
) -> None:
    """A proxy alters bytes of the snapshot stream (the member's sha256 trailer is
    right): the backup fails its integrity check and nothing is committed."""
    plat = platform(tmp_path)
    cluster = etcd_clusters(etcd_bin)
    mark, swap = b"CORRUPT-ME-0123456789-abcdefghijkl", b"corrupted-0123456789-abcdefghijkl!"
    with cluster.kv() as kv:  # the marker in many pages: some always arrive in one piece
        kv.put_many([(b"/mark/%04d" % i, mark * 20, 0) for i in range(300)])
    replaced = []

    def rewrite(data: bytes) -> bytes:
        if mark in data:
            replaced.append(data.count(mark))
        return data.replace(mark, swap)

    with Proxy(cluster.client_ports[0], rewrite=rewrite) as proxy:
        ref = declare(plat, "damaged", cluster, endpoints=[proxy.endpoint])
        job = plat.backup(NS, ref, "b1")
    assert replaced, "the proxy saw no marker: the test did not damage anything"
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "SnapshotCorrupt"
    assert "does not match its own checksum" in (job.status.message or "")
    assert_nothing_committed(plat)
    assert_tenant_safe(plat, cluster)


def test_server_stopped_mid_snapshot_fails_and_commits_nothing(
    etcd_clusters: ClusterFactory, etcd_bin: Path, tmp_path: Path
) -> None:
    plat = platform(tmp_path)
    cluster = etcd_clusters(etcd_bin)
    with cluster.kv() as kv:  # ~20 MiB of incompressible values
        kv.put_many([(b"/big/%05d" % i, os.urandom(10_000), 0) for i in range(2000)], batch=100)
    stopper: list[threading.Thread] = []

    def watch(total: int) -> None:
        if total > 2_000_000 and not stopper:  # the stream is well under way
            stopper.append(threading.Thread(target=cluster.stop))
            stopper[0].start()

    with Proxy(cluster.client_ports[0], rate=4e6, on_bytes=watch) as proxy:
        ref = declare(plat, "stopping", cluster, endpoints=[proxy.endpoint])
        job = plat.backup(NS, ref, "b1")
    assert stopper, "the snapshot finished before the server was stopped"
    stopper[0].join(timeout=60)
    assert proxy.sent < 15_000_000
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "EtcdUnavailable"
    message = job.status.message or ""
    assert "went away while streaming the snapshot; nothing was stored" in message
    assert "run the job again" in message
    assert_nothing_committed(plat)
    assert_tenant_safe(plat, cluster, extra=(proxy.endpoint,))


# ---------------------------------------------------------------------------- refusals


def test_running_cluster_without_stop_and_start_is_refused(
    etcd_clusters: ClusterFactory, tmp_path: Path
) -> None:
    plat = platform(tmp_path)
    src = etcd_clusters(DISTRO_BIN)
    write_dataset(src, seed=7, keys=200)
    # Declared without the commands: backups work, restores into it cannot.
    ref = declare(plat, "plain", src, control=False)
    assert plat.backup(NS, ref, "b1").status.phase == "Succeeded"
    write_dataset(src, seed=8, keys=100)
    after = fingerprint(src)
    running_copy = etcd_clusters(DISTRO_BIN)
    jobs = [
        plat.restore(NS, "b1", "r1"),
        plat.restore(NS, "b1", "r2", target=declare(plat, "copy", running_copy, control=False)),
        plat.restore(
            NS,
            "b1",
            "r3",
            target=declare(plat, "half", running_copy, control=False, stopCommand=["true"]),
        ),
    ]
    for job, where, missing in zip(
        jobs,
        ("in place", "into this application", "into this application"),
        ("stopCommand and startCommand", "stopCommand and startCommand", "startCommand)"),
        strict=True,
    ):
        assert job.status.phase == "Failed"
        assert job.status.conditions[0].reason == "Unsupported"
        assert f"cannot be restored {where}" in (job.status.message or "")
        assert missing in (job.status.message or "")
    # No members declared: nothing to rebuild on this worker.
    bare = plat.declare_app(NS, "bare", "Etcd", {"endpoints": running_copy.endpoints})
    job = plat.restore(NS, "b1", "r4", target=bare)
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "Unsupported"
    assert "has not declared this cluster's members" in (job.status.message or "")
    assert fingerprint(src) == after
    assert leftovers(src) == [] and leftovers(running_copy) == []
    assert_tenant_safe(plat, src, running_copy)


def test_snapshot_of_a_newer_etcd_is_refused_by_older_tools(
    etcd_clusters: ClusterFactory, tmp_path: Path
) -> None:
    plat = platform(tmp_path)
    src = etcd_clusters(DISTRO_BIN)
    write_dataset(src, seed=9, keys=100)
    assert plat.backup(NS, declare(plat, "new", src), "b1").status.phase == "Succeeded"
    old = etcd_clusters(DEBIAN_BIN, started=False)
    job = plat.restore(NS, "b1", "r1", target=declare(plat, "old", old))
    assert job.status.phase == "Failed"
    assert "taken from etcd 3.5 and this cluster's restore tool is etcd 3.4" in (
        job.status.message or ""
    )
    assert not old.data_dir(0).exists() and leftovers(old) == []


def test_unhealthy_restored_cluster_is_rolled_back(
    etcd_clusters: ClusterFactory, tmp_path: Path
) -> None:
    """The start command fails once after the swap: the previous data goes back, the
    old cluster is started again, and the job says nothing was changed."""
    plat = platform(tmp_path)
    src = etcd_clusters(DISTRO_BIN, members=3)
    write_dataset(src, seed=10, keys=300)
    flag = tmp_path / "fail-next-start"
    ref = declare(plat, "fragile", src, startCommand=src.control("start", "--fail-once", str(flag)))
    assert plat.backup(NS, ref, "b1").status.phase == "Succeeded"
    write_dataset(src, seed=11, keys=200)
    after = fingerprint(src)
    flag.touch()
    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    assert "previous data was put back and the cluster started again; nothing was changed" in (
        job.status.message or ""
    )
    assert not flag.exists(), "the failing start never ran"
    src.wait_healthy()
    assert fingerprint(src) == after
    assert leftovers(src) == []
