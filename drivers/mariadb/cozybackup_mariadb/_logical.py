"""Logical mode: ``mariadb-dump`` out, the ``mariadb`` client in.

Two artifact streams:

``accounts.jsonl`` (only when every database is backed up)
    The server's accounts, roles and grants as SQL statements, one JSON record a line
    (``{"user", "host", "role", "phase", "sql"}``, and for users
    ``password_last_changed``), taken with ``SHOW CREATE USER`` and ``SHOW GRANTS``.  The server's own accounts (``root``, ``mariadb.sys``, ``mysql``,
    anonymous ones) and the account the platform connects with are left out: a
    restore must not change how the platform or the server itself logs in.  Records
    rather than a SQL file so that a restore can leave out the *target's* platform
    account too, without parsing SQL.
``databases.sql``
    ``mariadb-dump --single-transaction --quick --routines --triggers --events
    --add-drop-database --dump-history --databases ...``: plain SQL (``mariadb <
    databases.sql`` replays it by hand), streamed from the tool into the artifact with
    no temp file, followed by the repairs :mod:`._fidelity` found needed.  What the
    dump cannot keep is found first and warned about (:mod:`._fidelity`).

Restore re-creates the accounts with the grants that need no object (``CREATE OR
REPLACE``: each account is exactly as it was at backup time; accounts created later
are left alone), then replays the dump, which drops and re-creates each backed-up
database, with the table, column and routine grants put in before the views
(:mod:`._replay`).  Databases that are not in the backup are not touched.  A logical
restore is not atomic for the databases: if it stops half-way, the job says which
were replaced; the accounts are put back as they were (:mod:`._snapshot`).
"""

from __future__ import annotations

import copy
import io
import json
import secrets
import subprocess
from typing import IO, Any, cast

import attrs

from cozybackup_core import (
    BackupContext,
    CozyError,
    Deadline,
    DriverError,
    RestoreContext,
    run_tool,
)

from ._accounts import (
    ACCOUNTS_HEADER,
    ACCOUNTS_STREAM,
    FORMAT,
    AccountRecords,
    account_records,
)
from ._conn import MAX_PACKET, Server, classify, find_tool, run
from ._conn import query as sql_query
from ._fidelity import survey
from ._params import SYSTEM_SCHEMAS, MariaDBParameters
from ._replay import ClientOutput, DumpWithGrants
from ._snapshot import PrivilegeSnapshot

DATABASES_STREAM = "databases.sql"
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
            records = list(account_records(server, cnf, deadline))
            with ctx.artifact.open(ACCOUNTS_STREAM) as out:
                out.write(b"".join(_jsonl(r) for r in [ACCOUNTS_HEADER, *records]))
            accounts = len({(r["user"], r["host"]) for r in records})
        found = survey(server, cnf, databases, deadline)
        history = ["--dump-history"] if found.dump_history and _has_history(dump_tool) else []
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
                        # Not binary: INET6, INET4 and UUID values would be read back
                        # as raw bytes. Character sets utf8mb4 cannot carry are warned of.
                        "--default-character-set=utf8mb4",
                        *history,
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
                out.write(found.repairs)
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
    for warning in found.warnings:
        ctx.warn(warning)
    if not history and found.dump_history and databases:
        ctx.warn(
            "the history of system-versioned tables is not in this backup: this "
            "mariadb-dump cannot dump it; physical mode (mode: physical) keeps it"
        )
    ctx.tool_versions["mariadb-server"] = server_version
    ctx.tool_versions["mariadb-dump"] = _tool_version(dump_tool)
    ctx.log.info("dumped %d databases and %d accounts", len(databases), accounts)


