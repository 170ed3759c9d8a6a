"""Logical restores and accounts: definers keep their rights while their objects are
created, and a failed restore leaves every account exactly as it was."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cozybackup_mariadb import DATABASES_STREAM, MariaDBDriver
from cozybackup_mariadb._accounts import needs_objects
from cozybackup_mariadb._replay import DumpWithGrants
from mariadb_server import MariaDBServer
from test_mariadb import NS, assert_no_secrets, declare, make_platform

from cozybackup_core import RestoreContext
from cozybackup_core.testing import typed_metadata

from conftest import ServerFactory, class_yaml, objects, table_checksums, write_data

#: An application account that owns its views, as applications do: the inner view is
#: SQL SECURITY DEFINER and reads a table the account holds a table-level grant on.
#: mariadb-dump creates views in name order, so prices_cheap is created after prices
#: (before it, it would read mariadb-dump's placeholder and pass whatever the rights).
DEFINER_VIEWS = """
CREATE DATABASE app_db;
CREATE TABLE app_db.items (id INT PRIMARY KEY, secret VARCHAR(20), price DECIMAL(8,2));
INSERT INTO app_db.items VALUES (1, 's1', 9.50), (2, 's2', 20.00);
CREATE USER 'owner'@'%' IDENTIFIED BY 'owner-pw-1';
GRANT CREATE VIEW, SHOW VIEW ON app_db.* TO 'owner'@'%';
GRANT SELECT (id, price) ON app_db.items TO 'owner'@'%';
CREATE USER 'reader'@'%' IDENTIFIED BY 'reader-pw-1';
CREATE DEFINER='owner'@'%' SQL SECURITY DEFINER VIEW app_db.prices AS
  SELECT id, price FROM app_db.items;
CREATE DEFINER='owner'@'%' SQL SECURITY DEFINER VIEW app_db.prices_cheap AS
  SELECT id FROM app_db.prices WHERE price < 10;
CREATE DEFINER='owner'@'%' SQL SECURITY INVOKER VIEW app_db.all_prices AS
  SELECT * FROM app_db.prices;
GRANT SELECT ON app_db.prices_cheap TO 'reader'@'%';
GRANT SELECT ON app_db.prices TO 'owner'@'%';
"""


@pytest.mark.parametrize("where", ["in_place", "to_copy"])
def test_a_view_over_a_definer_view_restores_with_exact_grants(
    mariadb: ServerFactory, tmp_path: Path, where: str
) -> None:
    plat = make_platform(tmp_path)
    src = mariadb()
    write_data(src, seed=3)
    src.sql(DEFINER_VIEWS)
    tables, objs = table_checksums(src), objects(src)
    ref = declare(plat, "shop", src)
    job = plat.backup(NS, ref, "b1", "maria-logical")
    assert job.status.phase == "Succeeded", job.status.message
    if where == "in_place":
        src.sql("DELETE FROM app_db.items; REVOKE SELECT ON app_db.prices_cheap FROM 'reader'@'%';")
        target, job = src, plat.restore(NS, "b1", "r1")
    else:
        target = mariadb()
        # The copy already holds the accounts, with other rights and passwords.
        target.sql(
            "CREATE USER 'owner'@'%' IDENTIFIED BY 'other'; GRANT ALL ON *.* TO 'owner'@'%';"
            "CREATE USER 'reader'@'%';"
        )
        job = plat.restore(NS, "b1", "r1", target=declare(plat, "copy", target))
    assert job.status.phase == "Succeeded", job.status.message
    assert table_checksums(target) == tables
    assert objects(target) == objs
    # The definer chain works for the account it was made for, and nothing more.
    assert target.rows(
        "SELECT id FROM app_db.prices_cheap", user="reader", password="reader-pw-1"
    ) == [["1"]]
    denied = target.sql(
        "SELECT secret FROM app_db.items", user="reader", password="reader-pw-1", check=False
    )
    assert denied.returncode != 0
    assert_no_secrets(plat, src, target)


class FailingReplayDriver(MariaDBDriver):
    """Restores a dump with a failing statement in its second database."""

    statement: ClassVar[bytes] = b"SELECT no_such_function_cozy();\n"
    in_views: ClassVar[bool] = False

    def restore(self, ctx: RestoreContext) -> None:
        ctx.artifact = _BreakSecondDatabase(ctx.artifact, self.statement, self.in_views)
        super().restore(ctx)


class FailingViewsDriver(FailingReplayDriver):
    """Restores a dump with a failing statement where its views begin."""

    in_views = True


class StallingReplayDriver(MariaDBDriver):
    """Restores a dump that stops arriving in its second database (until the deadline)."""

    def restore(self, ctx: RestoreContext) -> None:
        ctx.artifact = _BreakSecondDatabase(ctx.artifact, b"", in_views=False, stall=True)
        super().restore(ctx)


class KilledServerDriver(FailingReplayDriver):
    """Restores a dump that waits in its second database, where the server is killed."""

    statement = b"SELECT SLEEP(600);\n"
    victim: ClassVar[MariaDBServer | None] = None

    def restore(self, ctx: RestoreContext) -> None:
        if self.victim is not None:
            threading.Thread(target=_kill_at_the_sleep, args=(self.victim,), daemon=True).start()
        super().restore(ctx)


class _Stalling(io.BytesIO):
    """The dump up to ``at``, then a pause longer than the restore's deadline."""

    def __init__(self, data: bytes, at: int) -> None:
        super().__init__(data)
        self.at, self.stalled = at, False

    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= self.at and not self.stalled:
            self.stalled = True
            time.sleep(12)  # the restore's deadline (8 s) kills the client first
        if not self.stalled:
            return super().read(min(size or 1 << 20, self.at - self.tell()))
        return super().read(size)


