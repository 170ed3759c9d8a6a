"""Cozystack's database applications backed up and restored through worker Jobs, each a real
server on 127.0.0.1 located from Cozystack-shaped objects on the real API server.

Each test makes what the application's chart makes (the ``apps.cozystack.io`` object and
its credentials Secret, under the names and keys its driver's locator reads) and runs
``cozybackup controller --data-mover jobs``; the test kubelet runs the worker Pods as local
processes, as the worker ServiceAccount.  The admin's conventions file is the driver's own
locator with one change: the connection is the local server's, because the Services the
locator names only resolve in a cluster's DNS (test_cozystack_apps.py resolves those).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import s3fs  # type: ignore[import-untyped, import-not-found, unused-ignore]
import yaml
from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]

from cozybackup_core import Backup, BackupJob, LocatorCase, PluginHost, RestoreJob, load
from cozybackup_core._api.wire import unstructure

from . import test_controller as controller
from .kubelet import Kubelet
from .test_controller import ACME, GROUP, PLATFORM, VERSION, Platform
from .test_cozystack_apps import Cozystack

pytestmark = [pytest.mark.kube, pytest.mark.s3]

# The installed bundle, tenants, S3 and worker kubelet of test_controller.py, made again
# for this module (its setup takes over what an earlier module left).
platform = controller.platform
kubelet = controller.kubelet

APPS = "apps.cozystack.io"
REPO = Path(__file__).resolve().parents[2]


def located_here(kind: str, connection: Mapping[str, Any] | None, **changes: Any) -> dict[str, Any]:
    """The conventions entry for ``kind``: its installed driver's locator (the live object
    it reads, the Secret and keys) reaching ``connection`` instead of the chart's Service
    (None: the chart's), with ``changes`` to other fields."""
    locator = PluginHost.load().registry.locators()[(APPS, kind)]
    reached = attrs.evolve(
        locator,
        **{"connection": dict(connection or locator.connection), "cases": (), **changes},
    )
    return {f"{APPS}/{kind}": unstructure(reached)}


@contextlib.contextmanager
def workers_for(
    platform: Platform,
    name: str,
    conventions: Mapping[str, Any],
    strategy: Mapping[str, Any],
    *,
    storage: str = "platform-s3",
) -> Iterator[None]:
    """A BackupClass ``name`` (one ``strategy``, stored on ``storage``) and a controller
    moving data in worker Jobs with ``conventions`` added to the admin's file."""
    saved = platform.conventions.read_text()
    platform.conventions.write_text(saved + yaml.safe_dump(dict(conventions)))
    platform.host.objects.create(
        load(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "BackupClass",
                "metadata": {"name": name},
                "spec": {"storageRef": {"name": storage}, "strategies": [dict(strategy)]},
            }
        )
    )
    try:
        with platform.leading(name, *controller._with_workers(platform)):
            yield
    finally:
        platform.conventions.write_text(saved)


def backup_of(platform: Platform, job: str, kind: str, app: str, backup_class: str) -> BackupJob:
    """The tenant's BackupJob ``job`` of ``kind`` ``app``, once finished."""
    platform.tenant_creates(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "BackupJob",
            "metadata": {"name": job, "namespace": ACME},
            "spec": {
                "applicationRef": {"apiGroup": APPS, "kind": kind, "name": app},
                "backupClassName": backup_class,
            },
        }
    )
    done: BackupJob = platform.finished(BackupJob, job, seconds=180)
    return done


def backed_up(
    platform: Platform, kubelet: Kubelet, job: str, kind: str, app: str, backup_class: str
) -> Backup:
    """:func:`backup_of`, run to Succeeded in a worker; its Backup."""
    done = backup_of(platform, job, kind, app, backup_class)
    assert done.status.phase == "Succeeded", done.status.message
    worker = controller._worker_of(platform, kubelet, job)
    assert f"backup {ACME}/{job}: Completed" in worker.container().stdout
    backup = platform.host.objects.get(Backup, ACME, job)
    assert backup is not None and backup.status.phase == "Ready"
    return backup


def restore_of(
    platform: Platform, job: str, backup: str, target: Mapping[str, str] | None = None
) -> RestoreJob:
    """The tenant's RestoreJob ``job`` of ``backup`` (in place, or into ``target``), once
    finished."""
    spec: dict[str, Any] = {"backupRef": {"name": backup}}
    if target is not None:
        spec["targetApplicationRef"] = {"apiGroup": APPS, **target}
    platform.tenant_creates(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "RestoreJob",
            "metadata": {"name": job, "namespace": ACME},
            "spec": spec,
        }
    )
    done: RestoreJob = platform.finished(RestoreJob, job, seconds=180)
    return done


