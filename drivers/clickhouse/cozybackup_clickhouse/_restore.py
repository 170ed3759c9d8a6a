"""How a restore is applied: in the mode the backup was taken with (read from its
streams), native through the server's own ``RESTORE`` (:mod:`._native`), logical as
below: staged first, swapped in last.

1. *Stage*: a scratch database per database engine (``cozybackup_restore_<random>_N``)
   receives every table's rows: the table itself under a scratch name (so it can be
   renamed into place), or a ``Log`` table of its columns where a rename cannot work
   (replicated tables, databases of other engines, a view's rows).  Nothing the tenant
   owns has been touched yet: a failure here leaves the target as it was.
2. *Swap*: each database of the backup is emptied (or created), tables are renamed (or
   created and copied) into place, then materialized views, views, dictionaries and the
   rest are created in dependency order; a materialized view that keeps its own rows gets
   them right after it is created, before anything reading from it exists, so no row is
   counted twice.
3. The scratch databases are dropped, whatever happened.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable, Sequence

import attrs

from cozybackup_core import (
    AppLocation,
    CozyError,
    Deadline,
    DriverError,
    RestoreContext,
    iter_chunks,
)

from . import _logical, _native
from ._catalog import (
    RENAMABLE_DATABASE_ENGINES,
    SCRATCH_PREFIX,
    DbObject,
    Kind,
    drop_stale_scratch,
    empty_database,
    label,
)
from ._client import Client, ServerError, Unreachable, secrets_of, target_of
from ._errors import classify
from ._logical import Index, columns_sql, read_index
from ._params import ClickHouseParameters
from ._pipe import read_ahead
from ._sql import ident, literals, qualified, rename_in_create

# Every name in the SQL below goes through ident()/qualified() and every value through
# literal(): the S608 warnings silenced here cannot see that.

#: Time allowed for dropping the scratch databases once the work has ended.
CLEANUP_SECONDS = 120.0
#: Database engines created as the server's default engine when a restore creates them.
PORTABLE_DATABASE_ENGINES = RENAMABLE_DATABASE_ENGINES | {"Overlay", ""}

#: Settings a restore uses where the server knows them: rows go in exactly as they were
#: dumped (no deduplication, no merging on insert, no partition limit per block), DDL the
#: source server accepted is accepted again, and only the job's deadline limits time.
RESTORE_SETTINGS = {
    "insert_deduplicate": "0",
    "optimize_on_insert": "0",
    "max_partitions_per_insert_block": "0",
    "check_table_dependencies": "0",
    "check_referential_table_dependencies": "0",
    "max_execution_time": "0",
    "allow_deprecated_database_ordinary": "1",
    "allow_experimental_low_cardinality_type": "1",
    "allow_suspicious_low_cardinality_types": "1",
    "allow_experimental_object_type": "1",
    "allow_experimental_json_type": "1",
    "allow_experimental_variant_type": "1",
    "allow_experimental_dynamic_type": "1",
    "allow_suspicious_variant_types": "1",
    "allow_suspicious_codecs": "1",
    "allow_suspicious_ttl_expressions": "1",
    "allow_experimental_live_view": "1",
    "allow_experimental_window_view": "1",
}


def restore(
    ctx: RestoreContext[ClickHouseParameters],
    connect: Callable[[AppLocation, Deadline], Client],
) -> None:
    params = ctx.parameters
    deadline = ctx.deadline.tighter(params.timeout_seconds)
    names = ctx.artifact.names()
    native = _native.INDEX_STREAM in names
    if not native and _logical.INDEX_STREAM not in names:
        raise DriverError(
            "the backup was not written by a compatible version of the ClickHouse driver",
            admin_detail=f"streams {names}",
        )
    secrets_ = secrets_of(target_of(ctx.target))
    client = connect(ctx.target, deadline)
    try:
        if native:
            _native.restore(ctx, client, secrets_, _sync(client))
        else:
            _logical_restore(ctx, client, secrets_, _sync(client))
    finally:
        client.close()
    ctx.log.info("restored %s %s", ctx.source.name, "in place" if ctx.in_place else "into a copy")


def _sync(client: Client) -> str:
    """`` SYNC`` where the server knows it (20.x and later): a dropped name is free, and
    its disk space released, at once rather than minutes later."""
    m = re.match(r"(\d+)\.", client.version)
    return " SYNC" if m and int(m.group(1)) >= 20 else ""


def restore_settings(client: Client) -> dict[str, str]:
    names = literals(list(RESTORE_SETTINGS))
    rows = client.rows(f"SELECT name FROM system.settings WHERE name IN {names}")  # noqa: S608
    known = {r[0] for r in rows}
    return {k: v for k, v in RESTORE_SETTINGS.items() if k in known}


@attrs.define
class _Staged:
    """Where one object's rows wait until the swap."""

    obj: DbObject
    database: str
    table: str
    renamable: bool


