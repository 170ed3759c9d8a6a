"""Reaching one MariaDB server: connection settings, credentials, tools, errors.

Credentials never reach a command line or the environment: every tool gets a
private option file (``--defaults-file``, mode 0600 in a 0700 temp dir, removed when
the work ends).  ``--defaults-file`` is also the only option file the tools read, so
a host's ``/etc/mysql/my.cnf`` cannot change what they do.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, cast

import attrs

from cozybackup_core import (
    ApplicationMisconfigured,
    ApplicationRef,
    AppLocation,
    CozyError,
    CredentialsRejected,
    DatabaseUnavailable,
    Deadline,
    DriverError,
    MissingPrivilege,
    WriteBehind,
    connection_argv,
    connection_str,
    misconfigured,
    run_tool,
)

DEFAULT_PORT = 3306
DEFAULT_SERVICE_TIMEOUT = 300.0
#: The statement size the client and dump tool accept (rows with big BLOBs).
MAX_PACKET = "1G"


__all__ = [
    "ApplicationMisconfigured",
    "CredentialsRejected",
    "DatabaseUnavailable",
    "MissingPrivilege",
    "misconfigured",
]


@attrs.frozen(kw_only=True)
class Server:
    """One MariaDB server as the admin declared it (``AppLocation`` → typed settings).

    Connection keys: ``host`` + ``port`` (TCP) or ``socket``; for physical restores
    ``datadir``, ``stopCommand`` / ``startCommand`` (argv lists), ``datadirOwner``
    (``user`` or ``user:group``) and ``serviceTimeoutSeconds``.  Credentials keys:
    ``username`` and ``password``.
    """

    ref: ApplicationRef
    host: str | None
    port: int
    socket: str | None
    username: str
    password: str = attrs.field(repr=False)
    datadir: str | None = None
    stop_command: tuple[str, ...] | None = None
    start_command: tuple[str, ...] | None = None
    datadir_owner: str | None = None
    service_timeout: float = DEFAULT_SERVICE_TIMEOUT

    @classmethod
    def from_location(cls, loc: AppLocation) -> Server:
        conn: Mapping[str, Any] = loc.connection
        ref = loc.ref
        known = {
            "host", "port", "socket", "datadir", "stopCommand", "startCommand",
            "datadirOwner", "serviceTimeoutSeconds",
        }  # fmt: skip
        unknown = sorted(set(conn) - known)
        if unknown:
            raise misconfigured(ref, f"unknown connection keys {unknown} (known: {sorted(known)})")
        host = connection_str(ref, conn, "host")
        sock = connection_str(ref, conn, "socket")
        if host is None and sock is None:
            raise misconfigured(ref, "connection needs 'host' (and 'port') or 'socket'")
        port = conn.get("port", DEFAULT_PORT)
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise misconfigured(ref, f"connection key 'port' must be 1..65535, got {port!r}")
        creds = loc.credentials
        username = creds.get("username", "")
        password = creds.get("password", "")
        if not username:
            raise misconfigured(ref, "the credentials secret has no 'username'")
        for key, value in (("username", username), ("password", password)):
            if any(c in value for c in "\x00\n\r"):
                raise misconfigured(ref, f"credential {key!r} contains a NUL or line break")
        datadir = connection_str(ref, conn, "datadir")
        if datadir is not None and not Path(datadir).is_absolute():
            raise misconfigured(ref, f"connection key 'datadir' must be absolute, got {datadir!r}")
        timeout = conn.get("serviceTimeoutSeconds", DEFAULT_SERVICE_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise misconfigured(ref, "'serviceTimeoutSeconds' must be a positive number")
        return cls(
            ref=ref,
            host=host,
            port=port,
            socket=sock,
            username=username,
            password=password,
            datadir=datadir,
            stop_command=connection_argv(ref, conn, "stopCommand"),
            start_command=connection_argv(ref, conn, "startCommand"),
            datadir_owner=connection_str(ref, conn, "datadirOwner"),
            service_timeout=float(timeout),
        )

    @property
    def can_stop_and_start(self) -> bool:
        return self.stop_command is not None and self.start_command is not None

    # ------------------------------------------------------------------ option file

    def option_file_text(self) -> str:
        lines = [f"user={_quote(self.username)}", f"password={_quote(self.password)}"]
        if self.socket:
            lines += [f"socket={_quote(self.socket)}", "protocol=SOCKET"]
        else:
            assert self.host is not None
            lines += [f"host={_quote(self.host)}", f"port={self.port}", "protocol=TCP"]
        body = "\n".join(lines) + "\n"
        # [client] for mariadb and mariadb-dump; mariabackup reads its own group.
        return f"[client]\n{body}[mariabackup]\n{body}"

    @contextlib.contextmanager
    def option_file(self) -> Iterator[str]:
        """A private option file with the connection and credentials, removed after use."""
        tmp = tempfile.mkdtemp(prefix="cozybackup-mariadb-")  # mode 0700
        try:
            path = str(Path(tmp, "client.cnf"))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.option_file_text())
            yield path
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ liveness

    def answers(self, timeout: float = 2.0) -> bool:
        """Whether a MariaDB server greets on the declared address (no login needed)."""
        try:
            if self.socket:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                addr: Any = self.socket
            else:
                assert self.host is not None
                info = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
                s = socket.socket(info[0], info[1], info[2])
                addr = info[4]
        except OSError:
            return False
        with s:
            s.settimeout(timeout)
            try:
                s.connect(addr)
                head = s.recv(5)
            except OSError:
                return False
        # A protocol-10 greeting (or an error packet, 0xff: e.g. "too many connections").
        return len(head) == 5 and head[4] in (0x0A, 0xFF)


def _quote(value: str) -> str:
    """An option-file value: double-quoted, with the escapes the parser understands."""
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("\t", "\\t")
    return f'"{out}"'


# ---------------------------------------------------------------------- tools


def find_tool(*names: str) -> str:
    """The first of ``names`` on PATH (MariaDB ships both new and legacy names)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise DriverError(
        f"{names[0]} is not installed on the backup worker; ask the platform operator",
        admin_detail=f"none of {list(names)} found on PATH={os.environ.get('PATH', '')}",
    )