def restored(
    platform: Platform, job: str, backup: str, target: Mapping[str, str] | None = None
) -> None:
    """:func:`restore_of`, run to Succeeded in a worker."""
    done = restore_of(platform, job, backup, target)
    assert done.status.phase == "Succeeded", done.status.message
    words = {
        (j.metadata.annotations or {}).get("backups.cozystack.io/for"): (
            j.metadata.labels or {}
        ).get("backups.cozystack.io/worker")
        for j in controller._worker_jobs(platform)
    }
    assert words[f"RestoreJob/{ACME}/{job}"] == "restore"


def tenant_reads_none_of(platform: Platform, *private: str) -> None:
    """What the tenant reads with its own token (jobs, Backups, events) holds none of
    ``private`` (addresses, passwords, paths, Secret names) nor the storage's details."""
    seen = json.dumps(
        [
            platform.alice.list_namespaced_custom_object(GROUP, VERSION, ACME, plural)
            for plural in ("backupjobs", "restorejobs", "backups")
        ]
    ) + json.dumps(
        client.ApiClient().sanitize_for_serialization(
            client.CoreV1Api(platform.cluster.admin).list_namespaced_event(ACME)
        )
    )
    storage = (platform.s3.endpoint_url, platform.s3.access_key, platform.s3.secret_key)
    for secret in (*private, *storage, "hidden-bucket-name", "127.0.0.1"):
        assert secret not in seen, secret
    assert "Traceback" not in seen


# --------------------------------------------------------------------------- Postgres


@pytest.mark.timeout(300)
def test_a_postgres_application_backed_up_and_restored_in_worker_jobs(
    platform: Platform, kubelet: Kubelet, cozystack_apps: None
) -> None:
    """A real PostgreSQL as the tenant's ``Postgres`` ``shop`` (CloudNativePG's
    ``-superuser`` Secret), restored in place."""
    from cozybackup_postgres.testing import running, write_dataset

    cozy = Cozystack(platform.cluster, ACME)
    with running() as server:
        write_dataset(server, seed=5, rows=300)
        before = server.fingerprint()
        cozy.app("Postgres", "shop", {"replicas": 2})
        cozy.secret("postgres-shop-superuser", server.credentials())
        conventions = located_here("Postgres", server.connection())
        strategy = {
            "application": {"apiGroup": APPS, "kind": "Postgres"},
            "strategyRef": {"kind": "Postgres", "name": "pg"},
        }
        with workers_for(platform, "pg", conventions, strategy):
            backup = backed_up(platform, kubelet, "pgb1", "Postgres", "shop", "pg")
            assert backup.status.underlying_resources is not None
            assert "shop" in backup.status.underlying_resources["databases"]
            write_dataset(server, seed=6, rows=300)
            assert server.fingerprint() != before
            restored(platform, "pgr1", "pgb1")
            assert server.fingerprint() == before
        tenant_reads_none_of(platform, server.credentials()["password"], "superuser")


# --------------------------------------------------------------------------- MariaDB


def _mariadb_server() -> Any:
    """The MariaDB driver's test server helper (its tests' control program)."""
    helpers = str(REPO / "drivers" / "mariadb" / "tests")
    if helpers not in sys.path:
        sys.path.append(helpers)
    import mariadb_server  # type: ignore[import-not-found, unused-ignore]

    return mariadb_server


MARIADB_DATA = """
CREATE DATABASE IF NOT EXISTS shop CHARACTER SET utf8mb4;
CREATE TABLE shop.orders (
  id INT PRIMARY KEY, customer VARCHAR(64), total DECIMAL(12,2), note TEXT, raw VARBINARY(16),
  placed DATETIME(6)
);
INSERT INTO shop.orders VALUES
  (1, 'Zoë Ångström', 10.50, 'it''s "quoted"\\nline two', X'00FF10', '2024-02-29 23:59:59.123456'),
  (2, '日本語', 0.00, NULL, X'', '1970-01-01 00:00:01'),
  (3, 'emoji 🙂', -99999.99, 'back\\\\slash', NULL, NULL);
CREATE VIEW shop.big AS SELECT id, total FROM shop.orders WHERE total > 1;
"""


def _mariadb_fingerprint(server: Any) -> list[Any]:
    return [
        server.rows(
            "SELECT id, customer, total, note, HEX(raw), placed FROM shop.orders ORDER BY id"
        ),
        server.rows("SHOW CREATE TABLE shop.orders"),
        server.rows("SELECT * FROM shop.big ORDER BY id"),
        server.rows("SHOW FULL TABLES FROM shop"),
    ]


