"""Roles exactly as backed up: a record of every role, and the statements that make a
server's roles match a record.

``pg_dumpall --globals-only`` states only what differs from a default: a role that had
no ``CONNECTION LIMIT``, no ``VALID UNTIL``, no password or no comment at backup time,
and was later locked, given a password or a comment, keeps those after replaying it; so
do memberships and settings added later.  The backup therefore also writes
:data:`ROLES_STREAM`, every role's attributes (defaults included), memberships and
server-wide settings as read from the catalogs; a restore compares the target with it
and changes what differs (:func:`plan`).  The same comparison puts a target's roles back
as they were when a restore fails (a record read before the restore began).

Never part of either: built-in ``pg_*`` roles, and the role the platform connects as.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

import attrs

from ._pg import ident, literal

ROLES_STREAM = "roles.json"

#: (attribute, keyword of ALTER ROLE), in the order pg_dumpall writes them.
FLAGS = (
    ("superuser", "SUPERUSER"),
    ("inherit", "INHERIT"),
    ("createrole", "CREATEROLE"),
    ("createdb", "CREATEDB"),
    ("login", "LOGIN"),
    ("replication", "REPLICATION"),
    ("bypassrls", "BYPASSRLS"),
)

#: Settings whose value is a list of quoted items (``variable_is_guc_list_quote`` in
#: PostgreSQL's dumputils.c): each item is its own literal when set again.
LIST_SETTINGS = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)


def builtin(name: str) -> bool:
    """PostgreSQL's own roles (``pg_*``): a restore never changes them."""
    return name.startswith("pg_")


@attrs.frozen(kw_only=True)
class Role:
    """One row of ``pg_authid`` (by name: oids differ between servers) and its comment."""

    name: str
    superuser: bool = False
    inherit: bool = True
    createrole: bool = False
    createdb: bool = False
    login: bool = False
    replication: bool = False
    bypassrls: bool = False
    connection_limit: int = -1
    valid_until: str | None = None  # ISO 8601 with offset, or "infinity"
    password: str | None = None  # the stored hash; None: no password
    comment: str | None = None
    settings: tuple[str, ...] = ()  # pg_db_role_setting for all databases, "name=value"


@attrs.frozen(kw_only=True)
class Membership:
    """One row of ``pg_auth_members``: ``member`` is a member of ``role``."""

    role: str
    member: str
    grantor: str | None  # None: a role that no longer exists
    admin_option: bool


@attrs.frozen(kw_only=True)
class RoleState:
    """Every role of a server.  ``passwords`` is False when the account that read them
    could not read ``pg_authid`` (then :attr:`Role.password` means nothing)."""

    passwords: bool
    roles: tuple[Role, ...]
    memberships: tuple[Membership, ...]
    #: ``ALTER ROLE ALL SET``: settings for every role in every database, which
    #: pg_dumpall does not dump at all.
    all_roles_settings: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "passwords": self.passwords,
                "roles": [attrs.asdict(r) for r in self.roles],
                "memberships": [attrs.asdict(m) for m in self.memberships],
                "all_roles_settings": list(self.all_roles_settings),
            },
            indent=1,
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes | str | Mapping[str, Any]) -> RoleState:
        """Raises ValueError, KeyError or TypeError when ``raw`` is not such a record."""
        data = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
        roles = tuple(
            Role(**{**r, "settings": tuple(r.get("settings") or ())}) for r in data["roles"]
        )
        memberships = tuple(Membership(**m) for m in data["memberships"])
        if not isinstance(data["passwords"], bool):
            raise TypeError("passwords")
        return cls(
            passwords=data["passwords"],
            roles=roles,
            memberships=memberships,
            all_roles_settings=tuple(data.get("all_roles_settings") or ()),
        )


