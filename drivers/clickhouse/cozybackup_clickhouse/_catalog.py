"""What a ClickHouse server holds, as the driver sees it: databases, objects, columns,
what each object's data is, and the order in which objects must be recreated; and the
two clean-ups both restore modes need (emptying a database, dropping the scratch
databases an interrupted restore left).

One set of queries for every server release (18.16 to 26.x): ``system.databases``,
``system.tables`` (``create_table_query``, ``dependencies_*``) and ``system.columns``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from cozybackup_core import RestoreContext

from ._client import Client, ServerError
from ._params import SYSTEM_DATABASES
from ._sql import HeadError, ident, literal, literals, parse_head, qualified

#: Prefix of the databases a restore stages data in: ``cozybackup_restore_<8 hex>_<n>``.
SCRATCH_PREFIX = "cozybackup_restore_"
_SCRATCH = re.compile(r"cozybackup_restore_[0-9a-f]{8}_\d+")


def is_scratch(name: str) -> bool:
    """A restore's scratch database (never backed up; dropped if an interrupted restore
    left it behind).  Only this exact shape: a tenant's own ``cozybackup_restore_x`` stays."""
    return _SCRATCH.fullmatch(name) is not None


#: Tables a materialized view creates for its own rows (18.16 and Ordinary databases /
#: Atomic databases): they come back with their view, never on their own.
INNER_PREFIXES = (".inner.", ".inner_id.")
#: Database engines that only mirror another system: their tables are not ours to copy.
EXTERNAL_DATABASE_ENGINES = frozenset(
    {"MySQL", "MaterializedMySQL", "MaterializeMySQL", "PostgreSQL", "MaterializedPostgreSQL",
     "SQLite", "DataLakeCatalog", "Iceberg", "Backup", "Filesystem", "S3", "HDFS"}
)  # fmt: skip
#: Database engines a staged table can be renamed into from a database of the same engine.
RENAMABLE_DATABASE_ENGINES = frozenset({"Atomic", "Ordinary"})
#: Engines that hold rows the driver reads and writes back (besides the MergeTree family).
_DATA_ENGINES = frozenset({"Log", "TinyLog", "StripeLog", "Memory", "EmbeddedRocksDB"})
#: Engines that hold rows no SELECT can read back: recreated empty (and listed as such).
_UNREADABLE_ENGINES = frozenset({"Set", "Join"})
_FIXED_WIDTH = re.compile(
    r"(U?Int(8|16|32|64|128|256)|Float(32|64)|BFloat16|Bool|Date|Date32|UUID|IPv4|IPv6"
    r"|DateTime(\(.*\))?|DateTime64\(.*\)|Time(64)?(\(.*\))?|Decimal(32|64|128|256)?\(.*\)"
    r"|Enum(8|16)?\(.*\))"
)


class Kind(enum.Enum):
    """What backing an object up means."""

    TABLE = "table"  # rows dumped and loaded back
    VIEW = "materializedView"  # a materialized view; its own rows too unless it writes TO a table
    SCHEMA = "schema"  # no rows of its own (View, Distributed, Merge, Kafka, Dictionary, ...)
    EMPTY = "empty"  # rows that cannot be read back (Set, Join): recreated empty


@attrs.frozen(kw_only=True)
class Column:
    name: str
    type: str


@attrs.frozen(kw_only=True)
class Database:
    name: str
    engine: str
    create: str


