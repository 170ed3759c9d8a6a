"""MariaDB's own cases: every kind of object survives, failures are clean and clear."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cozybackup_mariadb import (
    ACCOUNTS_STREAM,
    DATABASES_STREAM,
    DATADIR_STREAM,
    MariaDBDriver,
    MariaDBParameters,
    Mode,
)
from cozybackup_mariadb import _conn as conn_module
from mariadb_server import ADMIN_PASSWORD, ADMIN_USER, MariaDBServer

from cozybackup_core import (
    ApplicationRef,
    AppLocation,
    BackupContext,
)
from cozybackup_core.testing import (
    LocalPlatform,
    refused_parameters,
    typed_metadata,
    validate_parameters,
)

from conftest import (
    DATABASES,
    ServerFactory,
    checksum,
    class_yaml,
    connection,
    credentials,
    objects,
    table_checksums,
    user_databases,
    write_data,
)

NS = "tenant-a"


CLASSES = {
    "logical": class_yaml("maria-logical", "{}"),
    "physical": class_yaml("maria-physical", "{mode: physical, parallel: 2}"),
}


def make_platform(tmp_path: Path, driver: type[MariaDBDriver] = MariaDBDriver) -> LocalPlatform:
    plat = LocalPlatform(tmp_path / "home", drivers=(driver,))
    plat.apply(*CLASSES.values())
    return plat


def declare(
    plat: LocalPlatform,
    name: str,
    server: MariaDBServer,
    *,
    control: bool = False,
    creds: dict[str, str] | None = None,
    **extra: Any,
) -> ApplicationRef:
    return plat.declare_app(
        NS,
        name,
        "MariaDB",
        connection(server, control=control, **extra),
        creds or credentials(),
    )


def assert_no_secrets(
    plat: LocalPlatform, *servers: MariaDBServer, extra: tuple[str, ...] = ()
) -> None:
    view = plat.tenant_view(NS)
    secrets = [ADMIN_PASSWORD, ADMIN_USER, "127.0.0.1", str(plat.home), *extra]
    for s in servers:
        secrets += [str(s.base), str(s.datadir)]
    leaks = [s for s in secrets if s in view]
    assert not leaks, f"tenant-visible text contains {leaks}"
    assert "Traceback" not in view


def assert_nothing_committed(plat: LocalPlatform) -> None:
    assert plat.backups(NS) == []
    assert plat.leftovers() == []
    # ArtifactRecord is not exported by cozybackup_core: look at the embedded state.
    records = plat.home / "state" / "ArtifactRecord"
    assert not records.exists() or not any(records.rglob("*.yaml"))


def leftovers(server: MariaDBServer) -> list[Path]:
    """Staging or previous datadirs a physical restore left beside the datadir."""
    return sorted(p for p in server.base.iterdir() if ".cozybackup-" in p.name)


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("mode", ["logical", "physical"])
@pytest.mark.parametrize("where", ["in_place", "to_copy"])
def test_every_table_and_object_survives(
    mariadb: ServerFactory, tmp_path: Path, mode: str, where: str
) -> None:
    plat = make_platform(tmp_path)
    physical = mode == "physical"
    src = mariadb()
    ref = declare(plat, "shop", src, control=physical)
    write_data(src, seed=5)
    tables, objs = table_checksums(src), objects(src)
    assert set(user_databases(src)) == set(DATABASES)
    assert len(tables) == 6 and objs["views"] and objs["triggers"] and objs["events"]
    assert len(objs["routines"]) == 2 and len(objs["accounts"]) == 3  # app, auditor, role

    job = plat.backup(NS, ref, "b1", f"maria-{mode}")
    assert job.status.phase == "Succeeded", job.status.message
    backup = plat.backups(NS)[0]
    assert typed_metadata(backup.spec.driver_metadata)["mode"] == mode
    assert re.match(
        r"\d+\.\d+\.\d+-MariaDB", typed_metadata(backup.spec.driver_metadata)["serverVersion"]
    )
    if not physical:
        assert sorted(typed_metadata(backup.spec.driver_metadata)["databases"]) == sorted(DATABASES)
        assert typed_metadata(backup.spec.driver_metadata)["accounts"] == 3

    if where == "in_place":
        write_data(src, seed=6)
        src.sql("DROP TABLE `shop`.`legacy`; DROP USER 'auditor'@'10.0.0.%';")
        assert table_checksums(src) != tables
        target, job = src, plat.restore(NS, "b1", "r1")
    else:
        target = mariadb()
        copy = declare(plat, "shop-copy", target, control=physical)
        job = plat.restore(NS, "b1", "r1", target=copy)
    assert job.status.phase == "Succeeded", job.status.message

    assert table_checksums(target) == tables, "CHECKSUM TABLE differs after the round trip"
    assert objects(target) == objs
    # The objects work, not just exist.
    target.sql("CALL shop.add_order(1, 9.99);")
    assert target.rows("SELECT COUNT(*) FROM shop.audit")[0][0] == str(500 + 5 + 1)
    assert target.rows("SELECT shop.discounted(100)")[0][0] == "55.00"
    assert target.rows("SELECT COUNT(*) FROM shop.customer_totals")[0][0] == str(
        len(target.rows("SELECT id FROM shop.customers"))
    )
    # The tenant's account logs in with its password and its role's rights.
    assert target.rows("SELECT COUNT(*) FROM crm.contacts", user="app", password="app-pw-5") == [
        ["200"]
    ]
    if where == "to_copy":
        assert table_checksums(src) == tables, "the source was changed by a to-copy restore"
    assert leftovers(target) == []
    assert_no_secrets(plat, src, target)


def test_physical_restore_into_a_fresh_stopped_instance(
    mariadb: ServerFactory, tmp_path: Path
) -> None:
    """To-copy on the embedded host: the target has no data dir yet and no server."""
    plat = make_platform(tmp_path)
    src = mariadb()
    write_data(src, seed=11)
    before = checksum(src)
    ref = declare(plat, "shop", src, datadir=str(src.datadir))
    assert plat.backup(NS, ref, "b1", "maria-physical").status.phase == "Succeeded"
    fresh = mariadb(started=False, empty=True)
    assert not fresh.datadir.exists()
    target = plat.declare_app(
        NS, "fresh", "MariaDB", connection(fresh, datadir=str(fresh.datadir)), credentials()
    )
    job = plat.restore(NS, "b1", "r1", target=target)
    assert job.status.phase == "Succeeded", job.status.message
    assert (fresh.datadir / "mysql").is_dir()
    fresh.start()
    assert checksum(fresh) == before


def test_partial_logical_backup_replaces_only_the_named_databases(
    mariadb: ServerFactory, tmp_path: Path
) -> None:
    plat = make_platform(tmp_path)
    plat.apply(class_yaml("shop-only", "{databases: [shop, 'odd `name` db']}"))
    src, dst = mariadb(), mariadb()
    write_data(src, seed=1)
    write_data(dst, seed=2)
    shop = {k: v for k, v in table_checksums(src).items() if not k.startswith("crm.")}
    crm_before = {k: v for k, v in table_checksums(dst).items() if k.startswith("crm.")}
    accounts_before = objects(dst)["grants"]
    ref = declare(plat, "shop", src)
    job = plat.backup(NS, ref, "b1", "shop-only")
    assert job.status.phase == "Succeeded", job.status.message
    meta = typed_metadata(plat.backups(NS)[0].spec.driver_metadata)
    assert meta["databases"] == ["shop", "odd `name` db"] and meta["accounts"] is None
    # Said on the Backup when it is made, not discovered at restore time.
    described = plat.backups(NS)[0].status.underlying_resources or {}
    assert "accounts" not in described
    [warning] = described["warnings"]
    assert warning["reason"] == "BackupNotExact"
    assert "accounts and grants are not in this backup" in warning["message"]
    job = plat.restore(NS, "b1", "r1", target=declare(plat, "copy", dst))
    assert job.status.phase == "Succeeded", job.status.message
    after = table_checksums(dst)
    assert {k: v for k, v in after.items() if not k.startswith("crm.")} == shop
    assert {k: v for k, v in after.items() if k.startswith("crm.")} == crm_before
    assert objects(dst)["grants"] == accounts_before, "accounts are not part of a partial backup"


def test_a_server_without_user_databases_round_trips(
    mariadb: ServerFactory, tmp_path: Path
) -> None:
    plat = make_platform(tmp_path)
    src, dst = mariadb(), mariadb()
    job = plat.backup(NS, declare(plat, "empty", src), "b1", "maria-logical")
    assert job.status.phase == "Succeeded", job.status.message
    job = plat.restore(NS, "b1", "r1", target=declare(plat, "copy", dst))
    assert job.status.phase == "Succeeded", job.status.message
    assert user_databases(dst) == []


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize("mode", ["logical", "physical"])
def test_wrong_credentials_fail_clearly_and_commit_nothing(
    mariadb: ServerFactory, tmp_path: Path, mode: str
) -> None:
    plat = make_platform(tmp_path)
    server = mariadb()
    ref = declare(plat, "shop", server, creds=credentials(password="not-the-password-42"))
    job = plat.backup(NS, ref, "b1", f"maria-{mode}")
    assert job.status.phase == "Failed"
    cond = job.status.conditions[0]
    assert cond.reason == "CredentialsRejected"
    assert "rejected the credentials" in (job.status.message or "")
    assert "ask the platform operator" in (job.status.message or "")
    assert_nothing_committed(plat)
    assert_no_secrets(plat, server, extra=("not-the-password-42",))


class _Tap:
    """Wraps a driver's stream sink: ``before_write`` runs before each write to ``stream``."""

    def __init__(self, sink: Any, stream: str | None, before_write: Any) -> None:
        self.sink, self.stream, self.before_write = sink, stream, before_write

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[Any]:
        with self.sink.open(name) as out:
            if self.stream is not None and name != self.stream:
                yield out
                return
            tap = self

            class Proxy:
                def write(self, data: Any) -> int:
                    tap.before_write()
                    return int(out.write(data))

            yield Proxy()