@pytest.fixture
def mariadb_server() -> Iterator[Any]:
    """A real MariaDB on 127.0.0.1 (the driver's test helper), stopped by its PID."""
    helper = _mariadb_server()
    template = helper.private_dir("cozy-kube-mariadb-template-")
    server = helper.MariaDBServer(helper.private_dir("cozy-kube-mariadb-"))
    try:
        shutil.copytree(helper.make_template(template), server.datadir, symlinks=True)
        helper.chown_tree(server.datadir)
        server.start()
        yield server
    finally:
        server.stop()
        assert not server.running()
        shutil.rmtree(server.base, ignore_errors=True)
        shutil.rmtree(template, ignore_errors=True)


@pytest.mark.timeout(300)
def test_a_mariadb_application_backed_up_and_restored_in_worker_jobs(
    platform: Platform, kubelet: Kubelet, cozystack_apps: None, mariadb_server: Any
) -> None:
    """A real MariaDB as the tenant's ``MariaDB`` ``shop`` with one replica (the chart's
    ``-credentials`` Secret, key ``root``), restored in place after a row was changed,
    one added and a view redefined."""
    helper = _mariadb_server()
    server = mariadb_server
    server.sql(MARIADB_DATA)
    before = _mariadb_fingerprint(server)
    cozy = Cozystack(platform.cluster, ACME)
    cozy.app("MariaDB", "shop", {"replicas": 1})
    cozy.secret("mariadb-shop-credentials", {"root": helper.ADMIN_PASSWORD, "app": "x"})
    # The test server's admin account stands in for the chart's root (whose password the
    # Secret's key ``root`` holds): root here authenticates through the unix socket only.
    conventions = located_here(
        "MariaDB", {"host": "127.0.0.1", "port": server.port}, fixed={"username": helper.ADMIN_USER}
    )
    strategy = {
        "application": {"apiGroup": APPS, "kind": "MariaDB"},
        "strategyRef": {"kind": "MariaDB", "name": "mariadb"},
    }
    with workers_for(platform, "mariadb", conventions, strategy):
        backed_up(platform, kubelet, "mdb1", "MariaDB", "shop", "mariadb")
        server.sql(
            "UPDATE shop.orders SET total = 1 WHERE id = 1;"
            "INSERT INTO shop.orders (id) VALUES (4);"
            "CREATE OR REPLACE VIEW shop.big AS SELECT id FROM shop.orders;"
        )
        assert _mariadb_fingerprint(server) != before
        restored(platform, "mdr1", "mdb1")
        assert _mariadb_fingerprint(server) == before
        # An application that does not exist, and one whose Secret is missing: the same
        # plain reason, naming neither the Secret nor the Service.
        cozy.app("MariaDB", "nosecret", {"replicas": 1})
        for app in ("gone", "nosecret"):
            failed = backup_of(platform, f"mdb-{app}", "MariaDB", app, "mariadb")
            assert failed.status.phase == "Failed"
            assert failed.status.message == (
                f"application MariaDB {app} does not exist in namespace {ACME}"
            )
    tenant_reads_none_of(platform, helper.ADMIN_PASSWORD, helper.ADMIN_USER, "credentials")


# --------------------------------------------------------------------------- ClickHouse


@pytest.mark.timeout(300)
def test_a_clickhouse_application_backed_up_and_restored_in_worker_jobs(
    platform: Platform, kubelet: Kubelet, cozystack_apps: None
) -> None:
    """A real ClickHouse server as the tenant's ``ClickHouse`` ``events`` (the chart's
    ``-credentials`` Secret, key ``backup``), logical mode, restored in place."""
    from cozybackup_clickhouse.testing import (
        ADMIN_PASSWORD,
        ADMIN_USER,
        ClickHouseServer,
        fingerprint,
        write_dataset,
    )

    server = ClickHouseServer.start()
    try:
        write_dataset(server.run, seed=3, rows_per_table=300)
        before = fingerprint(server.run)
        cozy = Cozystack(platform.cluster, ACME)
        cozy.app("ClickHouse", "events", {"shards": 1, "replicas": 2})
        cozy.secret("clickhouse-events-credentials", {"backup": ADMIN_PASSWORD})
        # The test server's admin account stands in for the chart's ``backup`` user.
        conventions = located_here(
            "ClickHouse", server.connection(), fixed={"username": ADMIN_USER}
        )
        strategy = {
            "application": {"apiGroup": APPS, "kind": "ClickHouse"},
            "strategyRef": {"kind": "ClickHouse", "name": "clickhouse"},
        }
        with workers_for(platform, "clickhouse", conventions, strategy):
            backed_up(platform, kubelet, "chb1", "ClickHouse", "events", "clickhouse")
            write_dataset(server.run, seed=4, rows_per_table=300)
            assert fingerprint(server.run) != before
            restored(platform, "chr1", "chb1")
            assert fingerprint(server.run) == before
        tenant_reads_none_of(platform, ADMIN_PASSWORD, str(server.base))
    finally:
        server.destroy()
    assert not server.running


