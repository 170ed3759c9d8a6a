"""The application's directory, treated as hostile.

The database's directory belongs to the application (SQLite writes its journals there),
so a tenant decides what sits at the declared name; the worker is usually more
privileged.  So the declared path is never followed: the directory is reached without
links and held open, the file is opened with ``O_NOFOLLOW`` and must be a regular file
with one link (``cozybackup_core.open_local``); a symlink, FIFO, socket, device or
directory there is refused before it is opened.  SQLite itself opens files by name, so
after it has opened the database, and before it reads or writes anything, the driver
checks that SQLite found no link (:func:`same_file`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from cozybackup_core import (
    AppLocation,
    DriverError,
    LocalDir,
    LocalFile,
    UnsafeLocalPath,
    open_local,
)

WHAT = "database file"  # in messages: "the application's database file is a symbolic link"
SIDECARS = ("-wal", "-shm", "-journal")
#: In the names of the copies a restore builds beside the target.
RESTORE_TAG = "cozybackup-restore"
_REGULAR = "a regular file"
_STALE_AFTER = 60.0  # seconds a restore's copy must be idle before a later restore removes it


@contextlib.contextmanager
def checked(path: Path) -> Iterator[LocalFile]:
    """The declared database file, opened without following links (see the module doc)."""
    db = open_local(path, what=WHAT)
    assert db is not None
    with db:
        check_sidecars(db.dir, path.name)
        yield db


def check_sidecars(folder: LocalDir, name: str) -> None:
    """SQLite opens ``-wal``/``-shm``/``-journal`` itself (with ``O_NOFOLLOW``); a FIFO or
    a device there would block it, so each must be a regular file if it exists."""
    for suffix in SIDECARS:
        folder.check_entry(name + suffix, what=f"database's {suffix[1:]} file", expected=_REGULAR)


def same_file(conn: sqlite3.Connection, db: LocalFile) -> None:
    """SQLite opens the database by name, following links: check, before it reads or
    writes anything, that it found the very file :func:`open_local` checked."""
    row = conn.execute("PRAGMA database_list").fetchone()
    opened = str(row[2]) if row else ""
    # SQLite resolves links in the name itself: a link found by it shows here.
    if opened != db.path or not db.is_at_name():
        raise UnsafeLocalPath(
            f"the application's {WHAT} changed while it was opened (it was replaced, maybe "
            "by a symbolic link); nothing was read or changed. Run the job again once it "
            "stays in place",
            admin_detail=f"{db.path}: SQLite opened {opened!r}; the name "
            f"{'still' if db.is_at_name() else 'no longer'} refers to the checked file",
        )


def sweep(folder: LocalDir, name: str) -> None:
    """Remove the copies a killed restore left beside the target (ours, and idle for a
    minute: a restore running now writes its copy continuously)."""
    prefix = f".{name[:160]}"
    idle = time.time() - _STALE_AFTER
    for entry in folder.names():
        if entry.startswith(prefix) and f".{RESTORE_TAG}-" in entry:
            st = folder.lstat(entry)
            if (
                st is not None
                and stat.S_ISREG(st.st_mode)
                and st.st_uid == os.geteuid()
                and st.st_mtime < idle
            ):
                folder.unlink(entry)


@contextlib.contextmanager
def file_errors(loc: AppLocation) -> Iterator[None]:
    """A restore's file operations: an OS error becomes a message naming no path."""
    try:
        yield
    except OSError as exc:
        raise DriverError(
            "the restored database could not be written beside the target; "
            "ask the platform operator",
            admin_detail=f"{loc.ref}: {exc!r}",
        ) from None
