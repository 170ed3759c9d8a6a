"""What a logical dump cannot carry exactly, found before the dump is taken.

``mariadb-dump`` and the server lose some things on the way through SQL text:

* FLOAT values are printed with 6 significant digits (a FLOAT holds about 7);
* table definitions are printed in utf8mb3, so a character outside the Basic
  Multilingual Plane (emoji, 4-byte UTF-8) in a SET/ENUM member, a comment or a default
  becomes ``?`` (and values using such a SET/ENUM member are dropped on replay);
* transaction-precise system versioning (``ROW START`` as BIGINT) has no
  ``--dump-history``: its history is lost (timestamp versioning keeps it);
* a routine or event kept with ``NO_BACKSLASH_ESCAPES`` has its COMMENT printed with
  backslash escapes (for backslashes, line breaks, carriage returns, NUL and Ctrl-Z),
  which that mode reads back as printed (a backslash doubles, a line break turns
  into a backslash and an n);
* character data goes through utf8mb4, and some character sets do not come back byte
  for byte (sjis, cp932, big5, ujis: several codes for one character; cp1250, greek,
  ascii...: bytes with no Unicode character become ``?``).  Dumping it unconverted
  (``--default-character-set=binary``) is no way out: INET6, INET4 and UUID values are
  then read back as raw bytes (NULL, or wrong values).

The comments are repaired: the exact ones are appended to the dump as
``ALTER ... COMMENT`` in the object's own sql_mode.  The others cannot be, and the
backup says so when it is made (physical mode keeps all of them exactly).  Which
single-byte character sets lose bytes is asked of the server itself (all 256 bytes
through utf8mb4 and back); every multi-byte set but Unicode's is taken as lossy.
"""

# The queries interpolate only `within`, a list of quote_string literals.
# ruff: noqa: S608

from __future__ import annotations

import attrs

from cozybackup_core import Deadline, short_list

from ._conn import Server, quote_ident, quote_string
from ._conn import query as sql_query

#: Character sets that utf8mb4 carries byte for byte.
_UNICODE = ("utf8mb3", "utf8mb4", "ucs2", "utf16", "utf16le", "utf32", "binary")
#: At most this many objects are named in one warning (the rest are counted).
_NAMED = 20
PHYSICAL = "physical mode (mode: physical) keeps them exactly"


@attrs.frozen
class Survey:
    """What the dump of some databases needs: its history option, warnings, repairs."""

    #: ``--dump-history`` can be used (no transaction-precise versioned table).
    dump_history: bool
    warnings: list[str]
    #: SQL appended to the dump: puts back what mariadb-dump prints wrongly.
    repairs: bytes


