"""Tablespaces exactly as backed up: owner, privileges, options and comment.

``pg_dumpall --globals-only`` gives a tablespace's owner only in its ``CREATE
TABLESPACE`` (which fails on a target that has it), and its options, privileges and
comment only where they differ from the defaults, adding and never taking away.  So, as
for roles (``_roles``), the backup records each tablespace as the catalog holds it
(:data:`TABLESPACES_STREAM`) and a restore sets what differs (:func:`plan`); a failed
restore puts them back from a record read before it began.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from ._pg import ident, literal

TABLESPACES_STREAM = "tablespaces.json"


@attrs.frozen(kw_only=True)
class Grant:
    """``CREATE`` on a tablespace (its only privilege) held by ``grantee`` ("": PUBLIC)."""

    grantee: str
    grantable: bool


@attrs.frozen(kw_only=True)
class Tablespace:
    name: str
    owner: str
    grants: tuple[Grant, ...]  # as in effect: no ACL means the owner's default one
    options: tuple[str, ...]  # "name=value"
    comment: str | None


def from_json(raw: bytes | str | Any) -> tuple[Tablespace, ...]:
    """Raises ValueError, KeyError or TypeError when ``raw`` is not such a record."""
    data = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
    return tuple(
        Tablespace(
            name=t["name"],
            owner=t["owner"],
            grants=tuple(Grant(**g) for g in t["grants"] or ()),
            options=tuple(t["options"] or ()),
            comment=t["comment"],
        )
        for t in data
    )


def to_json(tablespaces: tuple[Tablespace, ...]) -> bytes:
    return json.dumps([attrs.asdict(t) for t in tablespaces], indent=1, sort_keys=True).encode()


#: Every tablespace but PostgreSQL's own (pg_default, pg_global).
READ_SQL = """SELECT coalesce(json_agg(json_build_object(
    'name', t.spcname, 'owner', pg_catalog.pg_get_userbyid(t.spcowner),
    'grants', (SELECT json_agg(json_build_object(
                   'grantee', coalesce(r.rolname, ''), 'grantable', x.is_grantable)
                 ORDER BY coalesce(r.rolname, ''))
               FROM pg_catalog.aclexplode(
                 coalesce(t.spcacl, pg_catalog.acldefault('t', t.spcowner))) x
               LEFT JOIN pg_catalog.pg_roles r ON r.oid = x.grantee),
    'options', t.spcoptions,
    'comment', pg_catalog.shobj_description(t.oid, 'pg_tablespace'))
  ORDER BY t.spcname), '[]')
FROM pg_catalog.pg_tablespace t WHERE t.spcname !~ '^pg_';
"""


def _who(grantee: str) -> str:
    return "PUBLIC" if grantee == "" else ident(grantee)


def _option_sql(option: str) -> str:
    name, _, value = option.partition("=")
    return f"{ident(name)} = {literal(value)}"


def plan(want: tuple[Tablespace, ...], have: tuple[Tablespace, ...]) -> list[str]:
    """The statements that give every tablespace of ``want`` that ``have`` (the server
    now) holds the owner, privileges, options and comment it has in ``want``."""
    current = {t.name: t for t in have}
    out: list[str] = []
    for t in want:
        h = current.get(t.name)
        if h is None:
            continue  # not there: creating it failed, and that already failed the restore
        name = ident(t.name)
        held = {g.grantee: g.grantable for g in h.grants}
        if t.owner != h.owner:
            out.append(f"ALTER TABLESPACE {name} OWNER TO {ident(t.owner)};")
            # PostgreSQL hands the old owner's privileges to the new owner.
            if h.owner in held:
                was = held.pop(h.owner)
                held[t.owner] = held.get(t.owner, False) or was
        wanted = {g.grantee: g.grantable for g in t.grants}
        for grantee in sorted(set(held) - set(wanted)):
            out.append(f"REVOKE ALL ON TABLESPACE {name} FROM {_who(grantee)} CASCADE;")
        for grantee, grantable in sorted(wanted.items()):
            if grantee in held and held[grantee] == grantable:
                continue
            if grantee in held and not grantable:
                out.append(
                    f"REVOKE GRANT OPTION FOR CREATE ON TABLESPACE {name} "
                    f"FROM {_who(grantee)} CASCADE;"
                )
            else:
                option = " WITH GRANT OPTION" if grantable else ""
                out.append(f"GRANT CREATE ON TABLESPACE {name} TO {_who(grantee)}{option};")
        if t.options != h.options:
            if h.options:
                names = ", ".join(ident(o.partition("=")[0]) for o in h.options)
                out.append(f"ALTER TABLESPACE {name} RESET ({names});")
            if t.options:
                values = ", ".join(_option_sql(o) for o in t.options)
                out.append(f"ALTER TABLESPACE {name} SET ({values});")
        if t.comment != h.comment:
            text = "NULL" if t.comment is None else literal(t.comment)
            out.append(f"COMMENT ON TABLESPACE {name} IS {text};")
    return out


def added(before: tuple[Tablespace, ...], now: tuple[Tablespace, ...]) -> list[str]:
    """Tablespaces ``now`` has that ``before`` had not (what a failed restore created)."""
    had = {t.name for t in before}
    return [t.name for t in now if t.name not in had]


def changed(before: tuple[Tablespace, ...], now: tuple[Tablespace, ...]) -> list[str]:
    """The tablespaces that differ between ``before`` and ``now``, or only one has."""
    b: Mapping[str, Tablespace] = {t.name: t for t in before}
    n: Mapping[str, Tablespace] = {t.name: t for t in now}
    return sorted(name for name in set(b) | set(n) if b.get(name) != n.get(name))
