"""Failures: each job fails with a message the tenant can act on, commits nothing, and a
failed restore leaves the target as it was whenever the failure comes before the swap."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cozybackup_clickhouse import ClickHouseDriver
from cozybackup_clickhouse._client import Client
from cozybackup_clickhouse.testing import (
    ADMIN_PASSWORD,
    READER_PASSWORD,
    READER_USER,
    ChdbApp,
    ClickHouseServer,
    fingerprint,
    write_dataset,
)

from cozybackup_core import AppLocation, BackupContext, Deadline
from cozybackup_core.testing import LocalPlatform

from conftest import (
    NS,
    ChdbFactory,
    ServerFactory,
    assert_no_secrets,
    assert_nothing_committed,
    class_yaml,
    declare,
    make_platform,
    scratch_databases,
)


def message(job: Any) -> str:
    return str(job.status.message or "")


class _Spy:
    """A driver's client with a hook before some of its calls (a real one underneath)."""

    def __init__(self, inner: Client, **hooks: Callable[[Client, int], None]) -> None:
        self._inner = inner
        self._hooks = hooks
        self._calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _before(self, name: str) -> None:
        n = self._calls[name] = self._calls.get(name, 0) + 1
        if name in self._hooks:
            self._hooks[name](self._inner, n)

    @contextlib.contextmanager
    def select_native(self, sql: str) -> Iterator[Iterator[bytes]]:
        self._before("select_native")
        with self._inner.select_native(sql) as chunks:
            yield chunks

    def insert_native(self, insert: str, chunks: Iterable[bytes]) -> None:
        self._before("insert_native")
        self._inner.insert_native(insert, chunks)


class SpyDriver(ClickHouseDriver):
    hooks: ClassVar[dict[str, Callable[[Client, int], None]]] = {}

    def connect(self, location: AppLocation, deadline: Deadline) -> Client:
        return _Spy(super().connect(location, deadline), **self.hooks)  # type: ignore[return-value]


@pytest.fixture
def spy() -> Iterator[type[SpyDriver]]:
    SpyDriver.hooks = {}
    yield SpyDriver
    SpyDriver.hooks = {}


# ---------------------------------------------------------------------------- backups


@pytest.mark.parametrize("how", ["stopped", "no listener"])
def test_an_unreachable_server_fails_the_backup_and_commits_nothing(
    clickhouse: ServerFactory, tmp_path: Path, how: str
) -> None:
    server = clickhouse()
    plat = make_platform(tmp_path)
    if how == "stopped":
        server.stop()
        ref = declare(plat, "analytics", server)
    else:
        conn = dict(server.connection(), port=1)  # nothing listens on port 1
        ref = plat.declare_app(NS, "analytics", "ClickHouse", conn, server.credentials())
    started = time.monotonic()
    job = plat.backup(NS, ref, "b1")
    assert time.monotonic() - started < 20
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "DatabaseUnavailable"
    assert "could not be reached or went away while connecting" in message(job)
    assert "run the job again" in message(job)
    assert_nothing_committed(plat)
    assert_no_secrets(plat, server)


def test_wrong_credentials_are_named_for_the_operator(
    clickhouse: ServerFactory, tmp_path: Path
) -> None:
    server = clickhouse()
    plat = make_platform(tmp_path)
    wrong = server.credentials(password="not-the-" + ADMIN_PASSWORD)
    job = plat.backup(NS, declare(plat, "analytics", server, creds=wrong), "b1")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "CredentialsRejected"
    assert "ask the platform operator" in message(job)
    assert_nothing_committed(plat)
    assert_no_secrets(plat, server, extra=("cozy_admin",))


