"""Reaching the database: the ``path`` connection key, SQLite connections that stop at
the job's deadline, and SQLite's errors turned into tenant-safe ones.

Backups and restores call :func:`connect` through this module (``_connection.connect``),
not an imported copy of it, so that a test can stand in for SQLite's open in one place.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from cozybackup_core import AppLocation, Deadline, DeadlineExceeded, DriverError

_VM_STEPS = 10_000  # SQLite VM steps between deadline checks inside one statement


def db_path(loc: AppLocation) -> Path:
    """The declared database path (connection key ``path``), checked for shape only."""
    raw = loc.connection.get("path")
    if (
        not isinstance(raw, str)
        or not raw
        or "\x00" in raw
        or not Path(raw).is_absolute()
        or any(part in (".", "..") for part in raw.split("/"))
        or raw.endswith("/")
    ):
        raise DriverError(
            "this application's connection settings are incomplete; ask the platform operator",
            admin_detail=f"{loc.ref}: connection key 'path' must be an absolute file path "
            "(no '.' or '..'), "
            f"got {raw!r}",
        )
    return Path(raw)


def connect(
    path: Path,
    deadline: Deadline,
    *,
    timeout: float,
    cached_statements: int = 128,
) -> sqlite3.Connection:
    # mode=rw: never create a missing database (plain connect() would, silently).
    # isolation_level=None: the module starts no transactions; we issue BEGIN/COMMIT.
    conn = sqlite3.connect(
        f"{path.as_uri()}?mode=rw",
        uri=True,
        isolation_level=None,
        timeout=timeout,
        cached_statements=cached_statements,
    )
    # Long single statements (a big SELECT, integrity_check) stop at the deadline too.
    conn.set_progress_handler(lambda: 1 if deadline.expired else 0, _VM_STEPS)
    return conn


def errorname(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", None)  # Python >= 3.11
    return name if isinstance(name, str) else type(exc).__name__


def is_error(exc: sqlite3.Error, code: str, *phrases: str) -> bool:
    """Whether ``exc`` is SQLite's ``code`` (or an extended code of it); older Pythons
    give no code, so the error's text is searched for ``phrases`` as well."""
    name = errorname(exc)
    return name == code or name.startswith(code + "_") or any(p in str(exc) for p in phrases)


def locked(exc: sqlite3.Error) -> bool:
    """Another connection holds the lock we need."""
    return is_error(exc, "SQLITE_BUSY", "database is locked") or is_error(exc, "SQLITE_LOCKED")


def interrupted(exc: sqlite3.Error) -> bool:
    """Stopped by the progress handler :func:`connect` installs (the deadline passed)."""
    return is_error(exc, "SQLITE_INTERRUPT", "interrupted")


@contextlib.contextmanager
def translate(doing: str, loc: AppLocation, deadline: Deadline) -> Iterator[None]:
    """sqlite3 errors -> tenant-safe errors; SQLite's own text goes to ``admin_detail``."""
    try:
        yield
    except sqlite3.Error as exc:
        detail = f"{loc.ref}: {errorname(exc)}: {exc}"
        if locked(exc):
            # The busy timeout is the time left before the deadline (see connect).
            raise DriverError(
                "the database stayed locked by another process until the job's deadline",
                admin_detail=detail,
            ) from None
        if interrupted(exc) or deadline.expired:
            raise DeadlineExceeded(
                f"the job ran past its deadline while {doing} and was stopped",
                admin_detail=detail,
            ) from None
        if is_error(exc, "SQLITE_NOTADB", "file is not a database"):
            raise DriverError(
                "the application's data file is not a SQLite database",
                admin_detail=detail,
            ) from None
        if is_error(exc, "SQLITE_CORRUPT", "malformed"):
            raise DriverError(
                "the database file is damaged: SQLite reports it as corrupt",
                admin_detail=detail,
            ) from None
        raise DriverError(
            f"SQLite failed while {doing} ({errorname(exc)})",
            admin_detail=detail,
        ) from None
