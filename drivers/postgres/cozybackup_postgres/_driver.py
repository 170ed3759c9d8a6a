"""The PostgreSQL driver: ``pg_dump`` streamed out, ``pg_restore`` streamed back in.

Connection keys of an application (declared by the platform admin; a tenant never sees
them) and its credentials::

    connection:  {host: 10.0.0.5, port: 5432, sslmode: require, database: postgres}
    credentials: {username: postgres, password: ...}

Backup (one artifact, several streams, no temp file anywhere)
    ``db-<name>.dump``  one ``pg_dump -Fc --compress=0`` per database (every non-template
                        database that accepts connections, or the ``databases``
                        parameter), piped straight into the artifact stream, which the
                        core compresses with multi-threaded zstd.
    ``globals.sql``     ``pg_dumpall --globals-only``: roles, memberships, tablespaces.
                        Taken *after* the databases, so a role created while they were
                        dumped (and owning something in them) is in it.
    ``index.json``      written last: which stream holds which database (database
                        names may hold any character; stream names may not).

Restore (in place, or into another application of the same kind)
    1. ``globals.sql`` is replayed with psql; "already exists" errors for roles and
       tablespaces are expected and ignored, any other error fails the restore before a
       database is touched.  The statements that would change the role the platform
       connects as are left out, so a restore never locks the platform out.
    2. Each database is replaced: the existing one is closed to new connections, its
       sessions are terminated and it is renamed aside (``cozybackup_old_<random>``);
       ``pg_restore --create --exit-on-error`` recreates it from the stream on its stdin;
       ``ANALYZE`` refreshes planner statistics.  Up to ``jobs`` databases at a time.
    3. Only when every database is restored are the old copies dropped.  If any fails,
       the partly restored databases are dropped and the old ones renamed back: the
       target is left as it was (except for roles the backup added), and the job's
       message names the database that failed and PostgreSQL's error.

Why not ``pg_restore -j``: it needs a seekable archive file, and writing a file would
double the disk traffic and need scratch space as large as the biggest database.
Parallelism here is across databases instead; see the README for measurements.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar, cast

import attrs

from cozybackup_core import (
    APPS_GROUP,
    AppLocation,
    BackupContext,
    CozyError,
    Deadline,
    Driver,
    DriverError,
    GroupKind,
    Locator,
    RestoreContext,
    StreamSource,
    ValidationError,
)

from ._pg import (
    Server,
    check_name,
    conninfo_dbname,
    find_tools,
    first_error,
    ident,
    literal,
    tool_version,
)
from ._server import PostgresServer

try:
    __version__ = _dist_version("cozybackup-postgres")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

POSTGRES_KIND = GroupKind(api_group=APPS_GROUP, kind="Postgres")
FORMAT = 1
INDEX_STREAM = "index.json"
GLOBALS_STREAM = "globals.sql"
MAX_JOBS = 16
#: Where restores connect to create, rename and drop databases (never one being replaced).
ADMIN_DB = "template1"
ASIDE_PREFIX = "cozybackup_old_"
#: Time allowed for putting databases back (or dropping old copies) after the work ended.
CLEANUP_SECONDS = 300.0

_STREAM_SAFE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")

# ---------------------------------------------------------------------- parameters

#: Options of pg_dump a BackupClass may add, with no value.
FLAG_OPTIONS = frozenset(
    {
        "--no-owner",
        "--no-privileges",
        "--no-acl",
        "--no-comments",
        "--no-publications",
        "--no-subscriptions",
        "--no-security-labels",
        "--no-tablespaces",
        "--no-table-access-method",
        "--no-toast-compression",
        "--no-unlogged-table-data",
        "--no-blobs",
        "--load-via-partition-root",
        "--quote-all-identifiers",
        "--serializable-deferrable",
    }
)
#: Options of pg_dump a BackupClass may add as ``--option=VALUE``.
VALUE_OPTIONS = frozenset(
    {
        "--exclude-table",
        "--exclude-table-data",
        "--exclude-schema",
        "--lock-wait-timeout",
    }
)
#: The allowed options that also steer pg_restore (custom-format archives keep owners and
#: privileges; these must be repeated when restoring).
RESTORE_OPTIONS = frozenset(
    {
        "--no-owner",
        "--no-privileges",
        "--no-acl",
        "--no-comments",
        "--no-publications",
        "--no-subscriptions",
        "--no-security-labels",
        "--no-tablespaces",
        "--no-table-access-method",
    }
)
_LOCK_TIMEOUT = re.compile(r"^[0-9]+(ms|s|min|h|d)?$")


@attrs.frozen(kw_only=True)
class PostgresParameters:
    """``parameters`` of a ``Postgres`` strategy binding (camelCase in a BackupClass).

    ``databases``: back up only these (default: every non-template database).
    ``jobs``: databases dumped or restored at the same time (1-16).
    ``extraDumpOptions``: extra ``pg_dump`` options from an allow-list.
    ``timeoutSeconds``: stop a backup or restore that runs longer than this.
    ``analyze``: run ``ANALYZE`` on each restored database (planner statistics are not
    part of a dump).
    """

    databases: tuple[str, ...] = ()
    jobs: int = 1
    extra_dump_options: tuple[str, ...] = ()
    timeout_seconds: int | None = None
    analyze: bool = True


def option_problem(option: str) -> str | None:
    """Why ``option`` may not be passed to pg_dump, or None."""
    name, eq, value = option.partition("=")
    if name in FLAG_OPTIONS:
        return None if not eq else f"{name} takes no value"
    if name in VALUE_OPTIONS:
        if not eq or not value:
            return f"write it as one item, {name}=VALUE"
        if any(c in value for c in "\x00\n\r"):
            return "the value must be on one line"
        if name == "--lock-wait-timeout" and not _LOCK_TIMEOUT.match(value):
            return "the value must be a duration such as 30s or 5000 (milliseconds)"
        return None
    allowed = ", ".join(sorted(FLAG_OPTIONS) + [f"{o}=..." for o in sorted(VALUE_OPTIONS)])
    return f"{option[:60]!r} is not an allowed pg_dump option (allowed: {allowed})"


def parameter_problems(p: PostgresParameters) -> list[tuple[str, str]]:
    """Every problem of ``p`` as (field, message), the field in the class's camelCase."""
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, name in enumerate(p.databases):
        why = check_name(name)
        if why:
            problems.append((f"databases[{i}]", why))
        elif name in seen:
            problems.append((f"databases[{i}]", f"{name!r} is listed twice"))
        seen.add(name)
    if not 1 <= p.jobs <= MAX_JOBS:
        problems.append(("jobs", f"must be between 1 and {MAX_JOBS}"))
    for i, opt in enumerate(p.extra_dump_options):
        why = option_problem(opt)
        if why:
            problems.append((f"extraDumpOptions[{i}]", why))
    if p.timeout_seconds is not None and p.timeout_seconds < 1:
        problems.append(("timeoutSeconds", "must be at least 1"))
    return problems