class _BreakSecondDatabase:
    def __init__(
        self, source: Any, statement: bytes, in_views: bool, *, stall: bool = False
    ) -> None:
        self.source, self.statement, self.in_views, self.stall = source, statement, in_views, stall

    def names(self) -> list[str]:
        return list(self.source.names())

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[Any]:
        with self.source.open(name) as stream:
            if name != DATABASES_STREAM:
                yield stream
                return
            data = stream.read()
            if self.in_views:
                cut = data.index(b"\n-- Final view structure for view ") + 1
                yield io.BytesIO(data[:cut] + self.statement + data[cut:])
                return
            marker = b"\n-- Current Database: "
            second = data.index(marker, data.index(marker) + 1)
            # After the second database's CREATE TABLE: it was dropped and is half-made.
            cut = data.index(b"LOCK TABLES", second)
            if self.stall:
                yield _Stalling(data, cut)
                return
            yield io.BytesIO(data[:cut] + self.statement + data[cut:])


def test_a_restore_that_fails_midway_puts_every_account_back(
    mariadb: ServerFactory, tmp_path: Path
) -> None:
    plat = make_platform(tmp_path, driver=FailingReplayDriver)
    src = mariadb()
    write_data(src, seed=5)
    src.sql(DEFINER_VIEWS)
    ref = declare(plat, "shop", src)
    job = plat.backup(NS, ref, "b1", "maria-logical")
    assert job.status.phase == "Succeeded", job.status.message
    databases = typed_metadata(plat.backups(NS)[0].spec.driver_metadata)["databases"]
    # The server moves on: other passwords, rights and accounts; one account is gone.
    src.sql(
        "ALTER USER 'app'@'%' IDENTIFIED BY 'changed-pw';"
        "GRANT DELETE ON shop.customers TO 'app'@'%';"
        "GRANT SELECT (secret) ON app_db.items TO 'reader'@'%';"
        "DROP USER 'auditor'@'10.0.0.%';"
        "CREATE USER 'newcomer'@'%' IDENTIFIED BY 'new-pw';"
        "GRANT reporting TO 'newcomer'@'%';"
    )
    accounts_before = {k: objects(src)[k] for k in ("accounts", "grants")}
    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    message = job.status.message or ""
    assert {k: objects(src)[k] for k in ("accounts", "grants")} == accounts_before
    assert "were put back exactly as they were before the restore" in message
    # Exactly what changed: the first database replaced, the second half-made, the rest not.
    first, second, *rest = databases
    assert f"database {second!r} was dropped and only partly restored" in message
    assert f"replaced: {first!r};" in message
    assert "unchanged: " + ", ".join(repr(d) for d in rest) + ";" in message
    assert "the others are unchanged" not in message
    assert src.rows("SELECT 1", user="app", password="changed-pw") == [["1"]]
    assert_no_secrets(plat, src)