@pytest.mark.timeout(300)
def test_clickhouse_native_mode_streams_server_side_to_s3_from_a_worker(
    platform: Platform, kubelet: Kubelet, cozystack_apps: None, tmp_path: Path
) -> None:
    """Native mode (``BACKUP ... TO S3`` by the engine itself) where the class opts in: a
    StorageLocation with ``serverSideAccess: true`` hands the worker an S3 prefix the
    engine writes to and reads back; chdb (the engine inside the worker) stands in for a
    ClickHouse server, which runs the same statements.  In place and into a copy; storage
    that did not opt in refuses native mode."""
    from cozybackup_clickhouse.testing import ChdbApp, fingerprint, write_dataset

    s3 = platform.s3
    controller._apply(
        platform.cluster,
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": {"name": "native-s3", "namespace": PLATFORM},
                    "stringData": {"accessKeyId": s3.access_key, "secretAccessKey": s3.secret_key},
                },
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "StorageLocation",
                    "metadata": {"name": "native-s3"},
                    "spec": {
                        "provider": "S3",
                        "endpoint": s3.endpoint_url,
                        "bucket": "hidden-bucket-name",
                        "prefix": "hidden-native-prefix",
                        "credentialsSecretRef": {"name": "native-s3"},
                        "serverSideAccess": True,
                    },
                },
            ]
        ),
    )
    app, copy = ChdbApp(tmp_path / "analytics"), ChdbApp(tmp_path / "analytics-copy")
    with app.session() as run:
        write_dataset(run, seed=11, memory=False, chain_from_view=False)
        before = fingerprint(run)
    cozy = Cozystack(platform.cluster, ACME)
    for name in ("analytics", "analytics-copy"):
        cozy.app("ClickHouse", name, {"shards": 1, "replicas": 1})
        cozy.secret(f"clickhouse-{name}-credentials", {"backup": "unused-by-chdb"})
    conventions = located_here("ClickHouse", {"engine": "chdb", "path": str(tmp_path / "{name}")})
    strategy = {
        "application": {"apiGroup": APPS, "kind": "ClickHouse"},
        "strategyRef": {"kind": "ClickHouse", "name": "native"},
        "parameters": {"mode": "native"},
    }
    with workers_for(platform, "native", conventions, strategy, storage="native-s3"):
        backup = backed_up(platform, kubelet, "chn1", "ClickHouse", "analytics", "native")
        assert backup.spec.driver_metadata["mode"] == "native"
        # The engine wrote its own backup under the prefix the platform handed out.
        written = s3fs.S3FileSystem(
            key=s3.access_key, secret=s3.secret_key, client_kwargs={"endpoint_url": s3.endpoint_url}
        ).find("hidden-bucket-name/hidden-native-prefix")
        assert any(k.endswith("/.backup") for k in written), written
        with app.session() as run:
            write_dataset(run, seed=12, memory=False, chain_from_view=False)
            assert fingerprint(run) != before
        restored(platform, "chnr1", "chn1")
        with app.session() as run:
            assert fingerprint(run) == before
        restored(platform, "chnr2", "chn1", {"kind": "ClickHouse", "name": "analytics-copy"})
        with copy.session() as run:
            assert fingerprint(run) == before
        # A class that asks for native mode on storage that did not opt in: refused, and
        # nothing is stored.
        platform.host.objects.create(
            load(
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "BackupClass",
                    "metadata": {"name": "native-not-allowed"},
                    "spec": {"storageRef": {"name": "platform-s3"}, "strategies": [strategy]},
                }
            )
        )
        refused = backup_of(platform, "chn2", "ClickHouse", "analytics", "native-not-allowed")
        assert refused.status.phase == "Failed"
        assert "which the platform's storage for this class does not allow" in (
            refused.status.message or ""
        )
        assert platform.host.objects.get(Backup, ACME, "chn2") is None
    tenant_reads_none_of(platform, str(tmp_path), "native-s3", "hidden-native-prefix")


