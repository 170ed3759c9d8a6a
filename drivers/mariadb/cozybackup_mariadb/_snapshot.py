"""The privilege-table rows of the accounts a logical restore touches, taken before it
begins, and put back exactly if it fails."""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from cozybackup_core import Deadline

from ._accounts import Account, script
from ._conn import Server, quote_ident, quote_string
from ._conn import query as sql_query

#: The privilege tables, and which of their columns name an account.
_PRIVILEGE_TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "global_priv": (("User", "Host"),),
    "db": (("User", "Host"),),
    "tables_priv": (("User", "Host"),),
    "columns_priv": (("User", "Host"),),
    "procs_priv": (("User", "Host"),),
    "proxies_priv": (("User", "Host"), ("Proxied_user", "Proxied_host")),
    "roles_mapping": (("User", "Host"),),
}


@attrs.frozen
class PrivilegeSnapshot:
    """The privilege tables' rows of some accounts, as they were, and how to put them back.

    Rows rather than ``SHOW GRANTS``: a table grant survives its table being dropped,
    and a GRANT cannot re-create it while the table is missing (a failed replay may
    have dropped it); rows can be put back exactly, whatever exists.
    """

    accounts: tuple[Account, ...]
    roles: tuple[str, ...]
    #: table -> its column names and its rows, each row as SQL literals.
    rows: dict[str, tuple[list[str], list[str]]]
    #: (user, host, role, admin option) of the other accounts holding these roles.
    holders: list[tuple[str, ...]] = attrs.field(factory=list)

    @classmethod
    def take(
        cls, server: Server, cnf: str, accounts: Iterable[Account], roles: Iterable[str]
    ) -> PrivilegeSnapshot:
        accounts, roles = tuple(accounts), tuple(roles)
        tables = list(_PRIVILEGE_TABLES)
        (columns,) = sql_query(
            server,
            cnf,
            [
                "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "  # noqa: S608 - quoted
                "WHERE TABLE_SCHEMA = 'mysql' AND TABLE_NAME IN ("
                + ", ".join(quote_string(t) for t in tables)
                + ") ORDER BY TABLE_NAME, ORDINAL_POSITION"
            ],
            deadline=Deadline.after(60),
            doing="reading the accounts before the restore",
        )
        names: dict[str, list[str]] = {t: [] for t in tables}
        for table, column in columns:
            names[table].append(column)
        snapshot = cls(accounts, roles, {})
        results = sql_query(
            server,
            cnf,
            [
                "SELECT CONCAT_WS(',', "  # noqa: S608 - every name is quoted
                + ", ".join(f"QUOTE({quote_ident(c)})" for c in names[t])
                + f") FROM mysql.{quote_ident(t)} WHERE {snapshot._where(t)}"
                for t in tables
            ],
            deadline=Deadline.after(120),
            doing="reading the accounts before the restore",
        )
        for table, rows in zip(tables, results, strict=True):
            snapshot.rows[table] = (names[table], [row[0] for row in rows])
        if roles:
            (holders,) = sql_query(
                server,
                cnf,
                [
                    "SELECT User, Host, Role, Admin_option FROM mysql.roles_mapping WHERE "  # noqa: S608 - quoted
                    f"Role IN ({', '.join(quote_string(r) for r in roles)}) "
                    f"AND NOT ({snapshot._where('global_priv')})"
                ],
                deadline=Deadline.after(60),
                doing="reading the accounts before the restore",
            )
            snapshot.holders.extend(holders)
        return snapshot

    def still_holds(self, server: Server, cnf: str) -> bool:
        """Whether the privilege tables hold exactly these rows for these accounts."""
        now = PrivilegeSnapshot.take(server, cnf, self.accounts, self.roles)
        return all(
            sorted(now.rows[table][1]) == sorted(rows) for table, (_, rows) in self.rows.items()
        )

    def put_back_script(self) -> bytes:
        out = ["SET SESSION sql_mode='';"]
        for table, (columns, rows) in self.rows.items():
            where = self._where(table)
            out.append(f"DELETE FROM mysql.{quote_ident(table)} WHERE {where};")  # noqa: S608
            if rows:
                cols = ", ".join(quote_ident(c) for c in columns)
                values = ",\n".join(f"({row})" for row in rows)
                out.append(f"INSERT INTO mysql.{quote_ident(table)} ({cols}) VALUES\n{values};")
        out.append("FLUSH PRIVILEGES;")
        return script(out)

    def _where(self, table: str) -> str:
        if not self.accounts:
            return "FALSE"
        pairs = ", ".join(f"({quote_string(u)}, {quote_string(h)})" for u, h in self.accounts)
        conds = [
            f"({quote_ident(user)}, {quote_ident(host)}) IN ({pairs})"
            for user, host in _PRIVILEGE_TABLES[table]
        ]
        if table == "roles_mapping" and self.roles:
            # Re-creating a role takes it away from everyone who held it.
            conds.append("`Role` IN (" + ", ".join(quote_string(r) for r in self.roles) + ")")
        return " OR ".join(conds)