# ---------------------------------------------------------------------- streams


def stream_names(databases: Sequence[str]) -> dict[str, str]:
    """A distinct artifact stream name for every database name.

    Names that are already safe keep their spelling (``db-shop.dump``); others get a
    readable slug plus a digest of the exact name (``db-my-shop-3f2a9c1d.dump``).
    """
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in databases:
        if _STREAM_SAFE.match(name):
            stream = f"db-{name}.dump"
        else:
            slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:40] or "db"
            digest = hashlib.sha256(name.encode()).hexdigest()[:8]
            stream = f"db-{slug}-{digest}.dump"
        n = 1
        base = stream
        while stream in used:  # practically never: only a crafted collision
            n += 1
            stream = base.replace(".dump", f"-{n}.dump")
        used.add(stream)
        out[name] = stream
    return out


def quoted(name: str) -> str:
    """A database name as shown in messages: double-quoted like PostgreSQL does."""
    return '"' + name.replace("\n", " ") + '"'


class _Cancelled(Exception):
    """Another database failed: stop this one too."""


class _CountingWriter(io.RawIOBase):
    def __init__(self, target: IO[bytes], cancel: threading.Event) -> None:
        self.target = target
        self.cancel = cancel
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if self.cancel.is_set():
            raise _Cancelled
        n = self.target.write(b)
        self.count += len(b)
        return n if n is not None else len(b)