@pytest.mark.parametrize("engine", ["server", "chdb"])
def test_a_table_dropped_mid_backup_fails_it_and_commits_nothing(
    clickhouse: ServerFactory,
    chdb_dir: ChdbFactory,
    tmp_path: Path,
    spy: type[SpyDriver],
    engine: str,
) -> None:
    app: ClickHouseServer | ChdbApp
    if engine == "server":
        server = app = clickhouse()
        write_dataset(server.run, seed=1)

        def drop(_client: Client, n: int) -> None:  # another session drops it
            if n == 1:
                server.run("DROP TABLE shop.orders")

    else:
        app = chdb_dir("app")
        with app.session() as run:
            write_dataset(run, seed=1, memory=False, chain_from_view=False)

        def drop(client: Client, n: int) -> None:  # chdb: one session per process
            if n == 1:
                client.execute("DROP TABLE shop.orders SYNC")

    spy.hooks = {"select_native": drop}  # while the first table (default.notes) is dumped
    plat = make_platform(tmp_path, spy)
    job = plat.backup(NS, declare(plat, "analytics", app), "b1")
    assert job.status.phase == "Failed"
    assert (
        message(job) == "a table or database disappeared while dumping table shop.orders "
        "(dropped or renamed meanwhile); run the job again"
    )
    assert_nothing_committed(plat)
    assert_no_secrets(plat, app)


def test_a_server_killed_mid_backup_fails_it(
    clickhouse: ServerFactory, tmp_path: Path, spy: type[SpyDriver]
) -> None:
    server = clickhouse()
    write_dataset(server.run, seed=1)

    def kill(_client: Client, n: int) -> None:
        if n == 3:
            server.stop()

    spy.hooks = {"select_native": kill}
    plat = make_platform(tmp_path, spy)
    job = plat.backup(NS, declare(plat, "analytics", server), "b1")
    assert not server.running
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "DatabaseUnavailable"
    assert "went away while dumping table" in message(job)
    assert_nothing_committed(plat)


def test_a_backup_past_its_timeout_is_stopped(clickhouse: ServerFactory, tmp_path: Path) -> None:
    class Slow(ClickHouseDriver):
        def backup(self, ctx: BackupContext) -> None:
            sink = ctx.artifact

            class SlowSink:
                @contextlib.contextmanager
                def open(self, name: str) -> Iterator[Any]:
                    time.sleep(0.6)
                    with sink.open(name) as out:
                        yield out

                def server_side(self, name: str) -> Any:
                    return sink.server_side(name)

            ctx.artifact = SlowSink()
            super().backup(ctx)

    server = clickhouse()
    write_dataset(server.run, seed=1)
    plat = make_platform(tmp_path, Slow)
    plat.apply(class_yaml("quick", "{timeoutSeconds: 1}"))
    job = plat.backup(NS, declare(plat, "analytics", server), "b1", "quick")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "DeadlineExceeded"
    assert_nothing_committed(plat)


def test_a_database_named_in_the_class_must_exist(
    clickhouse: ServerFactory, tmp_path: Path
) -> None:
    server = clickhouse()
    plat = make_platform(tmp_path)
    plat.apply(class_yaml("named", "{databases: [shop, nowhere]}"))
    server.run("CREATE DATABASE shop")
    job = plat.backup(NS, declare(plat, "analytics", server), "b1", "named")
    assert job.status.phase == "Failed"
    assert "'nowhere'" in message(job) and "do not exist" in message(job)
    assert_nothing_committed(plat)


# ---------------------------------------------------------------------------- restores


def _backed_up(server: ClickHouseServer, plat: LocalPlatform, seed: int = 1) -> dict[str, Any]:
    write_dataset(server.run, seed=seed, memory=False)  # some tests restart the server
    expected = fingerprint(server.run)
    job = plat.backup(NS, declare(plat, "analytics", server), "b1")
    assert job.status.phase == "Succeeded", job.status.message
    return expected


def test_a_restore_without_the_privileges_changes_nothing(
    clickhouse: ServerFactory, tmp_path: Path
) -> None:
    plat = make_platform(tmp_path)
    src, target = clickhouse(), clickhouse()
    _backed_up(src, plat)
    write_dataset(target.run, seed=2)
    before = fingerprint(target.run)
    reader = {"username": READER_USER, "password": READER_PASSWORD}
    ref = declare(plat, "readonly-copy", target, creds=reader)
    job = plat.restore(NS, "b1", "r1", target=ref)
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "MissingPrivilege"
    assert message(job).endswith("; the target was not changed")
    assert fingerprint(target.run) == before
    assert scratch_databases(target.run) == []
    assert_no_secrets(plat, src, target, extra=(READER_PASSWORD,))