def run(
    argv: Sequence[str],
    *,
    deadline: Deadline,
    what: str,
    doing: str,
    stdout: IO[bytes] | None = None,
    stdin: IO[bytes] | None = None,
    after: str = "",
) -> bytes:
    """``run_tool`` with MariaDB's error messages turned into tenant-safe, typed errors.

    ``doing`` completes "... while <doing>"; ``after`` is appended to failures that
    leave something for the tenant to do (e.g. a restore that stopped half-way).
    """
    try:
        if stdout is None:
            return run_tool(argv, deadline=deadline, stdin=stdin, what=what)
        # A writer thread: the tool's pipe is read while earlier chunks are compressed.
        with WriteBehind(stdout) as out:
            # run_tool only calls write() on it.
            sink = cast(IO[bytes], out)
            return run_tool(argv, deadline=deadline, stdout=sink, stdin=stdin, what=what)
    except DriverError as exc:
        raise classify(exc, doing=doing, after=after) from None


# Matched on the tools' English messages (numeric codes alone are ambiguous in logs
# full of LSNs and sizes).
_UNREACHABLE = re.compile(
    r"Can't connect to|Unknown (MySQL|MariaDB) server host|Lost connection to|"
    r"server has gone away|Connection refused|Connection (was )?killed|"
    r"Server shutdown in progress|Server is shutting down|Too many connections",
    re.IGNORECASE,
)
_PRIVILEGE = re.compile(r"you need \(at least one of\) the ([A-Z][A-Z ,]*?) privilege")
_DB_DENIED = re.compile(r"Access denied for user .{0,200}? to database")
_DENIED = re.compile(r"Access denied for user")
_UNKNOWN_DB = re.compile(r"Unknown database")