class KillingDriver(MariaDBDriver):
    """Kills the server once the backup tool has sent its first data."""

    victim: ClassVar[MariaDBServer]
    stream: ClassVar[str]

    def backup(self, ctx: BackupContext) -> None:
        victim = self.victim

        def kill() -> None:
            if victim.running():
                victim.kill()

        ctx.artifact = _Tap(ctx.artifact, self.stream, kill)
        super().backup(ctx)


class SlowDriver(MariaDBDriver):
    """Every write to the artifact takes 1.5 s."""

    def backup(self, ctx: BackupContext) -> None:
        ctx.artifact = _Tap(ctx.artifact, None, lambda: time.sleep(1.5))
        super().backup(ctx)


@pytest.mark.parametrize("mode", ["logical", "physical"])
def test_server_killed_mid_backup_fails_and_commits_nothing(
    mariadb: ServerFactory, tmp_path: Path, mode: str
) -> None:
    server = mariadb()
    write_data(server, seed=1)
    # ~48 MiB of text, so the tool is still reading when the first MiB arrives.
    server.sql(
        "CREATE TABLE crm.big (id INT PRIMARY KEY, body MEDIUMTEXT) ENGINE=InnoDB;"
        "INSERT INTO crm.big SELECT seq, REPEAT(MD5(seq), 100) FROM crm.seq_1_to_15000;"
    )
    KillingDriver.victim = server
    KillingDriver.stream = DATABASES_STREAM if mode == "logical" else DATADIR_STREAM
    plat = make_platform(tmp_path, KillingDriver)
    datadir = {"datadir": str(server.datadir)} if mode == "physical" else {}
    job = plat.backup(NS, declare(plat, "shop", server, **datadir), "b1", f"maria-{mode}")
    assert not server.running()
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "DatabaseUnavailable"
    assert "could not be reached or went away" in (job.status.message or "")
    assert "run the job again" in (job.status.message or "")
    assert_nothing_committed(plat)
    assert_no_secrets(plat, server)