# --------------------------------------------------------------------------- etcd


def _etcd_dataset(cluster: Any, seed: int) -> None:
    """Kubernetes-like keys (text and binary values), several revisions of one key and a
    deleted one; ``seed`` changes every value."""
    with cluster.kv() as kv:
        kv.delete_all()
        kv.put_many(
            [
                (f"/registry/pods/ns-{i % 7}/pod-{i}".encode(), os.urandom(i % 300), 0)
                if i % 5 == 0
                else (f"/registry/configmaps/cm-{i}".encode(), f"Zoë {seed} {i}".encode(), 0)
                for i in range(300)
            ]
        )
        for rev in range(3):
            kv.put(b"/registry/leases/holder", b"seed %d revision %d" % (seed, rev))
        kv.put(b"/registry/deleted", b"gone")
        kv.delete(b"/registry/deleted")


def _etcd_state(cluster: Any) -> dict[str, Any]:
    """Every key with its value, revisions and version, and the cluster's revision."""
    with cluster.kv() as kv:
        items = [
            [it["key"].hex(), it["value"].hex(), it["createRevision"], it["modRevision"],
             it["version"]]
            for it in kv.items()
        ]  # fmt: skip
        return {"revision": kv.status()["revision"], "items": items}


@pytest.mark.timeout(300)
def test_an_etcd_application_backed_up_and_restored_in_worker_jobs(
    platform: Platform, kubelet: Kubelet, cozystack_apps: None, tmp_path: Path
) -> None:
    """A real three-member etcd with client-certificate TLS as the tenant's ``Etcd``
    ``etcd`` (the chart's ``etcd-client-tls`` Secret), where the admin declared its
    members' data directories and stop/start commands: the worker rebuilds every member
    from the snapshot, in place (stopping and starting the cluster) and into a copy (a
    fresh cluster of three members, never started, which the restore starts)."""
    from cozybackup_etcd.testing import LocalEtcd, make_certificates

    tls = make_certificates(tmp_path / "tls")
    cluster = LocalEtcd.create(tmp_path / "etcd", Path("/usr/bin"), members=3, tls=tls)
    copy = LocalEtcd.create(tmp_path / "etcd-copy", Path("/usr/bin"), members=3, tls=tls)
    cluster.start()
    try:
        cluster.wait_healthy()
        _etcd_dataset(cluster, seed=1)
        before = _etcd_state(cluster)
        cozy = Cozystack(platform.cluster, ACME)
        cozy.app("Etcd", "etcd", {"replicas": 3})
        cozy.app("Etcd", "etcd-copy", {"replicas": 3})
        cozy.app("Etcd", "etcd-chart", {"replicas": 3})
        cozy.secret("etcd-client-tls", tls.credentials())
        cozy.service("etcd", 2379)
        # Two applications where the admin declared the members; a third as the driver's
        # locator finds it from the chart alone (its Service, no members).
        declared = tuple(
            LocatorCase(when={"metadata.name": name}, connection=where.connection())
            for name, where in (("etcd", cluster), ("etcd-copy", copy))
        )
        conventions = located_here("Etcd", None, cases=declared)
        strategy = {
            "application": {"apiGroup": APPS, "kind": "Etcd"},
            "strategyRef": {"kind": "Etcd", "name": "etcd"},
        }
        with workers_for(platform, "etcd", conventions, strategy):
            backed_up(platform, kubelet, "eb1", "Etcd", "etcd", "etcd")
            _etcd_dataset(cluster, seed=2)
            assert _etcd_state(cluster) != before
            restored(platform, "er1", "eb1")
            cluster.wait_healthy()
            assert _etcd_state(cluster) == before
            restored(platform, "er2", "eb1", {"kind": "Etcd", "name": "etcd-copy"})
            copy.wait_healthy()
            assert _etcd_state(copy) == before
            # From the chart alone the worker cannot reach the members' volumes: refused,
            # clearly, before anything is touched.
            refused = restore_of(platform, "er3", "eb1", {"kind": "Etcd", "name": "etcd-chart"})
            assert refused.status.phase == "Failed"
            assert "has not declared this cluster's members" in (refused.status.message or "")
            assert "Unsupported" in {c.reason for c in refused.status.conditions}
        tenant_reads_none_of(platform, str(tmp_path), tls.credentials()["tls.key"])
    finally:
        cluster.stop()
        copy.stop()
    assert not cluster.running() and not copy.running()
