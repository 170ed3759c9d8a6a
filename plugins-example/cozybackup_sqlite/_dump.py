"""The dump format, written by backups and read back by restores.

``dump.sql`` is plain SQL (``sqlite3 new.db < dump.sql`` replays it by hand), framed so
that a restore can check it: a header line with the format version, the settings that
must precede the first table, the ``iterdump()`` transaction, the settings that may
follow it, and a trailer line, so that a dump cut short is recognised.
"""

from __future__ import annotations

import codecs
import sqlite3
from collections.abc import Iterable, Iterator
from typing import IO, Any

from cozybackup_core import DriverError, iter_chunks

#: The one artifact stream a backup writes.
DUMP_STREAM = "dump.sql"
DUMP_FORMAT = 1
_HEADER = f"-- cozybackup-sqlite dump format {DUMP_FORMAT}"
_TRAILER = "-- cozybackup-sqlite dump complete"


# ---------------------------------------------------------------------- writing


def snapshot(conn: sqlite3.Connection) -> dict[str, Any]:
    """The first read of the transaction (which pins the snapshot) plus the settings."""
    counts = dict(
        conn.execute(
            "SELECT type, count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
            "GROUP BY type"
        ).fetchall()
    )

    def pragma(name: str) -> Any:
        row = conn.execute(f"PRAGMA {name}").fetchone()
        return row[0] if row else None

    return {
        "tables": int(counts.get("table", 0)),
        "indexes": int(counts.get("index", 0)),
        "views": int(counts.get("view", 0)),
        "triggers": int(counts.get("trigger", 0)),
        "page_size": int(pragma("page_size")),
        "auto_vacuum": int(pragma("auto_vacuum")),
        "encoding": str(pragma("encoding")),
        "user_version": int(pragma("user_version")),
        "application_id": int(pragma("application_id")),
        "journal_mode": str(pragma("journal_mode")).lower(),
    }


def dump_lines(conn: sqlite3.Connection, info: dict[str, Any]) -> Iterator[str]:
    """The dump, one statement (or comment) per item.  Plain SQL a shell can replay."""
    yield _HEADER
    # Settings that only take effect before the first table is created:
    yield f"PRAGMA page_size={info['page_size']};"
    yield f"PRAGMA auto_vacuum={info['auto_vacuum']};"
    yield f"PRAGMA encoding='{info['encoding']}';"
    yield from conn.iterdump()  # BEGIN TRANSACTION; ... COMMIT;
    yield f"PRAGMA user_version={info['user_version']};"
    yield f"PRAGMA application_id={info['application_id']};"
    if info["journal_mode"] == "wal":  # the one journal mode stored in the file itself
        yield "PRAGMA journal_mode=WAL;"
    yield _TRAILER


# ---------------------------------------------------------------------- reading


def lines(stream: IO[bytes]) -> Iterator[str]:
    """UTF-8 lines (without ``\\n``; ``\\r`` and other separators are kept), streaming."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    parts: list[str] = []
    for chunk in iter_chunks(stream):
        pieces = decoder.decode(chunk).split("\n")
        if len(pieces) == 1:
            parts.append(pieces[0])
            continue
        parts.append(pieces[0])
        yield "".join(parts)
        yield from pieces[1:-1]
        parts = [pieces[-1]]
    parts.append(decoder.decode(b"", final=True))
    tail = "".join(parts)
    if tail:
        yield tail


def statements(lines: Iterable[str]) -> Iterator[str]:
    """Complete SQL statements, accumulated line by line with ``complete_statement``."""
    it = iter(lines)
    first = next(it, None)
    if first != _HEADER:
        raise DriverError(
            "the backup was not written by a compatible version of the SQLite driver",
            admin_detail=f"unexpected first line of {DUMP_STREAM}: {(first or '')[:80]!r}",
        )
    parts: list[str] = []
    complete = False
    for line in it:
        if complete:
            raise DriverError(
                "the backup's dump has data after its end marker",
                admin_detail=f"line after the trailer: {line[:80]!r}",
            )
        if not parts:
            if line == _TRAILER:
                complete = True
                continue
            if not line.strip() or line.startswith("--"):
                continue  # a comment between statements
        parts.append(line)
        # Only a line ending in ';' can end a statement: skips the tokenizer otherwise.
        if line.rstrip().endswith(";"):
            statement = "\n".join(parts)
            if sqlite3.complete_statement(statement):
                yield statement
                parts = []
    if parts or not complete:
        raise DriverError(
            "the backup's dump is incomplete",
            admin_detail=f"{DUMP_STREAM} ends early",
        )
