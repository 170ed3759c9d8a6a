"""Logical mode's backup format: schema and Native-format rows per table, through the
server's interface.

One artifact (the server never sees a storage credential):
    ``data-NNNNN.native``  ``SELECT <columns> FROM <table>`` in the Native format, one
                           stream per table (and per materialized view that keeps its
                           own rows), piped straight into the artifact.
    ``index.json``         written last: databases, every object's ``CREATE``, its kind,
                           dump columns, dependencies and stream, in dependency order.

The backup is made in :mod:`._backup`, the restore applied in :mod:`._restore`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from cozybackup_core import DriverError, RestoreContext

from ._catalog import Column, Database, DbObject
from ._sql import ident

FORMAT = 1
INDEX_STREAM = "index.json"


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