def test_backup_past_timeout_seconds_is_stopped(mariadb: ServerFactory, tmp_path: Path) -> None:
    server = mariadb()
    write_data(server, seed=1)
    plat = make_platform(tmp_path, SlowDriver)
    plat.apply(class_yaml("quick", "{timeoutSeconds: 1}"))
    job = plat.backup(NS, declare(plat, "shop", server), "b1", "quick")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "DeadlineExceeded"
    assert_nothing_committed(plat)
    assert server.running()


def test_restore_by_an_account_without_privileges_fails_and_changes_nothing(
    mariadb: ServerFactory, tmp_path: Path
) -> None:
    plat = make_platform(tmp_path)
    src, dst = mariadb(), mariadb()
    write_data(src, seed=1)
    write_data(dst, seed=2)
    before = checksum(dst)
    dst.sql(
        "CREATE USER 'weak'@'%' IDENTIFIED BY 'weak-pw-1234'; GRANT SELECT ON *.* TO 'weak'@'%';"
    )
    assert plat.backup(NS, declare(plat, "shop", src), "b1", "maria-logical").status.phase == (
        "Succeeded"
    )
    weak = declare(plat, "copy", dst, creds={"username": "weak", "password": "weak-pw-1234"})
    job = plat.restore(NS, "b1", "r1", target=weak)
    assert job.status.phase == "Failed"
    message = job.status.message or ""
    assert job.status.conditions[0].reason == "MissingPrivilege"
    assert "CREATE USER privilege" in message and "ask the platform operator" in message
    assert "no database was touched" in message
    dst.sql("DROP USER 'weak'@'%';")
    assert checksum(dst) == before
    assert len(plat.backups(NS)) == 1
    assert_no_secrets(plat, src, dst, extra=("weak-pw-1234",))


