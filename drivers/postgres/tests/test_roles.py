"""Roles come back exactly as backed up (issue #14): every attribute, defaults included,
passwords (and none), memberships with their admin option and grantor, settings and
comments; and a restore that fails puts the target's roles back as they were."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import attrs
import pytest
from cozybackup_postgres import PostgresDriver, _backup, _restore, _serverwide
from cozybackup_postgres._roles import (
    Membership,
    Role,
    RoleState,
    plan,
    set_setting_sql,
    split_list_setting,
)
from cozybackup_postgres._serverwide import ServerWide
from cozybackup_postgres.testing import PostgresServer, ServerPool, roles_catalog

from cozybackup_core.testing import LocalPlatform

NS = "tenant-a"


@pytest.fixture
def platform(tmp_path: Path) -> LocalPlatform:
    return LocalPlatform(tmp_path / "home", drivers=(PostgresDriver,))


def declare(plat: LocalPlatform, name: str, server: PostgresServer) -> Any:
    return plat.declare_app(NS, name, "Postgres", server.connection(), server.credentials())


def ok(job: Any) -> None:
    assert job.status.phase == "Succeeded", f"{job.kind} failed: {job.status.message}"


def superuser_row(server: PostgresServer) -> str:
    return server.psql("SELECT to_jsonb(a) FROM pg_authid a WHERE rolname = current_user")


ROLES = """
CREATE ROLE plain LOGIN;
CREATE ROLE app LOGIN PASSWORD 'app-pw' CONNECTION LIMIT 3 VALID UNTIL '2040-01-02 03:04:05+00';
CREATE ROLE staff NOLOGIN;
CREATE ROLE auditors NOLOGIN;
CREATE ROLE "Odd ""Rôle"" x" LOGIN VALID UNTIL 'infinity' CREATEDB CREATEROLE;
CREATE ROLE ops REPLICATION BYPASSRLS NOINHERIT;
CREATE ROLE boss SUPERUSER;
CREATE ROLE gone LOGIN PASSWORD 'gone-pw' CONNECTION LIMIT 4 IN ROLE staff;
COMMENT ON ROLE gone IS 'dropped after the backup';
ALTER ROLE gone SET work_mem = '2MB';
CREATE ROLE renamed LOGIN CONNECTION LIMIT 1;
GRANT staff TO app;
GRANT auditors TO ops WITH ADMIN OPTION;
GRANT staff TO "Odd ""Rôle"" x" WITH ADMIN OPTION GRANTED BY staff;
GRANT pg_read_all_data TO auditors;
COMMENT ON ROLE app IS 'the application';
ALTER ROLE app SET search_path = "$user", public, 'we"ird';
ALTER ROLE app SET work_mem = '8MB';
ALTER ROLE ALL SET work_mem = '3MB';
CREATE DATABASE shop OWNER app;
ALTER ROLE app IN DATABASE shop SET statement_timeout = '5s';
"""

#: Everything pg_dumpall --globals-only cannot undo, and more.
CHANGES = """
ALTER ROLE plain CONNECTION LIMIT 0 VALID UNTIL '2000-01-01' PASSWORD 'set-later';
ALTER ROLE app NOLOGIN CREATEDB CONNECTION LIMIT -1 VALID UNTIL 'infinity' PASSWORD 'other';
ALTER ROLE "Odd ""Rôle"" x" NOCREATEDB VALID UNTIL '1999-12-31';
ALTER ROLE ops NOREPLICATION NOBYPASSRLS INHERIT SUPERUSER;
ALTER ROLE boss NOSUPERUSER LOGIN;
ALTER ROLE staff SET statement_timeout = '1s';
ALTER ROLE app SET work_mem = '64MB';
ALTER ROLE app SET search_path = public;
ALTER ROLE app SET lock_timeout = '2s';
ALTER ROLE ALL SET work_mem = '5MB';
ALTER ROLE ALL SET lock_timeout = '9s';
ALTER ROLE app IN DATABASE shop SET statement_timeout = '9s';
ALTER ROLE plain IN DATABASE shop SET work_mem = '1MB';
COMMENT ON ROLE app IS NULL;
COMMENT ON ROLE plain IS 'commented later';
GRANT auditors TO plain;
GRANT boss TO app;
REVOKE staff FROM app;
GRANT staff TO app WITH ADMIN OPTION;
REVOKE ADMIN OPTION FOR auditors FROM ops;
REVOKE staff FROM "Odd ""Rôle"" x";
GRANT staff TO "Odd ""Rôle"" x";
GRANT pg_monitor TO ops;
REVOKE pg_read_all_data FROM auditors;
CREATE ROLE later LOGIN;
DROP ROLE gone;
ALTER ROLE renamed RENAME TO renamed_later;
GRANT staff TO later;
"""


def test_in_place_restore_brings_every_role_back_exactly(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    server = pg_servers.start()
    server.psql(ROLES)
    ref = declare(platform, "db", server)
    ok(platform.backup(NS, ref, "b1"))
    backed_up = roles_catalog(server)
    me = superuser_row(server)
    server.psql(CHANGES)
    assert roles_catalog(server, skip=("later", "renamed_later")) != backed_up
    ok(platform.restore(NS, "b1", "r1"))
    # A role made after the backup is left alone (it may own things elsewhere).
    assert roles_catalog(server, skip=("later", "renamed_later")) == backed_up
    assert "later" in server.psql("SELECT rolname FROM pg_roles WHERE rolname = 'later'")
    assert superuser_row(server) == me, "the platform's own role is never changed"


def test_restore_into_a_copy_whose_roles_exist_brings_them_back_exactly(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    src, copy = pg_servers.start(), pg_servers.start()
    src.psql(ROLES)
    # The copy holds the same roles, changed (and a database of that name).
    copy.psql(ROLES)
    copy.psql(CHANGES)
    ok(platform.backup(NS, declare(platform, "src", src), "b1"))
    me = superuser_row(copy)
    ok(platform.restore(NS, "b1", "r1", target=declare(platform, "copy", copy)))
    assert roles_catalog(copy, skip=("later", "renamed_later")) == roles_catalog(src)
    assert superuser_row(copy) == me


def test_a_backup_older_than_the_record_of_roles_still_restores(
    platform: LocalPlatform, pg_servers: ServerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = pg_servers.start()
    server.psql(ROLES)
    # As the driver wrote backups before the record existed: no roles.json (and no
    # stream named in the index).
    monkeypatch.setattr(_backup, "_record_roles", lambda *a: None)
    ok(platform.backup(NS, declare(platform, "db", server), "b1"))
    server.psql("ALTER ROLE app NOLOGIN; DROP ROLE ops;")
    ok(platform.restore(NS, "b1", "r1"))
    login = server.psql("SELECT rolcanlogin FROM pg_roles WHERE rolname IN ('app', 'ops')")
    assert login.split() == ["t", "f"], "globals.sql alone: flags and roles come back"


def test_the_platform_role_keeps_its_settings_and_comment(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    """The source's platform role (same name as the target's) had settings and a comment
    over two lines: none of it reaches the target's."""
    src, copy = pg_servers.start(), pg_servers.start()
    src.psql(ROLES)
    src.psql(
        "ALTER ROLE cozy_admin SET work_mem = '1MB';"
        "COMMENT ON ROLE cozy_admin IS 'line one\nline two; ''quoted''';"
    )
    ok(platform.backup(NS, declare(platform, "src", src), "b1"))
    me = superuser_row(copy)
    ok(platform.restore(NS, "b1", "r1", target=declare(platform, "copy", copy)))
    assert superuser_row(copy) == me
    touched = copy.psql(
        "SELECT count(*) FROM pg_db_role_setting WHERE setrole = 'cozy_admin'::regrole;"
        "SELECT shobj_description('cozy_admin'::regrole, 'pg_authid') IS NULL;"
    )
    assert touched.split() == ["0", "t"]
    assert roles_catalog(copy) == roles_catalog(src)


