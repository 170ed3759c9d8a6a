"""Native mode: the server's own ``BACKUP ... TO S3`` / ``RESTORE ... FROM S3``.

The platform hands out an S3 prefix per backup (``ctx.artifact.server_side``) with
credentials for it; the statement carries them to the server, which writes (or reads)
the backup itself.  After ``backup`` returns the platform lists and hashes what the
server wrote and records it in the manifest; before ``restore`` is called it checks it.

What the server sees: the prefix's URL, the access key id and the secret.  They are in the
statement, so they reach the server's ``system.processes``, ``system.backups`` and query
log (current releases print the secret as ``[HIDDEN]`` there, not the key id or the URL).
That is why it is an admin opt-in (``serverSideAccess: true`` on a StorageLocation of its
own); the driver masks all three in every error text it passes on.

Backup:  ``BACKUP DATABASE a, DATABASE b, TABLE default.t, ... TO S3(...) ASYNC``, polled
         in ``system.backups`` until it is done (with few S3 retries: an unreachable
         store fails the job in seconds, not after the server's ten minutes of retries);
         ``native.json`` (a normal stream) records what it holds.  ``default`` is backed
         up table by table: a restore cannot drop and recreate the default database.
Restore: first ``RESTORE ... AS <scratch names> SETTINGS structure_only = 1``: proves that
         the server can read the backup and accepts every definition, while nothing of
         the tenant's is touched; then the databases of the backup are dropped (``default``
         emptied) and ``RESTORE`` recreates them with their data.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from cozybackup_core import (
    BackupContext,
    CozyError,
    Deadline,
    DeadlineExceeded,
    DriverError,
    RestoreContext,
    ServerSideTarget,
    UnsupportedError,
)

from ._catalog import (
    EXTERNAL_DATABASE_ENGINES,
    SCRATCH_PREFIX,
    drop_stale_scratch,
    empty_database,
    is_inner,
    user_databases,
)
from ._client import Client, ServerError, Unreachable
from ._errors import classify
from ._index import write_index
from ._params import ClickHouseParameters
from ._sql import ident, literal, literals, qualified

FORMAT = 1
INDEX_STREAM = "native.json"
#: The server-side stream (an S3 prefix) the server writes its backup under.
SERVER_STREAM = "clickhouse"
#: BACKUP/RESTORE arrived in 22.8 (with S3 destinations).
MIN_VERSION = (22, 8)
#: Where the server knows them: few S3 retries (a server's default is to retry for more
#: than ten minutes against a store that does not answer).
STATEMENT_SETTINGS = {
    "backup_restore_s3_retry_attempts": "3",
    "s3_retry_attempts": "3",
}
_POLL = 0.2
_DONE = {"BACKUP_CREATED", "RESTORED"}
_FAILED = {"BACKUP_FAILED", "RESTORE_FAILED", "BACKUP_CANCELLED", "RESTORE_CANCELLED"}


def _version(client: Client) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", client.version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _require_support(client: Client) -> None:
    if _version(client) < MIN_VERSION:
        raise UnsupportedError(
            f"native mode needs ClickHouse {MIN_VERSION[0]}.{MIN_VERSION[1]} or later (the "
            f"server's own BACKUP); this application runs {client.version}. Use a "
            "BackupClass with mode: logical",
        )


def _destination(target: ServerSideTarget) -> str:
    return f"S3({literal(target.url)}, {literal(target.access_key_id)}, {literal(target.secret_access_key)})"


def _masked(target: ServerSideTarget, extra: list[str]) -> list[str]:
    return [*extra, target.secret_access_key, target.access_key_id, target.url]


def _settings(client: Client, **more: str) -> str:
    names = literals(list(STATEMENT_SETTINGS))
    known = {r[0] for r in client.rows(f"SELECT name FROM system.settings WHERE name IN {names}")}  # noqa: S608
    chosen = {k: v for k, v in STATEMENT_SETTINGS.items() if k in known} | more
    return ", ".join(f"{k} = {v}" for k, v in chosen.items())


def _run(client: Client, statement: str, deadline: Deadline) -> dict[str, str]:
    """Start an ASYNC BACKUP/RESTORE and wait for it in ``system.backups``."""
    started = client.rows(statement)
    op = started[0][0]
    while True:
        rows = client.rows(
            "SELECT status, error, toString(total_size), toString(num_files) "  # noqa: S608
            f"FROM system.backups WHERE id = {literal(op)}"
        )
        if rows:
            status, error, size, files = rows[0]
            if status in _DONE:
                return {"size": size, "files": files}
            if status in _FAILED:
                raise ServerError(_code(error), error or status)
        if deadline.expired:
            _cancel(client, op)
            raise DeadlineExceeded(
                "the job ran past its deadline while the server was still working; it was "
                "asked to stop"
            )
        time.sleep(_POLL)


def _code(error: str) -> int | None:
    m = re.search(r"Code: (\d+)", error)
    return int(m.group(1)) if m else None


def _cancel(client: Client, op: str) -> None:
    """Best effort: ask the server to stop the operation (not every release stops it)."""
    client.deadline = Deadline.after(10)
    try:
        rows = client.rows(f"SELECT query_id FROM system.backups WHERE id = {literal(op)}")  # noqa: S608
        if rows and rows[0][0]:
            client.execute(f"KILL QUERY WHERE query_id = {literal(rows[0][0])} ASYNC")
    except (ServerError, Unreachable, CozyError):
        pass


def _default_tables(client: Client) -> list[str]:
    rows = client.rows(
        "SELECT name FROM system.tables WHERE database = 'default' AND is_temporary = 0"
    )
    return sorted(name for (name,) in rows if not is_inner(name))


def _entries(
    databases: list[str], default_tables: list[str], rename: dict[str, str] | None = None
) -> str:
    """``DATABASE a [AS x], TABLE default.t [AS y.t], ...`` for a BACKUP or RESTORE."""
    parts: list[str] = []
    for db in databases:
        if db != "default":
            parts.append(f"DATABASE {ident(db)}" + (f" AS {ident(rename[db])}" if rename else ""))
            continue
        for name in default_tables:
            to = f" AS {qualified(rename[db], name)}" if rename else ""
            parts.append(f"TABLE {qualified(db, name)}{to}")
    return ", ".join(parts)


# ---------------------------------------------------------------------- backup


def backup(
    ctx: BackupContext, client: Client, params: ClickHouseParameters, secrets_: list[str]
) -> None:
    _require_support(client)
    target = ctx.artifact.server_side(SERVER_STREAM)
    masked = _masked(target, secrets_)

    def failed(exc: Exception, doing: str) -> CozyError:
        return classify(exc, doing=doing, secrets=masked)

    ctx.progress.stage("reading the schema")
    try:
        found = user_databases(client, params.databases)
        databases = [d.name for d in found if d.engine not in EXTERNAL_DATABASE_ENGINES]
        default_tables = _default_tables(client) if "default" in databases else []
        entries = _entries(databases, default_tables)
        settings = _settings(client, **{"async": "1"})
    except LookupError as exc:
        raise DriverError(
            f"the database(s) {', '.join(map(repr, exc.args[0]))} named in the BackupClass "
            "do not exist on this application",
        ) from None
    except (ServerError, Unreachable) as exc:
        raise failed(exc, "reading the schema") from None
    if not entries:
        raise DriverError("the application has no database or table to back up")
    ctx.progress.stage("the server is writing its backup")
    statement = f"BACKUP {entries} TO {_destination(target)} SETTINGS {settings}"
    try:
        done = _run(client, statement, client.deadline)
    except (ServerError, Unreachable) as exc:
        raise failed(exc, "the server wrote its backup") from None
    index = {
        "format": FORMAT,
        "mode": "native",
        "serverVersion": client.version,
        "databases": databases,
        "defaultTables": default_tables,
        "stream": SERVER_STREAM,
    }
    write_index(
        ctx, client, INDEX_STREAM, index, databases=databases, files=int(done["files"] or 0)
    )


# ---------------------------------------------------------------------- restore


def _read_index(ctx: RestoreContext) -> dict[str, Any]:
    with ctx.artifact.open(INDEX_STREAM) as f:
        raw = f.read()
    try:
        doc: dict[str, Any] = json.loads(raw)
        if doc.get("format") != FORMAT or not isinstance(doc.get("databases"), list):
            raise ValueError(f"format {doc.get('format')!r}")
    except ValueError as exc:
        raise DriverError(
            "the backup's index is not one this version of the ClickHouse driver can read",
            admin_detail=f"{INDEX_STREAM}: {exc!r}",
        ) from None
    return doc


def restore(ctx: RestoreContext, client: Client, secrets_: list[str], sync: str) -> None:
    doc = _read_index(ctx)
    databases = [str(d) for d in doc["databases"]]
    default_tables = [str(t) for t in doc.get("defaultTables", [])]
    _require_support(client)
    target = ctx.artifact.server_side(str(doc.get("stream", SERVER_STREAM)))
    masked = _masked(target, secrets_)
    touched: list[str] = []

    def failed(exc: Exception, doing: str) -> CozyError:
        after = (
            f"the database(s) {', '.join(touched)} were already dropped and are incomplete; "
            "the backup is intact, run the restore again"
            if touched
            else "the target was not changed"
        )
        return classify(exc, doing=doing, secrets=masked, after=after)

    token = secrets.token_hex(4)
    scratch = {db: f"{SCRATCH_PREFIX}{token}_{i}" for i, db in enumerate(databases)}
    source = _destination(target)
    try:
        ctx.progress.stage("checking the backup on the server")
        drop_stale_scratch(client, sync, ctx)
        if "default" in scratch:
            client.execute(f"CREATE DATABASE {ident(scratch['default'])}")
        trial = _entries(databases, default_tables, scratch)
        settings = _settings(client, structure_only="1", **{"async": "1"})
        _run(client, f"RESTORE {trial} FROM {source} SETTINGS {settings}", client.deadline)
    except (ServerError, Unreachable) as exc:
        raise failed(exc, "checking that the server can read the backup") from None
    finally:
        _drop(client, scratch.values(), sync, ctx)
    try:
        ctx.progress.stage("replacing the databases")
        for db in databases:
            touched.append(db)
            if db == "default":
                empty_database(client, db, sync)
            else:
                client.execute(f"DROP DATABASE IF EXISTS {ident(db)}{sync}")
        entries = _entries(databases, default_tables)
        settings = _settings(client, **{"async": "1"})
        _run(client, f"RESTORE {entries} FROM {source} SETTINGS {settings}", client.deadline)
    except (ServerError, Unreachable) as exc:
        raise failed(exc, "the server restored its backup") from None


def _drop(client: Client, names: Any, sync: str, ctx: RestoreContext) -> None:
    """Drop the trial's scratch databases; this gets a minute even past the deadline (a
    scratch database left behind holds the schema, and the next restore would drop it)."""
    deadline = client.deadline
    client.deadline = Deadline(max(deadline.at, Deadline.after(60).at))
    try:
        for name in names:
            try:
                client.execute(f"DROP DATABASE IF EXISTS {ident(name)}{sync}")
            except (ServerError, Unreachable, CozyError) as exc:
                ctx.log.warning("could not drop scratch database %s: %s", name, exc)
    finally:
        client.deadline = deadline