def test_restore_into_a_stopped_server_fails_clearly(
    mariadb: ServerFactory, tmp_path: Path
) -> None:
    plat = make_platform(tmp_path)
    src, dst = mariadb(), mariadb()
    write_data(src, seed=1)
    assert plat.backup(NS, declare(plat, "shop", src), "b1", "maria-logical").status.phase == (
        "Succeeded"
    )
    target = declare(plat, "copy", dst)
    dst.stop()
    job = plat.restore(NS, "b1", "r1", target=target)
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "DatabaseUnavailable"
    assert "check that it is running" in (job.status.message or "")
    assert_no_secrets(plat, src, dst)


def test_physical_backup_reads_only_the_declared_datadir(
    mariadb: ServerFactory, tmp_path: Path
) -> None:
    """The server's own ``@@datadir`` is its word, not the admin's: a hostile server could
    name another tenant's data directory.  A physical backup needs ``datadir``."""
    plat = make_platform(tmp_path)
    server = mariadb()
    job = plat.backup(NS, declare(plat, "shop", server), "b1", "maria-physical")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "ApplicationMisconfigured"
    assert_nothing_committed(plat)
    assert_no_secrets(plat, server)


@pytest.mark.parametrize("planted", ["symlinked table file", "table in another directory"])
def test_physical_backup_refuses_data_kept_outside_the_datadir(
    mariadb: ServerFactory, tmp_path: Path, planted: str
) -> None:
    """The server (the tenant's) writes its datadir: a link in it, or an InnoDB ``.isl``
    file naming a path, would make mariabackup read files outside it as the worker."""
    plat = make_platform(tmp_path)
    server = mariadb()
    write_data(server, seed=3)
    secret = tmp_path / "outside" / "secret.ibd"
    secret.parent.mkdir()
    secret.write_bytes(b"another tenant's table\n" * 1000)
    shop = server.datadir / "shop"
    if planted == "symlinked table file":
        (shop / "stolen.MYD").symlink_to(secret)
    else:
        (shop / "stolen.isl").write_text(f"{secret}\n")
    job = plat.backup(NS, declare(plat, "shop", server, control=True), "b1", "maria-physical")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "UnsafeApplicationPath"
    assert "outside the data directory" in (job.status.message or "")
    assert_nothing_committed(plat)
    assert_no_secrets(plat, server)