def survey(server: Server, cnf: str, databases: list[str], deadline: Deadline) -> Survey:
    if not databases:
        return Survey(dump_history=True, warnings=[], repairs=b"")
    within = "IN (" + ", ".join(quote_string(d) for d in databases) + ")"
    unicode = "(" + ", ".join(quote_string(c) for c in _UNICODE) + ")"
    # A view's columns are in COLUMNS too; a view holds no data and is not named.
    stored = (
        "AND (TABLE_SCHEMA, TABLE_NAME) NOT IN (SELECT TABLE_SCHEMA, TABLE_NAME "
        f"FROM information_schema.VIEWS WHERE TABLE_SCHEMA {within}) "
    )
    floats, question_marks, versioned, trx_precise, routines, events, charsets = sql_query(
        server,
        cnf,
        [
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
            f"WHERE DATA_TYPE = 'float' AND TABLE_SCHEMA {within} {stored}"
            "ORDER BY 1, 2, ORDINAL_POSITION",
            # '?' is how the server prints a 4-byte character in a table definition.
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
            f"WHERE TABLE_SCHEMA {within} {stored}AND ((DATA_TYPE IN ('set', 'enum') AND "
            "COLUMN_TYPE LIKE '%?%') OR COLUMN_COMMENT LIKE '%?%' OR COLUMN_DEFAULT LIKE '%?%') "
            "UNION SELECT TABLE_SCHEMA, TABLE_NAME, '' FROM information_schema.TABLES "
            f"WHERE TABLE_SCHEMA {within} AND TABLE_COMMENT LIKE '%?%' "
            "UNION SELECT TABLE_SCHEMA, TABLE_NAME, INDEX_NAME FROM information_schema.STATISTICS "
            f"WHERE TABLE_SCHEMA {within} AND INDEX_COMMENT LIKE '%?%' "
            "UNION SELECT TABLE_SCHEMA, TABLE_NAME, PARTITION_NAME FROM "
            f"information_schema.PARTITIONS WHERE TABLE_SCHEMA {within} AND "
            "PARTITION_COMMENT LIKE '%?%' ORDER BY 1, 2, 3",
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES "
            f"WHERE TABLE_TYPE = 'SYSTEM VERSIONED' AND TABLE_SCHEMA {within} ORDER BY 1, 2",
            "SELECT DISTINCT TABLE_SCHEMA, TABLE_NAME FROM information_schema.COLUMNS "
            "WHERE GENERATION_EXPRESSION = 'ROW START' AND DATA_TYPE = 'bigint' "
            f"AND TABLE_SCHEMA {within} ORDER BY 1, 2",
            "SELECT ROUTINE_SCHEMA, ROUTINE_NAME, ROUTINE_TYPE, SQL_MODE, ROUTINE_COMMENT "
            "FROM information_schema.ROUTINES WHERE SQL_MODE LIKE '%NO_BACKSLASH_ESCAPES%' "
            "AND ROUTINE_TYPE IN ('PROCEDURE', 'FUNCTION') "
            f"AND ROUTINE_COMMENT <> '' AND ROUTINE_SCHEMA {within} ORDER BY 1, 2",
            "SELECT EVENT_SCHEMA, EVENT_NAME, DEFINER, SQL_MODE, EVENT_COMMENT "
            "FROM information_schema.EVENTS WHERE SQL_MODE LIKE '%NO_BACKSLASH_ESCAPES%' "
            f"AND EVENT_COMMENT <> '' AND EVENT_SCHEMA {within} ORDER BY 1, 2",
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME, CHARACTER_SET_NAME, s.MAXLEN "
            "FROM information_schema.COLUMNS JOIN information_schema.CHARACTER_SETS s "
            f"USING (CHARACTER_SET_NAME) WHERE TABLE_SCHEMA {within} {stored}"
            f"AND CHARACTER_SET_NAME NOT IN {unicode} ORDER BY 1, 2, ORDINAL_POSITION",
        ],
        deadline=deadline,
        doing="looking for what a logical dump cannot keep",
    )
    warnings: list[str] = []
    if floats:
        warnings.append(
            "FLOAT values are written with 6 significant digits, so a logical restore can "
            f"change them ({_names(floats)}); {PHYSICAL}, or use DOUBLE columns"
        )
    if question_marks:
        warnings.append(
            "table definitions holding '?' may have held characters outside the Basic "
            "Multilingual Plane (emoji, 4-byte UTF-8), which MariaDB prints as '?': a "
            "logical restore re-creates them as '?' and drops the values that use such a "
            f"SET or ENUM member ({_names(question_marks)}); {PHYSICAL}"
        )
    if trx_precise:
        warnings.append(
            "the history of system-versioned tables is not in this backup, because "
            f"{_names(trx_precise)} use transaction-precise versioning, which mariadb-dump "
            f"cannot dump with history ({_names(versioned)} keep only their current rows); "
            f"{PHYSICAL}"
        )
    lossy = _lossy_charsets(server, cnf, charsets, deadline)
    if lossy:
        warnings.append(
            "character data of these columns is dumped as utf8mb4, and their character "
            "sets do not all come back byte for byte (characters with several codes, or "
            f"bytes with no Unicode character, which become '?'): {_names(lossy)}; "
            f"{PHYSICAL}, or convert the columns to utf8mb4"
        )
    return Survey(
        dump_history=not trx_precise,
        warnings=warnings,
        repairs=_repairs(
            [r for r in routines if _escaped_when_printed(r[-1])],
            [e for e in events if _escaped_when_printed(e[-1])],
        ),
    )


