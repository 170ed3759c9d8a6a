"""Quoting, and the one piece of ClickHouse DDL the driver reads: a CREATE's head.

``system.tables.create_table_query`` starts ``CREATE <kind> <db>.<name>``, written by
the server itself (18.16 and 26.x alike), then for a materialized view an optional
``TO <db>.<name>``.  The driver parses only that head: to find a view's target table,
and to put a table under another database's name while it is staged.  Nothing after
the head is ever parsed or changed.
"""

from __future__ import annotations

import re

import attrs

_ESCAPES = {"\\": "\\\\", "\0": "\\0", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(value: str, quote: str) -> str:
    out = "".join(_ESCAPES.get(c, c) for c in value)
    return out.replace(quote, "\\" + quote)


def ident(name: str) -> str:
    """A back-quoted identifier (any character; both 18.16 and current servers read it)."""
    return "`" + _escape(name, "`") + "`"


def qualified(database: str, name: str) -> str:
    return f"{ident(database)}.{ident(name)}"


def literal(value: str) -> str:
    """A single-quoted string literal."""
    return "'" + _escape(value, "'") + "'"


def literals(values: list[str] | tuple[str, ...]) -> str:
    """``('a', 'b')`` for an ``IN`` list (never empty: ``('')`` matches nothing real)."""
    return "(" + ", ".join(literal(v) for v in values or [""]) + ")"


# ---------------------------------------------------------------------- CREATE heads

_KIND = re.compile(
    r"\s*(?:CREATE|ATTACH)\s+(?:OR\s+REPLACE\s+)?(?:TEMPORARY\s+)?"
    r"(?P<kind>TABLE|VIEW|MATERIALIZED\s+VIEW|LIVE\s+VIEW|WINDOW\s+VIEW|DICTIONARY)\s+"
    r"(?:IF\s+NOT\s+EXISTS\s+)?",
    re.IGNORECASE,
)
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_UUID = re.compile(r"\s+UUID\s+'[0-9a-fA-F-]+'")
_TO = re.compile(r"\s+TO\s+(?!INNER\b)", re.IGNORECASE)
_UNESCAPE = {"0": "\0", "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}


class HeadError(ValueError):
    """A CREATE statement whose head is not the shape the server writes."""


def _read_ident(text: str, pos: int) -> tuple[str, int]:
    """One identifier at ``pos`` (bare, `back-quoted` or "double-quoted"); its end."""
    if pos < len(text) and text[pos] in '`"':
        quote = text[pos]
        out: list[str] = []
        i = pos + 1
        while i < len(text):
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):
                out.append(_UNESCAPE.get(text[i + 1], text[i + 1]))
                i += 2
            elif ch == quote:
                if text[i + 1 : i + 2] == quote:  # a doubled quote stands for itself
                    out.append(quote)
                    i += 2
                else:
                    return "".join(out), i + 1
            else:
                out.append(ch)
                i += 1
        raise HeadError("unterminated quoted identifier")
    m = _BARE.match(text, pos)
    if not m:
        raise HeadError(f"expected an identifier at {pos}")
    return m.group(0), m.end()


def _read_qualified(text: str, pos: int) -> tuple[str | None, str, int]:
    first, pos = _read_ident(text, pos)
    if text[pos : pos + 1] == ".":
        second, pos = _read_ident(text, pos + 1)
        return first, second, pos
    return None, first, pos


@attrs.frozen
class Head:
    """``CREATE <kind> <database>.<name> [TO <to>]``: where the rest of the text starts."""

    kind: str  # TABLE, VIEW, MATERIALIZED VIEW, DICTIONARY, ...
    database: str | None
    name: str
    to: tuple[str | None, str] | None
    #: Where the text after the name (and after a ``UUID '...'`` clause) starts.
    rest: int


def parse_head(create: str) -> Head:
    m = _KIND.match(create)
    if not m:
        raise HeadError("not a CREATE TABLE/VIEW/DICTIONARY statement")
    kind = " ".join(m.group("kind").upper().split())
    database, name, end = _read_qualified(create, m.end())
    rest = end
    if u := _UUID.match(create, rest):
        rest = u.end()
    to = None
    if kind == "MATERIALIZED VIEW" and (t := _TO.match(create, rest)):
        to_db, to_name, _ = _read_qualified(create, t.end())
        to = (to_db, to_name)
    return Head(kind=kind, database=database, name=name, to=to, rest=rest)


def rename_in_create(create: str, database: str, name: str) -> str:
    """The same statement creating ``database.name`` instead (and no fixed UUID: a new
    object gets a new one)."""
    head = parse_head(create)
    return f"CREATE {head.kind} {qualified(database, name)}{create[head.rest :]}"