def _jsonl(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode("utf-8", "surrogateescape") + b"\n"


def _has_history(dump_tool: str) -> bool:
    """Whether this mariadb-dump has ``--dump-history`` (10.11 and later)."""
    try:
        out = subprocess.run(
            [dump_tool, "--help"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--dump-history" in out.stdout


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
    databases = [str(d) for d in ctx.driver_metadata.get("databases") or []]
    with server.option_file() as cnf:
        ctx.progress.stage("connecting")
        sql_query(server, cnf, ["SELECT 1"], deadline=deadline, doing="connecting to the target")
        argv = [
            client,
            f"--defaults-file={cnf}",
            "--binary-mode",
            "--batch",
            "--skip-column-names",
            # Each marker row reaches us when its statement ran, even if the client is
            # killed at the deadline: what a failure says rests on them.
            "--unbuffered",
            # Data changed on the way in (a value truncated...) is told to the admin.
            "--show-warnings",
            f"--max-allowed-packet={MAX_PACKET}",
        ]
        accounts: AccountRecords | None = None
        snapshot: PrivilegeSnapshot | None = None
        if ACCOUNTS_STREAM in names:
            with ctx.artifact.open(ACCOUNTS_STREAM) as stream:
                accounts = AccountRecords.read(stream, skip_user=server.username)
        progress = _Progress(databases)
        try:
            if accounts is not None:
                # Before anything changes: what a failed restore puts back.
                progress.step = "reading the accounts before the restore"
                snapshot = PrivilegeSnapshot.take(server, cnf, accounts.accounts, accounts.roles)
                # Accounts with their global and database grants first: the definers of
                # the dump's views and routines hold their rights while those are created.
                ctx.progress.stage("restoring accounts")
                progress.step = "re-creating the accounts"
                script = accounts.create_script(snapshot.holders)
                _run(argv, io.BytesIO(script), deadline, progress.step)
            ctx.progress.stage("restoring databases")
            progress.step = "replaying the databases"
            late = accounts.late_grants() if accounts is not None else b""
            with ctx.artifact.open(DATABASES_STREAM) as stream:
                dump = DumpWithGrants(stream, late, "cozybackup-" + secrets.token_hex(8))
                _run(argv, dump, deadline, progress.step, seen=progress.watch(dump))
            if progress.output.data_warnings:
                ctx.log.warning(
                    "the replay stored %d values other than the backup held, e.g.: %s",
                    progress.output.data_warnings,
                    "; ".join(progress.output.examples),
                )
                # The tenant's own data and columns: theirs to know, at restore time.
                n = progress.output.data_warnings
                ctx.warn(
                    f"the server stored {n} value{'s' if n != 1 else ''} other than the "
                    f"backup held (e.g. {progress.output.examples[0]}); the backup's "
                    "warnings name the tables, and mode: physical restores them exactly"
                    if progress.output.examples
                    else f"the server stored {n} values other than the backup held"
                )
        except CozyError as exc:
            raise progress.failed(exc, server, cnf, snapshot) from None
        finally:
            if accounts is not None:
                accounts.clean_up(server, cnf)


def _run(
    argv: list[str],
    script: IO[bytes] | DumpWithGrants,
    deadline: Deadline,
    doing: str,
    seen: ClientOutput | None = None,
) -> None:
    """Run the client on ``script``; its output (the marker rows) goes to ``seen``."""
    try:
        run_tool(
            argv,
            stdin=cast(IO[bytes], script),
            stdout=cast(IO[bytes], seen or ClientOutput()),
            deadline=deadline,
            what="the mariadb client",
        )
    except DriverError as exc:
        raise classify(exc, doing=doing) from None


@attrs.define
class _Progress:
    """How far a logical restore got, to say exactly what a failure changed."""

    databases: list[str]
    step: str = "connecting"
    #: What the client printed: the replay's marker rows and data warnings.
    output: ClientOutput = attrs.field(factory=ClientOutput)
    dump: DumpWithGrants | None = None

    def watch(self, dump: DumpWithGrants) -> ClientOutput:
        self.dump = dump
        return self.output

    def failed(
        self,
        exc: CozyError,
        server: Server,
        cnf: str,
        snapshot: PrivilegeSnapshot | None,
    ) -> CozyError:
        changed = [self._databases_changed()]
        if snapshot is not None:
            changed.append(self._put_back(server, cnf, snapshot))
        elif self.step == "reading the accounts before the restore":
            changed.append("no account was changed")
        message = (
            f"{exc.message}; {'; '.join(changed)}; run the RestoreJob again once the cause is fixed"
        )
        new = copy.copy(exc)
        new.message = message
        new.args = (message,)
        return new

    def _databases_changed(self) -> str:
        seen = self.output.lines
        if self.dump is None or self.dump.database_marker(0) not in seen:
            return "no database was touched"
        started = 0
        while self.dump.database_marker(started) in seen:
            started += 1
        if not self.databases:  # metadata from an older backup
            return "the databases replayed so far were replaced and the others are unchanged"
        if started > len(self.databases) or self.dump.grants_marker() in seen:
            # The dump's second pass (the views) had begun.
            return (
                "every database in the backup was replaced, but its views and its table, "
                "column and routine grants were not all restored"
            )
        done, current = self.databases[: started - 1], self.databases[started - 1]
        rest = self.databases[started:]
        text = f"database {current!r} was dropped and only partly restored"
        if done:
            text += "; replaced: " + ", ".join(repr(d) for d in done)
        if rest:
            text += "; unchanged: " + ", ".join(repr(d) for d in rest)
        return text

    def _put_back(self, server: Server, cnf: str, snapshot: PrivilegeSnapshot) -> str:
        """Put the accounts back as they were; say what they are now, checked."""
        what = f"the {len(snapshot.accounts)} accounts and roles in the backup and their grants"
        try:
            if snapshot.still_holds(server, cnf):
                return f"{what} are unchanged"
            run_tool(
                [find_tool("mariadb", "mysql"), f"--defaults-file={cnf}", "--batch"],
                stdin=io.BytesIO(snapshot.put_back_script()),
                deadline=Deadline.after(120),
                what="the mariadb client",
            )
            if snapshot.still_holds(server, cnf):
                return f"{what} were put back exactly as they were before the restore"
        except CozyError:
            pass
        return (
            f"{what} were changed and could not be put back as they were before the restore; "
            "ask the platform operator"
        )