def test_physical_in_place_is_refused_without_stop_and_start(
    mariadb: ServerFactory, tmp_path: Path
) -> None:
    plat = make_platform(tmp_path)
    server = mariadb()
    write_data(server, seed=1)
    ref = declare(plat, "shop", server, datadir=str(server.datadir))
    assert plat.backup(NS, ref, "b1", "maria-physical").status.phase == "Succeeded"
    write_data(server, seed=2)
    before = checksum(server)
    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "Unsupported"
    message = job.status.message or ""
    assert "cannot stop and start" in message and "mode: logical" in message
    assert server.running() and checksum(server) == before
    assert leftovers(server) == []
    assert_no_secrets(plat, server)


def test_physical_restore_that_does_not_start_is_rolled_back(
    mariadb: ServerFactory, tmp_path: Path
) -> None:
    plat = make_platform(tmp_path)
    server = mariadb()
    write_data(server, seed=1)
    flag = server.base / "fail-next-start"
    ref = declare(
        plat,
        "shop",
        server,
        control=True,
        startCommand=server.control("start", "--fail-once", str(flag)),
    )
    assert plat.backup(NS, ref, "b1", "maria-physical").status.phase == "Succeeded"
    write_data(server, seed=2)
    before = checksum(server)
    flag.touch()
    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    message = job.status.message or ""
    assert "previous data was put back" in message and "nothing was changed" in message
    assert not flag.exists(), "the failing start was attempted"
    assert server.running() and checksum(server) == before
    assert leftovers(server) == []
    assert_no_secrets(plat, server)
    # And the same restore works once the start works.
    job = plat.restore(NS, "b1", "r2")
    assert job.status.phase == "Succeeded", job.status.message
    assert checksum(server) != before


# ---------------------------------------------------------------------------- credentials


def test_credentials_never_reach_a_command_line_or_the_environment(
    mariadb: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[list[str], dict[str, str]]] = []
    files: list[str] = []
    real = conn_module.run_tool

    def spy(argv: Any, **kw: Any) -> bytes:
        seen.append((list(argv), dict(kw.get("env") or {})))
        for arg in argv:
            if arg.startswith("--defaults-file="):
                path = Path(arg.split("=", 1)[1])
                files.append(str(path))
                assert path.stat().st_mode & 0o777 == 0o600
                assert path.parent.stat().st_mode & 0o777 == 0o700
        return bytes(real(argv, **kw))

    monkeypatch.setattr(conn_module, "run_tool", spy)
    plat = make_platform(tmp_path)
    src, dst = mariadb(), mariadb()
    write_data(src, seed=1)
    for mode in ("logical", "physical"):
        ref = declare(plat, "shop", src, control=mode == "physical")
        assert plat.backup(NS, ref, f"b-{mode}", f"maria-{mode}").status.phase == "Succeeded"
        target = declare(plat, "copy", dst, control=True)
        job = plat.restore(NS, f"b-{mode}", f"r-{mode}", target=target)
        assert job.status.phase == "Succeeded", job.status.message
    assert {Path(a[0]).name for a, _ in seen} >= {"mariadb", "mariadb-dump", "mariabackup"}
    for argv, env in seen:
        assert not any(ADMIN_PASSWORD in a for a in argv)
        assert "MYSQL_PWD" not in env
    assert files and not any(Path(f).exists() or Path(f).parent.exists() for f in files)


