"""Reaching a PostgreSQL server with its own client tools, and reading their errors.

Everything here runs the tools through the core's :func:`run_tool`: no libpq binding in
the worker, so the tools' versions are the only PostgreSQL versions that matter.  The
password travels in ``PGPASSWORD`` (never on a command line); host, port, user and
sslmode travel in ``PG*`` variables too, so ``ps`` on the worker shows none of them.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from cozybackup_core import (
    AppLocation,
    CredentialsRejected,
    DatabaseUnavailable,
    Deadline,
    DeadlineExceeded,
    DriverError,
    run_tool,
)

TOOLS = ("pg_dump", "pg_dumpall", "pg_restore", "psql")
#: What physical mode runs besides psql (``pg_waldump`` reads commit times from the WAL).
PHYSICAL_TOOLS = ("pg_basebackup", "pg_receivewal", "pg_waldump", "psql")
#: Connection keys of a physical restore's target (``_physical``): where its data
#: directory is and how the platform stops and starts its server.
#: Set by a restore drill's scratch target only (``_drill``): the socket directory a
#: restored physical backup is reached through.
SCRATCH_SOCKET = "scratchSocketDir"
PHYSICAL_KEYS = frozenset(
    {
        "dataDir",
        "dataDirOwner",
        "startCommand",
        "stopCommand",
        "serviceTimeoutSeconds",
        SCRATCH_SOCKET,
    }
)
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
DEFAULT_PORT = 5432
CONNECT_TIMEOUT = 30  # seconds, per connection attempt of each tool
#: Where restores and drills connect to create, rename, drop and list databases (never
#: one being replaced).
ADMIN_DB = "template1"


__all__ = ["CredentialsRejected", "DatabaseUnavailable"]


# ---------------------------------------------------------------------- quoting


def ident(name: str) -> str:
    """An SQL identifier, always quoted (any characters but NUL)."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """An SQL string literal (``standard_conforming_strings`` is on in every supported server)."""
    return "'" + value.replace("'", "''") + "'"


def quoted(name: str) -> str:
    """A database name as shown in messages: double-quoted like PostgreSQL does."""
    return '"' + name.replace("\n", " ") + '"'


def conninfo_dbname(name: str) -> str:
    """A libpq conninfo selecting database ``name``: any name, even one with ``=`` or quotes."""
    return "dbname='" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def check_name(name: str) -> str | None:
    """Why ``name`` cannot be a PostgreSQL database name, or None."""
    if not name:
        return "must not be empty"
    if "\x00" in name:
        return "must not contain a NUL character"
    if len(name.encode()) > 63:
        return "is longer than 63 bytes, PostgreSQL's limit for names"
    return None


# ---------------------------------------------------------------------- tools


def find_tools(tools: Sequence[str] = TOOLS) -> dict[str, str]:
    """Paths of the client tools: ``$COZYBACKUP_PG_BINDIR``, the newest
    ``/usr/lib/postgresql/<major>/bin`` (Debian), else ``$PATH``."""
    env = os.environ.get("COZYBACKUP_PG_BINDIR")
    dirs: list[Path] = []
    if env:
        dirs.append(Path(env))
    else:
        majors = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
        dirs.extend(sorted(majors, key=lambda p: int(p.parent.name), reverse=True)[:1])
    out: dict[str, str] = {}
    for tool in tools:
        path = next((str(d / tool) for d in dirs if (d / tool).is_file()), None)
        path = path or shutil.which(tool)
        if path is None:
            raise DriverError(
                "the PostgreSQL client tools are not installed on the backup worker; "
                "ask the platform operator",
                admin_detail=f"{tool} not found in {[str(d) for d in dirs]} or $PATH",
            )
        out[tool] = path
    return out


_VERSION_RE = re.compile(rb"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)")


def tool_version(path: str, deadline: Deadline) -> str:
    out = run_tool([path, "--version"], deadline=deadline, what=Path(path).name)
    m = _VERSION_RE.search(out)
    return m.group(1).decode() if m else out.decode(errors="replace").strip()[:40]


# ---------------------------------------------------------------------- connection


@attrs.frozen(kw_only=True)
class Server:
    """How to reach one server (from the admin's application declaration)."""

    host: str
    port: int
    user: str
    password: str | None = attrs.field(repr=False)
    sslmode: str | None = None
    database: str = "postgres"  # where the backup connects to list databases
    tools: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def from_location(cls, loc: AppLocation, tools: Mapping[str, str]) -> Server:
        c, creds = loc.connection, loc.credentials
        problems: list[str] = []
        host = c.get("host")
        if not isinstance(host, str) or not host or "\x00" in host:
            problems.append("'host' must be a non-empty string")
        port_raw = c.get("port", DEFAULT_PORT)
        port = -1
        if isinstance(port_raw, int) and not isinstance(port_raw, bool):
            port = port_raw
        elif isinstance(port_raw, str) and port_raw.isdigit():
            port = int(port_raw)
        if not 0 < port < 65536:
            problems.append(f"'port' must be a TCP port number, got {port_raw!r}")
        sslmode = c.get("sslmode")
        if sslmode is not None and sslmode not in SSLMODES:
            problems.append(f"'sslmode' must be one of {', '.join(SSLMODES)}")
        database = c.get("database", "postgres")
        if not isinstance(database, str) or check_name(database):
            problems.append("'database' must be a database name")
        unknown = sorted(set(c) - {"host", "port", "sslmode", "database"} - PHYSICAL_KEYS)
        if unknown:
            problems.append(f"unknown connection keys {unknown}")
        user = creds.get("username") or "postgres"
        password = creds.get("password") or None
        if problems:
            raise DriverError(
                "this application's connection settings are incomplete or invalid; "
                "ask the platform operator",
                admin_detail=f"{loc.ref}: " + "; ".join(problems),
            )
        return cls(
            host=str(host),
            port=port,
            user=user,
            password=password,
            sslmode=sslmode,
            database=str(database),
            tools=dict(tools),
        )

    def env(self) -> dict[str, str]:
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT),
            "PGAPPNAME": "cozybackup",
            "PGCLIENTENCODING": "UTF8",
            # The worker's own session options must not reach the tenant's server.
            "PGOPTIONS": "",
        }
        if self.sslmode:
            env["PGSSLMODE"] = self.sslmode
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    # -- running tools

    def run(
        self,
        tool: str,
        args: Sequence[str],
        *,
        deadline: Deadline,
        stdout: IO[bytes] | None = None,
        stdin: IO[bytes] | None = None,
        doing: str,
        merge_stderr: bool = False,
    ) -> bytes:
        """Run one client tool; its errors become tenant-safe :class:`DriverError` s.

        ``doing`` completes "… failed while <doing>" in messages (tenant-visible: name
        databases, never hosts).  ``merge_stderr`` captures stderr into the returned
        output (for psql scripts that are allowed to fail statement by statement).
        """
        argv = [self.tools[tool], *args]
        sink: io.BytesIO | None = None
        if merge_stderr:
            # run_tool keeps stderr only when the tool fails; a psql script that may fail
            # statement by statement needs its messages either way.
            argv = ["sh", "-c", 'exec "$0" "$@" 2>&1', *argv]
            sink = io.BytesIO()
            stdout = sink
        try:
            out = run_tool(
                argv, deadline=deadline, stdout=stdout, stdin=stdin, env=self.env(), what=tool
            )
        except DeadlineExceeded:
            raise DeadlineExceeded(
                f"the job ran past its deadline while {doing} and was stopped"
            ) from None
        except DriverError as exc:
            detail = exc.admin_detail or ""
            if sink is not None:
                detail = sink.getvalue().decode(errors="replace")[-65536:] + detail
            raise classify(tool, detail, doing) from None
        return sink.getvalue() if sink is not None else out

    def psql(
        self,
        sql: str,
        *,
        deadline: Deadline,
        database: str | None = None,
        doing: str,
        stop_on_error: bool = True,
    ) -> str:
        """Run an SQL script with psql; returns its unaligned, tuples-only output."""
        args = ["-X", "-q", "-A", "-t", "-v", f"ON_ERROR_STOP={1 if stop_on_error else 0}"]
        args += ["-d", conninfo_dbname(database or self.database)]
        out = self.run(
            "psql",
            args,
            deadline=deadline,
            stdin=io.BytesIO(sql.encode()),
            doing=doing,
            merge_stderr=not stop_on_error,
        )
        return out.decode(errors="replace")

    def query_json(
        self, sql: str, *, deadline: Deadline, doing: str, database: str | None = None
    ) -> Any:
        """One query returning one JSON value (safe for names with any characters)."""
        out = self.psql(sql, deadline=deadline, database=database, doing=doing).strip()
        try:
            return json.loads(out)
        except ValueError:
            raise DriverError(
                f"unexpected answer from the database server while {doing}",
                admin_detail=out[:500],
            ) from None