def read_sql(passwords: bool) -> str:
    """One query: the server's roles as JSON for :meth:`RoleState.from_json`.

    Without ``passwords`` it reads ``pg_roles``, which any account may read.
    """
    table = "pg_catalog.pg_authid" if passwords else "pg_catalog.pg_roles"
    password = "a.rolpassword" if passwords else "NULL::text"
    # UTC: the same instant reads the same on every server.
    return f"""SET TimeZone = 'UTC';
SELECT json_build_object(
  'passwords', {"true" if passwords else "false"},
  'roles', (SELECT coalesce(json_agg(json_build_object(
      'name', a.rolname, 'superuser', a.rolsuper, 'inherit', a.rolinherit,
      'createrole', a.rolcreaterole, 'createdb', a.rolcreatedb, 'login', a.rolcanlogin,
      'replication', a.rolreplication, 'bypassrls', a.rolbypassrls,
      'connection_limit', a.rolconnlimit, 'valid_until', a.rolvaliduntil,
      'password', {password}, 'comment', pg_catalog.shobj_description(a.oid, 'pg_authid'),
      'settings', (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s
                   WHERE s.setrole = a.oid AND s.setdatabase = 0))
    ORDER BY a.rolname), '[]') FROM {table} a),
  'all_roles_settings', (SELECT s.setconfig FROM pg_catalog.pg_db_role_setting s
                         WHERE s.setrole = 0 AND s.setdatabase = 0),
  'memberships', (SELECT coalesce(json_agg(json_build_object(
      'role', r.rolname, 'member', m.rolname, 'grantor', g.rolname,
      'admin_option', am.admin_option) ORDER BY r.rolname, m.rolname), '[]')
    FROM pg_catalog.pg_auth_members am
    JOIN pg_catalog.pg_roles r ON r.oid = am.roleid
    JOIN pg_catalog.pg_roles m ON m.oid = am.member
    LEFT JOIN pg_catalog.pg_roles g ON g.oid = am.grantor));
"""  # noqa: S608 - no value from outside: two fixed spellings


def split_list_setting(value: str) -> list[str]:
    """The items of a list setting as the catalog stores it (``"$user", public``);
    PostgreSQL's ``SplitGUCList``: double quotes group, ``""`` is a quote."""
    items: list[str] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i].isspace():
            i += 1
        item = []
        if i < n and value[i] == '"':
            i += 1
            while i < n:
                if value[i] == '"':
                    if i + 1 < n and value[i + 1] == '"':
                        item.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                item.append(value[i])
                i += 1
        else:
            while i < n and value[i] != ",":
                item.append(value[i])
                i += 1
            while item and item[-1].isspace():
                item.pop()
        items.append("".join(item))
        while i < n and value[i].isspace():
            i += 1
        if i >= n or value[i] != ",":
            return items
        i += 1


def set_setting_sql(role: str | None, setting: str) -> str:
    """``ALTER ROLE … SET`` for one ``name=value`` of ``pg_db_role_setting`` (as pg_dumpall
    writes it, so the catalog ends up holding the same text); role None: ``ALL``."""
    name, _, value = setting.partition("=")
    if name.lower() in LIST_SETTINGS:
        rhs = ", ".join(literal(v) for v in split_list_setting(value))
    else:
        rhs = literal(value)
    who = "ALL" if role is None else ident(role)
    return f"ALTER ROLE {who} SET {ident(name)} TO {rhs};"


def _grant(m: Membership, known: Collection[str]) -> str:
    sql = f"GRANT {ident(m.role)} TO {ident(m.member)}"
    if m.admin_option:
        sql += " WITH ADMIN OPTION"
    if m.grantor is not None and m.grantor in known:
        sql += f" GRANTED BY {ident(m.grantor)}"
    return sql + ";"


