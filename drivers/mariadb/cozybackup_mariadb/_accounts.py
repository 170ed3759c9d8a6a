"""Accounts, roles and grants of a logical backup, and how a restore puts them in.

A restore must give every definer its rights while the objects that need them are
created, and must never leave accounts emptier than they were.  So:

* the accounts are re-created with their *early* grants (global, database-level, role
  and proxy grants, default roles): these need no object to exist;
* the *late* grants (table, column and routine grants) need their objects; they are
  put into the dump's replay after the tables and routines exist and before the views
  are created (a view's definer must hold its rights when a view over it is created);
* before anything changes, the privilege tables' rows of every account the restore
  touches are read (:class:`._snapshot.PrivilegeSnapshot`); if the restore fails,
  they are put back exactly, even for tables the failed replay dropped.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterable, Iterator
from typing import IO, Any

import attrs

from cozybackup_core import CozyError, Deadline, DriverError, iter_chunks

from ._conn import Server, quote_ident, quote_string
from ._conn import query as sql_query

ACCOUNTS_STREAM = "accounts.jsonl"
FORMAT = 1
#: Accounts that belong to the server or the platform, never backed up or restored.
SERVER_ACCOUNTS = frozenset({"root", "mariadb.sys", "mysql", ""})
ACCOUNTS_HEADER = {"format": FORMAT, "kind": "cozybackup-mariadb accounts"}

#: (user, host) of an account; a role's host is "".
Account = tuple[str, str]


@attrs.define
class AccountRecords:
    """The account records of a backup, turned into the SQL that re-creates them."""

    creates: list[dict[str, Any]]
    grants: list[dict[str, Any]]
    #: Roles are created WITH ADMIN this temporary role, as mariadb-dump does, so that
    #: the restoring account does not end up holding every role it re-creates.
    helper: str = attrs.field(factory=lambda: f"cozybackup_import_{secrets.token_hex(4)}")

    @classmethod
    def read(cls, stream: IO[bytes], *, skip_user: str) -> AccountRecords:
        data = b"".join(iter_chunks(stream))
        lines = data.decode("utf-8", "surrogateescape").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
            records = [json.loads(line) for line in lines[1:]]
        except ValueError:
            raise DriverError("the backup's account list is damaged") from None
        if header.get("kind") != ACCOUNTS_HEADER["kind"] or header.get("format") != FORMAT:
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

    @property
    def accounts(self) -> list[Account]:
        """Every account or role the restore re-creates (a role's host is "")."""
        return [(r["user"], "" if r["role"] else r["host"]) for r in self.creates]

    @property
    def roles(self) -> list[str]:
        return [r["user"] for r in self.creates if r["role"]]

    def create_script(self, holders: Iterable[tuple[str, ...]] = ()) -> bytes:
        """Re-create the accounts and give them every grant that needs no object.

        ``holders``: (user, host, role, admin option) of accounts outside the backup
        that hold a role it re-creates; ``CREATE OR REPLACE ROLE`` takes the role away
        from them, and they get it back.
        """
        helper = quote_ident(self.helper)
        out = ["SET SESSION sql_mode='';", f"CREATE ROLE {helper};", f"SET ROLE {helper};"]
        for rec in self.creates:
            if rec["role"]:
                out.append(
                    f"CREATE OR REPLACE ROLE {quote_ident(rec['user'])} WITH ADMIN {helper};"
                )
            else:
                out.append(_statement(rec["sql"]))
        out += [_statement(r["sql"]) for r in self.grants if not needs_objects(r["sql"])]
        for user, host, role, admin in holders:
            grantee = (
                quote_ident(user) if not host else f"{quote_string(user)}@{quote_string(host)}"
            )
            option = " WITH ADMIN OPTION" if admin == "Y" else ""
            out.append(f"GRANT {quote_ident(role)} TO {grantee}{option};")
        out.append("SET ROLE NONE;")
        # CREATE USER restarts the password's clock (expiry intervals, PASSWORD EXPIRE).
        clocks = [r for r in self.creates if isinstance(r.get("password_last_changed"), int)]
        out += [
            "UPDATE mysql.global_priv SET Priv = JSON_SET(Priv, '$.password_last_changed', "  # noqa: S608 - quoted
            f"{int(r['password_last_changed'])}) WHERE User = {quote_string(r['user'])} "
            f"AND Host = {quote_string(r['host'])};"
            for r in clocks
        ]
        if clocks:
            out.append("FLUSH PRIVILEGES;")
        return script(out)

    def late_grants(self) -> bytes:
        """Table, column and routine grants, once their objects exist.

        Run inside the dump's session: its sql_mode is saved and put back.
        """
        late = [_statement(r["sql"]) for r in self.grants if needs_objects(r["sql"])]
        if not late:
            return b""
        out = [
            "SET @cozybackup_saved_sql_mode = @@SESSION.sql_mode,",
            "  @cozybackup_saved_client = @@SESSION.character_set_client,",
            "  @cozybackup_saved_results = @@SESSION.character_set_results,",
            "  @cozybackup_saved_connection = @@SESSION.collation_connection;",
            # The grants are UTF-8 and backslash-escaped, whatever the dump set last.
            "SET NAMES utf8mb4, SESSION sql_mode='';",
            *late,
            "SET SESSION sql_mode = @cozybackup_saved_sql_mode,",
            "  SESSION character_set_client = @cozybackup_saved_client,",
            "  SESSION character_set_results = @cozybackup_saved_results,",
            "  SESSION collation_connection = @cozybackup_saved_connection;",
        ]
        return script(out)

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


def needs_objects(grant: str) -> bool:
    """Whether a ``SHOW GRANTS`` line grants on a table, column or routine.

    Such a GRANT fails until its object exists.  Global (``*.*``), database (``db.*``),
    role and proxy grants and ``SET DEFAULT ROLE`` do not need any object.
    """
    target = _after_top_level_on(grant)
    if target is None:
        return False
    word = target.split(None, 1)[0].upper() if target.strip() else ""
    if word in ("FUNCTION", "PROCEDURE", "PACKAGE"):
        return True
    if target.startswith("*"):
        return False  # *.* (global)
    rest = _skip_identifier(target)
    if rest is None or not rest.startswith("."):
        return False  # PROXY ON 'user'@'host', or a form this parser does not know
    return not rest[1:].lstrip().startswith("*")


def _after_top_level_on(sql: str) -> str | None:
    """The text after the keyword ON outside quotes and parentheses, or None."""
    depth = 0
    i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch in "`'\"":
            i = _end_of_quoted(sql, i)
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif (
            depth == 0
            and sql[i : i + 2].upper() == "ON"
            and (i == 0 or sql[i - 1].isspace())
            and i + 2 < n
            and sql[i + 2].isspace()
        ):
            return sql[i + 2 :].lstrip()
        i += 1
    return None


def _end_of_quoted(sql: str, start: int) -> int:
    """The index just past the quoted token starting at ``start``."""
    quote = sql[start]
    i = start + 1
    while i < len(sql):
        ch = sql[i]
        if ch == "\\" and quote != "`":
            i += 2
            continue
        if ch == quote:
            if sql[i + 1 : i + 2] == quote:  # a doubled quote stands for itself
                i += 2
                continue
            return i + 1
        i += 1
    return i


def _skip_identifier(text: str) -> str | None:
    if text.startswith("`"):
        return text[_end_of_quoted(text, 0) :]
    i = 0
    while i < len(text) and (text[i].isalnum() or text[i] in "_$"):
        i += 1
    return text[i:] if i else None


def _statement(sql: Any) -> str:
    return str(sql).rstrip().rstrip(";") + ";"


def script(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------------- backup


def account_records(server: Server, cnf: str, deadline: Deadline) -> Iterator[dict[str, Any]]:
    rows, changed = sql_query(
        server,
        cnf,
        [
            "SELECT User, Host, is_role FROM mysql.user ORDER BY is_role DESC, User, Host",
            # Not in SHOW CREATE USER: when the password was set (0: PASSWORD EXPIRE).
            "SELECT User, Host, JSON_VALUE(Priv, '$.password_last_changed') FROM mysql.global_priv",
        ],
        deadline=deadline,
        doing="listing the accounts",
    )
    password_set = {(u, h): int(t) for u, h, t in changed if t.isdigit()}
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
            creates.append(
                {
                    **who,
                    "phase": "create",
                    "sql": "CREATE OR REPLACE USER " + sql[12:],
                    "password_last_changed": password_set.get((user, host)),
                }
            )
        grants += [{**who, "phase": "grant", "sql": row[0]} for row in next(results)]
    yield from creates
    yield from grants


def _account(user: str, host: str, role: bool) -> str:
    if role:
        return "PUBLIC" if user == "PUBLIC" else quote_string(user)
    return f"{quote_string(user)}@{quote_string(host)}"
