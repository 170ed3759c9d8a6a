"""Restore, in place or into another application of the same kind.

Before anything is changed, the target's roles and tablespaces are read (``_serverwide``).

1. ``globals.sql`` is replayed with psql; "already exists" errors for roles and
   tablespaces are expected and ignored, any other error fails the restore before a
   database is touched.  The statements that would change the role the platform
   connects as are left out (``_globals``), so a restore never locks the platform out.
   Then every backed-up role and tablespace is set exactly as recorded (``roles.json``,
   ``tablespaces.json``: what ``globals.sql`` cannot say), in one transaction.
2. Each database is replaced: the start of its stream is staged until it holds the
   archive's table of contents (``_toc``); the existing database is closed to new
   connections, its sessions are terminated and it is renamed aside
   (``cozybackup_old_<random>``); ``pg_restore --create --exit-on-error`` recreates its
   pre-data and data from the stream on its stdin, then ``pg_restore -j indexJobs``
   its post-data (indexes, constraints, triggers) from the staged table of contents;
   the owners of multirange types are set again (``_extras``).  Up to ``jobs``
   databases at a time.
3. Only when every database is restored are the old copies dropped (all at once),
   while ``ANALYZE`` refreshes the planner statistics (a failure there is a warning:
   the data is in).  If any database fails, the partly restored databases are dropped
   and the old ones renamed back, then the roles and tablespaces are set as they were
   read at the start and those the restore created are dropped: the target is left as
   it was, and the job's message names the database that failed, PostgreSQL's error,
   and anything that could not be put back.

Why only the post-data section with ``pg_restore -j``: it needs a seekable archive
file, and staging the data would double the disk traffic and need scratch space as
large as the biggest database.  Beyond that, parallelism is across databases.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, cast

import attrs

from cozybackup_core import CozyError, Deadline, DriverError, RestoreContext

from . import _serverwide as serverwide
from . import _tablespaces
from ._artifact import read_index, roles_stream, tablespaces_stream
from ._extras import owner_sql
from ._globals import filter_globals
from ._parallel import CancellableReader, Cancelled, run_parallel
from ._params import RESTORE_OPTIONS, PostgresParameters
from ._pg import ADMIN_DB, Server, conninfo_dbname, find_tools, first_error, ident, literal, quoted
from ._roles import RoleState, as_script
from ._toc import staged_head

ASIDE_PREFIX = "cozybackup_old_"
#: Previous copies dropped at the same time (a connection each).
MAX_DROPS = 8
#: Time allowed for putting databases back (or dropping old copies) after the work ended.
CLEANUP_SECONDS = 300.0

#: pg_restore's sections: the stream restores the first two, the staged head the last.
_BEFORE_POST_DATA = ("--section=pre-data", "--section=data")
_POST_DATA = ("--section=post-data",)

_ROLE_EXISTS = re.compile(r'ERROR:\s+(role|tablespace) ".*" already exists')


def restore(ctx: RestoreContext[PostgresParameters], deadline: Deadline) -> None:
    params = ctx.parameters
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
        index_jobs=params.index_jobs,
        ctx=ctx,
    )
    before = serverwide.read(server, deadline)
    ctx.progress.stage("restoring roles and other global objects")
    try:
        restore.apply_globals(index["globals"]["stream"])
        restore.apply_records(index)
        restore.databases(index["databases"], params.jobs)
    except BaseException as exc:
        # The databases are already back (or untouched); roles and tablespaces are
        # server-wide and were changed first, so they go back last.
        ctx.progress.stage("putting the previous roles back")
        note = restore.put_back(before)
        if isinstance(exc, CozyError):
            _amend(exc, note)
        raise
    where = "in place" if ctx.in_place else "into the target application"
    ctx.log.info("restored %d databases %s", len(index["databases"]), where)


def _amend(exc: CozyError, addition: str) -> None:
    """Append to a tenant-safe message (the engine reports ``exc.message``)."""
    exc.message = f"{exc.message}; {addition}"
    exc.args = (exc.message,)


@attrs.frozen
class _Restored:
    name: str
    aside: str | None  # the previous database, renamed aside, or None if there was none
    allowed_connections: bool


@attrs.define
class _Restore:
    """One restore's state: what was replaced so far, to commit or roll back at the end."""

    server: Server
    deadline: Deadline
    version_num: int
    existing: dict[str, bool]
    restore_options: list[str]
    analyze: bool
    index_jobs: int
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

    def apply_records(self, index: dict[str, Any]) -> None:
        """Make every backed-up role and tablespace exactly as it was: what
        ``globals.sql`` cannot say (defaults, and things added after the backup) is set
        or taken away here, in one transaction."""
        roles, tablespaces = roles_stream(index), tablespaces_stream(index)
        if roles is None:
            self.ctx.log.warning(
                "this backup has no record of roles (made by an older driver): attributes, "
                "memberships and settings given to its roles after it stay"
            )
            return
        try:
            want = serverwide.ServerWide(
                RoleState.from_json(self.read_stream(roles)),
                _tablespaces.from_json(self.read_stream(tablespaces) if tablespaces else "[]"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DriverError(
                "the backup's record of roles is unreadable; no database was changed",
                admin_detail=repr(exc),
            ) from None
        have = serverwide.read(self.server, self.deadline)
        steps = serverwide.plan(want, have, {self.server.user})
        self.ctx.log.info("roles and tablespaces: %d statements to match the backup", len(steps))
        if steps:
            try:
                self.sql(
                    as_script(steps),
                    "restoring the roles' attributes, memberships and settings",
                )
            except CozyError as exc:
                _amend(exc, "no database was changed")
                raise

    def read_stream(self, stream: str) -> bytes:
        with self.ctx.artifact.open(stream) as f:
            return f.read()

    def put_back(self, before: serverwide.ServerWide) -> str:
        """After a failure: the target's roles and tablespaces as in ``before``, and what
        the restore created dropped; what to tell the tenant."""
        grace = Deadline.after(CLEANUP_SECONDS)  # even when the job's deadline has passed
        keep_out = {self.server.user}
        try:
            now = serverwide.read(self.server, grace)
            steps = serverwide.plan(before, now, keep_out)
            if steps:
                self.sql(as_script(steps), "putting the previous roles back", deadline=grace)
        except CozyError as exc:
            self.ctx.log.error("putting the roles back failed: %s (%s)", exc, exc.admin_detail)
            return self.not_back(before, keep_out, grace)
        for drop in serverwide.added(before, now, keep_out):
            try:
                self.sql(drop, "removing what the restore created", deadline=grace)
            except CozyError as exc:
                self.ctx.log.error("%s failed: %s (%s)", drop, exc, exc.admin_detail)
        return self.not_back(before, keep_out, grace)

    def not_back(self, before: serverwide.ServerWide, keep_out: set[str], grace: Deadline) -> str:
        """What to tell the tenant: the roles and tablespaces are back, or which are not."""
        try:
            names = serverwide.changed(before, serverwide.read(self.server, grace), keep_out)
        except CozyError as exc:
            self.ctx.log.error("reading the roles failed: %s (%s)", exc, exc.admin_detail)
            return (
                "the roles and tablespaces could not be put back as they were before the "
                "restore (the backup's attributes, passwords and memberships may be in "
                "effect); ask the platform operator"
            )
        if not names:
            return "the roles and tablespaces are as they were before the restore"
        return (
            "the roles and tablespaces could not all be put back as they were before the "
            "restore; these differ from before (as in the backup, or created by it): "
            + ", ".join(names)
            + "; ask the platform operator"
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
            self.restore_one(entry, cancel)

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
        # Every database is in: the swap is done.  ANALYZE (statistics only, no data)
        # runs while the previous copies are dropped; each DROP DATABASE waits for a
        # checkpoint, which needs the server's disk, not its CPU.
        restored = [r.name for r in self.done]
        self.ctx.progress.stage(
            "dropping the previous copies of the databases, analyzing the restored ones"
        )
        with ThreadPoolExecutor(1, thread_name_prefix="cozy-pg-drop") as pool:
            dropped = pool.submit(self.commit)
            if self.analyze:
                run_parallel(restored, jobs, self.analyze_one)
            dropped.result()

    def analyze_one(self, name: str, cancel: threading.Event) -> None:
        """Planner statistics for a restored database; a failure is only a warning (the
        data is restored and committed, the statistics come with the next ANALYZE)."""
        q = quoted(name)
        try:
            self.sql("ANALYZE;", f"analyzing restored database {q}", database=name)
        except CozyError as exc:
            self.ctx.log.warning("ANALYZE of %r failed: %s (%s)", name, exc, exc.admin_detail)
            self.ctx.warn(
                f"database {q} is restored, but ANALYZE failed ({exc.message}): its planner "
                "statistics are missing until it is analyzed (autovacuum or ANALYZE)",
                reason="AnalyzeFailed",
            )

    def restore_one(self, entry: dict[str, Any], cancel: threading.Event) -> None:
        name, stream = str(entry["name"]), str(entry["stream"])
        q = quoted(name)
        doing = f"restoring database {q}"
        with (
            self.ctx.artifact.open(stream) as src,
            staged_head(
                self.server,
                cast(IO[bytes], CancellableReader(src, cancel)),
                deadline=self.deadline,
                doing=doing,
            ) as (head, archive),
        ):
            aside: str | None = None
            allowed = self.existing.get(name, True)
            if name in self.existing:
                aside = ASIDE_PREFIX + secrets.token_hex(6)
                self.set_aside(name, aside, allowed)
            with self.lock:
                self.done.append(_Restored(name=name, aside=aside, allowed_connections=allowed))
            common = ["-w", "--exit-on-error", *self.restore_options]
            self.server.run(
                "pg_restore",
                [*common, "--create", *_BEFORE_POST_DATA, "-d", conninfo_dbname(ADMIN_DB)],
                deadline=self.deadline,
                stdin=archive,
                doing=doing,
            )
            if cancel.is_set():
                raise Cancelled
            # Indexes, constraints and triggers: from the staged table of contents,
            # several at a time (they need no data from the archive).
            self.server.run(
                "pg_restore",
                [
                    *common,
                    f"--jobs={self.index_jobs}",
                    *_POST_DATA,
                    "-d",
                    conninfo_dbname(name),
                    str(head),
                ],
                deadline=self.deadline,
                doing=doing,
            )
        owners = owner_sql(entry)
        if owners and "--no-owner" not in self.restore_options:
            if cancel.is_set():
                raise Cancelled
            self.sql(owners, doing, database=name)

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
        """Drop the previous copies, all at once: each DROP DATABASE waits for a
        checkpoint, and drops waiting together are served by the same one."""
        grace = Deadline.after(CLEANUP_SECONDS)
        aside = [r for r in self.done if r.aside]

        def drop(r: _Restored, cancel: threading.Event) -> None:
            assert r.aside is not None
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

        run_parallel(aside, min(len(aside), MAX_DROPS), drop)
        self.done.clear()
