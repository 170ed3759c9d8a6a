"""A server's roles and tablespaces as one record: read, compared, and set.

A backup writes both records (``_roles``, ``_tablespaces``); a restore reads the
target's before it begins, sets the backup's after replaying ``globals.sql``, and, when
it fails, sets the target's own again (:func:`plan`), then drops what it created
(:func:`added`).
"""

from __future__ import annotations

from collections.abc import Collection

import attrs

from cozybackup_core import Deadline, DriverError

from . import _roles, _tablespaces
from ._pg import ADMIN_DB, Server, ident, quoted
from ._roles import RoleState
from ._tablespaces import Tablespace


@attrs.frozen
class ServerWide:
    roles: RoleState
    tablespaces: tuple[Tablespace, ...]


def read(server: Server, deadline: Deadline) -> ServerWide:
    """The server's roles (without passwords if this account may not read them) and
    tablespaces now."""
    doing = "reading the roles of the database server"
    try:
        roles = server.query_json(
            _roles.read_sql(True), deadline=deadline, database=ADMIN_DB, doing=doing
        )
    except DriverError as exc:
        if "pg_authid" not in (exc.admin_detail or ""):
            raise
        roles = server.query_json(
            _roles.read_sql(False), deadline=deadline, database=ADMIN_DB, doing=doing
        )
    tablespaces = server.query_json(
        _tablespaces.READ_SQL, deadline=deadline, database=ADMIN_DB, doing=doing
    )
    return ServerWide(RoleState.from_json(roles), _tablespaces.from_json(tablespaces))


def plan(want: ServerWide, have: ServerWide, keep_out: Collection[str]) -> list[str]:
    """Statements (one transaction) that make ``have`` hold ``want``'s roles and
    tablespaces; roles in ``keep_out`` are never changed."""
    return _roles.plan(want.roles, have.roles, keep_out) + _tablespaces.plan(
        want.tablespaces, have.tablespaces
    )


def added(before: ServerWide, now: ServerWide, keep_out: Collection[str]) -> list[str]:
    """``DROP`` statements, one each, for what ``now`` has and ``before`` had not:
    tablespaces first (a role cannot be dropped while it owns one)."""
    return [
        f"DROP TABLESPACE {ident(t)};"
        for t in _tablespaces.added(before.tablespaces, now.tablespaces)
    ] + [f"DROP ROLE {ident(r)};" for r in _roles.added_roles(before.roles, now.roles, keep_out)]


def changed(before: ServerWide, now: ServerWide, keep_out: Collection[str]) -> list[str]:
    """What differs, for a message: role names, and ``tablespace "x"`` for tablespaces."""
    return [quoted(r) for r in _roles.changed_roles(before.roles, now.roles, keep_out)] + [
        f"tablespace {quoted(t)}" for t in _tablespaces.changed(before.tablespaces, now.tablespaces)
    ]