@attrs.define
class _Restore:
    ctx: RestoreContext
    client: Client
    index: Index
    secrets: list[str]
    sync: str
    token: str = attrs.field(factory=lambda: secrets.token_hex(4))
    scratch: dict[str, str] = attrs.field(factory=dict)  # engine ("" = default) -> database
    staged: dict[tuple[str, str], _Staged] = attrs.field(factory=dict)
    touched: list[str] = attrs.field(factory=list)

    # -------------------------------------------------------------- messages

    def failed(self, exc: Exception, doing: str) -> CozyError:
        if self.touched:
            after = (
                f"the database(s) {', '.join(self.touched)} were already emptied and are "
                "incomplete; the backup is intact, run the restore again"
            )
        else:
            after = "the target was not changed"
        return classify(exc, doing=doing, secrets=self.secrets, after=after)

    # -------------------------------------------------------------- stage

    def existing_databases(self) -> dict[str, str]:
        return {r[0]: r[1] for r in self.client.rows("SELECT name, engine FROM system.databases")}

    def scratch_for(self, engine: str) -> str:
        if engine not in self.scratch:
            name = f"{SCRATCH_PREFIX}{self.token}_{len(self.scratch)}"
            clause = f" ENGINE = {engine}" if engine else ""
            self.client.execute(f"CREATE DATABASE {ident(name)}{clause}")
            self.scratch[engine] = name
        return self.scratch[engine]

    def stage(self) -> None:
        existing = self.existing_databases()
        by_name = {d.name: d for d in self.index.databases}
        for n, obj in enumerate(self.index.objects):
            target_engine = existing.get(obj.database)
            if target_engine is None:
                portable = by_name[obj.database].engine in PORTABLE_DATABASE_ENGINES
                key, renamable_db = "", portable
            else:
                renamable_db = target_engine in RENAMABLE_DATABASE_ENGINES
                key = target_engine if renamable_db else ""
            if obj.kind is Kind.TABLE and not obj.is_replicated:
                # Check the statement now, not after the target was emptied.
                table = f"t{n}"
                doing = f"checking the definition of table {label(obj.key)}"
                try:
                    self.client.execute(rename_in_create(obj.create, self.scratch_for(key), table))
                except (ServerError, Unreachable) as exc:
                    raise self.failed(exc, doing) from None
                if obj.has_rows and renamable_db:
                    self.staged[obj.key] = _Staged(obj, self.scratch[key], table, renamable=True)
                    self.load(self.staged[obj.key])
                    continue
            if obj.has_rows:
                table = f"r{n}"
                columns = ", ".join(f"{ident(c.name)} {c.type}" for c in obj.columns)
                try:
                    database = self.scratch_for("")
                    self.client.execute(
                        f"CREATE TABLE {qualified(database, table)} ({columns}) ENGINE = Log"
                    )
                except (ServerError, Unreachable) as exc:
                    raise self.failed(exc, f"preparing to load table {label(obj.key)}") from None
                self.staged[obj.key] = _Staged(obj, database, table, renamable=False)
                self.load(self.staged[obj.key])

    def load(self, staged: _Staged) -> None:
        obj = staged.obj
        assert obj.stream is not None
        insert = (
            f"INSERT INTO {qualified(staged.database, staged.table)} ({columns_sql(obj.columns)})"
        )
        try:
            with (
                self.ctx.artifact.open(obj.stream) as src,
                contextlib.closing(read_ahead(iter_chunks(src))) as chunks,
            ):
                self.client.insert_native(insert, chunks)
        except (ServerError, Unreachable) as exc:
            raise self.failed(exc, f"loading table {label(obj.key)}") from None

    # -------------------------------------------------------------- swap

    def swap(self) -> None:
        self.ctx.progress.stage("replacing the databases")
        existing = self.existing_databases()
        for db in self.index.databases:
            self.touched.append(db.name)
            try:
                if db.name in existing:
                    empty_database(self.client, db.name, self.sync)
                elif db.engine in PORTABLE_DATABASE_ENGINES:
                    self.client.execute(f"CREATE DATABASE {ident(db.name)}")
                else:
                    self.client.execute(db.create)
            except (ServerError, Unreachable) as exc:
                raise self.failed(exc, f"emptying database {db.name}") from None
        tables = [o for o in self.index.objects if o.kind is Kind.TABLE]
        for obj in tables:
            self.client.deadline.check()
            staged = self.staged.get(obj.key)
            try:
                if staged is not None and staged.renamable:
                    src = qualified(staged.database, staged.table)
                    self.client.execute(f"RENAME TABLE {src} TO {qualified(*obj.key)}")
                else:
                    self.create(obj)
            except (ServerError, Unreachable) as exc:
                raise self.failed(exc, f"putting table {label(obj.key)} in place") from None
        rest = [o for o in self.index.objects if o.kind is not Kind.TABLE]
        self.create_in_order(rest)

    def create(self, obj: DbObject) -> None:
        """Create ``obj`` where it belongs; if its rows wait in a Log table, copy them in."""
        self.client.execute(rename_in_create(obj.create, *obj.key))
        self.fill(obj)

    def fill(self, obj: DbObject) -> None:
        staged = self.staged.get(obj.key)
        if staged is not None and not staged.renamable:
            cols = columns_sql(obj.columns)
            self.client.execute(
                f"INSERT INTO {qualified(*obj.key)} ({cols}) SELECT {cols} "  # noqa: S608
                f"FROM {qualified(staged.database, staged.table)}"
            )

    def create_in_order(self, objects: Sequence[DbObject]) -> None:
        """Dependencies the backup recorded come first; for the rest (a view's query, a
        dictionary's source) a statement that fails is tried again after the others,
        until a round makes no progress."""
        done: set[tuple[str, str]] = {o.key for o in self.index.objects if o.kind is Kind.TABLE}
        present = {o.key for o in self.index.objects}
        pending = list(objects)
        while pending:
            retry: list[DbObject] = []
            errors: dict[tuple[str, str], Exception] = {}
            for obj in pending:
                self.client.deadline.check()
                if any(d in present and d not in done for d in obj.depends_on):
                    retry.append(obj)
                    continue
                try:
                    self.client.execute(rename_in_create(obj.create, *obj.key))
                except (ServerError, Unreachable) as exc:
                    retry.append(obj)
                    errors[obj.key] = exc
                    continue
                try:  # a materialized view's own rows, before anything reads from it
                    self.fill(obj)
                except (ServerError, Unreachable) as exc:
                    doing = f"loading the rows of materialized view {label(obj.key)}"
                    raise self.failed(exc, doing) from None
                done.add(obj.key)
            if len(retry) == len(pending):
                first = next((o for o in retry if o.key in errors), retry[0])
                cause = errors.get(first.key) or ServerError(None, "dependency cycle")
                raise self.failed(cause, f"recreating {_what(first)} {label(first.key)}") from None
            pending = retry

    def drop_scratch(self) -> None:
        for name in self.scratch.values():
            try:
                self.client.execute(f"DROP DATABASE IF EXISTS {ident(name)}{self.sync}")
            except (ServerError, Unreachable, CozyError) as exc:
                self.ctx.log.warning("could not drop scratch database %s: %s", name, exc)


def _what(obj: DbObject) -> str:
    if obj.kind is Kind.VIEW:
        return "materialized view"
    return {"View": "view", "Dictionary": "dictionary"}.get(obj.engine, f"{obj.engine} table")


def _logical_restore(ctx: RestoreContext, client: Client, secrets_: list[str], sync: str) -> None:
    index = read_index(ctx)
    job = _Restore(ctx=ctx, client=client, index=index, secrets=secrets_, sync=sync)
    try:
        client.use_settings(restore_settings(client))
        drop_stale_scratch(client, sync, ctx)
    except (ServerError, Unreachable) as exc:
        raise job.failed(exc, "preparing the restore") from None
    try:
        job.stage()
        job.swap()
    finally:
        # Cleanup gets its own time, even past the job's deadline: a scratch database
        # left behind holds a copy of the data.
        client.deadline = Deadline.after(CLEANUP_SECONDS)
        job.drop_scratch()
    ctx.log.info(
        "restored %d databases, %d objects (backup of ClickHouse %s)",
        len(index.databases),
        len(index.objects),
        index.server_version,
    )
