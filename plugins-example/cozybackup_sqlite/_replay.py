"""Building the restored database: the dump replayed into a new file of our own.

The new file lives in a private (0700) directory of the worker's temp dir until the
restore copies it beside the target, so nobody else can see it while it is built.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from cozybackup_core import DriverError, RestoreContext

from . import _connection  # connect() through the module: see there
from ._connection import errorname, interrupted, translate
from ._dump import DUMP_STREAM, lines, statements
from ._files import file_errors
from ._params import SQLiteParameters

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def replay_into(work: Path, ctx: RestoreContext, params: SQLiteParameters) -> Path:
    """Replay the dump into a new database in ``work`` (private to this process)."""
    built = work / "replay.sqlite"
    with file_errors(ctx.target):
        # Owner-only from the start: SQLite gives its -wal/-shm the same mode.
        os.close(os.open(built, os.O_RDWR | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600))
    with translate("restoring the database", ctx.target, ctx.deadline):
        # No statement cache: every statement of a dump is different, and the
        # cache would keep the last 128 of them, BLOB literals and all, in memory.
        conn = _connection.connect(built, ctx.deadline, timeout=0.0, cached_statements=0)
        try:
            _replay(conn, ctx, params)
            if params.integrity_check:
                ctx.progress.stage("checking the restored database")
                check_integrity(conn)
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            if mode == "off":  # the dump did not ask for WAL: the default mode
                conn.execute("PRAGMA journal_mode=DELETE")
        finally:
            conn.close()
    return built


def check_integrity(conn: sqlite3.Connection) -> None:
    problems = [row[0] for row in conn.execute("PRAGMA integrity_check(20)")]
    if problems != ["ok"]:
        raise DriverError(
            "the restored database failed SQLite's integrity check; the target was left unchanged",
            admin_detail="; ".join(str(p) for p in problems),
        )


def _deny_attach(action: int, *_args: Any) -> int:
    # The dump replays into exactly one file: nothing in it may reach another one.
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _replay(conn: sqlite3.Connection, ctx: RestoreContext, params: SQLiteParameters) -> None:
    # The new file is private until it is renamed, and thrown away on any failure, so
    # it needs neither a rollback journal nor fsync while it is built.
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-16384")  # 16 MiB
    conn.set_authorizer(_deny_attach)
    done = 0
    since_commit = 0
    with ctx.artifact.open(DUMP_STREAM) as stream:
        try:
            for statement in statements(lines(stream)):
                if since_commit >= params.batch_statements:
                    since_commit = 0
                    ctx.deadline.check()
                    if conn.in_transaction:  # split the dump's one transaction
                        conn.execute("COMMIT")
                        conn.execute("BEGIN")
                try:
                    conn.execute(statement)
                except sqlite3.Error as exc:
                    if interrupted(exc) or ctx.deadline.expired:
                        raise
                    raise DriverError(
                        f"the backup could not be replayed: SQLite rejected statement "
                        f"{done + 1} of the dump ({errorname(exc)})",
                        admin_detail=f"{ctx.target.ref}: {exc}",
                    ) from None
                done += 1
                since_commit += 1
        except UnicodeDecodeError as exc:
            raise DriverError(
                "the backup's dump is not valid UTF-8",
                admin_detail=str(exc),
            ) from None
    if conn.in_transaction:
        raise DriverError("the backup's dump is incomplete: its transaction was never committed")
