"""Native mode: chdb's own BACKUP/RESTORE against a real S3 server (SeaweedFS).

Every test here can wait on S3, so each has a hard timeout (``method="thread"``: the
run is ended even if a statement blocks inside the engine).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cozybackup_clickhouse import NATIVE_INDEX_STREAM, ClickHouseDriver
from cozybackup_clickhouse._client import Client
from cozybackup_clickhouse.testing import fingerprint, write_dataset

from cozybackup_core import AppLocation, Deadline
from cozybackup_core.testing import LocalPlatform
from cozybackup_core.testing import S3ServerInfo as S3
from cozybackup_core.testing import seaweed_s3 as seaweed

from conftest import (
    NS,
    ChdbFactory,
    ServerFactory,
    assert_no_secrets,
    declare,
    scratch_databases,
)

pytestmark = [pytest.mark.s3, pytest.mark.timeout(180, method="thread")]
# s3fs would otherwise send a LocationConstraint SeaweedFS refuses (test-infra.md).
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    with seaweed(tmp_path_factory.mktemp("weed")) as info:
        yield info


def platform(
    tmp_path: Path,
    s3: S3,
    *,
    opt_in: bool = True,
    driver: type[ClickHouseDriver] = ClickHouseDriver,
) -> LocalPlatform:
    plat = LocalPlatform(tmp_path / "home", drivers=(driver,))
    plat.apply(f"""
apiVersion: v1
kind: Secret
metadata: {{name: native-s3}}
stringData: {{accessKeyId: "{s3.access_key}", secretAccessKey: "{s3.secret_key}"}}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {{name: clickhouse-native}}
spec:
  provider: S3
  endpoint: "{s3.endpoint_url}"
  bucket: clickhouse-native
  prefix: {tmp_path.name}
  credentialsSecretRef: {{name: native-s3}}
  serverSideAccess: {"true" if opt_in else "false"}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {{name: clickhouse-native}}
spec:
  storageRef: {{name: clickhouse-native}}
  strategies:
  - application: {{apiGroup: apps.cozystack.io, kind: ClickHouse}}
    strategyRef: {{apiGroup: strategy.backups.cozystack.io, kind: ClickHouse, name: native}}
    parameters: {{mode: native}}