class _CancellableReader(io.RawIOBase):
    def __init__(self, source: IO[bytes], cancel: threading.Event) -> None:
        self.source = source
        self.cancel = cancel

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.cancel.is_set():
            raise _Cancelled
        return self.source.read(size)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


T = TypeVar("T")
R = TypeVar("R")


def run_parallel(items: Sequence[T], jobs: int, fn: Callable[[T, threading.Event], R]) -> list[R]:
    """``fn`` over ``items``, ``jobs`` at a time; the first failure cancels the rest.

    Raises the first real failure (not a cancellation) after every started call ended.
    """
    cancel = threading.Event()
    failures: list[BaseException] = []
    lock = threading.Lock()

    def call(item: T) -> R | None:
        if cancel.is_set():
            return None
        try:
            return fn(item, cancel)
        except _Cancelled:
            return None
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller
            with lock:
                failures.append(exc)
            cancel.set()
            return None

    if jobs <= 1 or len(items) <= 1:
        results = [call(i) for i in items]
    else:
        with ThreadPoolExecutor(min(jobs, len(items)), thread_name_prefix="cozy-pg") as pool:
            results = list(pool.map(call, items))
    if failures:
        raise failures[0]
    return [r for r in results if r is not None]


def _amend(exc: CozyError, addition: str) -> None:
    """Append to a tenant-safe message (the engine reports ``exc.message``)."""
    exc.message = f"{exc.message}; {addition}"
    exc.args = (exc.message,)


# ---------------------------------------------------------------------- the driver


@attrs.frozen
class _Restored:
    name: str
    aside: str | None  # the previous database, renamed aside, or None if there was none
    allowed_connections: bool


