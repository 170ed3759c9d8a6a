"""The SQLite driver: a consistent SQL dump out, an atomic file swap in.

Connection keys of an application (declared by the platform admin; a tenant never
sees them)::

    path: /abs/path/to/db.sqlite

Backup
    One read transaction on the live database.  ``Connection.iterdump()`` streams the
    schema and every row as SQL text into the single artifact stream ``dump.sql``,
    framed by a header line, the database's persistent settings (page size, encoding,
    ``user_version``, ...) and a trailer line, so that a dump cut short is recognised.
    The file is plain SQL: ``sqlite3 new.db < dump.sql`` replays it by hand.

Restore
    The dump is replayed into a new file in a private (0700) directory of the worker's
    temp dir and checked with ``PRAGMA integrity_check``.  It is then copied into an
    owner-only temp file created beside the target (same directory, so the final
    ``rename`` is atomic) and renamed over the target.  On any failure before that the
    new files are removed and the target's data is exactly as it was.  (Just before the
    swap, a WAL-mode target is checkpointed and taken out of WAL mode: that folds in its
    ``-wal`` and proves that no other process still has it open.)  The restore needs
    free space for the database twice: in the temp dir and beside the target.

Hostile files
    The database's directory belongs to the application (SQLite writes its journals
    there), so a tenant decides what sits at the declared name; the worker is usually
    more privileged.  So the declared path is never followed: the directory is reached
    without links and held open, the file is opened with ``O_NOFOLLOW`` and must be a
    regular file with one link (``cozybackup_core.open_local``); a symlink, FIFO,
    socket, device or directory there is refused before it is opened.  SQLite itself
    opens files by name, so after it has opened the database, and before it reads or
    writes anything, the driver checks that SQLite found no link (``PRAGMA
    database_list``) and that the name is still the file it checked.  SQLite never
    writes by name in the application's directory: the new database is built in the
    private directory, and only copied in through a descriptor and renamed into place.

Known limits (those of SQL dumps, shared with the ``sqlite3`` shell's ``.dump``): the
implicit ``rowid`` of tables without an ``INTEGER PRIMARY KEY`` is renumbered; text
that is not valid UTF-8 cannot be dumped; one row is held in memory at a time, so a
single huge BLOB costs about three times its size in RAM while it passes.
"""

from __future__ import annotations

import codecs
import contextlib
import math
import os
import shutil
import sqlite3
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import IO, Any, ClassVar

import attrs
from cozybackup_core import (
    AppLocation,
    BackupContext,
    Capabilities,
    Deadline,
    DeadlineExceeded,
    Driver,
    DriverError,
    GroupKind,
    LocalDir,
    LocalFile,
    RestoreContext,
    UnsafeLocalPath,
    ValidationError,
    iter_chunks,
    open_local,
)

try:
    __version__ = _dist_version("cozybackup-sqlite")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

#: The application kind this driver serves.
SQLITE_KIND = GroupKind(api_group="apps.example.com", kind="SQLiteDatabase")
#: The one artifact stream a backup writes.
DUMP_STREAM = "dump.sql"
DUMP_FORMAT = 1
_HEADER = f"-- cozybackup-sqlite dump format {DUMP_FORMAT}"
_TRAILER = "-- cozybackup-sqlite dump complete"

_FLUSH_CHARS = 1 << 20  # the dump is written to the artifact in ~1 MiB pieces
_VM_STEPS = 10_000  # SQLite VM steps between deadline checks inside one statement
_RELEASE_WAIT = 30.0  # seconds a restore waits for other users of the old file to leave
_SIDECARS = ("-wal", "-shm", "-journal")
_WHAT = "database file"  # in messages: "the application's database file is a symbolic link"
_REGULAR = "a regular file"
_RESTORE_TAG = "cozybackup-restore"
_STALE_AFTER = 60.0  # seconds a restore's copy must be idle before a later restore removes it
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@attrs.frozen(kw_only=True)
class SQLiteParameters:
    """``parameters`` of a ``SQLite`` strategy binding (camelCase in a BackupClass).

    ``integrityCheck``: run ``PRAGMA integrity_check`` on the restored file before it
    replaces the target.  ``batchStatements``: while replaying a dump, commit every this
    many statements and check the deadline in between (larger is a little faster).
    """

    integrity_check: bool = True
    batch_statements: int = 1000