def test_a_restore_stopped_at_its_deadline_says_how_far_it_got(
    mariadb: ServerFactory, tmp_path: Path
) -> None:
    plat = make_platform(tmp_path, driver=StallingReplayDriver)
    plat.apply(class_yaml("quick", "{timeoutSeconds: 8}"))
    src = mariadb()
    write_data(src, seed=2)
    job = plat.backup(NS, declare(plat, "shop", src), "b1", "quick")
    assert job.status.phase == "Succeeded", job.status.message
    first, second, *_ = typed_metadata(plat.backups(NS)[0].spec.driver_metadata)["databases"]
    src.sql("ALTER USER 'app'@'%' IDENTIFIED BY 'changed-pw'; DROP USER 'auditor'@'10.0.0.%';")
    accounts_before = {k: objects(src)[k] for k in ("accounts", "grants")}
    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "DeadlineExceeded"
    message = job.status.message or ""
    assert f"database {second!r} was dropped and only partly restored" in message
    assert f"replaced: {first!r}" in message
    assert "were put back exactly as they were before the restore" in message
    assert {k: objects(src)[k] for k in ("accounts", "grants")} == accounts_before


def test_a_server_killed_mid_restore_is_told_exactly_and_a_rerun_restores_it(
    mariadb: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 of the target server in the middle of the replay: the RestoreJob fails
    saying which database is half-made and that the accounts could not be put back (the
    server is gone); once the server is up again, the same backup restores exactly."""
    plat = make_platform(tmp_path, driver=KilledServerDriver)
    src = mariadb()
    write_data(src, seed=6)
    src.sql(DEFINER_VIEWS)
    job = plat.backup(NS, declare(plat, "shop", src), "b1", "maria-logical")
    assert job.status.phase == "Succeeded", job.status.message
    backed_up = {"rows": table_checksums(src), **objects(src)}
    first, second, *rest = typed_metadata(plat.backups(NS)[0].spec.driver_metadata)["databases"]
    src.sql("ALTER USER 'app'@'%' IDENTIFIED BY 'changed-pw'; DROP USER 'auditor'@'10.0.0.%';")
    write_data(src, seed=7)
    monkeypatch.setattr(KilledServerDriver, "victim", src)
    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    message = job.status.message or ""
    assert f"database {second!r} was dropped and only partly restored" in message
    assert f"replaced: {first!r}" in message
    assert "unchanged: " + ", ".join(repr(d) for d in rest) in message
    assert "were changed and could not be put back as they were before the restore" in message
    assert "run the RestoreJob again once the cause is fixed" in message
    assert not src.running()
    # The operator starts the server (InnoDB recovers) and the tenant runs the restore again.
    src.start()
    monkeypatch.setattr(KilledServerDriver, "victim", None)
    monkeypatch.setattr(KilledServerDriver, "statement", b"")
    job = plat.restore(NS, "b1", "r2")
    assert job.status.phase == "Succeeded", job.status.message
    assert {"rows": table_checksums(src), **objects(src)} == backed_up
    assert_no_secrets(plat, src)


def _kill_at_the_sleep(server: MariaDBServer) -> None:
    """SIGKILL once the replay runs the SLEEP it was given: all before it has run."""
    sleeping = (
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT SLEEP(600)%'"
    )
    end = time.monotonic() + 120
    while server.rows(sleeping) != [["1"]] and time.monotonic() < end:
        time.sleep(0.2)
    server.kill()


def test_a_restore_that_fails_at_the_views_says_so_and_puts_every_account_back(
    mariadb: ServerFactory, tmp_path: Path
) -> None:
    plat = make_platform(tmp_path, driver=FailingViewsDriver)
    src, dst = mariadb(), mariadb()
    write_data(src, seed=4)
    src.sql(DEFINER_VIEWS)
    write_data(dst, seed=8)
    dst.sql("CREATE USER 'owner'@'%' IDENTIFIED BY 'x'; GRANT SELECT ON *.* TO 'owner'@'%';")
    accounts_before = {k: objects(dst)[k] for k in ("accounts", "grants")}
    job = plat.backup(NS, declare(plat, "shop", src), "b1", "maria-logical")
    assert job.status.phase == "Succeeded", job.status.message
    job = plat.restore(NS, "b1", "r1", target=declare(plat, "copy", dst))
    assert job.status.phase == "Failed"
    message = job.status.message or ""
    assert (
        "every database in the backup was replaced, but its views and its table, column "
        "and routine grants were not all restored" in message
    )
    assert "were put back exactly as they were before the restore" in message
    assert {k: objects(dst)[k] for k in ("accounts", "grants")} == accounts_before


def test_a_restore_that_fails_before_any_change_says_the_accounts_are_unchanged(
    mariadb: ServerFactory, tmp_path: Path
) -> None:
    plat = make_platform(tmp_path)
    src, dst = mariadb(), mariadb()
    write_data(src, seed=1)
    write_data(dst, seed=2)
    # The platform's account may read the accounts but not create them: the restore
    # stops at its first statement, and says that nothing changed.
    dst.sql(
        "CREATE USER 'weak'@'%' IDENTIFIED BY 'weak-pw-1234'; GRANT SELECT ON *.* TO 'weak'@'%';"
    )
    before = objects(dst)
    assert plat.backup(NS, declare(plat, "shop", src), "b1", "maria-logical").status.phase == (
        "Succeeded"
    )
    weak = declare(plat, "copy", dst, creds={"username": "weak", "password": "weak-pw-1234"})
    job = plat.restore(NS, "b1", "r1", target=weak)
    assert job.status.phase == "Failed"
    message = job.status.message or ""
    assert "no database was touched" in message
    assert "accounts and roles in the backup and their grants are unchanged" in message
    assert objects(dst) == before


# ---------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("grant", "late"),
    [
        ("GRANT USAGE ON *.* TO `a`@`%` IDENTIFIED BY PASSWORD '*AB'", False),
        ("GRANT SELECT, INSERT ON `shop`.* TO `a`@`%`", False),
        ("GRANT SELECT ON `we``ird ON db`.* TO `a`@`%`", False),
        ("GRANT SELECT ON `shop`.`orders` TO `a`@`%`", True),
        ("GRANT SELECT (`on`, ` ON `) ON `shop`.`t` TO `a`@`%`", True),
        ("GRANT EXECUTE ON FUNCTION `shop`.`f` TO `a`@`%`", True),
        ("GRANT EXECUTE ON PROCEDURE `shop`.`p` TO 'r'", True),
        ("GRANT EXECUTE ON PACKAGE BODY `shop`.`p` TO 'r'", True),
        ("GRANT SELECT ON shop.orders TO `a`@`%`", True),
        ("GRANT `reporting` TO `app`@`%`", False),
        ("GRANT `on` TO `app`@`%` WITH ADMIN OPTION", False),
        ("GRANT PROXY ON 'x'@'%' TO 'y'@'%'", False),
        ("SET DEFAULT ROLE `reporting` FOR `app`@`%`", False),
    ],
)
def test_grants_that_need_their_objects_are_told_apart(grant: str, late: bool) -> None:
    assert needs_objects(grant) is late


DUMP = b"""-- header
-- Current Database: `a`
CREATE TABLE t (x INT);
DELIMITER ;;
CREATE PROCEDURE p() BEGIN
-- Final view structure for view `not really`
SELECT 1;
END;;
DELIMITER ;
-- Current Database: `b`
INSERT INTO t VALUES ('-- Final view structure for view');
-- Current Database: `a`
-- Final view structure for view `v`
CREATE VIEW v AS SELECT 1;
-- Current Database: `b`
"""


@pytest.mark.parametrize("chunk", [1, 7, 40, 1 << 20])
def test_late_grants_go_before_the_views_and_nowhere_else(chunk: int) -> None:
    class Chunked(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            return super().read(chunk)

    dump = DumpWithGrants(Chunked(DUMP), b"GRANT late;\n", "m")
    out = b""
    while data := dump.read(1 << 20 if chunk > 100 else 3):
        out += data
    expected = DUMP.replace(
        b"-- Current Database: `a`\nCREATE", b"SELECT 'm-db-0';\n-- Current Database: `a`\nCREATE"
    )
    expected = expected.replace(
        b"-- Current Database: `b`\nINSERT", b"SELECT 'm-db-1';\n-- Current Database: `b`\nINSERT"
    )
    expected = expected.replace(
        b"-- Current Database: `a`\n-- Final",
        b"SELECT 'm-db-2';\n-- Current Database: `a`\n-- Final",
    )
    expected = expected.replace(
        b"-- Final view structure for view `v`",
        b"SELECT 'm-grants';\nGRANT late;\n-- Final view structure for view `v`",
    )
    assert out == expected


#: Lines that look like the dump's own, inside names, strings, comments and rows.
HOSTILE = b"""-- Current Database: `a`
/*!50003 DROP PROCEDURE IF EXISTS `p
-- Final view structure for view x` */;
CREATE TABLE `t
-- Current Database: `b` (`c` INT COMMENT 'x\\'
-- Final view structure for view y');
INSERT INTO `t
-- Final view structure for view z` (`c
-- Current Database: q`, row_start) VALUES (1,'a\\n-- Final view structure for view'),
(2,'b;'),
(3,'c');
/*!50003 SET sql_mode              = 'NO_BACKSLASH_ESCAPES' */ ;
DELIMITER ;;
CREATE PROCEDURE p() SELECT 'x\\'
;;
DELIMITER ;
/*!50003 SET sql_mode              = @saved_sql_mode */ ;
/* a comment
-- Final view structure for view v
*/
SELECT 'it''s
-- Current Database: `c`';
# -- Final view structure for view u
-- Final view structure for view `v`
CREATE VIEW v AS SELECT 1;
"""


@pytest.mark.parametrize("chunk", [1, 5, 64, 1 << 20])
def test_lines_that_only_look_like_the_dump_are_left_alone(chunk: int) -> None:
    class Chunked(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            return super().read(chunk)

    dump = DumpWithGrants(Chunked(HOSTILE), b"GRANT late;\n", "m")
    out = b""
    while data := dump.read(7):
        out += data
    assert out == b"SELECT 'm-db-0';\n" + HOSTILE.replace(
        b"-- Final view structure for view `v`",
        b"SELECT 'm-grants';\nGRANT late;\n-- Final view structure for view `v`",
    )


def test_without_views_the_late_grants_come_last() -> None:
    dump = DumpWithGrants(io.BytesIO(b"-- Current Database: `a`\nSELECT 1;"), b"GRANT late;\n", "m")
    out = b""
    while data := dump.read():
        out += data
    assert out == (
        b"SELECT 'm-db-0';\n-- Current Database: `a`\nSELECT 1;\nSELECT 'm-grants';\nGRANT late;\n"
    )


def test_a_restore_that_cannot_read_the_accounts_changes_nothing(
    mariadb: ServerFactory, tmp_path: Path
) -> None:
    plat = make_platform(tmp_path)
    src, dst = mariadb(), mariadb()
    write_data(src, seed=1)
    write_data(dst, seed=2)
    dst.sql(
        "CREATE USER 'blind'@'%' IDENTIFIED BY 'blind-pw-1234'; GRANT CREATE USER ON *.* TO 'blind'@'%';"
    )
    before = objects(dst)
    tables = table_checksums(dst)
    assert plat.backup(NS, declare(plat, "shop", src), "b1", "maria-logical").status.phase == (
        "Succeeded"
    )
    blind = declare(plat, "copy", dst, creds={"username": "blind", "password": "blind-pw-1234"})
    job = plat.restore(NS, "b1", "r1", target=blind)
    assert job.status.phase == "Failed"
    message = job.status.message or ""
    assert "while reading the accounts before the restore" in message
    assert "no database was touched; no account was changed" in message
    assert objects(dst) == before and table_checksums(dst) == tables
    assert_no_secrets(plat, src, dst, extra=("blind-pw-1234",))