# ---------------------------------------------------------------------------- units


def test_list_settings_split_like_postgres() -> None:
    assert split_list_setting('"$user", public, "we""ird"') == ["$user", "public", 'we"ird']
    assert split_list_setting('""') == [""]
    assert split_list_setting("a,b") == ["a", "b"]
    assert set_setting_sql("x", 'search_path="$user", public') == (
        "ALTER ROLE \"x\" SET \"search_path\" TO '$user', 'public';"
    )
    assert set_setting_sql("x", "work_mem=8MB") == 'ALTER ROLE "x" SET "work_mem" TO \'8MB\';'


def test_plan_never_touches_the_platform_role_or_builtin_roles() -> None:
    want = RoleState(
        passwords=True,
        roles=(Role(name="admin", superuser=True), Role(name="pg_monitor"), Role(name="a")),
        memberships=(),
    )
    have = RoleState(
        passwords=True,
        roles=(
            Role(name="admin", password="x"),
            Role(name="pg_monitor", login=True),
            Role(name="a", connection_limit=0, valid_until="2000-01-01T00:00:00+00:00"),
        ),
        memberships=(
            Membership(role="a", member="admin", grantor="admin", admin_option=False),
            Membership(role="admin", member="a", grantor="admin", admin_option=True),
        ),
    )
    steps = plan(want, have, {"admin"})
    assert steps == [
        'ALTER ROLE "a" WITH CONNECTION LIMIT -1;',
        "UPDATE pg_catalog.pg_authid SET rolvaliduntil = NULL WHERE rolname = 'a';",
        'REVOKE "admin" FROM "a";',
    ]
    assert plan(want, want, {"admin"}) == []
    # Without passwords on either side, passwords are left as they are.
    blind = attrs.evolve(want, passwords=False)
    assert plan(blind, have, {"admin"})[0] == 'ALTER ROLE "a" WITH CONNECTION LIMIT -1;'