@attrs.frozen(kw_only=True)
class DbObject:
    """One table, view or dictionary, and how it is backed up."""

    database: str
    name: str
    engine: str
    create: str
    kind: Kind
    #: Columns dumped, in dump order (empty when no rows are dumped).
    columns: tuple[Column, ...] = ()
    #: Objects of the backup this one needs to exist (and hold its rows) first.
    depends_on: tuple[tuple[str, str], ...] = ()
    #: The artifact stream with its rows, if any.
    stream: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.database, self.name)

    @property
    def has_rows(self) -> bool:
        return self.stream is not None

    @property
    def is_replicated(self) -> bool:
        return self.engine.startswith("Replicated") or self.engine.startswith("Shared")

    def to_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "name": self.name,
            "engine": self.engine,
            "create": self.create,
            "kind": self.kind.value,
            "columns": [[c.name, c.type] for c in self.columns],
            "dependsOn": [list(d) for d in self.depends_on],
            "stream": self.stream,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DbObject:
        return cls(
            database=str(doc["database"]),
            name=str(doc["name"]),
            engine=str(doc["engine"]),
            create=str(doc["create"]),
            kind=Kind(doc["kind"]),
            columns=tuple(Column(name=str(n), type=str(t)) for n, t in doc["columns"]),
            depends_on=tuple((str(d), str(n)) for d, n in doc["dependsOn"]),
            stream=None if doc["stream"] is None else str(doc["stream"]),
        )


def label(key: tuple[str, str]) -> str:
    """``db.name`` for messages (tenant data: their own names)."""
    return f"{key[0]}.{key[1]}"


# ---------------------------------------------------------------------- discovery


def user_databases(client: Client, wanted: Sequence[str] = ()) -> list[Database]:
    """The databases to back up: ``wanted``, or every one but the server's own."""
    rows = client.rows("SELECT name, engine FROM system.databases")
    found = {name: engine for name, engine in rows}
    if wanted:
        missing = [d for d in wanted if d not in found]
        if missing:
            raise LookupError(missing)
        names = list(wanted)
    else:
        names = sorted(n for n in found if n not in SYSTEM_DATABASES and not is_scratch(n))
    out = []
    for name in names:
        create = client.rows(f"SHOW CREATE DATABASE {ident(name)}")[0][0]
        out.append(Database(name=name, engine=found[name], create=create))
    return out


def is_inner(name: str) -> bool:
    return name.startswith(INNER_PREFIXES)


def kind_of(engine: str) -> Kind:
    if engine == "MaterializedView":
        return Kind.VIEW
    if engine.endswith("MergeTree") or engine in _DATA_ENGINES:
        return Kind.TABLE
    if engine in _UNREADABLE_ENGINES:
        return Kind.EMPTY
    return Kind.SCHEMA


def estimated_bytes(client: Client, databases: Sequence[str]) -> int | None:
    """The uncompressed size of the databases' columns: about their Native size."""
    if not databases:
        return 0
    rows = client.rows(
        "SELECT toString(sum(data_uncompressed_bytes)) FROM system.columns "  # noqa: S608
        f"WHERE database IN {literals(list(databases))}"
    )
    return int(rows[0][0]) if rows and rows[0][0].isdigit() else None


def dump_columns(columns: Iterable[Column]) -> tuple[Column, ...]:
    """Ordinary columns in table order, but with a fixed-width one last when there is one.

    The last bytes of a Native result are then the last column's fixed-width values,
    which cannot end with a server error's wording (see :mod:`._http`).
    """
    cols = list(columns)
    fixed = [i for i, c in enumerate(cols) if _FIXED_WIDTH.fullmatch(_base_type(c.type))]
    if fixed and fixed[-1] != len(cols) - 1:
        cols.append(cols.pop(fixed[-1]))
    return tuple(cols)


def _base_type(type_: str) -> str:
    m = re.fullmatch(r"LowCardinality\((.*)\)", type_)
    return m.group(1) if m else type_