class SQLiteDriver(Driver[SQLiteParameters]):
    """Backs up and restores SQLite database files (``apps.example.com/SQLiteDatabase``)."""

    name: ClassVar[str] = "sqlite"
    strategy_kind: ClassVar[str] = "SQLite"
    kinds: ClassVar[tuple[GroupKind, ...]] = (SQLITE_KIND,)
    parameters_type: ClassVar[type[Any]] = SQLiteParameters
    capabilities: ClassVar[Capabilities] = Capabilities(local_paths=True)
    version: ClassVar[str] = __version__

    def validate_parameters(self, parameters: Any) -> None:
        assert isinstance(parameters, SQLiteParameters)
        if parameters.batch_statements <= 0:
            # Name the field relative to the parameters; the core prefixes the class's path.
            raise ValidationError(
                [("batchStatements", f"must be greater than 0, got {parameters.batch_statements}")]
            )

    # ------------------------------------------------------------------ backup

    def backup(self, ctx: BackupContext[SQLiteParameters]) -> None:
        path = _db_path(ctx.application)
        deadline = ctx.deadline
        ctx.progress.stage("opening the database")
        with (
            _checked(path) as db,
            _translate("reading the database", ctx.application, deadline),
        ):
            conn = _connect(path, deadline, timeout=deadline.remaining())
            quote = _Quote()
            try:
                _same_file(conn, db)  # before SQLite has read a byte of it
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
                # the job's deadline (the busy timeout set by _connect).
                conn.execute("BEGIN DEFERRED")
                info = _snapshot(conn)
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
        ctx.tool_versions["sqlite"] = sqlite3.sqlite_version
        ctx.log.info("dumped %d tables, %d rows", info["tables"], rows)

    # ------------------------------------------------------------------ restore

    def restore(self, ctx: RestoreContext[SQLiteParameters]) -> None:
        params = ctx.parameters
        assert isinstance(params, SQLiteParameters)
        target = _db_path(ctx.target)  # the declared name: never the file a link points to
        with contextlib.ExitStack() as stack:
            folder = stack.enter_context(LocalDir.open(target.parent, what=_WHAT, holds=True))
            old = folder.open_file(target.name, what=_WHAT, missing_ok=True)
            if old is not None:
                stack.enter_context(old)
            _check_sidecars(folder, target.name)
            with _file_errors(ctx.target):
                _sweep(folder, target.name)
                work = Path(tempfile.mkdtemp(prefix="cozybackup-sqlite-"))  # 0700, ours
            stack.callback(shutil.rmtree, work, ignore_errors=True)
            built = _replay_into(work, ctx, params)
            ctx.progress.stage("replacing the database")
            with _file_errors(ctx.target):
                new = stack.enter_context(folder.create(target.name, tag=_RESTORE_TAG))
            try:
                with _file_errors(ctx.target):
                    _copy_into(built, new, ctx.deadline)
                    built.unlink()
                    new.adopt(old.stat() if old is not None else None)
                    new.fsync()
                if old is not None:
                    _release(target, old, ctx)
                with _file_errors(ctx.target):
                    # Sidecars of the OLD file must not outlive it: SQLite would replay a
                    # stale ``-wal`` (or roll back a stale ``-journal``) into the new file
                    # and corrupt it.  _release() has checkpointed and closed the old file
                    # and proved nobody else had it open; what is left here is debris.
                    for suffix in _SIDECARS:
                        folder.unlink(target.name + suffix)
                    # renameat: whatever is at the name now is replaced, never followed.
                    folder.replace(new.name, target.name)
            except BaseException:
                folder.unlink(new.name)
                raise
            with _file_errors(ctx.target):
                folder.fsync()  # make the rename itself durable
        ctx.log.info("restored the database %s", "in place" if ctx.in_place else "into a copy")

    # ------------------------------------------------------------------ restore drills

    @contextlib.contextmanager
    def scratch_target(self, workdir: Path, like: AppLocation) -> Iterator[AppLocation]:
        """A throwaway database file under the drill's temp dir (removed with it)."""
        yield AppLocation(
            ref=like.ref,
            namespace=like.namespace,
            connection={"path": str(workdir / "drill.sqlite")},
        )

    def smoke_check(self, target: AppLocation, driver_metadata: Mapping[str, Any]) -> str:
        """The restored file opens, passes ``integrity_check`` and has what the dump had."""
        conn = sqlite3.connect(_db_path(target))
        try:
            _check_integrity(conn)
            query = (
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
            tables = conn.execute(query).fetchone()[0]
        finally:
            conn.close()
        expected = driver_metadata.get("tables")
        if isinstance(expected, int) and tables != expected:
            raise DriverError(
                f"the restored database has {tables} tables; the backup had {expected}"
            )
        return f"integrity check passed, {tables} tables"


def _db_path(loc: AppLocation) -> Path:
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


def _connect(
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


def _errorname(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", None)  # Python >= 3.11
    return name if isinstance(name, str) else type(exc).__name__


def _is(exc: sqlite3.Error, code: str, *phrases: str) -> bool:
    name = _errorname(exc)
    return name == code or name.startswith(code + "_") or any(p in str(exc) for p in phrases)


@contextlib.contextmanager
def _translate(doing: str, loc: AppLocation, deadline: Deadline) -> Iterator[None]:
    """sqlite3 errors -> tenant-safe errors; SQLite's own text goes to ``admin_detail``."""
    try:
        yield
    except sqlite3.Error as exc:
        detail = f"{loc.ref}: {_errorname(exc)}: {exc}"
        if _is(exc, "SQLITE_BUSY", "database is locked") or _is(exc, "SQLITE_LOCKED"):
            # The busy timeout is the time left before the deadline (see _connect).
            raise DriverError(
                "the database stayed locked by another process until the job's deadline",
                admin_detail=detail,
            ) from None
        if _is(exc, "SQLITE_INTERRUPT", "interrupted") or deadline.expired:
            raise DeadlineExceeded(
                f"the job ran past its deadline while {doing} and was stopped",
                admin_detail=detail,
            ) from None
        if _is(exc, "SQLITE_NOTADB", "file is not a database"):
            raise DriverError(
                "the application's data file is not a SQLite database",
                admin_detail=detail,
            ) from None
        if _is(exc, "SQLITE_CORRUPT", "malformed"):
            raise DriverError(
                "the database file is damaged: SQLite reports it as corrupt",
                admin_detail=detail,
            ) from None
        raise DriverError(
            f"SQLite failed while {doing} ({_errorname(exc)})",
            admin_detail=detail,
        ) from None


@contextlib.contextmanager
def _file_errors(loc: AppLocation) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise DriverError(
            "the restored database could not be written beside the target; "
            "ask the platform operator",
            admin_detail=f"{loc.ref}: {exc!r}",
        ) from None


# ---------------------------------------------------------------------- dump


class _Quote:
    """SQLite's ``quote()`` minus its two flaws, registered over the built-in one.

    The built-in writes +/-Infinity as ``Inf`` (not valid SQL: such a dump could never
    be restored) and silently cuts text at its first NUL character.  NUL and CR are
    written as ``char(0)``/``char(13)``, so the dump also replays exactly through the
    ``sqlite3`` shell (which reads CR LF as LF).  Finite floats
    still go through the built-in, on a private in-memory connection: SQLite's own
    text-to-double parser is not correctly rounded, and only the built-in picks digits
    that SQLite reads back as the very same double (Python's ``repr`` does not, for
    about one value in 30 000).
    """

    def __init__(self) -> None:
        self._plain = sqlite3.connect(":memory:")

    def __call__(self, value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            if math.isinf(value):  # the literal the sqlite3 shell uses; reads back as Inf
                return "9.0e+999" if value > 0 else "-9.0e+999"
            if value == 0.0:  # the built-in drops the sign of -0.0
                return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
            text: str = self._plain.execute("SELECT quote(?)", (value,)).fetchone()[0]
            return text
        if isinstance(value, str):
            text = "'" + value.replace("'", "''") + "'"
            if "\x00" in text:
                text = text.replace("\x00", "'||char(0)||'")
            if "\r" in text:  # the sqlite3 shell would read a raw "\r\n" back as "\n"
                text = text.replace("\r", "'||char(13)||'")
            return text
        if isinstance(value, bytes):
            return "X'" + value.hex() + "'"
        raise TypeError(f"unexpected SQLite value of type {type(value).__name__}")

    def close(self) -> None:
        self._plain.close()


def _snapshot(conn: sqlite3.Connection) -> dict[str, Any]:
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


def _dump_lines(conn: sqlite3.Connection, info: dict[str, Any]) -> Iterator[str]:
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


def _write_dump(conn: sqlite3.Connection, info: dict[str, Any], ctx: BackupContext) -> int:
    """Stream the dump into the artifact; memory stays at about one flush buffer."""
    rows = 0
    buf: list[str] = []
    size = 0
    with ctx.artifact.open(DUMP_STREAM) as out:
        for item in _dump_lines(conn, info):
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


# ---------------------------------------------------------------------- restore


def _lines(stream: IO[bytes]) -> Iterator[str]:
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


def _statements(lines: Iterable[str]) -> Iterator[str]:
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
            for statement in _statements(_lines(stream)):
                if since_commit >= params.batch_statements:
                    since_commit = 0
                    ctx.deadline.check()
                    if conn.in_transaction:  # split the dump's one transaction
                        conn.execute("COMMIT")
                        conn.execute("BEGIN")
                try:
                    conn.execute(statement)
                except sqlite3.Error as exc:
                    if _is(exc, "SQLITE_INTERRUPT", "interrupted") or ctx.deadline.expired:
                        raise
                    raise DriverError(
                        f"the backup could not be replayed: SQLite rejected statement "
                        f"{done + 1} of the dump ({_errorname(exc)})",
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


def _check_integrity(conn: sqlite3.Connection) -> None:
    problems = [row[0] for row in conn.execute("PRAGMA integrity_check(20)")]
    if problems != ["ok"]:
        raise DriverError(
            "the restored database failed SQLite's integrity check; the target was left unchanged",
            admin_detail="; ".join(str(p) for p in problems),
        )


# ---------------------------------------------------------------------- files


@contextlib.contextmanager
def _checked(path: Path) -> Iterator[LocalFile]:
    """The declared database file, opened without following links (see the module doc)."""
    db = open_local(path, what=_WHAT)
    assert db is not None
    with db:
        _check_sidecars(db.dir, path.name)
        yield db


def _check_sidecars(folder: LocalDir, name: str) -> None:
    """SQLite opens ``-wal``/``-shm``/``-journal`` itself (with ``O_NOFOLLOW``); a FIFO or
    a device there would block it, so each must be a regular file if it exists."""
    for suffix in _SIDECARS:
        folder.check_entry(name + suffix, what=f"database's {suffix[1:]} file", expected=_REGULAR)


def _same_file(conn: sqlite3.Connection, db: LocalFile) -> None:
    """SQLite opens the database by name, following links: check, before it reads or
    writes anything, that it found the very file :func:`open_local` checked."""
    row = conn.execute("PRAGMA database_list").fetchone()
    opened = str(row[2]) if row else ""
    # SQLite resolves links in the name itself: a link found by it shows here.
    if opened != db.path or not db.is_at_name():
        raise UnsafeLocalPath(
            f"the application's {_WHAT} changed while it was opened (it was replaced, maybe "
            "by a symbolic link); nothing was read or changed. Run the job again once it "
            "stays in place",
            admin_detail=f"{db.path}: SQLite opened {opened!r}; the name "
            f"{'still' if db.is_at_name() else 'no longer'} refers to the checked file",
        )


def _sweep(folder: LocalDir, name: str) -> None:
    """Remove the copies a killed restore left beside the target (ours, and idle for a
    minute: a restore running now writes its copy continuously)."""
    prefix = f".{name[:160]}"
    idle = time.time() - _STALE_AFTER
    for entry in folder.names():
        if entry.startswith(prefix) and f".{_RESTORE_TAG}-" in entry:
            st = folder.lstat(entry)
            if (
                st is not None
                and stat.S_ISREG(st.st_mode)
                and st.st_uid == os.geteuid()
                and st.st_mtime < idle
            ):
                folder.unlink(entry)


def _replay_into(work: Path, ctx: RestoreContext, params: SQLiteParameters) -> Path:
    """Replay the dump into a new database in ``work`` (private to this process)."""
    built = work / "replay.sqlite"
    with _file_errors(ctx.target):
        # Owner-only from the start: SQLite gives its -wal/-shm the same mode.
        os.close(os.open(built, os.O_RDWR | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600))
    with _translate("restoring the database", ctx.target, ctx.deadline):
        # No statement cache: every statement of a dump is different, and the
        # cache would keep the last 128 of them, BLOB literals and all, in memory.
        conn = _connect(built, ctx.deadline, timeout=0.0, cached_statements=0)
        try:
            _replay(conn, ctx, params)
            if params.integrity_check:
                ctx.progress.stage("checking the restored database")
                _check_integrity(conn)
            (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
            if mode == "off":  # the dump did not ask for WAL: the default mode
                conn.execute("PRAGMA journal_mode=DELETE")
        finally:
            conn.close()
    return built


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
        conn = _connect(target, deadline, timeout=min(_RELEASE_WAIT, deadline.remaining()))
    except sqlite3.Error:
        return  # cannot even be opened: nothing in it to protect
    try:
        _same_file(conn, old)  # before anything is written to what SQLite opened
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        if str(mode).lower() == "wal":
            (now,) = conn.execute("PRAGMA journal_mode=DELETE").fetchone()
            if str(now).lower() == "wal":  # SQLite kept WAL: someone else has it open
                raise sqlite3.OperationalError("database is locked")
        else:
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        if _is(exc, "SQLITE_BUSY", "database is locked") or _is(exc, "SQLITE_LOCKED"):
            raise DriverError(
                "the database is still open in another process; stop the application, "
                "then run the restore again",
                admin_detail=f"{ctx.target.ref}: {exc}",
            ) from None
        if _is(exc, "SQLITE_INTERRUPT", "interrupted") or deadline.expired:
            raise DeadlineExceeded(
                "the job ran past its deadline while replacing the database and was stopped",
            ) from None
        # Not a database, or a damaged one: nothing to fold back in; it is replaced as is.
    finally:
        conn.close()
