"""Restore: the dump replayed into a new file, which then replaces the target atomically.

The new database is built in a private directory (``_replay``), copied into an
owner-only temp file created beside the target (same directory, so the final ``rename``
is atomic) and renamed over the target.  On any failure before that the new files are
removed and the target's data is exactly as it was.  (Just before the swap, a WAL-mode
target is checkpointed and taken out of WAL mode: that folds in its ``-wal`` and proves
that no other process still has it open.)  SQLite never writes by name in the
application's directory: the new file is only copied in through a descriptor and
renamed into place.  The restore needs free space for the database twice: in the temp
dir and beside the target.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from cozybackup_core import (
    Deadline,
    DeadlineExceeded,
    DriverError,
    LocalDir,
    LocalFile,
    RestoreContext,
    iter_chunks,
)

from . import _connection  # connect() through the module: see there
from ._connection import db_path, interrupted, locked
from ._files import RESTORE_TAG, SIDECARS, WHAT, check_sidecars, file_errors, same_file, sweep
from ._params import SQLiteParameters
from ._replay import replay_into

_RELEASE_WAIT = 30.0  # seconds a restore waits for other users of the old file to leave


def restore(ctx: RestoreContext[SQLiteParameters]) -> None:
    params = ctx.parameters
    target = db_path(ctx.target)  # the declared name: never a link's target
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(LocalDir.open(target.parent, what=WHAT, holds=True))
        old = folder.open_file(target.name, what=WHAT, missing_ok=True)
        if old is not None:
            stack.enter_context(old)
        check_sidecars(folder, target.name)
        with file_errors(ctx.target):
            sweep(folder, target.name)
            work = Path(tempfile.mkdtemp(prefix="cozybackup-sqlite-"))  # 0700, ours
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        built = replay_into(work, ctx, params)
        ctx.progress.stage("replacing the database")
        with file_errors(ctx.target):
            new = stack.enter_context(folder.create(target.name, tag=RESTORE_TAG))
        try:
            with file_errors(ctx.target):
                _copy_into(built, new, ctx.deadline)
                built.unlink()
                new.adopt(old.stat() if old is not None else None)
                new.fsync()
            if old is not None:
                _release(target, old, ctx)
            with file_errors(ctx.target):
                # Sidecars of the OLD file must not outlive it: SQLite would replay a
                # stale ``-wal`` (or roll back a stale ``-journal``) into the new file
                # and corrupt it.  _release() has checkpointed and closed the old file
                # and proved nobody else had it open; what is left here is debris.
                for suffix in SIDECARS:
                    folder.unlink(target.name + suffix)
                # renameat: whatever is at the name now is replaced, never followed.
                folder.replace(new.name, target.name)
        except BaseException:
            folder.unlink(new.name)
            raise
        with file_errors(ctx.target):
            folder.fsync()  # make the rename itself durable
    ctx.log.info("restored the database %s", "in place" if ctx.in_place else "into a copy")


def _copy_into(built: Path, new: LocalFile, deadline: Deadline) -> None:
    """Copy the built database into ``new`` through its descriptor (never by name)."""
    with built.open("rb") as src:
        for chunk in iter_chunks(src):
            view = memoryview(chunk)
            while view:
                view = view[os.write(new.fd, view) :]
            deadline.check()


def _release(target: Path, old: LocalFile, ctx: RestoreContext) -> None:
    """Make sure nobody uses the old file, and fold its WAL back in before the swap.

    SQLite cannot swap a file under open connections: they would keep the old inode,
    and in WAL mode share ``-wal``/``-shm`` with the new file.  Leaving WAL mode needs
    the database to ourselves, so it doubles as the check; in rollback-journal mode an
    exclusive lock waits out any transaction in flight.  Stop the application first.
    """
    deadline = ctx.deadline
    try:
        conn = _connection.connect(
            target, deadline, timeout=min(_RELEASE_WAIT, deadline.remaining())
        )
    except sqlite3.Error:
        return  # cannot even be opened: nothing in it to protect
    try:
        same_file(conn, old)  # before anything is written to what SQLite opened
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        if str(mode).lower() == "wal":
            (now,) = conn.execute("PRAGMA journal_mode=DELETE").fetchone()
            if str(now).lower() == "wal":  # SQLite kept WAL: someone else has it open
                raise sqlite3.OperationalError("database is locked")
        else:
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        if locked(exc):
            raise DriverError(
                "the database is still open in another process; stop the application, "
                "then run the restore again",
                admin_detail=f"{ctx.target.ref}: {exc}",
            ) from None
        if interrupted(exc) or deadline.expired:
            raise DeadlineExceeded(
                "the job ran past its deadline while replacing the database and was stopped",
            ) from None
        # Not a database, or a damaged one: nothing to fold back in; it is replaced as is.
    finally:
        conn.close()
