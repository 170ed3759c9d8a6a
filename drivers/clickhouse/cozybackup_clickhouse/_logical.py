"""Logical mode: schema and Native-format rows per table, through the server's interface.

Backup (one artifact; the server never sees a storage credential)
    ``data-NNNNN.native``  ``SELECT <columns> FROM <table>`` in the Native format, one
                           stream per table (and per materialized view that keeps its
                           own rows), piped straight into the artifact.
    ``index.json``         written last: databases, every object's ``CREATE``, its kind,
                           dump columns, dependencies and stream, in dependency order.

The restore is in :mod:`._restore`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from cozybackup_core import BackupContext, CozyError, DriverError, RestoreContext, WriteBehind

from ._catalog import (
    Column,
    Database,
    DbObject,
    Kind,
    discover,
    estimated_bytes,
    label,
    user_databases,
)
from ._client import Client, ServerError, Unreachable
from ._errors import classify
from ._params import ClickHouseParameters
from ._sql import ident, qualified

FORMAT = 1
INDEX_STREAM = "index.json"


def backup(
    ctx: BackupContext, client: Client, params: ClickHouseParameters, secrets_: list[str]
) -> None:
    def failed(exc: Exception, doing: str) -> CozyError:
        return classify(exc, doing=doing, secrets=secrets_)

    ctx.progress.stage("reading the schema")
    try:
        databases = user_databases(client, params.databases)
        objects = discover(client, databases)
    except LookupError as exc:
        raise DriverError(
            f"the database(s) {', '.join(map(repr, exc.args[0]))} named in the BackupClass "
            "do not exist on this application",
            admin_detail=f"{ctx.application.ref}: {exc.args[0]}",
        ) from None
    except (ServerError, Unreachable) as exc:
        raise failed(exc, "reading the schema") from None
    except ValueError as exc:  # a CREATE head the driver cannot read
        raise DriverError(
            "the schema holds a statement the ClickHouse driver cannot read; ask the "
            "platform operator",
            admin_detail=str(exc),
        ) from None
    dumped = [o for o in objects if o.has_rows]
    try:
        total = estimated_bytes(client, [d.name for d in databases])
    except (ServerError, Unreachable) as exc:
        raise failed(exc, "reading the schema") from None
    ctx.progress.stage(f"dumping {len(dumped)} tables", bytes_total=total)
    for obj in dumped:
        assert obj.stream is not None
        select = f"SELECT {columns_sql(obj.columns)} FROM {qualified(*obj.key)}"  # noqa: S608
        try:
            with (
                ctx.artifact.open(obj.stream) as out,
                client.select_native(select) as chunks,
                WriteBehind(out) as sink,
            ):
                for chunk in chunks:
                    sink.write(chunk)
        except (ServerError, Unreachable) as exc:
            raise failed(exc, f"dumping table {label(obj.key)}") from None
    index = {
        "format": FORMAT,
        "mode": "logical",
        "serverVersion": client.version,
        "transport": client.transport,
        "databases": [attrs.asdict(d) for d in databases],
        "objects": [o.to_json() for o in objects],
    }
    with ctx.artifact.open(INDEX_STREAM) as out:
        out.write(json.dumps(index, indent=1, ensure_ascii=False).encode())
    ctx.metadata.update(
        {
            "mode": "logical",
            "format": FORMAT,
            "serverVersion": client.version,
            "databases": [d.name for d in databases],
            "tables": sum(o.kind is Kind.TABLE for o in objects),
            "materializedViews": sum(o.kind is Kind.VIEW for o in objects),
            "otherObjects": sum(o.kind is Kind.SCHEMA for o in objects),
            "recreatedEmpty": [label(o.key) for o in objects if o.kind is Kind.EMPTY],
        }
    )
    ctx.tool_versions["clickhouse"] = client.version


def columns_sql(columns: Sequence[Column]) -> str:
    return ", ".join(ident(c.name) for c in columns)


@attrs.frozen(kw_only=True)
class Index:
    databases: tuple[Database, ...]
    objects: tuple[DbObject, ...]
    server_version: str


def read_index(ctx: RestoreContext) -> Index:
    names = ctx.artifact.names()
    if INDEX_STREAM not in names:
        raise DriverError(
            "the backup was not written by a compatible version of the ClickHouse driver",
            admin_detail=f"no {INDEX_STREAM} among streams {names}",
        )
    with ctx.artifact.open(INDEX_STREAM) as f:
        raw = f.read()
    try:
        doc: dict[str, Any] = json.loads(raw)
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
        index = Index(
            databases=tuple(Database(**d) for d in doc["databases"]),
            objects=tuple(DbObject.from_json(o) for o in doc["objects"]),
            server_version=str(doc["serverVersion"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise DriverError(
            "the backup's index is not one this version of the ClickHouse driver can read",
            admin_detail=f"{INDEX_STREAM}: {exc!r}",
        ) from None
    missing = [o.stream for o in index.objects if o.stream and o.stream not in names]
    if missing:
        raise DriverError(
            "the backup is incomplete: streams listed in its index are missing",
            admin_detail=f"missing streams {missing}",
        )
    return index
