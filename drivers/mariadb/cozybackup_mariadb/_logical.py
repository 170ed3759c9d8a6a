"""Logical mode: ``mariadb-dump`` out, the ``mariadb`` client in.

Two artifact streams:

``accounts.jsonl`` (only when every database is backed up)
    The server's accounts, roles and grants as SQL statements, one JSON record a line
    (``{"user", "host", "role", "phase", "sql"}``), taken with ``SHOW CREATE USER`` and
    ``SHOW GRANTS``.  The server's own accounts (``root``, ``mariadb.sys``, ``mysql``,
    anonymous ones) and the account the platform connects with are left out: a
    restore must not change how the platform or the server itself logs in.  Records
    rather than a SQL file so that a restore can leave out the *target's* platform
    account too, without parsing SQL.
``databases.sql``
    ``mariadb-dump --single-transaction --quick --routines --triggers --events
    --add-drop-database --databases ...``: plain SQL (``mariadb < databases.sql``
    replays it by hand), streamed from the tool into the artifact with no temp file.

Restore replays the accounts first (``CREATE OR REPLACE``: each account is exactly as
it was at backup time; accounts created later are left alone), then the dump, which
drops and re-creates each backed-up database.  Databases that are not in the backup
are not touched.  A logical restore is not atomic: if it stops half-way, the databases
replayed so far are replaced and the rest are as they were; the job says so.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import subprocess
from collections.abc import Iterator
from typing import IO, Any

import attrs

from cozybackup_core import (
    BackupContext,
    CozyError,
    Deadline,
    DriverError,
    RestoreContext,
    iter_chunks,
)

from ._conn import (
    MAX_PACKET,
    Server,
    find_tool,
    quote_ident,
    quote_string,
    run,
)
from ._conn import query as sql_query
from ._params import SYSTEM_SCHEMAS, MariaDBParameters

ACCOUNTS_STREAM = "accounts.jsonl"
DATABASES_STREAM = "databases.sql"
FORMAT = 1
#: Accounts that belong to the server or the platform, never backed up or restored.
SERVER_ACCOUNTS = frozenset({"root", "mariadb.sys", "mysql", ""})
_ACCOUNTS_HEADER = {"format": FORMAT, "kind": "cozybackup-mariadb accounts"}
_EMPTY_DUMP = b"-- cozybackup-mariadb: the server had no user databases to dump\n"


# ---------------------------------------------------------------------- backup


def backup(
    ctx: BackupContext, server: Server, params: MariaDBParameters, deadline: Deadline
) -> None:
    dump_tool = find_tool("mariadb-dump", "mysqldump")
    with server.option_file() as cnf:
        ctx.progress.stage("connecting")
        version, present, size = sql_query(
            server,
            cnf,
            [
                "SELECT VERSION()",
                "SHOW DATABASES",
                "SELECT COALESCE(SUM(data_length), 0) FROM information_schema.TABLES "
                "WHERE table_schema NOT IN ('mysql', 'information_schema', "
                "'performance_schema', 'sys')",
            ],
            deadline=deadline,
            doing="connecting to the server",
        )
        server_version = version[0][0]
        names = [row[0] for row in present]
        if params.databases:
            missing = [d for d in params.databases if d not in names]
            if missing:
                raise DriverError(
                    "the BackupClass names databases that do not exist on this server: "
                    + ", ".join(repr(m) for m in missing)
                )
            databases = list(params.databases)
        else:
            databases = [n for n in names if n.lower() not in SYSTEM_SCHEMAS]
        accounts = 0
        if not params.databases:
            ctx.progress.stage("dumping accounts and grants")
            records = list(_account_records(server, cnf, deadline))
            with ctx.artifact.open(ACCOUNTS_STREAM) as out:
                out.write(b"".join(_jsonl(r) for r in [_ACCOUNTS_HEADER, *records]))
            accounts = len({(r["user"], r["host"]) for r in records})
        ctx.progress.stage("dumping databases", bytes_total=int(size[0][0] or 0) or None)
        with ctx.artifact.open(DATABASES_STREAM) as out:
            if databases:
                run(
                    [
                        dump_tool,
                        f"--defaults-file={cnf}",
                        "--single-transaction",
                        "--quick",
                        "--routines",
                        "--triggers",
                        "--events",
                        "--add-drop-database",
                        "--default-character-set=utf8mb4",
                        f"--max-allowed-packet={MAX_PACKET}",
                        "--databases",
                        "--",
                        *databases,
                    ],
                    stdout=out,
                    deadline=deadline,
                    what="mariadb-dump",
                    doing="dumping the databases",
                )
            else:
                out.write(_EMPTY_DUMP)
    ctx.metadata.update(
        {
            "mode": "logical",
            "format": FORMAT,
            "serverVersion": server_version,
            "databases": databases,
            "accounts": accounts if not params.databases else None,
        }
    )
    # What a restore brings back; a class that names databases leaves the accounts out,
    # and the backup says so now rather than at restore time.
    ctx.resources.update(
        {"mode": "logical", "serverVersion": server_version, "databases": databases}
    )
    if params.databases:
        ctx.warn(
            "accounts and grants are not in this backup: the BackupClass names databases "
            "(a restore brings back their schemas, data, routines, triggers and events only)"
        )
    else:
        ctx.resources["accounts"] = accounts
    ctx.tool_versions["mariadb-server"] = server_version
    ctx.tool_versions["mariadb-dump"] = _tool_version(dump_tool)
    ctx.log.info("dumped %d databases and %d accounts", len(databases), accounts)


def _account_records(server: Server, cnf: str, deadline: Deadline) -> Iterator[dict[str, Any]]:
    (rows,) = sql_query(
        server,
        cnf,
        ["SELECT User, Host, is_role FROM mysql.user ORDER BY is_role DESC, User, Host"],
        deadline=deadline,
        doing="listing the accounts",
    )
    accounts = [
        (user, host, role == "Y")
        for user, host, role in rows
        if user not in SERVER_ACCOUNTS and user != server.username
    ]
    statements: list[str] = []
    for user, host, role in accounts:
        if role:
            statements.append(f"SHOW GRANTS FOR {_account(user, host, role)}")
        else:
            statements.append(f"SHOW CREATE USER {_account(user, host, role)}")
            statements.append(f"SHOW GRANTS FOR {_account(user, host, role)}")
    if not statements:
        return
    results = iter(
        sql_query(server, cnf, statements, deadline=deadline, doing="reading the accounts")
    )
    creates: list[dict[str, Any]] = []
    grants: list[dict[str, Any]] = []
    for user, host, role in accounts:
        who = {"user": user, "host": host, "role": role}
        if role:
            if user != "PUBLIC":  # PUBLIC always exists and cannot be created
                creates.append({**who, "phase": "create", "sql": None})
        else:
            (create,) = next(results)
            sql = create[0]
            if not sql.startswith("CREATE USER "):
                raise DriverError(
                    "MariaDB described an account in a form this driver does not know",
                    admin_detail=f"SHOW CREATE USER returned {sql[:80]!r}",
                )
            creates.append({**who, "phase": "create", "sql": "CREATE OR REPLACE USER " + sql[12:]})
        grants += [{**who, "phase": "grant", "sql": row[0]} for row in next(results)]
    yield from creates
    yield from grants


def _account(user: str, host: str, role: bool) -> str:
    if role:
        return "PUBLIC" if user == "PUBLIC" else quote_string(user)
    return f"{quote_string(user)}@{quote_string(host)}"


def _jsonl(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogateescape") + b"\n"


def _tool_version(path: str) -> str:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0][:200] if lines else "unknown"


# ---------------------------------------------------------------------- restore


def restore(ctx: RestoreContext, server: Server, deadline: Deadline) -> None:
    client = find_tool("mariadb", "mysql")
    names = ctx.artifact.names()
    with server.option_file() as cnf:
        ctx.progress.stage("connecting")
        sql_query(server, cnf, ["SELECT 1"], deadline=deadline, doing="connecting to the target")
        argv = [
            client,
            f"--defaults-file={cnf}",
            "--binary-mode",
            "--batch",
            f"--max-allowed-packet={MAX_PACKET}",
        ]

        def replay(script: IO[bytes], doing: str, after: str) -> None:
            run(
                argv,
                stdin=script,
                deadline=deadline,
                what="the mariadb client",
                doing=doing,
                after=f"{after}; run the RestoreJob again once the cause is fixed",
            )

        accounts: _Accounts | None = None
        if ACCOUNTS_STREAM in names:
            with ctx.artifact.open(ACCOUNTS_STREAM) as stream:
                accounts = _Accounts.read(stream, skip_user=server.username)
        try:
            if accounts is not None:
                # Accounts first: the views and routines of the dump name them as definers.
                ctx.progress.stage("restoring accounts")
                replay(
                    io.BytesIO(accounts.create_script()),
                    "re-creating the accounts",
                    "no database was touched",
                )
            ctx.progress.stage("restoring databases")
            with ctx.artifact.open(DATABASES_STREAM) as stream:
                replay(
                    stream,
                    "replaying the databases",
                    "the databases replayed so far were replaced and the others are unchanged",
                )
            if accounts is not None:
                # Grants last: table and routine privileges need their objects.
                ctx.progress.stage("restoring grants")
                replay(
                    io.BytesIO(accounts.grant_script()),
                    "restoring the grants",
                    "the databases were restored but some accounts may lack their privileges",
                )
        finally:
            if accounts is not None:
                accounts.clean_up(server, cnf)


@attrs.define
class _Accounts:
    """The account records of a backup, turned into the SQL that re-creates them."""

    creates: list[dict[str, Any]]
    grants: list[dict[str, Any]]
    #: Roles are created WITH ADMIN this temporary role, as mariadb-dump does, so that
    #: the restoring account does not end up holding every role it re-creates.
    helper: str = attrs.field(factory=lambda: f"cozybackup_import_{secrets.token_hex(4)}")

    @classmethod
    def read(cls, stream: IO[bytes], *, skip_user: str) -> _Accounts:
        data = b"".join(iter_chunks(stream))
        lines = data.decode("utf-8", "surrogateescape").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
            records = [json.loads(line) for line in lines[1:]]
        except ValueError:
            raise DriverError("the backup's account list is damaged") from None
        if header.get("kind") != _ACCOUNTS_HEADER["kind"] or header.get("format") != FORMAT:
            raise DriverError(
                "the backup was not written by a compatible version of the MariaDB driver",
                admin_detail=f"unexpected header of {ACCOUNTS_STREAM}: {lines[:1]!r}",
            )
        # Never touch the account the platform itself uses on the target.
        keep = [r for r in records if r["user"] != skip_user and r["user"] not in SERVER_ACCOUNTS]
        return cls(
            creates=[r for r in keep if r["phase"] == "create"],
            grants=[r for r in keep if r["phase"] == "grant"],
        )

    def create_script(self) -> bytes:
        helper = quote_ident(self.helper)
        out = ["SET SESSION sql_mode='';", f"CREATE ROLE {helper};", f"SET ROLE {helper};"]
        for rec in self.creates:
            if rec["role"]:
                out.append(
                    f"CREATE OR REPLACE ROLE {quote_ident(rec['user'])} WITH ADMIN {helper};"
                )
            else:
                out.append(_statement(rec["sql"]))
        return _script(out)

    def grant_script(self) -> bytes:
        helper = quote_ident(self.helper)
        out = ["SET SESSION sql_mode='';", f"SET ROLE {helper};"]
        out += [_statement(rec["sql"]) for rec in self.grants]
        out += ["SET ROLE NONE;", f"DROP ROLE IF EXISTS {helper};"]
        return _script(out)

    def clean_up(self, server: Server, cnf: str) -> None:
        """Drop the helper role even when the restore stopped half-way."""
        with contextlib.suppress(CozyError):
            sql_query(
                server,
                cnf,
                [f"DROP ROLE IF EXISTS {quote_ident(self.helper)}"],
                deadline=Deadline.after(30),
                doing="cleaning up",
            )


def _statement(sql: Any) -> str:
    return str(sql).rstrip().rstrip(";") + ";"


def _script(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")