class PostgresDriver(Driver):
    """Logical backups of PostgreSQL servers (``apps.cozystack.io/Postgres``)."""

    name: ClassVar[str] = "postgres"
    strategy_kind: ClassVar[str] = "Postgres"
    kinds: ClassVar[tuple[GroupKind, ...]] = (POSTGRES_KIND,)
    default_kinds: ClassVar[tuple[str, ...]] = ("Postgres",)
    # Cozystack's Helm release postgres-X: CloudNativePG Cluster postgres-X, service
    # postgres-X-rw, superuser Secret postgres-X-superuser.
    locators: ClassVar[Mapping[str, Locator]] = {
        "Postgres": Locator(
            connection={
                "host": "postgres-{name}-rw.{namespace}.svc",
                "port": 5432,
                "sslmode": "require",
            },
            credentials_from="postgres-{name}-superuser",
            keys={"username": "username", "password": "password"},
        )
    }
    parameters_type: ClassVar[type[Any]] = PostgresParameters
    version: ClassVar[str] = __version__

    def validate_parameters(self, parameters: Any) -> None:
        assert isinstance(parameters, PostgresParameters)
        problems = parameter_problems(parameters)
        if problems:
            # (field, message): the core prefixes the class's path to each field.
            raise ValidationError(problems)

    # ------------------------------------------------------------------ backup

    def backup(self, ctx: BackupContext) -> None:
        params = ctx.parameters
        assert isinstance(params, PostgresParameters)
        deadline = ctx.deadline.tighter(params.timeout_seconds)
        tools = find_tools()
        server = Server.from_location(ctx.application, tools)
        ctx.progress.stage("connecting to the database server")
        info = server.query_json(
            """SELECT json_build_object(
                 'version', current_setting('server_version'),
                 'databases', (SELECT coalesce(json_agg(datname ORDER BY datname), '[]')
                               FROM pg_database WHERE NOT datistemplate AND datallowconn))""",
            deadline=deadline,
            doing="connecting to the database server",
        )
        available: list[str] = list(info["databases"])
        names = self._select(available, params.databases)
        ctx.tool_versions.update(
            {
                "pg_dump": tool_version(tools["pg_dump"], deadline),
                "pg_dumpall": tool_version(tools["pg_dumpall"], deadline),
                "server": str(info["version"]),
            }
        )
        streams = stream_names(names)
        extra = list(params.extra_dump_options)
        total = len(names)
        counter = iter(range(1, total + 1))
        counter_lock = threading.Lock()

        def dump(name: str, cancel: threading.Event) -> dict[str, Any]:
            with counter_lock:
                n = next(counter)
            if params.jobs > 1 and total > 1:
                ctx.progress.stage(f"dumping databases ({n} of {total} started)")
            else:
                ctx.progress.stage(f"dumping database {quoted(name)} ({n} of {total})")
            with ctx.artifact.open(streams[name]) as out:
                sink = _CountingWriter(out, cancel)
                server.run(
                    "pg_dump",
                    ["-w", "--format=custom", "--compress=0", *extra, "-d", conninfo_dbname(name)],
                    deadline=deadline,
                    stdout=cast(IO[bytes], sink),
                    doing=f"dumping database {quoted(name)}",
                )
            ctx.log.info("dumped database %r: %d bytes", name, sink.count)
            return {"name": name, "stream": streams[name], "bytes": sink.count}

        entries = run_parallel(names, params.jobs, dump)
        deadline.check()

        ctx.progress.stage("dumping roles and other global objects")
        role_passwords = True
        doing = "dumping roles and other global objects"
        args = ["-w", "--globals-only", "-d", conninfo_dbname(server.database)]
        try:
            globals_sql = server.run("pg_dumpall", args, deadline=deadline, doing=doing)
        except DriverError as exc:
            detail = (exc.admin_detail or "").lower()
            if not ("permission denied" in detail and "pg_authid" in detail):
                raise
            # Not a superuser (a managed service): roles without their password hashes.
            role_passwords = False
            globals_sql = server.run(
                "pg_dumpall", [*args, "--no-role-passwords"], deadline=deadline, doing=doing
            )
        with ctx.artifact.open(GLOBALS_STREAM) as out:
            out.write(globals_sql)

        index = {
            "format": FORMAT,
            "server": {"version": info["version"]},
            "tools": dict(ctx.tool_versions),
            "globals": {"stream": GLOBALS_STREAM, "rolePasswords": role_passwords},
            "databases": entries,
            "extraDumpOptions": extra,
        }
        with ctx.artifact.open(INDEX_STREAM) as out:
            out.write(json.dumps(index, indent=1, sort_keys=True).encode())
        ctx.metadata.update(
            {
                "format": FORMAT,
                "serverVersion": str(info["version"]),
                "databases": names,
                "rolePasswords": role_passwords,
            }
        )

    @staticmethod
    def _select(available: list[str], wanted: Sequence[str]) -> list[str]:
        if not wanted:
            return available
        missing = [w for w in wanted if w not in available]
        if missing:
            raise DriverError(
                "the BackupClass names databases this application does not have: "
                + ", ".join(quoted(m) for m in missing)
                + " (it has: "
                + (", ".join(quoted(a) for a in available) or "none")
                + "); ask the platform operator to fix the class"
            )
        return list(wanted)

    # ------------------------------------------------------------------ drills

    @contextlib.contextmanager
    def scratch_target(self, workdir: Path, like: AppLocation) -> Iterator[AppLocation]:
        """A throwaway PostgreSQL server in ``workdir`` (the worker's own binaries, listening
        on 127.0.0.1 only), stopped and removed when the drill ends."""
        try:
            server = PostgresServer.start(parent=workdir)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "output", b"") or b""
            raise DriverError(
                "a scratch PostgreSQL server for the restore drill could not be started on "
                "the backup worker; ask the platform operator",
                admin_detail=f"{exc!r}: {detail.decode(errors='replace')[-2000:]}",
            ) from None
        try:
            yield AppLocation(
                ref=like.ref,
                namespace=like.namespace,
                connection=server.connection(),
                credentials=server.credentials(),
            )
        finally:
            server.destroy()

    def smoke_check(self, target: AppLocation, driver_metadata: Mapping[str, Any]) -> str:
        """Every database of the backup exists and answers; returns what was restored."""
        server = Server.from_location(target, find_tools())
        deadline = Deadline.after(CLEANUP_SECONDS)
        doing = "checking the restored databases"
        present = server.query_json(
            "SELECT coalesce(json_agg(datname), '[]') FROM pg_database WHERE NOT datistemplate",
            deadline=deadline,
            database=ADMIN_DB,
            doing=doing,
        )
        expected = [d for d in driver_metadata.get("databases") or [] if isinstance(d, str)]
        # (Names the core's redactor masked in the metadata cannot be looked for.)
        missing = [d for d in expected if d not in present and "[redacted]" not in d]
        if missing:
            raise DriverError(
                "the restore drill is missing databases: " + ", ".join(quoted(m) for m in missing)
            )
        tables = rows = 0
        for db in present:
            if expected and db not in expected:
                continue  # the scratch server's own "postgres" when the backup had none
            counts = server.query_json(
                """SELECT json_build_object('tables', count(*),
                     'rows', coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint)
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relkind IN ('r', 'p')
                     AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                     AND n.nspname NOT LIKE 'pg_toast%'""",
                deadline=deadline,
                database=db,
                doing=f"checking database {quoted(db)}",
            )
            tables += int(counts["tables"])
            rows += int(counts["rows"])
        n = len(expected) or len(present)
        return f"{n} databases with {tables} tables and about {rows} rows restored and readable"

    # ------------------------------------------------------------------ restore

    def restore(self, ctx: RestoreContext) -> None:
        params = ctx.parameters
        assert isinstance(params, PostgresParameters)
        deadline = ctx.deadline.tighter(params.timeout_seconds)
        index = read_index(ctx.artifact)
        tools = find_tools()
        server = Server.from_location(ctx.target, tools)
        ctx.progress.stage("connecting to the database server")
        info = server.query_json(
            """SELECT json_build_object(
                 'versionNum', current_setting('server_version_num')::int,
                 'existing', (SELECT coalesce(json_object_agg(datname, datallowconn), '{}')
                              FROM pg_database))""",
            deadline=deadline,
            database=ADMIN_DB,
            doing="connecting to the database server",
        )
        restore = _Restore(
            server=server,
            deadline=deadline,
            version_num=int(info["versionNum"]),
            existing={str(k): bool(v) for k, v in info["existing"].items()},
            restore_options=[o for o in params.extra_dump_options if o in RESTORE_OPTIONS],
            analyze=params.analyze,
            ctx=ctx,
        )
        ctx.progress.stage("restoring roles and other global objects")
        restore.apply_globals(index["globals"]["stream"])
        restore.databases(index["databases"], params.jobs)
        where = "in place" if ctx.in_place else "into the target application"
        ctx.log.info("restored %d databases %s", len(index["databases"]), where)


