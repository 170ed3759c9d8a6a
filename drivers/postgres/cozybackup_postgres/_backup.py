"""Backup: one artifact, several streams, no temp file anywhere.

Each database is dumped by ``pg_dump -Fc --compress=0`` piped straight into its artifact
stream, which the core compresses with multi-threaded zstd; up to ``jobs`` databases at a
time.  The globals (roles, memberships, tablespaces) are taken *after* the databases, so
a role created while they were dumped (and owning something in them) is in it; right
after them, the records of every role and tablespace as the catalogs hold them,
defaults included (``_roles``, ``_tablespaces``).  Each database also gets a note of what
``pg_dump`` does not carry (``_extras``), and the backup warns about what a restore
cannot bring back as it was.  The index is written last (``_artifact``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import IO, Any, cast

from cozybackup_core import BackupContext, Deadline, DriverError

from . import _extras, _tablespaces
from ._artifact import FORMAT, GLOBALS_STREAM, INDEX_STREAM, stream_names
from ._extras import enum_partition_warning, extension_warning, matview_warning
from ._parallel import CountingWriter, run_parallel
from ._params import PostgresParameters
from ._pg import Server, conninfo_dbname, find_tools, quoted, tool_version
from ._roles import ROLES_STREAM, RoleState, read_sql


def backup(ctx: BackupContext[PostgresParameters], deadline: Deadline) -> None:
    params = ctx.parameters
    tools = find_tools()
    server = Server.from_location(ctx.application, tools)
    ctx.progress.stage("connecting to the database server")
    info = server.query_json(
        """SELECT json_build_object(
             'version', current_setting('server_version'),
             'versionNum', current_setting('server_version_num')::int,
             'databases', (SELECT coalesce(json_agg(datname ORDER BY datname), '[]')
                           FROM pg_database WHERE NOT datistemplate AND datallowconn))""",
        deadline=deadline,
        doing="connecting to the database server",
    )
    names = _select(list(info["databases"]), params.databases)
    ctx.tool_versions.update(
        {
            "pg_dump": tool_version(tools["pg_dump"], deadline),
            "pg_dumpall": tool_version(tools["pg_dumpall"], deadline),
            "server": str(info["version"]),
        }
    )
    entries = _dump_databases(
        ctx, server, deadline, names, _extras.read_sql(int(info["versionNum"]))
    )
    deadline.check()
    ctx.progress.stage("dumping roles and other global objects")
    role_passwords = _dump_globals(ctx, server, deadline)
    roles = _record_roles(ctx, server, deadline, role_passwords)
    index = {
        "format": FORMAT,
        "server": {"version": info["version"]},
        "tools": dict(ctx.tool_versions),
        "globals": {"stream": GLOBALS_STREAM, "rolePasswords": role_passwords},
        "roles": roles,
        "tablespaces": _record_tablespaces(ctx, server, deadline),
        "databases": entries,
        "extraDumpOptions": list(params.extra_dump_options),
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
    # What a restore brings back: these databases and the roles, memberships and
    # tablespaces of the whole server.
    ctx.resources.update(
        {
            "serverVersion": str(info["version"]),
            "databases": names,
            "dumpBytes": sum(int(e["bytes"]) for e in entries),
            "rolePasswords": role_passwords,
        }
    )
    warnings = (
        matview_warning(entries),
        enum_partition_warning(entries),
        extension_warning(entries),
    )
    for warning in warnings:
        if warning:
            ctx.warn(warning)
    if not role_passwords:
        ctx.warn(
            "role passwords are not in this backup: the backup's account may not read them "
            "(a restore creates the roles without passwords)"
        )


def _select(available: list[str], wanted: Sequence[str]) -> list[str]:
    """The databases to dump: ``wanted`` (the class's ``databases``), else all there are."""
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


def _dump_databases(
    ctx: BackupContext[PostgresParameters],
    server: Server,
    deadline: Deadline,
    names: list[str],
    extras_sql: str,
) -> list[dict[str, Any]]:
    """Dump each database into its own stream, ``jobs`` at a time; the index's entries
    (with what ``extras_sql`` finds in the database: see ``_extras``)."""
    params = ctx.parameters
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
            sink = CountingWriter(out, cancel)
            server.run(
                "pg_dump",
                ["-w", "--format=custom", "--compress=0", *extra, "-d", conninfo_dbname(name)],
                deadline=deadline,
                stdout=cast(IO[bytes], sink),
                doing=f"dumping database {quoted(name)}",
            )
        ctx.log.info("dumped database %r: %d bytes", name, sink.count)
        extras = server.query_json(
            extras_sql, deadline=deadline, database=name, doing=f"dumping database {quoted(name)}"
        )
        return {
            "name": name,
            "stream": streams[name],
            "bytes": sink.count,
            "multirangeOwners": extras["multirangeOwners"],
            "materializedViews": extras["materializedViews"],
            "extensionVersions": extras["extensionVersions"],
            "enumHashPartitioned": extras["enumHashPartitioned"],
        }

    return run_parallel(names, params.jobs, dump)


def _dump_globals(
    ctx: BackupContext[PostgresParameters], server: Server, deadline: Deadline
) -> bool:
    """Dump roles, memberships and tablespaces; whether role passwords are in the dump."""
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
    return role_passwords


def _record_roles(
    ctx: BackupContext[PostgresParameters], server: Server, deadline: Deadline, passwords: bool
) -> dict[str, str]:
    """Every role as the catalogs hold it (defaults included), for an exact restore;
    the index's entry for it."""
    data = server.query_json(
        read_sql(passwords), deadline=deadline, doing="dumping roles and other global objects"
    )
    try:
        state = RoleState.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise DriverError(
            "unexpected answer from the database server while reading its roles",
            admin_detail=repr(exc),
        ) from None
    with ctx.artifact.open(ROLES_STREAM) as out:
        out.write(state.to_json())
    return {"stream": ROLES_STREAM}


def _record_tablespaces(
    ctx: BackupContext[PostgresParameters], server: Server, deadline: Deadline
) -> dict[str, str]:
    """Every tablespace's owner, privileges, options and comment; the index's entry."""
    data = server.query_json(
        _tablespaces.READ_SQL, deadline=deadline, doing="dumping roles and other global objects"
    )
    try:
        tablespaces = _tablespaces.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise DriverError(
            "unexpected answer from the database server while reading its tablespaces",
            admin_detail=repr(exc),
        ) from None
    with ctx.artifact.open(_tablespaces.TABLESPACES_STREAM) as out:
        out.write(_tablespaces.to_json(tablespaces))
    return {"stream": _tablespaces.TABLESPACES_STREAM}