def discover(client: Client, databases: Sequence[Database]) -> list[DbObject]:
    """Every object of ``databases``, dependencies first, with stream names assigned."""
    names = [d.name for d in databases if d.engine not in EXTERNAL_DATABASE_ENGINES]
    if not names:
        return []
    where = f"database IN {literals(names)}"
    # Names below are quoted by literals(): no injection (S608 cannot see that).
    tables = client.rows(
        "SELECT database, name, engine, create_table_query FROM system.tables "  # noqa: S608
        f"WHERE {where} AND is_temporary = 0"
    )
    # source table -> the materialized views reading from it
    readers = client.rows(
        "SELECT database, name, dep_database, dep_table FROM system.tables "  # noqa: S608
        "ARRAY JOIN dependencies_database AS dep_database, dependencies_table AS dep_table "
        f"WHERE {where}"
    )
    sources: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for db, name, dep_db, dep_name in readers:
        sources.setdefault((dep_db, dep_name), []).append((db, name))
    ordinary: dict[tuple[str, str], list[Column]] = {}
    column_rows = client.rows(
        f"SELECT database, table, name, type, default_kind FROM system.columns WHERE {where}"  # noqa: S608
    )
    for db, table, name, type_, default_kind in column_rows:
        if default_kind in ("", "DEFAULT"):  # not MATERIALIZED, ALIAS or EPHEMERAL
            ordinary.setdefault((db, table), []).append(Column(name=name, type=type_))
    objects: list[DbObject] = []
    for db, name, engine, create in sorted(tables):
        if is_inner(name):
            continue
        key = (db, name)
        kind = kind_of(engine)
        deps = list(sources.get(key, []))
        has_rows = kind is Kind.TABLE
        if kind is Kind.VIEW:
            try:
                head = parse_head(create)
            except HeadError as exc:
                raise ValueError(f"{label(key)}: {exc}: {create[:200]!r}") from None
            if head.to is not None:
                deps.append((head.to[0] or db, head.to[1]))
            has_rows = head.to is None
        columns = dump_columns(ordinary.get(key, [])) if has_rows else ()
        if has_rows and not columns:
            has_rows = False
        objects.append(
            DbObject(
                database=db,
                name=name,
                engine=engine,
                create=create,
                kind=kind,
                columns=columns,
                depends_on=tuple(dict.fromkeys(d for d in deps if d != key)),
            )
        )
    ordered = dependency_order(objects)
    out = []
    for i, obj in enumerate(ordered):
        if obj.kind in (Kind.TABLE, Kind.VIEW) and obj.columns:
            obj = attrs.evolve(obj, stream=f"data-{i:05d}.native")
        out.append(obj)
    return out


def dependency_order(objects: Sequence[DbObject]) -> list[DbObject]:
    """Objects with everything they depend on (within ``objects``) before them; otherwise
    in the given order.  A cycle (which ClickHouse does not allow) keeps the given order."""
    present = {o.key for o in objects}
    done: set[tuple[str, str]] = set()
    out: list[DbObject] = []
    pending = list(objects)
    while pending:
        ready = [o for o in pending if all(d in done or d not in present for d in o.depends_on)]
        if not ready:
            ready = pending[:1]
        for o in ready:
            done.add(o.key)
            out.append(o)
        pending = [o for o in pending if o.key not in done]
    return out


def empty_database(client: Client, database: str, sync: str) -> None:
    """Drop every object of ``database``: views first (their inner tables go with them),
    then the rest; what fails is tried again after the others."""
    last = ServerError(None, f"objects of database {database} remain after dropping them")
    for _ in range(8):
        rows = client.rows(
            "SELECT name, engine, create_table_query FROM system.tables "  # noqa: S608
            f"WHERE database = {literal(database)} AND is_temporary = 0"
        )
        if not rows:
            return
        views = [r for r in rows if r[1] in ("MaterializedView", "View")]
        first = views or [r for r in rows if not is_inner(r[0])] or rows
        for name, _engine, create in first:
            what = "DICTIONARY" if create.startswith("CREATE DICTIONARY") else "TABLE"
            try:
                client.execute(f"DROP {what} IF EXISTS {qualified(database, name)}{sync}")
            except ServerError as exc:
                last = exc
    raise last


def drop_stale_scratch(client: Client, sync: str, ctx: RestoreContext) -> None:
    """Scratch databases an interrupted restore left behind (the engine runs one job per
    application at a time, so none of them belongs to a running restore)."""
    for (name,) in client.rows("SELECT name FROM system.databases"):
        if is_scratch(name):
            ctx.log.warning("dropping scratch database %s of an earlier restore", name)
            client.execute(f"DROP DATABASE IF EXISTS {ident(name)}{sync}")
