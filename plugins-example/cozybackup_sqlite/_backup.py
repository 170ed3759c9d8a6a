"""Backup: one read transaction on the live database, dumped as SQL into ``dump.sql``.

``Connection.iterdump()`` streams the schema and every row as SQL text into the single
artifact stream, framed as ``_dump`` describes.  No temp file: memory stays at about one
flush buffer, and one row at a time (a single huge BLOB costs about three times its size
while it passes).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from cozybackup_core import BackupContext

from . import _connection  # connect() through the module: see there
from ._connection import db_path, translate
from ._dump import DUMP_FORMAT, DUMP_STREAM, dump_lines, snapshot
from ._files import checked, same_file
from ._params import SQLiteParameters
from ._quote import Quote

_FLUSH_CHARS = 1 << 20  # the dump is written to the artifact in ~1 MiB pieces


def backup(ctx: BackupContext[SQLiteParameters]) -> None:
    path = db_path(ctx.application)
    deadline = ctx.deadline
    ctx.progress.stage("opening the database")
    with (
        checked(path) as db,
        translate("reading the database", ctx.application, deadline),
    ):
        conn = _connection.connect(path, deadline, timeout=deadline.remaining())
        quote = Quote()
        try:
            same_file(conn, db)  # before SQLite has read a byte of it
            # iterdump() renders every value with quote(): ours fixes two flaws.
            conn.create_function("quote", 1, quote, deterministic=True)
            # Consistency: everything below runs inside ONE read transaction, and
            # its first SELECT pins the snapshot that every later query of
            # iterdump() sees.  Concurrent writers cannot tear the dump:
            #  * WAL mode: readers and writers do not block each other.  We read
            #    the snapshot as of our first SELECT while writers keep committing
            #    to the WAL; checkpoints cannot overwrite pages we still need, so
            #    the WAL grows until we finish.
            #  * rollback-journal mode: our SHARED lock lets other readers in but
            #    keeps writers from committing until the dump ends (they wait on
            #    their busy timeout).  Use WAL for databases written during backups.
            # A writer that holds the database exclusively makes us wait, up to
            # the job's deadline (the busy timeout set by connect).
            conn.execute("BEGIN DEFERRED")
            info = snapshot(conn)
            ctx.progress.stage("dumping the database")
            rows = _write_dump(conn, info, ctx)
            conn.execute("COMMIT")  # ends the read transaction; nothing was written
        finally:
            conn.close()
            quote.close()
    ctx.metadata.update(
        {
            "dumpFormat": DUMP_FORMAT,
            "sqliteVersion": sqlite3.sqlite_version,
            "tables": info["tables"],
            "indexes": info["indexes"],
            "views": info["views"],
            "triggers": info["triggers"],
            "rows": rows,
            "journalMode": info["journal_mode"],
            "userVersion": info["user_version"],
        }
    )
    ctx.resources.update(
        {k: ctx.metadata[k] for k in ("sqliteVersion", "tables", "views", "triggers", "rows")}
    )
    ctx.tool_versions["sqlite"] = sqlite3.sqlite_version
    ctx.log.info("dumped %d tables, %d rows", info["tables"], rows)


def _write_dump(conn: sqlite3.Connection, info: dict[str, Any], ctx: BackupContext) -> int:
    """Stream the dump into the artifact; memory stays at about one flush buffer."""
    rows = 0
    buf: list[str] = []
    size = 0
    with ctx.artifact.open(DUMP_STREAM) as out:
        for item in dump_lines(conn, info):
            if item.startswith('INSERT INTO "') and not item.startswith('INSERT INTO "sqlite_'):
                rows += 1
            buf.append(item)
            buf.append("\n")
            size += len(item) + 1
            if size >= _FLUSH_CHARS:
                out.write("".join(buf).encode("utf-8"))
                buf.clear()
                size = 0
                ctx.deadline.check()
        out.write("".join(buf).encode("utf-8"))
    return rows