# ---------------------------------------------------------------------------- failures


def breakable(server: PostgresServer) -> None:
    """Roles, and two databases of which "shop" fails in pg_restore (an index on a
    function whose body names a table without its schema), after "alpha" was restored."""
    server.psql(
        ROLES.replace("CREATE DATABASE shop OWNER app;", "").replace("IN DATABASE shop", "")
    )
    server.psql("CREATE DATABASE alpha OWNER app")
    server.psql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)", "alpha")
    server.psql("CREATE DATABASE shop OWNER staff")
    server.psql(
        """CREATE TABLE helper (x int); INSERT INTO helper VALUES (1);
           CREATE FUNCTION f(i int) RETURNS int LANGUAGE sql IMMUTABLE
             AS 'SELECT i + (SELECT count(*) FROM helper)::int';
           CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 10);
           CREATE INDEX t_f ON t (f(id));""",
        "shop",
    )


def test_a_failed_in_place_restore_puts_the_roles_back(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    server = pg_servers.start()
    breakable(server)
    ok(platform.backup(NS, declare(platform, "db", server), "b1"))
    server.psql(CHANGES.replace("IN DATABASE shop", ""))
    before = roles_catalog(server)
    job = platform.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    assert 'pg_restore failed while restoring database "shop"' in job.status.message
    assert job.status.message.endswith(
        "nothing was replaced: every database is as it was before the restore; "
        "the roles and tablespaces are as they were before the restore"
    )
    assert roles_catalog(server) == before


def test_a_failed_restore_into_a_copy_removes_the_roles_it_created(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    src, copy = pg_servers.start(), pg_servers.start()
    breakable(src)
    copy.psql("CREATE ROLE app NOLOGIN CONNECTION LIMIT 0; CREATE ROLE mine LOGIN;")
    before = roles_catalog(copy)
    ok(platform.backup(NS, declare(platform, "src", src), "b1"))
    job = platform.restore(NS, "b1", "r1", target=declare(platform, "copy", copy))
    assert job.status.phase == "Failed"
    assert "the roles and tablespaces are as they were before the restore" in job.status.message
    assert roles_catalog(copy) == before
    assert sorted(copy.databases()) == ["postgres"]


def test_a_rejected_global_statement_puts_the_roles_back(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    """Roles are created and changed statement by statement before the first error
    (here a tablespace whose directory the target lacks) stops the restore."""
    src, copy = pg_servers.start(), pg_servers.start()
    src.psql(ROLES)
    ts = src.root / "ts"
    ts.mkdir()
    shutil.chown(ts, "postgres", "postgres")
    src.psql(f"CREATE TABLESPACE ts OWNER app LOCATION '{ts}'")
    copy.psql("CREATE ROLE app NOLOGIN CONNECTION LIMIT 0 PASSWORD 'copy'; CREATE ROLE mine;")
    before = roles_catalog(copy)
    ok(platform.backup(NS, declare(platform, "src", src), "b1"))
    job = platform.restore(NS, "b1", "r1", target=declare(platform, "copy", copy))
    assert job.status.phase == "Failed"
    assert "restoring roles and other global objects failed" in job.status.message
    assert job.status.message.endswith(
        "no database was changed; the roles and tablespaces are as they were before the restore"
    )
    assert roles_catalog(copy) == before


def test_a_failure_while_setting_the_roles_puts_them_back(
    platform: LocalPlatform, pg_servers: ServerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = pg_servers.start()
    server.psql(ROLES)
    ok(platform.backup(NS, declare(platform, "db", server), "b1"))
    server.psql(CHANGES)
    before = roles_catalog(server)
    real = _serverwide.plan
    calls: list[int] = []

    def failing(want: ServerWide, have: ServerWide, keep_out: Any) -> list[str]:
        """The first plan (the backup's roles) fails at its last statement."""
        steps = real(want, have, keep_out)
        calls.append(len(steps))
        return [*steps, "SELECT 1 / 0;"] if len(calls) == 1 else steps

    monkeypatch.setattr(_serverwide, "plan", failing)
    job = platform.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    assert job.status.message.endswith(
        "division by zero; no database was changed; the roles and tablespaces are as they were before the restore"
    )
    assert calls[0] > 1 and calls[1] > 1, "globals.sql had changed roles: put back"
    assert roles_catalog(server) == before


def test_when_the_roles_cannot_be_put_back_the_message_names_them(
    platform: LocalPlatform, pg_servers: ServerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = pg_servers.start()
    breakable(server)
    ok(platform.backup(NS, declare(platform, "db", server), "b1"))
    server.psql(CHANGES.replace("IN DATABASE shop", ""))
    before = roles_catalog(server)
    real = _restore.as_script
    calls: list[int] = []

    def failing(steps: list[str]) -> str:
        """Setting the backup's roles works; putting the previous ones back does not."""
        calls.append(len(steps))
        return real(steps) if len(calls) == 1 else "SELECT 1 / 0;"

    monkeypatch.setattr(_restore, "as_script", failing)
    job = platform.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    assert job.status.message.endswith(
        "nothing was replaced: every database is as it was before the restore; the roles "
        "and tablespaces could not all be put back as they were before the restore; these "
        'differ from before (as in the backup, or created by it): "Odd "Rôle" x", "app", '
        '"auditors", "boss", "gone", "ops", "plain", "renamed", "staff"; ask the platform '
        "operator"
    )
    after = roles_catalog(server)
    assert after != before
    changed = {r["rolname"] for r in after["authid"] if r not in before["authid"]}
    assert changed == {'Odd "Rôle" x', "app", "boss", "gone", "ops", "plain", "renamed"}


def test_without_role_passwords_in_the_backup_the_targets_passwords_stay(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    """A backup by an account that cannot read pg_authid: every other attribute still
    comes back exactly; passwords are left as the target has them."""
    src, copy = pg_servers.start(), pg_servers.start()
    src.psql(
        "CREATE ROLE reader LOGIN PASSWORD 'reader-pw';"
        "CREATE ROLE app LOGIN PASSWORD 'app-pw' CONNECTION LIMIT 2;"
        "CREATE DATABASE shop;"
    )
    src.psql("CREATE TABLE t (id int); GRANT SELECT ON t TO reader;", "shop")
    copy.psql(
        "CREATE ROLE app NOLOGIN PASSWORD 'copy-pw' CONNECTION LIMIT 0 VALID UNTIL '2000-01-01'"
    )
    copy_hash = copy.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'")
    ref = platform.declare_app(
        NS,
        "src",
        "Postgres",
        src.connection(),
        {"username": "reader", "password": "reader-pw"},
    )
    ok(platform.backup(NS, ref, "b1"))
    ok(platform.restore(NS, "b1", "r1", target=declare(platform, "copy", copy)))
    row = copy.psql(
        "SELECT rolcanlogin, rolconnlimit, rolvaliduntil IS NULL, rolpassword "
        "FROM pg_authid WHERE rolname = 'app'"
    )
    assert row == f"t|2|t|{copy_hash.strip()}\n"