def test_a_server_lost_while_loading_leaves_the_target_as_it_was(
    clickhouse: ServerFactory, tmp_path: Path, spy: type[SpyDriver]
) -> None:
    plat = make_platform(tmp_path, spy)
    server = clickhouse()
    _backed_up(server, plat, seed=1)
    write_dataset(server.run, seed=2, memory=False)  # a Memory table would not survive
    changed = fingerprint(server.run)

    def kill(_client: Client, n: int) -> None:
        if n == 4:  # three tables are staged by now
            server.stop()

    spy.hooks = {"insert_native": kill}
    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "DatabaseUnavailable"
    assert message(job).endswith("; the target was not changed")
    server.launch()
    assert fingerprint(server.run) == changed
    # The interrupted restore's scratch database is still there; the next restore drops it.
    assert len(scratch_databases(server.run)) == 1
    spy.hooks = {}
    job = plat.restore(NS, "b1", "r2")
    assert job.status.phase == "Succeeded", job.status.message
    assert scratch_databases(server.run) == []


def test_a_definition_the_target_rejects_is_found_before_anything_changes(
    clickhouse: ServerFactory, chdb_dir: ChdbFactory, tmp_path: Path
) -> None:
    """A chdb (26.x) table with a type 18.16 does not know, restored into 18.16."""
    plat = make_platform(tmp_path)
    src = chdb_dir("new")
    with src.session() as run:
        run("CREATE DATABASE shop")
        run("CREATE TABLE shop.t (id UInt64, m Map(String, UInt64)) ENGINE = MergeTree ORDER BY id")
        run("INSERT INTO shop.t VALUES (1, {'a': 1})")
    assert plat.backup(NS, declare(plat, "new", src), "b1").status.phase == "Succeeded"
    old = clickhouse()
    write_dataset(old.run, seed=3)
    before = fingerprint(old.run)
    job = plat.restore(NS, "b1", "r1", target=declare(plat, "old", old))
    assert job.status.phase == "Failed"
    assert message(job).startswith("the server does not know a data type of the backup")
    assert "checking the definition of table shop.t; the target was not changed" in message(job)
    assert fingerprint(old.run) == before
    assert scratch_databases(old.run) == []


def test_a_view_that_cannot_be_recreated_fails_the_restore_and_says_what_was_changed(
    clickhouse: ServerFactory, tmp_path: Path
) -> None:
    plat = make_platform(tmp_path)
    plat.apply(class_yaml("shop-only", "{databases: [shop]}"))
    src = clickhouse()
    write_dataset(src.run, seed=1)
    src.run("CREATE VIEW shop.event_hosts AS SELECT DISTINCT host FROM metrics.events")
    job = plat.backup(NS, declare(plat, "analytics", src), "b1", "shop-only")
    assert job.status.phase == "Succeeded", job.status.message
    fresh = clickhouse()  # no metrics database there
    job = plat.restore(NS, "b1", "r1", target=declare(plat, "fresh", fresh))
    assert job.status.phase == "Failed"
    assert "while recreating view shop.event_hosts" in message(job)
    assert "the database(s) shop were already emptied and are incomplete" in message(job)
    assert "run the restore again" in message(job)
    assert scratch_databases(fresh.run) == []
    assert_no_secrets(plat, src, fresh)


def test_a_read_only_account_can_back_up(clickhouse: ServerFactory, tmp_path: Path) -> None:
    """Backups send no settings, so a ``readonly=1`` profile is enough for them."""
    server = clickhouse()
    write_dataset(server.run, seed=4)
    plat = make_platform(tmp_path)
    reader = {"username": READER_USER, "password": READER_PASSWORD}
    job = plat.backup(NS, declare(plat, "analytics", server, creds=reader), "b1")
    assert job.status.phase == "Succeeded", job.status.message