def read_index(source: StreamSource) -> dict[str, Any]:
    if INDEX_STREAM not in source.names():
        raise DriverError("the backup was not written by the PostgreSQL driver (it has no index)")
    with source.open(INDEX_STREAM) as f:
        raw = f.read()
    try:
        index: dict[str, Any] = json.loads(raw)
        fmt = index["format"]
        entries = index["databases"]
        ok = (
            isinstance(entries, list)
            and all(
                isinstance(e, dict)
                and isinstance(e.get("name"), str)
                and isinstance(e.get("stream"), str)
                for e in entries
            )
            and isinstance(index["globals"]["stream"], str)
        )
    except (ValueError, KeyError, TypeError):
        ok, fmt = False, None
    if not ok:
        raise DriverError("the backup's index of databases is unreadable")
    if fmt != FORMAT:
        raise DriverError(
            f"the backup uses format {fmt} of the PostgreSQL driver; this version reads "
            f"format {FORMAT}: ask the platform operator to update the driver"
        )
    names = source.names()
    missing = [e["stream"] for e in entries if e["stream"] not in names]
    if index["globals"]["stream"] not in names:
        missing.append(index["globals"]["stream"])
    if missing:
        raise DriverError("the backup is incomplete: the dump of a database is missing")
    return index


_ROLE_EXISTS = re.compile(r'ERROR:\s+(role|tablespace) ".*" already exists')