# ---------------------------------------------------------------------- errors

_UNREACHABLE = (
    "could not connect to server",
    "connection refused",
    "could not translate host name",
    "timeout expired",
    "no route to host",
    "network is unreachable",
    "is the server running",
    "server closed the connection unexpectedly",
    "terminating connection due to administrator command",
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    "connection to server was lost",
    "could not receive data from server",
    "could not send data to server",
    "ssl syscall error",
    "connection reset by peer",
    "pqgetresult() failed",
    "server conn crashed",
    "no connection to the server",
)
_AUTH = (
    "password authentication failed",
    "no password supplied",
    "pg_hba.conf rejects connection",
    "no pg_hba.conf entry",
    "authentication failed",
    "fe_sendauth",
)
_ERROR_LINE = re.compile(r"(?:ERROR|FATAL):\s+(.*)")
_CONN_PREFIX = re.compile(
    r'connection to server (?:at|on) "[^"]*"(?:\s*\([^)]*\))?, port \d+ failed:\s*'
)


def first_error(stderr: str) -> str:
    """The first ``ERROR:``/``FATAL:`` message of a tool's stderr, shortened, no addresses."""
    for line in stderr.splitlines():
        m = _ERROR_LINE.search(line)
        if m:
            return _shorten(_CONN_PREFIX.sub("", m.group(1)))
    for line in stderr.splitlines():
        if ": error: " in line:
            return _shorten(_CONN_PREFIX.sub("", line.split(": error: ", 1)[1]))
    return ""


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def classify(tool: str, stderr: str, doing: str) -> DriverError | DatabaseUnavailable:
    """A tenant-safe error for a failed tool run; the full stderr stays in admin_detail."""
    low = stderr.lower()
    if any(s in low for s in _AUTH) or re.search(r'fatal:\s+role "[^"]*" does not exist', low):
        return CredentialsRejected(
            f"the database server rejected the credentials the platform holds for this "
            f"application while {doing}; ask the platform operator to update them",
            admin_detail=stderr,
        )
    if "server version mismatch" in low:
        return DriverError(
            f"the database server runs a newer PostgreSQL than the backup worker's {tool}; "
            "ask the platform operator to update the backup worker's PostgreSQL tools",
            admin_detail=stderr,
        )
    if "unsupported version" in low and "file header" in low:
        return DriverError(
            f"the backup was written by a newer pg_dump than the worker's {tool} can read; "
            "ask the platform operator to update the backup worker's PostgreSQL tools",
            admin_detail=stderr,
        )
    if any(s in low for s in _UNREACHABLE):
        return DatabaseUnavailable(
            f"the database server could not be reached or closed the connection while "
            f"{doing}; check that the database is running and try again",
            admin_detail=stderr,
        )
    detail = first_error(stderr)
    return DriverError(
        f"{tool} failed while {doing}" + (f": {detail}" if detail else ""),
        admin_detail=stderr,
    )
