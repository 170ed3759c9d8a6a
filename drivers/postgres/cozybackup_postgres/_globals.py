"""``globals.sql`` (``pg_dumpall --globals-only``) as a restore replays it.

The statements about the role the platform connects as are left out, so a restore never
changes the platform's own role: its attributes, password, settings or comment.  A
statement may span lines (a comment or setting with a line break in it), so the script
is split into statements, not lines.
"""

from __future__ import annotations

import re

from ._pg import ident


def statements(sql: str) -> list[str]:
    """``sql`` cut into its statements (each with its line break), psql meta-commands (a line starting with a backslash) and comment lines.  Knows
    single-quoted literals and double-quoted names, the only quoting pg_dumpall uses in
    it (``standard_conforming_strings`` is on)."""
    out: list[str] = []
    start = i = 0
    n = len(sql)
    quote = ""
    blank = True  # nothing but whitespace since ``start``
    while i < n:
        c = sql[i]
        if quote:
            if c == quote:
                quote = ""
            i += 1
            continue
        if blank and (c == "\\" or sql.startswith("--", i)):
            i = _line_end(sql, i)  # a meta-command or a comment: the whole line
        elif c == ";":
            i = _after_semicolon(sql, i)
        else:
            if c in "'\"":
                quote = c
            blank = blank and c.isspace()
            i += 1
            continue
        out.append(sql[start:i])
        start, blank = i, True
    if start < n:
        out.append(sql[start:])
    return out


def _after_semicolon(sql: str, i: int) -> int:
    """Past the ``;`` at ``sql[i]``, and past the line break if only blanks come first."""
    j = i + 1
    while j < len(sql) and sql[j] in " \t\r":
        j += 1
    return j + 1 if j < len(sql) and sql[j] == "\n" else i + 1


def _line_end(sql: str, i: int) -> int:
    """The index just past the end of the line holding ``sql[i]``."""
    end = sql.find("\n", i)
    return len(sql) if end < 0 else end + 1


def filter_globals(sql: str, user: str) -> str:
    """``sql`` without the statements that would change role ``user`` (ourselves):
    creating it, ``ALTER ROLE`` of any kind (attributes, password, settings, renaming)
    and its comment.  Memberships granted to it stay (they give a superuser nothing)."""
    spellings = {ident(user)}
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", user):
        spellings.add(user)
    drop = (
        tuple(f"CREATE ROLE {s};" for s in spellings)
        + tuple(f"ALTER ROLE {s} " for s in spellings)
        + tuple(f"COMMENT ON ROLE {s} IS " for s in spellings)
    )
    return "".join(s for s in statements(sql) if not s.lstrip().startswith(drop))