def plan(want: RoleState, have: RoleState, keep_out: Collection[str]) -> list[str]:
    """The statements that make ``have`` (a server now) hold ``want`` for every role of
    ``want``: attributes, password (when both sides could read them), comment,
    server-wide settings, and the memberships those roles hold; and the settings for all
    roles (``ALTER ROLE ALL SET``).

    Roles in ``keep_out`` (the platform's own) and built-in roles are never changed;
    roles only ``have`` knows are left alone (see :func:`added_roles`).
    """
    current = {r.name: r for r in have.roles}
    managed = [r for r in want.roles if r.name not in keep_out and not builtin(r.name)]
    names = {r.name for r in managed}
    known = set(current) | {r.name for r in want.roles}
    out: list[str] = []
    for r in managed:
        h = current.get(r.name)
        if h is None:
            out.append(f"CREATE ROLE {ident(r.name)};")
            h = Role(name=r.name)
        opts = [
            kw if getattr(r, a) else "NO" + kw for a, kw in FLAGS if getattr(r, a) != getattr(h, a)
        ]
        if r.connection_limit != h.connection_limit:
            opts.append(f"CONNECTION LIMIT {int(r.connection_limit)}")
        if r.valid_until != h.valid_until and r.valid_until is not None:
            opts.append(f"VALID UNTIL {literal(r.valid_until)}")
        if want.passwords and (not have.passwords or r.password != h.password):
            opts.append(
                "PASSWORD NULL" if r.password is None else f"PASSWORD {literal(r.password)}"
            )
        if opts:
            out.append(f"ALTER ROLE {ident(r.name)} WITH {' '.join(opts)};")
        if r.valid_until is None and h.valid_until is not None:
            # ALTER ROLE can only set an expiry ('infinity' is one), never none at all.
            # (The name is quoted by literal().)
            where = f"WHERE rolname = {literal(r.name)};"
            out.append(f"UPDATE pg_catalog.pg_authid SET rolvaliduntil = NULL {where}")  # noqa: S608
        if r.comment != h.comment:
            text = "NULL" if r.comment is None else literal(r.comment)
            out.append(f"COMMENT ON ROLE {ident(r.name)} IS {text};")
        if r.settings != h.settings:
            out.append(f"ALTER ROLE {ident(r.name)} RESET ALL;")
            out.extend(set_setting_sql(r.name, s) for s in r.settings)
    if want.all_roles_settings != have.all_roles_settings:
        out.append("ALTER ROLE ALL RESET ALL;")
        out.extend(set_setting_sql(None, s) for s in want.all_roles_settings)
    wanted = {(m.role, m.member): m for m in want.memberships if m.member in names}
    held = {(m.role, m.member): m for m in have.memberships if m.member in names}
    for key, m in held.items():
        if key not in wanted:
            out.append(f"REVOKE {ident(m.role)} FROM {ident(m.member)};")
    for key, m in wanted.items():
        if m.role not in known:
            continue  # a built-in role this server does not have
        h2 = held.get(key)
        if h2 is None:
            out.append(_grant(m, known))
        elif h2.grantor != m.grantor and m.grantor in known:
            out.append(f"REVOKE {ident(m.role)} FROM {ident(m.member)};")
            out.append(_grant(m, known))
        elif h2.admin_option and not m.admin_option:
            out.append(f"REVOKE ADMIN OPTION FOR {ident(m.role)} FROM {ident(m.member)};")
        elif m.admin_option and not h2.admin_option:
            out.append(_grant(m, known))
    return out


def added_roles(before: RoleState, now: RoleState, keep_out: Collection[str]) -> list[str]:
    """Roles ``now`` has that ``before`` had not (what a failed restore created)."""
    had = {r.name for r in before.roles}
    return [
        r.name
        for r in now.roles
        if r.name not in had and r.name not in keep_out and not builtin(r.name)
    ]


def changed_roles(before: RoleState, now: RoleState, keep_out: Collection[str]) -> list[str]:
    """The roles (not ``keep_out``, not built-in) whose attributes, password (when both
    could be read), comment, settings or memberships differ, or that only one side has."""
    blind = not (before.passwords and now.passwords)

    def rows(state: RoleState) -> dict[str, Role]:
        return {
            r.name: attrs.evolve(r, password=None) if blind else r
            for r in state.roles
            if r.name not in keep_out and not builtin(r.name)
        }

    def held(state: RoleState) -> dict[tuple[str, str], Membership]:
        return {(m.role, m.member): m for m in state.memberships}

    was, now_rows = rows(before), rows(now)
    out = {n for n in set(was) | set(now_rows) if was.get(n) != now_rows.get(n)}
    m_was, m_now = held(before), held(now)
    for key in set(m_was) | set(m_now):
        if m_was.get(key) != m_now.get(key) and key[1] in set(was) | set(now_rows):
            out.add(key[1])
    return sorted(out)


def as_script(statements: list[str]) -> str:
    """One transaction: either every statement takes effect or none does."""
    return "BEGIN;\n" + "\n".join(statements) + "\nCOMMIT;\n"