""")
    return plat


def tenant_safe(plat: LocalPlatform, s3: S3) -> None:
    view = plat.tenant_view(NS)
    leaks = [s for s in (s3.access_key, s3.secret_key, s3.endpoint_url, "clickhouse-native/")
             if s in view]  # fmt: skip
    assert not leaks, f"tenant-visible text contains {leaks}"


def test_native_round_trip_in_place_and_to_copy(
    chdb_dir: ChdbFactory, tmp_path: Path, s3: S3
) -> None:
    plat = platform(tmp_path, s3)
    app = chdb_dir("src")
    ref = declare(plat, "analytics", app)
    with app.session() as run:
        write_dataset(run, seed=11, memory=False, chain_from_view=False)
        expected = fingerprint(run)
    job = plat.backup(NS, ref, "b1", "clickhouse-native")
    assert job.status.phase == "Succeeded", job.status.message
    backup = plat.backups(NS)[0]
    assert backup.spec.driver_metadata["mode"] == "native"
    manifest = plat.engine.open_backup(backup).manifest
    assert [s.name for s in manifest.streams] == [NATIVE_INDEX_STREAM]
    assert len(manifest.server_files) > 20, "the server's own files are inventoried"
    assert {f.path for f in manifest.server_files} >= {".backup"}

    with app.session() as run:
        write_dataset(run, seed=12, memory=False, chain_from_view=False)
        run("CREATE TABLE default.added_later (x UInt8) ENGINE = TinyLog")
        assert fingerprint(run) != expected
    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Succeeded", job.status.message
    with app.session() as run:
        assert fingerprint(run) == expected
        assert scratch_databases(run) == []

    copy = chdb_dir("copy")
    job = plat.restore(NS, "b1", "r2", target=declare(plat, "analytics-copy", copy))
    assert job.status.phase == "Succeeded", job.status.message
    with copy.session() as run:
        assert fingerprint(run) == expected
    tenant_safe(plat, s3)
    assert_no_secrets(plat, app, copy)


def test_a_server_without_backup_support_is_told_to_use_logical_mode(
    clickhouse: ServerFactory, tmp_path: Path, s3: S3
) -> None:
    plat = platform(tmp_path, s3)
    server = clickhouse()
    job = plat.backup(NS, declare(plat, "old", server), "b1", "clickhouse-native")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "Unsupported"
    assert "native mode needs ClickHouse 22.8 or later" in (job.status.message or "")
    assert "mode: logical" in (job.status.message or "")
    assert plat.backups(NS) == []


def test_without_the_admins_opt_in_nothing_reaches_the_server(
    chdb_dir: ChdbFactory, tmp_path: Path, s3: S3
) -> None:
    plat = platform(tmp_path, s3, opt_in=False)
    app = chdb_dir("src")
    with app.session() as run:
        run("CREATE DATABASE shop")
    job = plat.backup(NS, declare(plat, "analytics", app), "b1", "clickhouse-native")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "Unsupported"
    assert plat.backups(NS) == []
    tenant_safe(plat, s3)


class _StoreDiesBeforeTheStatement(ClickHouseDriver):
    """Kills the S3 server just before a BACKUP (or RESTORE) statement: the platform could
    write, the server cannot (as when a network policy keeps the database from the store)."""

    store: S3
    statement = "BACKUP "

    def connect(self, location: AppLocation, deadline: Deadline) -> Client:
        client = super().connect(location, deadline)
        rows, store = client.rows, self.store

        def killing_rows(sql: str) -> list[tuple[str, ...]]:
            if sql.startswith(self.statement):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(store.pid, signal.SIGKILL)  # the store is gone mid-job
            return rows(sql)

        client.rows = killing_rows  # type: ignore[method-assign]
        return client


def test_an_unreachable_store_fails_in_seconds_and_masks_the_credentials(
    chdb_dir: ChdbFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server's own default is to retry for more than ten minutes."""
    with seaweed(tmp_path / "weed") as store:
        _StoreDiesBeforeTheStatement.store = store
        plat = platform(tmp_path, store, driver=_StoreDiesBeforeTheStatement)
        app = chdb_dir("src")
        with app.session() as run:
            write_dataset(run, seed=1, memory=False, chain_from_view=False)
        started = time.monotonic()
        with caplog.at_level(logging.INFO):
            job = plat.backup(NS, declare(plat, "analytics", app), "b1", "clickhouse-native")
        took = time.monotonic() - started
    assert job.status.phase == "Failed"
    assert took < 90, f"took {took:.0f} s"
    message = job.status.message or ""
    assert "while the server wrote its backup" in message, message
    assert plat.backups(NS) == []
    tenant_safe(plat, store)
    logged = caplog.text
    assert "while the server wrote its backup" in logged, "the admin detail is logged"
    assert store.secret_key not in logged and store.access_key not in logged


class _StoreDiesBeforeTheRestore(_StoreDiesBeforeTheStatement):
    statement = "RESTORE "


def test_a_store_lost_before_the_restore_leaves_the_target_as_it_was(
    chdb_dir: ChdbFactory, tmp_path: Path
) -> None:
    with seaweed(tmp_path / "weed") as store:
        _StoreDiesBeforeTheRestore.store = store
        plat = platform(tmp_path, store, driver=_StoreDiesBeforeTheRestore)
        app = chdb_dir("src")
        ref = declare(plat, "analytics", app)
        with app.session() as run:
            write_dataset(run, seed=1, memory=False, chain_from_view=False)
        assert plat.backup(NS, ref, "b1", "clickhouse-native").status.phase == "Succeeded"
        with app.session() as run:
            write_dataset(run, seed=2, memory=False, chain_from_view=False)
            before = fingerprint(run)
        job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    message = job.status.message or ""
    assert message.endswith(
        "while checking that the server can read the backup; the target was not changed"
    ), message
    with app.session() as run:
        assert fingerprint(run) == before
        assert scratch_databases(run) == []
    tenant_safe(plat, store)