def filter_globals(sql: str, user: str) -> str:
    """``sql`` without the statements that would change role ``user`` (ourselves)."""
    spellings = {ident(user)}
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", user):
        spellings.add(user)
    drop = tuple(f"CREATE ROLE {s};" for s in spellings) + tuple(
        f"ALTER ROLE {s} WITH " for s in spellings
    )
    return "".join(line for line in sql.splitlines(keepends=True) if not line.startswith(drop))


@attrs.define
class _Restore:
    server: Server
    deadline: Deadline
    version_num: int
    existing: dict[str, bool]
    restore_options: list[str]
    analyze: bool
    ctx: RestoreContext
    done: list[_Restored] = attrs.field(factory=list)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def sql(
        self, script: str, doing: str, database: str = ADMIN_DB, deadline: Deadline | None = None
    ) -> str:
        return self.server.psql(
            script, deadline=deadline or self.deadline, database=database, doing=doing
        )

    # -- globals

    def apply_globals(self, stream: str) -> None:
        with self.ctx.artifact.open(stream) as f:
            text = f.read().decode()
        script = filter_globals(text, self.server.user)
        doing = "restoring roles and other global objects"
        out = self.server.psql(
            script, deadline=self.deadline, database=ADMIN_DB, doing=doing, stop_on_error=False
        )
        errors = [line for line in out.splitlines() if "ERROR:" in line]
        real = [e for e in errors if not _ROLE_EXISTS.search(e)]
        self.ctx.log.info(
            "globals: %d statements failed, %d of them 'already exists'",
            len(errors),
            len(errors) - len(real),
        )
        if real:
            raise DriverError(
                f"restoring roles and other global objects failed ({len(real)} statements "
                f"rejected; first: {first_error(real[0])}); no database was changed",
                admin_detail="\n".join(real),
            )

    # -- databases

    def databases(self, entries: list[dict[str, Any]], jobs: int) -> None:
        total = len(entries)
        parallel = jobs > 1 and total > 1
        if parallel:
            self.ctx.progress.stage(f"restoring {total} databases, {jobs} at a time")

        def one(item: tuple[int, dict[str, Any]], cancel: threading.Event) -> None:
            n, entry = item
            if not parallel:
                self.ctx.progress.stage(
                    f"restoring database {quoted(entry['name'])} ({n} of {total})"
                )
            self.restore_one(entry["name"], entry["stream"], cancel)

        try:
            run_parallel(list(enumerate(entries, 1)), jobs, one)
        except BaseException as exc:
            self.ctx.progress.stage("putting the previous databases back")
            problems = self.rollback()
            if isinstance(exc, CozyError):
                _amend(
                    exc,
                    "; ".join(problems)
                    if problems
                    else "nothing was replaced: every database is as it was before the restore",
                )
            raise
        self.ctx.progress.stage("dropping the previous copies of the databases")
        self.commit()

    def restore_one(self, name: str, stream: str, cancel: threading.Event) -> None:
        q = quoted(name)
        aside: str | None = None
        allowed = self.existing.get(name, True)
        if name in self.existing:
            aside = ASIDE_PREFIX + secrets.token_hex(6)
            self.set_aside(name, aside, allowed)
        with self.lock:
            self.done.append(_Restored(name=name, aside=aside, allowed_connections=allowed))
        with self.ctx.artifact.open(stream) as src:
            self.server.run(
                "pg_restore",
                [
                    "-w",
                    "--create",
                    "--exit-on-error",
                    *self.restore_options,
                    "-d",
                    conninfo_dbname(ADMIN_DB),
                ],
                deadline=self.deadline,
                stdin=cast(IO[bytes], _CancellableReader(src, cancel)),
                doing=f"restoring database {q}",
            )
        if self.analyze:
            if cancel.is_set():
                raise _Cancelled
            self.sql("ANALYZE;", f"analyzing restored database {q}", database=name)

    def _wait_idle(self, name: str) -> str:
        """SQL: terminate the sessions of ``name`` and wait (up to 30 s) until they are gone."""
        # Both values below are quoted by literal(): no injection (S608 cannot see that).
        return f"""
DO $cozy$
BEGIN
  FOR i IN 1..300 LOOP
    PERFORM pg_stat_clear_snapshot();
    EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_stat_activity
      WHERE datname = {literal(name)} AND pid <> pg_backend_pid());
    PERFORM pg_terminate_backend(pid) FROM pg_stat_activity
      WHERE datname = {literal(name)} AND pid <> pg_backend_pid();
    PERFORM pg_sleep(0.05);
  END LOOP;
END
$cozy$;
"""  # noqa: S608

    def set_aside(self, name: str, aside: str, allowed: bool) -> None:
        try:
            self.sql(
                f"ALTER DATABASE {ident(name)} WITH ALLOW_CONNECTIONS false;\n"
                + self._wait_idle(name)
                + f"ALTER DATABASE {ident(name)} RENAME TO {ident(aside)};\n",
                f"closing database {quoted(name)} before replacing it",
            )
        except BaseException:
            if allowed:  # it was not renamed: open it again
                with contextlib.suppress(CozyError):
                    self.sql(
                        f"ALTER DATABASE {ident(name)} WITH ALLOW_CONNECTIONS true;\n",
                        f"reopening database {quoted(name)}",
                        deadline=Deadline.after(CLEANUP_SECONDS),
                    )
            raise

    def drop_sql(self, name: str) -> str:
        if self.version_num >= 130000:
            return f"DROP DATABASE IF EXISTS {ident(name)} WITH (FORCE);\n"
        return self._wait_idle(name) + f"DROP DATABASE IF EXISTS {ident(name)};\n"

    def rollback(self) -> list[str]:
        """Drop what was restored, rename the old databases back; returns what failed."""
        problems: list[str] = []
        grace = Deadline.after(CLEANUP_SECONDS)  # even when the job's deadline has passed
        for r in reversed(self.done):
            script = self.drop_sql(r.name)
            if r.aside:
                script += f"ALTER DATABASE {ident(r.aside)} RENAME TO {ident(r.name)};\n"
                if r.allowed_connections:
                    script += f"ALTER DATABASE {ident(r.name)} WITH ALLOW_CONNECTIONS true;\n"
            try:
                self.sql(script, f"putting database {quoted(r.name)} back", deadline=grace)
            except CozyError as exc:
                self.ctx.log.error("rollback of %r failed: %s (%s)", r.name, exc, exc.admin_detail)
                if r.aside:
                    problems.append(
                        f"database {quoted(r.name)} could not be put back: its previous "
                        f"contents are in database {quoted(r.aside)}; ask the platform operator"
                    )
                else:
                    problems.append(
                        f"the partly restored database {quoted(r.name)} could not be removed"
                    )
        self.done.clear()
        return problems

    def commit(self) -> None:
        grace = Deadline.after(CLEANUP_SECONDS)
        for r in self.done:
            if r.aside:
                try:
                    self.sql(
                        self.drop_sql(r.aside),
                        f"dropping the previous copy of {quoted(r.name)}",
                        deadline=grace,
                    )
                except CozyError as exc:
                    # The restore itself succeeded; the leftover only costs space.
                    self.ctx.log.warning(
                        "could not drop %r (the old copy of %r): %s (%s)",
                        r.aside,
                        r.name,
                        exc,
                        exc.admin_detail,
                    )
        self.done.clear()