def test_option_file_quoting_survives_every_character(tmp_path: Path) -> None:
    nasty = "a\"b'c\\d#e;f g\t$h`i=j[k]"
    loc = AppLocation(
        ref=ApplicationRef(kind="MariaDB", name="x"),
        namespace=NS,
        connection={"host": "127.0.0.1", "port": 3307},
        credentials={"username": "us#er", "password": nasty},
    )
    server = conn_module.Server.from_location(loc)
    assert nasty not in repr(server)
    with server.option_file() as path:
        out = subprocess.run(
            ["my_print_defaults", f"--defaults-file={path}", "client"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    assert f"--password={nasty}" in out
    assert "--user=us#er" in out and "--port=3307" in out


@pytest.mark.parametrize(
    ("connection_", "detail"),
    [
        ({}, "needs 'host'"),
        ({"host": "db", "port": "x"}, "'port' must be"),
        ({"host": "db", "port": 70000}, "'port' must be"),
        ({"host": "db", "hots": "typo"}, "unknown connection keys ['hots']"),
        ({"host": "db", "datadir": "relative/dir"}, "must be absolute"),
        ({"host": "db", "stopCommand": "systemctl stop x"}, "list of strings"),
    ],
)
def test_bad_connection_settings_name_the_key_for_the_admin_only(
    connection_: dict[str, Any], detail: str
) -> None:
    loc = AppLocation(
        ref=ApplicationRef(kind="MariaDB", name="x"),
        namespace=NS,
        connection=connection_,
        credentials={"username": "u", "password": "p"},
    )
    with pytest.raises(conn_module.ApplicationMisconfigured) as err:
        conn_module.Server.from_location(loc)
    assert detail in (err.value.admin_detail or "")
    assert "ask the platform operator" in str(err.value)
    assert "relative/dir" not in str(err.value)


# ---------------------------------------------------------------------------- parameters


def _validate(parameters: str) -> None:
    validate_parameters(MariaDBDriver, parameters)


@pytest.mark.parametrize(
    "parameters",
    ["{}", "{mode: logical}", "{mode: physical, parallel: 8}", "{databases: [a, b]}",
     "{timeoutSeconds: 3600}", "{mode: logical, timeoutSeconds: null}"],
)  # fmt: skip
def test_good_parameters(parameters: str) -> None:
    _validate(parameters)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{mode: snapshot}", "parameters.mode: 'snapshot' is not a mode; use \"logical\" or \"physical\""),
        ("{parallel: 0}", "parameters: parallel: must be between 1 and 64, got 0"),
        ("{parallel: 4}", "parallel: only physical backups copy in parallel"),
        ("{mode: physical, databases: [shop]}", "databases: a physical backup always copies the whole server"),
        ("{databases: [shop, shop]}", "databases[1]: 'shop' is listed twice"),
        ("{databases: [mysql]}", "databases[0]: 'mysql' is a system schema"),
        ("{databases: ['']}", "databases[0]: must not be empty"),
        ("{databases: [shop, 7]}", "parameters.databases[1]: expected a string, got int"),
        ("{timeoutSeconds: 0}", "timeoutSeconds: must be at least 1, got 0"),
    ],
)  # fmt: skip
def test_bad_parameters_are_refused_with_the_field_path(parameters: str, message: str) -> None:
    assert message in str(refused_parameters(MariaDBDriver, parameters))


def test_parameters_default_to_a_logical_dump_of_everything() -> None:
    p = MariaDBParameters()
    assert (p.mode, p.databases, p.parallel, p.timeout_seconds) == (Mode.LOGICAL, (), 1, None)
    assert {ACCOUNTS_STREAM, DATABASES_STREAM, DATADIR_STREAM} == {
        "accounts.jsonl",
        "databases.sql",
        "datadir.xbstream",
    }
