"""The PostgreSQL driver's own cases, against real PostgreSQL 15 servers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cozybackup_postgres import (
    INDEX_STREAM,
    POSTGRES_KIND,
    PostgresDriver,
    PostgresParameters,
    stream_names,
)
from cozybackup_postgres import _pg as pg
from cozybackup_postgres._params import option_problem, parameter_problems
from cozybackup_postgres._restore import filter_globals
from cozybackup_postgres.testing import PostgresServer, ServerPool, write_dataset

from cozybackup_core import (
    APPS_GROUP,
    ApplicationRef,
    Catalog,
    DriverParametersError,
    DriverRegistry,
    PluginHost,
    load_yaml,
)
from cozybackup_core.testing import LocalPlatform, driver_class_yaml, typed_metadata

NS = "tenant-a"
STREAM_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")


# ---------------------------------------------------------------------------- helpers


def backup_class(name: str = "pg-custom", **parameters: Any) -> str:
    return driver_class_yaml(PostgresDriver, name, json.dumps(parameters))


@pytest.fixture
def platform(tmp_path: Path) -> LocalPlatform:
    return LocalPlatform(tmp_path / "home", drivers=(PostgresDriver,))


def declare(plat: LocalPlatform, name: str, server: PostgresServer, **creds: str) -> Any:
    return plat.declare_app(
        NS, name, "Postgres", server.connection(), {**server.credentials(), **creds}
    )


def ok(job: Any) -> None:
    assert job.status.phase == "Succeeded", f"{job.kind} failed: {job.status.message}"


def index_of(plat: LocalPlatform, backup: str) -> dict[str, Any]:
    (found,) = [b for b in plat.backups(NS) if b.metadata.name == backup]
    reader = plat.engine.open_backup(found)
    with reader.open(INDEX_STREAM) as f:
        index: dict[str, Any] = json.loads(f.read())
    return index


def assert_nothing_committed(plat: LocalPlatform) -> None:
    assert plat.backups(NS) == []
    assert plat.leftovers() == []
    # ArtifactRecord is not in the core's public API: look at the embedded host's files.
    assert list((plat.home / "state").glob("ArtifactRecord/**/*.yaml")) == []


def backup_failed(plat: LocalPlatform, job: Any, reason: str, message: str) -> None:
    """``job`` failed for ``reason``, saying ``message``, and left nothing behind."""
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == reason
    assert message in job.status.message
    assert_nothing_committed(plat)


def tenant_view_is_clean(plat: LocalPlatform, *servers: PostgresServer) -> None:
    view = plat.tenant_view(NS)
    for s in servers:
        for secret in (s.password, s.host, str(s.root), f"port={s.port}", "PGPASSWORD"):
            assert secret not in view


@pytest.fixture
def hold_lock() -> Iterator[Any]:
    """Start a session that holds an ACCESS EXCLUSIVE lock on a table (pg_dump waits)."""
    procs: list[subprocess.Popen[str]] = []

    def start(server: PostgresServer, db: str, table: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [str(server.bindir / "psql"), "-X", "-q", "-d", pg.conninfo_dbname(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=server.env(),
            text=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(
            f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120);\n"
        )
        proc.stdin.flush()
        procs.append(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            held = server.psql(
                "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND granted "
                "AND relation IS NOT NULL",
                db,
            ).strip()
            if held != "0":
                return proc
            time.sleep(0.05)
        raise AssertionError("the lock was not taken")

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdin is not None
        proc.stdin.close()


# ---------------------------------------------------------------------------- parameters


def catalog(*classes: Any) -> Catalog:
    registry = DriverRegistry()
    registry.add(PostgresDriver)
    return Catalog.build(registry, list(classes))


def validate(**parameters: Any) -> str:
    (bc,) = load_yaml(backup_class(**parameters))
    with pytest.raises(DriverParametersError) as info:
        catalog().validate(bc)
    return str(info.value)


def test_valid_parameters_are_accepted() -> None:
    (bc,) = load_yaml(
        backup_class(
            databases=["shop", "Analytics Ü"],
            jobs=4,
            extraDumpOptions=[
                "--no-owner",
                "--exclude-table=public.cache*",
                "--exclude-table-data=sales.log",
                "--lock-wait-timeout=30s",
            ],
            timeoutSeconds=3600,
            analyze=False,
        )
    )
    catalog().validate(bc)
    resolved = catalog(bc).resolve("pg-custom", _ref())
    assert resolved.parameters == PostgresParameters(
        databases=("shop", "Analytics Ü"),
        jobs=4,
        extra_dump_options=(
            "--no-owner",
            "--exclude-table=public.cache*",
            "--exclude-table-data=sales.log",
            "--lock-wait-timeout=30s",
        ),
        timeout_seconds=3600,
        analyze=False,
    )


def _ref() -> ApplicationRef:
    return ApplicationRef(api_group=APPS_GROUP, kind="Postgres", name="db1")


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"jobs": 0}, "spec.strategies[0].parameters.jobs: must be between 1 and 16"),
        ({"jobs": 17}, "spec.strategies[0].parameters.jobs: must be between 1 and 16"),
        ({"jobs": "two"}, "spec.strategies[0].parameters.jobs: expected an integer"),
        ({"timeoutSeconds": 0}, "spec.strategies[0].parameters.timeoutSeconds: must be at least 1"),
        ({"databases": [""]}, "spec.strategies[0].parameters.databases[0]: must not be empty"),
        ({"databases": ["x" * 64]}, "parameters.databases[0]: is longer than 63 bytes"),
        ({"databases": ["a", "a"]}, "parameters.databases[1]: 'a' is listed twice"),
        (
            {"extraDumpOptions": ["--file=/etc/passwd"]},
            "spec.strategies[0].parameters.extraDumpOptions[0]: '--file=/etc/passwd' is not an allowed pg_dump option",
        ),
        (
            {"extraDumpOptions": ["-Fp"]},
            "is not an allowed pg_dump option (allowed: --load-via-partition-root",
        ),
        ({"extraDumpOptions": ["--host=evil"]}, "not an allowed"),
        (
            {"extraDumpOptions": ["--exclude-table", "t"]},
            "extraDumpOptions[0]: write it as one item, --exclude-table=VALUE",
        ),
        ({"extraDumpOptions": ["--no-owner=yes"]}, "--no-owner takes no value"),
        ({"extraDumpOptions": ["--lock-wait-timeout=soon"]}, "must be a duration"),
        ({"extraDumpOptions": ["--exclude-table=a\nb"]}, "must be on one line"),
    ],
)
def test_invalid_parameters_name_the_field(parameters: dict[str, Any], expected: str) -> None:
    assert expected in validate(**parameters)


def test_every_problem_is_reported_at_once() -> None:
    p = PostgresParameters(jobs=99, extra_dump_options=("--ok", "--no-acl", "-x"))
    assert [field for field, _ in parameter_problems(p)] == [
        "jobs",
        "extraDumpOptions[0]",
        "extraDumpOptions[2]",
    ]
    assert option_problem("--schema=public") is not None, "partial dumps are not allowed"


# ---------------------------------------------------------------------------- units


def test_stream_names_are_safe_distinct_and_stable() -> None:
    names = [
        "shop",
        "Shop",
        "SHOP",
        "a=b",
        "quo'te",
        'dq"x',
        "ünï cødé",
        "x" * 63,
        "-",
        "",
        "db-shop.dump",
        "a b",
        "a-b",
        "Анна",
        "日本",
    ]
    streams = stream_names(names)
    assert streams["shop"] == "db-shop.dump"
    assert len(set(streams.values())) == len(names)
    assert all(STREAM_RE.match(s) for s in streams.values()), streams
    assert stream_names(list(reversed(names))) == streams


def test_filter_globals_never_touches_the_connecting_role() -> None:
    sql = (
        "CREATE ROLE app;\nALTER ROLE app WITH LOGIN PASSWORD 'x';\n"
        "CREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER PASSWORD 'y';\n"
        'CREATE ROLE "User";\nALTER ROLE "User" WITH LOGIN;\n'
        "ALTER ROLE postgres SET work_mem = '8MB';\nGRANT app TO postgres;\n"
        "COMMENT ON ROLE postgres IS 'two\nlines; ''quoted''';\n"
        "CREATE ROLE postgres_ro;\nALTER ROLE postgres_ro SET work_mem = '1MB';\n"
    )
    out = filter_globals(sql, "postgres")
    assert "PASSWORD 'y'" not in out and "CREATE ROLE postgres;" not in out
    assert "CREATE ROLE app;" in out and "CREATE ROLE postgres_ro;" in out
    # Its settings and its comment (one statement over two lines) are left out too.
    assert "'8MB'" not in out and "lines" not in out and "COMMENT" not in out
    assert "GRANT app TO postgres;" in out and "ALTER ROLE postgres_ro SET" in out
    out = filter_globals(sql, "User")
    assert '"User"' not in out and "CREATE ROLE postgres;" in out


def test_classify_keeps_hosts_out_of_messages() -> None:
    stderr = (
        'pg_dump: error: connection to server at "10.1.2.3", port 5432 failed: '
        'FATAL:  password authentication failed for user "admin"\n'
    )
    err = pg.classify("pg_dump", stderr, 'dumping database "shop"')
    assert isinstance(err, pg.CredentialsRejected)
    assert "10.1.2.3" not in str(err) and "admin" not in str(err)
    assert err.admin_detail == stderr
    err = pg.classify(
        "pg_dump",
        'pg_dump: error: connection to server at "10.1.2.3", port 5432 failed: Connection refused\n',
        "x",
    )
    assert isinstance(err, pg.DatabaseUnavailable) and "10.1.2.3" not in str(err)
    err = pg.classify(
        "pg_restore", "pg_restore: error: could not execute query: ERROR:  boom\n", "y"
    )
    assert str(err) == "pg_restore failed while y: boom"


def test_bad_connection_settings_fail_without_showing_them(
    platform: LocalPlatform, pg_session: PostgresServer
) -> None:
    ref = platform.declare_app(
        NS,
        "bad",
        "Postgres",
        {"host": "127.0.0.1", "port": "not-a-port", "flavour": "x"},
        pg_session.credentials(),
    )
    job = platform.backup(NS, ref, "b1")
    assert job.status.phase == "Failed"
    assert "connection settings are incomplete or invalid" in job.status.message
    assert "not-a-port" not in platform.tenant_view(NS)


# ---------------------------------------------------------------------------- registration


def test_entry_point_registers_the_driver_and_cozy_default_binds_it() -> None:
    host = PluginHost.load(entry_points=True)
    assert not [b for b in host.broken if "postgres" in str(b)], host.broken
    driver = host.registry.for_strategy("Postgres")
    assert isinstance(driver, PostgresDriver)
    assert driver.kinds == (POSTGRES_KIND,) and driver.name == "postgres"
    resolved = Catalog.build(host.registry).resolve("cozy-default", _ref())
    assert isinstance(resolved.driver, PostgresDriver)
    assert resolved.parameters == PostgresParameters()


# ---------------------------------------------------------------------------- round trips


def test_restore_into_an_empty_server_brings_roles_grants_and_logins(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    src, empty = pg_servers.start(), pg_servers.start()
    write_dataset(src, seed=11)
    before = src.fingerprint()
    ok(platform.backup(NS, declare(platform, "src", src), "b1"))
    job = platform.restore(NS, "b1", "r1", target=declare(platform, "copy", empty))
    ok(job)
    assert empty.fingerprint() == before
    # The roles came back with their passwords: the application logs in as itself.
    analyst = PostgresServer(
        root=empty.root,
        port=empty.port,
        bindir=empty.bindir,
        superuser="analyst",
        password="analyst-pw-11",
    )
    assert analyst.psql("SELECT count(*) FROM sales.customers", "shop").strip() == "2000"
    with pytest.raises(RuntimeError, match="permission denied"):
        analyst.psql(
            "INSERT INTO inventory.products (sku, name, price) VALUES ('x', 'y', 1)", "shop"
        )
    assert empty.psql("SELECT extname FROM pg_extension ORDER BY 1", "shop").split() == [
        "pgcrypto",
        "plpgsql",
    ]
    assert empty.psql("SELECT count(*) FROM pg_largeobject_metadata", "shop").strip() == "2"
    assert not [d for d in empty.databases() if d.startswith("cozybackup_old_")]


def test_in_place_restore_terminates_sessions_and_uses_parallel_jobs(
    tmp_path: Path, pg_servers: ServerPool
) -> None:
    plat = LocalPlatform(tmp_path / "home", drivers=(PostgresDriver,))
    plat.apply(backup_class(jobs=3))
    server = pg_servers.start()
    write_dataset(server, seed=3)
    before = server.fingerprint()
    ref = declare(plat, "db", server)
    ok(plat.backup(NS, ref, "b1", "pg-custom"))
    write_dataset(server, seed=4)
    server.psql("CREATE DATABASE extra; ", "postgres")
    # An application still connected to the database being replaced.
    idle = subprocess.Popen(
        [str(server.bindir / "psql"), "-X", "-q", "-d", "shop", "-c", "SELECT pg_sleep(120)"],
        env=server.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        ok(plat.restore(NS, "b1", "r1"))
        assert idle.wait(timeout=30) != 0, "the session was terminated"
    finally:
        if idle.poll() is None:
            idle.kill()
        idle.wait()
    after = server.fingerprint()
    extra = after["databases"].pop("extra")  # type: ignore[attr-defined]
    assert extra, "a database the backup does not know is left alone"
    assert after == before
    assert not [d for d in server.databases() if d.startswith("cozybackup_old_")]


def test_databases_parameter_narrows_backup_and_restore(
    tmp_path: Path, pg_servers: ServerPool
) -> None:
    plat = LocalPlatform(tmp_path / "home", drivers=(PostgresDriver,))
    plat.apply(backup_class(databases=["shop"]))
    server = pg_servers.start()
    write_dataset(server, seed=5)
    shop = server.checksum("shop")
    ok(plat.backup(NS, declare(plat, "db", server), "b1", "pg-custom"))
    (backup,) = plat.backups(NS)
    assert typed_metadata(backup.spec.driver_metadata)["databases"] == ["shop"]
    assert [e["name"] for e in index_of(plat, "b1")["databases"]] == ["shop"]
    server.psql('DELETE FROM sales."Audit Log"', "shop")
    server.psql("INSERT INTO public.notes VALUES (9999, 'after the backup')", "postgres")
    ok(plat.restore(NS, "b1", "r1"))
    assert server.checksum("shop") == shop
    assert "9999" in server.psql("SELECT id FROM public.notes WHERE id = 9999"), "not touched"


def test_databases_parameter_naming_a_missing_database_fails_clearly(
    tmp_path: Path, pg_session: PostgresServer
) -> None:
    plat = LocalPlatform(tmp_path / "home", drivers=(PostgresDriver,))
    plat.apply(backup_class(databases=["nope"]))
    job = plat.backup(NS, declare(plat, "db", pg_session), "b1", "pg-custom")
    assert job.status.phase == "Failed"
    assert 'names databases this application does not have: "nope"' in job.status.message
    assert_nothing_committed(plat)


def test_allowed_dump_options_apply_to_dump_and_restore(
    tmp_path: Path, pg_servers: ServerPool
) -> None:
    plat = LocalPlatform(tmp_path / "home", drivers=(PostgresDriver,))
    plat.apply(
        backup_class(extraDumpOptions=['--exclude-table-data=sales."Audit Log"', "--no-owner"])
    )
    src, copy = pg_servers.start(), pg_servers.start()
    write_dataset(src, seed=6)
    ok(plat.backup(NS, declare(plat, "src", src), "b1", "pg-custom"))
    ok(plat.restore(NS, "b1", "r1", target=declare(plat, "copy", copy)))
    assert copy.psql('SELECT count(*) FROM sales."Audit Log"', "shop").strip() == "0"
    assert copy.checksum("shop")["sales.customers"] == src.checksum("shop")["sales.customers"]
    owner = copy.psql("SELECT tableowner FROM pg_tables WHERE tablename = 'customers'", "shop")
    assert owner.strip() == copy.superuser, "--no-owner: objects belong to the restoring role"


def test_database_names_no_stream_name_could_carry(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    src, copy = pg_servers.start(), pg_servers.start()
    names = [
        "Shop DB",
        "a=b",
        "quo'te",
        'dq"x',
        "ünïcødé",
        "é" * 31,
        "UPPER",
        "semi;colon",
        "back\\slash",
        "line\nbreak",
    ]
    for i, name in enumerate(names):
        ident = pg.ident(name)
        src.psql(f"CREATE DATABASE {ident}")
        src.psql(
            f"CREATE TABLE t (id int, v text); INSERT INTO t VALUES ({i}, {pg.literal(name)})", name
        )
    ok(platform.backup(NS, declare(platform, "src", src), "b1"))
    streams = [s.name for s in platform.manifest(NS, "b1").streams]
    assert len(streams) > len(names)  # one a database at least, and the globals
    assert all(STREAM_RE.match(s) for s in streams)
    ok(platform.restore(NS, "b1", "r1", target=declare(platform, "copy", copy)))
    assert sorted(copy.databases()) == sorted([*names, "postgres"])
    for name in names:
        assert copy.checksum(name) == src.checksum(name)
    assert typed_metadata(platform.backups(NS)[0].spec.driver_metadata)["databases"] == sorted(
        [*names, "postgres"], key=lambda s: s.encode()
    )


def test_progress_names_each_database(platform: LocalPlatform, pg_servers: ServerPool) -> None:
    server = pg_servers.start()
    write_dataset(server, seed=7)
    stages: list[str] = []
    platform.engine.on_progress = lambda u: stages.append(u.stage)
    ref = declare(platform, "db", server)
    ok(platform.backup(NS, ref, "b1"))
    assert 'dumping database "shop" (3 of 3)' in stages
    assert stages.index('dumping database "postgres" (2 of 3)') < stages.index(
        "dumping roles and other global objects"
    )
    stages.clear()
    ok(platform.restore(NS, "b1", "r1"))
    assert "restoring roles and other global objects" in stages
    assert 'restoring database "shop" (3 of 3)' in stages
    assert "dropping the previous copies of the databases, analyzing the restored ones" in stages


def test_password_travels_in_the_environment_only(
    platform: LocalPlatform, pg_servers: ServerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = pg_servers.start()
    server.psql("CREATE DATABASE shop")
    calls: list[tuple[list[str], dict[str, str]]] = []
    real = pg.run_tool

    def spy(argv: Any, **kwargs: Any) -> bytes:
        calls.append((list(argv), dict(kwargs.get("env") or {})))
        return real(argv, **kwargs)

    monkeypatch.setattr(pg, "run_tool", spy)
    ref = declare(platform, "db", server)
    ok(platform.backup(NS, ref, "b1"))
    ok(platform.restore(NS, "b1", "r1"))
    tools = {Path(a).name for argv, _ in calls for a in argv[:1] + argv[3:4]}
    assert {"pg_dump", "pg_dumpall", "pg_restore", "psql"} <= tools
    for argv, env in calls:
        assert not any(server.password in a for a in argv)
        assert not any(str(server.port) == a or server.host in a for a in argv)
        if "--version" not in argv:
            assert env["PGPASSWORD"] == server.password
            assert env["PGHOST"] == server.host


def test_sslmode_is_passed_to_the_tools(
    platform: LocalPlatform, pg_session: PostgresServer
) -> None:
    ref = platform.declare_app(
        NS,
        "db",
        "Postgres",
        {**pg_session.connection(), "sslmode": "require"},
        pg_session.credentials(),
    )
    job = platform.backup(NS, ref, "b1")
    assert job.status.phase == "Failed", "the test server has no TLS: require must be refused"
    # (The core's redactor masks every connection value, even "require" inside "required".)
    assert "server does not support SSL, but SSL was" in job.status.message
    assert pg_session.host not in job.status.message


# ---------------------------------------------------------------------------- failures


def test_wrong_credentials_fail_with_an_actionable_message(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    server = pg_servers.start()
    write_dataset(server, seed=8)
    ref = declare(platform, "db", server, password="wrong-password-123")
    job = platform.backup(NS, ref, "b1")
    backup_failed(platform, job, "CredentialsRejected", "rejected the credentials")
    assert "ask the platform operator" in job.status.message
    # A restore into a target whose credentials are wrong touches nothing either.
    good = declare(platform, "good", server)
    ok(platform.backup(NS, good, "b2"))
    before = server.fingerprint()
    bad_target = declare(platform, "bad", server, password="wrong-password-123")
    job = platform.restore(NS, "b2", "r1", target=bad_target)
    assert job.status.phase == "Failed" and job.status.conditions[0].reason == "CredentialsRejected"
    assert server.fingerprint() == before
    tenant_view_is_clean(platform, server)
    assert "wrong-password-123" not in platform.tenant_view(NS)


def test_server_down_fails_as_unavailable(platform: LocalPlatform, pg_servers: ServerPool) -> None:
    server = pg_servers.start()
    ref = declare(platform, "db", server)
    server.stop()
    job = platform.backup(NS, ref, "b1")
    backup_failed(platform, job, "DatabaseUnavailable", "check that the database is running")
    tenant_view_is_clean(platform, server)


def test_server_stopped_mid_dump_commits_nothing(
    platform: LocalPlatform, pg_servers: ServerPool, hold_lock: Any
) -> None:
    server = pg_servers.start()
    for db in ("a_first", "b_second"):
        server.psql(f"CREATE DATABASE {db}")
        server.psql(
            "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g",
            db,
        )
    holder = hold_lock(server, "b_second", "t")  # pg_dump of b_second waits for this lock
    stopper: list[threading.Thread] = []

    def on_progress(update: Any) -> None:
        if "b_second" in update.stage and not stopper:
            t = threading.Thread(target=lambda: (time.sleep(0.5), server.stop("fast")))
            t.start()
            stopper.append(t)

    platform.engine.on_progress = on_progress
    job = platform.backup(NS, declare(platform, "db", server), "b1")
    stopper[0].join()
    holder.wait(timeout=30)
    backup_failed(platform, job, "DatabaseUnavailable", 'while dumping database "b_second"')
    tenant_view_is_clean(platform, server)


def test_timeout_stops_a_blocked_dump(
    tmp_path: Path, pg_servers: ServerPool, hold_lock: Any
) -> None:
    plat = LocalPlatform(tmp_path / "home", drivers=(PostgresDriver,))
    plat.apply(backup_class(timeoutSeconds=2))
    server = pg_servers.start()
    server.psql("CREATE DATABASE shop")
    server.psql("CREATE TABLE t (id int)", "shop")
    hold_lock(server, "shop", "t")
    started = time.monotonic()
    job = plat.backup(NS, declare(plat, "db", server), "b1", "pg-custom")
    assert time.monotonic() - started < 30
    backup_failed(plat, job, "DeadlineExceeded", 'while dumping database "shop"')
    assert "pg_dump" not in server.psql(
        "SELECT string_agg(application_name, ',') FROM pg_stat_activity"
    )


def _breakable(server: PostgresServer) -> None:
    """Two databases; restoring "shop" fails in pg_restore (a classic search_path trap:
    an index on a function whose body names a table without its schema)."""
    server.psql("CREATE DATABASE alpha")
    server.psql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)", "alpha")
    server.psql("CREATE DATABASE shop")
    server.psql(
        """CREATE TABLE helper (x int); INSERT INTO helper VALUES (1);
           CREATE FUNCTION f(i int) RETURNS int LANGUAGE sql IMMUTABLE
             AS 'SELECT i + (SELECT count(*) FROM helper)::int';
           CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10);
           CREATE INDEX t_f ON t (f(id));""",
        "shop",
    )


def restore_into_copy(
    plat: LocalPlatform, src: PostgresServer, copy: PostgresServer
) -> tuple[Any, dict[str, object]]:
    """Back up ``src`` and restore that into ``copy``: the restore job, and ``copy``'s
    fingerprint from just before it."""
    ok(plat.backup(NS, declare(plat, "src", src), "b1"))
    before = copy.fingerprint()
    return plat.restore(NS, "b1", "r1", target=declare(plat, "copy", copy)), before


def test_pg_restore_error_names_the_database_and_puts_everything_back(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    server = pg_servers.start()
    _breakable(server)
    ref = declare(platform, "db", server)
    ok(platform.backup(NS, ref, "b1"))
    server.psql("INSERT INTO t VALUES (-1)", "alpha")
    server.psql("INSERT INTO t VALUES (-1)", "shop")
    before = server.fingerprint()
    job = platform.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    msg = job.status.message
    assert 'pg_restore failed while restoring database "shop"' in msg
    assert 'relation "helper" does not exist' in msg
    assert "nothing was replaced" in msg
    # alpha was restored before shop failed, and was put back too.
    assert server.fingerprint() == before
    assert not [d for d in server.databases() if d.startswith("cozybackup_old_")]
    tenant_view_is_clean(platform, server)


def test_failed_restore_into_a_copy_leaves_no_partial_database(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    src, copy = pg_servers.start(), pg_servers.start()
    _breakable(src)
    copy.psql("CREATE DATABASE alpha")
    copy.psql("CREATE TABLE mine (v text); INSERT INTO mine VALUES ('keep me')", "alpha")
    job, before = restore_into_copy(platform, src, copy)
    assert job.status.phase == "Failed"
    assert '"shop"' in job.status.message
    assert copy.fingerprint() == before
    assert sorted(copy.databases()) == ["alpha", "postgres"]


def test_globals_error_fails_before_any_database_is_touched(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    src, copy = pg_servers.start(), pg_servers.start()
    write_dataset(src, seed=9)
    # A tablespace: its directory cannot be used by the target server.
    ts = src.root / "ts"
    ts.mkdir()
    shutil.chown(ts, "postgres", "postgres")
    src.psql(f"CREATE TABLESPACE ts LOCATION {pg.literal(str(ts))}")
    copy.psql("CREATE DATABASE shop")
    copy.psql("CREATE TABLE mine (v text)", "shop")
    job, before = restore_into_copy(platform, src, copy)
    assert job.status.phase == "Failed"
    assert (
        "restoring roles and other global objects failed (1 statements rejected"
        in job.status.message
    )
    assert "no database was changed" in job.status.message
    after = copy.fingerprint()
    assert after["databases"] == before["databases"]


# ---------------------------------------------------------------------------- drills


def test_restore_drill_runs_on_a_scratch_server_and_removes_it(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    server = pg_servers.start()
    write_dataset(server, seed=12)
    before = server.fingerprint()
    ok(platform.backup(NS, declare(platform, "db", server), "b1"))
    (backup,) = platform.backups(NS)
    checked = platform.engine.verify(backup, drill=True)
    v = checked.status.last_verified
    assert v is not None and (v.method, v.result) == ("RestoreDrill", "Passed"), v
    assert v.message.startswith("3 databases with 8 tables and about"), v.message
    assert server.fingerprint() == before, "the drill never touches the application"
    leftovers = subprocess.run(["pgrep", "-f", "cozybackup-drill-"], capture_output=True, text=True)
    assert leftovers.stdout == "", "the scratch server was stopped"


def test_a_backup_without_role_passwords_says_so_when_it_is_made(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    """A managed service's account cannot read pg_authid: the backup succeeds without role
    passwords, and the Backup says so (not the restore, weeks later)."""
    server = pg_servers.start()
    server.psql(
        "CREATE ROLE reader LOGIN PASSWORD 'reader-pw';CREATE DATABASE shop;",
        "postgres",
    )
    server.psql(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);"
        "GRANT SELECT ON t TO reader;",
        "shop",
    )
    ok(
        platform.backup(
            NS, declare(platform, "src", server, username="reader", password="reader-pw"), "b1"
        )
    )
    [backup] = platform.backups(NS)
    assert typed_metadata(backup.spec.driver_metadata)["rolePasswords"] is False
    described = backup.status.underlying_resources or {}
    assert described["rolePasswords"] is False
    assert described["databases"] == ["postgres", "shop"]
    [warning] = described["warnings"]
    assert warning["reason"] == "BackupNotExact"
    assert "role passwords are not in this backup" in warning["message"]