def classify(exc: DriverError, *, doing: str, after: str = "") -> CozyError:
    """Name what went wrong without echoing the tool's text (it holds account names)."""
    detail = exc.admin_detail or ""
    tail = f"; {after}" if after else ""
    if m := _PRIVILEGE.search(detail):
        return MissingPrivilege(
            f"the account the platform uses lacks the {m.group(1).strip()} privilege needed "
            f"while {doing}; ask the platform operator to grant it{tail}",
            admin_detail=detail,
        )
    if _DB_DENIED.search(detail):
        return MissingPrivilege(
            f"the account the platform uses is not allowed to access a database while "
            f"{doing}; ask the platform operator to grant it{tail}",
            admin_detail=detail,
        )
    if _DENIED.search(detail):
        return CredentialsRejected(
            f"MariaDB rejected the credentials the platform uses for this application while "
            f"{doing}; ask the platform operator to check the application's credentials{tail}",
            admin_detail=detail,
        )
    if _UNREACHABLE.search(detail):
        return DatabaseUnavailable(
            f"the MariaDB server could not be reached or went away while {doing}; check "
            f"that it is running, then run the job again{tail}",
            admin_detail=detail,
        )
    if _UNKNOWN_DB.search(detail):
        return DriverError(
            f"a database disappeared or does not exist while {doing}{tail}",
            admin_detail=detail,
        )
    return DriverError(f"{exc.message} while {doing}{tail}", admin_detail=detail)


# ---------------------------------------------------------------------- SQL queries


def query(
    server: Server,
    option_file: str,
    statements: Sequence[str],
    *,
    deadline: Deadline,
    doing: str,
) -> list[list[tuple[str, ...]]]:
    """Run ``statements`` with the ``mariadb`` client; one list of rows per statement.

    The client runs in batch mode; each result is framed by a random marker row so
    that results can be told apart even when one is empty.  Values are unescaped
    (batch mode writes ``\\t``, ``\\n``, ``\\\\`` and ``\\0``); NULL reads as "NULL".
    """
    client = find_tool("mariadb", "mysql")
    mark = "cozybackup-" + secrets.token_hex(8)
    script = ["SET SESSION sql_mode='';"]
    for i, stmt in enumerate(statements):
        script.append(f"SELECT '{mark}-{i}';")
        script.append(stmt.rstrip().rstrip(";") + ";")
    out = run(
        [
            client,
            f"--defaults-file={option_file}",
            "--batch",
            "--skip-column-names",
            "--default-character-set=utf8mb4",
            f"--max-allowed-packet={MAX_PACKET}",
        ],
        stdin=io.BytesIO("\n".join(script).encode()),
        deadline=deadline,
        what="the mariadb client",
        doing=doing,
    )
    results: list[list[tuple[str, ...]]] = []
    for line in out.decode("utf-8", errors="surrogateescape").split("\n"):
        if line == f"{mark}-{len(results)}":
            results.append([])
        elif line and results:
            results[-1].append(tuple(_unescape(v) for v in line.split("\t")))
    if len(results) != len(statements):
        raise DriverError(
            f"the mariadb client returned incomplete results while {doing}",
            admin_detail=f"expected {len(statements)} results, got {len(results)}",
        )
    return results


_ESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "0": "\x00", "r": "\r", "b": "\b"}


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out: list[str] = []
    it = iter(value)
    for ch in it:
        if ch == "\\":
            nxt = next(it, "")
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
        else:
            out.append(ch)
    return "".join(out)


def quote_string(value: str) -> str:
    """A SQL string literal (the session runs with the default, backslash-escaping mode)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\x00", "\\0") + "'"


def quote_ident(value: str) -> str:
    return "`" + value.replace("`", "``") + "`"
