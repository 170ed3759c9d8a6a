"""How a backup is made: a session with the application's ClickHouse, then the class's
mode, logical (below; the format is in :mod:`._logical`) or native (the server's own
``BACKUP``, :mod:`._native`), within the class's ``timeoutSeconds``."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from cozybackup_core import (
    AppLocation,
    BackupContext,
    CozyError,
    Deadline,
    DriverError,
    WriteBehind,
)

from . import _native
from ._catalog import Kind, discover, estimated_bytes, label, user_databases
from ._client import Client, ServerError, Unreachable, secrets_of, target_of
from ._errors import classify
from ._index import write_index
from ._logical import FORMAT, INDEX_STREAM, columns_sql
from ._params import ClickHouseParameters, Mode
from ._sql import qualified


def backup(
    ctx: BackupContext[ClickHouseParameters], connect: Callable[[AppLocation, Deadline], Client]
) -> None:
    params = ctx.parameters
    deadline = ctx.deadline.tighter(params.timeout_seconds)
    secrets = secrets_of(target_of(ctx.application))
    client = connect(ctx.application, deadline)
    try:
        if params.mode is Mode.NATIVE:
            _native.backup(ctx, client, params, secrets)
        else:
            _logical_backup(ctx, client, params, secrets)
    finally:
        client.close()
    deadline.check()


def _logical_backup(
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
    write_index(
        ctx,
        client,
        INDEX_STREAM,
        index,
        databases=[d.name for d in databases],
        tables=sum(o.kind is Kind.TABLE for o in objects),
        materializedViews=sum(o.kind is Kind.VIEW for o in objects),
        otherObjects=sum(o.kind is Kind.SCHEMA for o in objects),
        recreatedEmpty=[label(o.key) for o in objects if o.kind is Kind.EMPTY],
    )