def _lossy_charsets(
    server: Server, cnf: str, columns: list[tuple[str, ...]], deadline: Deadline
) -> list[tuple[str, ...]]:
    """The columns whose character set does not survive utf8mb4 and back."""
    # Names come from the server's own list; the check keeps SQL out of them anyway.
    single = sorted({cs for *_, cs, maxlen in columns if maxlen == "1" and cs.isidentifier()})
    changed = (
        sql_query(
            server,
            cnf,
            [
                # Each of the 256 bytes through utf8mb4 and back (the Sequence engine).
                "SELECT COUNT(*) FROM mysql.seq_0_to_255 WHERE HEX(CONVERT(CONVERT(CONVERT("
                f"UNHEX(LPAD(HEX(seq), 2, '0')) USING {cs}) USING utf8mb4) USING {cs})) "
                "<> LPAD(HEX(seq), 2, '0')"
                for cs in single
            ],
            deadline=deadline,
            doing="checking character sets",
        )
        if single
        else []
    )
    exact = {cs for cs, rows in zip(single, changed, strict=True) if rows[0][0] == "0"}
    return [(db, table, column) for db, table, column, cs, _ in columns if cs not in exact]


def _names(rows: list[tuple[str, ...]]) -> str:
    names = [".".join(quote_ident(part) for part in row if part) for row in rows]
    return short_list(names, _NAMED)


def _escaped_when_printed(comment: str) -> bool:
    """Whether SHOW CREATE prints ``comment`` with a backslash escape (append_unescaped)."""
    return any(c in comment for c in "\\\n\r\x00\x1a")


def _repairs(routines: list[tuple[str, ...]], events: list[tuple[str, ...]]) -> bytes:
    """The exact COMMENTs of NO_BACKSLASH_ESCAPES routines and events, set again.

    The tenant's text (names, definers, comments) reaches the SQL only as hex, and the
    statement is built on the server and prepared there: no quote, backslash or line
    of it can end a statement early, or look like a line of the dump to the restore.
    """
    if not routines and not events:
        return b""
    out = [
        "",
        "-- cozybackup-mariadb: the exact comments of routines and events kept with",
        "-- NO_BACKSLASH_ESCAPES (mariadb-dump prints them with backslash escapes)",
        "SET @cozybackup_saved_sql_mode = @@SESSION.sql_mode;",
    ]
    for schema, name, kind, mode, comment in routines:
        if kind in ("PROCEDURE", "FUNCTION"):
            out += _prepared(mode, f"'ALTER {kind} '", schema, name, comment)
    for schema, name, definer, mode, comment in events:
        user, _, host = definer.rpartition("@")
        # ALTER EVENT would make the restoring account the definer.
        alter = f"'ALTER DEFINER = ', {_literal(user)}, '@', {_literal(host)}, ' EVENT '"
        out += _prepared(mode, alter, schema, name, comment)
    out.append("SET SESSION sql_mode = @cozybackup_saved_sql_mode;")
    return ("\n".join(out) + "\n").encode("utf-8", "surrogateescape")


def _prepared(mode: str, alter: str, schema: str, name: str, comment: str) -> list[str]:
    """``<alter> `schema`.`name` COMMENT '<comment>'``, run in the object's sql_mode."""
    return [
        f"SET SESSION sql_mode = {quote_string(mode)};",
        f"SET @cozybackup_repair = CONCAT({alter}, {_identifier(schema)}, '.', "
        f"{_identifier(name)}, ' COMMENT ', {_literal(comment)});",
        "PREPARE cozybackup_repair FROM @cozybackup_repair;",
        "EXECUTE cozybackup_repair;",
        "DEALLOCATE PREPARE cozybackup_repair;",
    ]


def _text(value: str) -> str:
    """SQL for ``value`` made only of hex digits and keywords."""
    data = value.encode("utf-8", "surrogateescape").hex()
    return f"CONVERT(UNHEX('{data}') USING utf8mb4)"


def _identifier(value: str) -> str:
    return f"CONCAT('`', REPLACE({_text(value)}, '`', '``'), '`')"


def _literal(value: str) -> str:
    """A string literal, as read under NO_BACKSLASH_ESCAPES: only quotes are doubled."""
    return (
        f"CONCAT(CHAR(39), REPLACE({_text(value)}, CHAR(39), CONCAT(CHAR(39), CHAR(39))), CHAR(39))"
    )
