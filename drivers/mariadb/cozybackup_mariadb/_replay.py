"""Feeding ``databases.sql`` to the ``mariadb`` client, with the late grants put in.

``mariadb-dump --databases`` writes every database's tables, data, triggers and
routines first, then (after a ``-- Final view structure for view`` comment) the views
of all of them.  Table, column and routine grants go in just before that comment: their
objects exist by then, and a view over a ``SQL SECURITY DEFINER`` view is only accepted
when that view's definer holds its rights.  Without views they go at the end.

Marker rows (``SELECT '<mark>-db-<n>'``) before each database and before the grants
let a failed replay say exactly how far it got.

The dump holds the tenant's names and routine bodies, which may contain line breaks
and lines that look like the dump's own.  So lines are recognised only where the
``mariadb`` client itself would be between statements: the stream is read as the client
reads it (quotes, backslash escapes unless ``NO_BACKSLASH_ESCAPES`` is on, comments,
``DELIMITER``).  Rows are not read byte by byte: mariadb-dump writes each row of an
``INSERT`` on one line with its line breaks escaped, so the values of an INSERT end at
the first line ending in ``;``.
"""

from __future__ import annotations

import re
from typing import IO

#: Line starts of mariadb-dump's output this filter acts on.
_DATABASE = b"-- Current Database: "
_VIEWS = b"-- Final view structure for view "
_DELIMITER = b"DELIMITER "
_INSERT = b"INSERT INTO "
#: An INSERT up to its values: the table, perhaps a column list, VALUES.
_IDENT = rb"(?:`(?:[^`]|``)*`|[A-Za-z_][A-Za-z0-9_]*)"
_INSERT_HEAD = re.compile(
    rb"INSERT INTO " + _IDENT + rb"(?: \(" + _IDENT + rb"(?:, ?" + _IDENT + rb")*\))? VALUES"
)
#: How much of an INSERT may come before VALUES (the table and column names).
_MAX_HEAD = 1 << 20
#: The session's sql_mode as mariadb-dump (and the repairs) set it.
_SQL_MODE = re.compile(
    rb"(?:/\*!50003 SET sql_mode\s*=|/\*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE=|"
    rb"/\*!40101 SET SQL_MODE=|SET SESSION sql_mode\s*=)\s*('[^']*'|@\w+)"
)
_CHUNK = 1 << 20
_SEMICOLON, _NEWLINE = ord(";"), ord("\n")
_BACKSLASH, _BACKQUOTE = ord("\\"), ord("`")
_QUOTES = frozenset(b"'\"`")


class DumpWithGrants:
    """A read-only stream: the dump, with ``late_grants`` and marker rows put in."""

    def __init__(self, dump: IO[bytes], late_grants: bytes, mark: str) -> None:
        self._dump = dump
        self._late_grants = late_grants
        self._mark = mark
        self._out = bytearray()
        self._carry = b""
        self._eof = False
        self._databases = 0
        self._grants_in = False
        # How the client reads the stream.
        self._delimiter = b";"
        self._no_backslash_escapes = False
        self._quote: int | None = None
        self._block_comment = False
        self._statement_open = False
        self._at_line_start = True
        self._in_values = False
        self._values_last = 0

    # -- what the output says once the client ran it

    def database_marker(self, n: int) -> bytes:
        return f"{self._mark}-db-{n}".encode()

    def grants_marker(self) -> bytes:
        return f"{self._mark}-grants".encode()

    # -- the stream

    def read(self, size: int = -1) -> bytes:
        """What is ready, at most ``size`` bytes; b"" only at the end.

        Returns as soon as some data is ready rather than waiting for ``size`` bytes: a
        dump that arrives slowly reaches the client (and its marker rows come back) as
        it arrives.
        """
        while not self._out and not self._eof:
            self._fill()
        if size < 0:
            size = len(self._out)
        data = bytes(self._out[:size])
        del self._out[:size]
        return data

    def _fill(self) -> None:
        chunk = self._dump.read(_CHUNK)
        data = self._carry + chunk
        self._carry = b""
        if not chunk:
            self._eof = True
            if data and not data.endswith(b"\n"):
                data += b"\n"
            self._scan(data, final=True)
            self._put_grants()
            return
        self._scan(data, final=False)

    def _select(self, marker: bytes) -> bytes:
        return b"SELECT '" + marker + b"';\n"

    def _put_grants(self) -> None:
        if not self._grants_in:
            self._grants_in = True
            self._out += self._select(self.grants_marker()) + self._late_grants

    def _between_statements(self) -> bool:
        return (
            self._at_line_start
            and self._quote is None
            and not self._block_comment
            and not self._statement_open
        )

    def _scan(self, data: bytes, *, final: bool) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._in_values:
                pos = self._skip_values(data, pos)
                continue
            if self._between_statements() and data.startswith(_INSERT[: end - pos], pos):
                head = _INSERT_HEAD.match(data, pos)
                if head is not None:
                    self._out += data[pos : head.end()]
                    pos = head.end()
                    self._in_values, self._statement_open = True, True
                    self._at_line_start, self._values_last = False, 0
                    continue
                if not final and end - pos < _MAX_HEAD:
                    self._carry = data[pos:]  # the INSERT's head is not all here yet
                    return
            newline = data.find(b"\n", pos)
            if newline < 0 and not final:
                self._carry = data[pos:]  # a statement's line: read it whole
                return
            stop = end if newline < 0 else newline + 1
            line = data[pos:stop]
            if self._between_statements() and self._line_start(line):
                self._out += line  # a client command (DELIMITER), not SQL
            else:
                self._lex(line)
                self._out += line
            self._at_line_start = line.endswith(b"\n")
            pos = stop

    def _skip_values(self, data: bytes, pos: int) -> int:
        """Copy rows up to the next line break; a line ending in ';' ends the INSERT."""
        newline = data.find(b"\n", pos)
        if newline < 0:
            self._out += data[pos:]
            self._values_last = data[-1]
            return len(data)
        if newline > pos:
            self._values_last = data[newline - 1]
        self._out += data[pos : newline + 1]
        if self._values_last == _SEMICOLON:
            self._in_values = self._statement_open = False
        self._values_last = 0
        self._at_line_start = True
        return newline + 1

    def _line_start(self, line: bytes) -> bool:
        """Act on a line that starts between statements; True for a client command."""
        if line.startswith(_DELIMITER):
            self._delimiter = line[len(_DELIMITER) :].strip() or b";"
            return True
        if mode := _SQL_MODE.match(line):
            self._no_backslash_escapes = b"NO_BACKSLASH_ESCAPES" in mode.group(1).upper()
        if self._delimiter != b";" or self._grants_in:
            return False
        if line.startswith(_VIEWS):
            self._put_grants()
        elif line.startswith(_DATABASE):
            self._out += self._select(self.database_marker(self._databases))
            self._databases += 1
        return False

    def _lex(self, line: bytes) -> None:
        """Follow quotes, comments and statement ends through one line, as the client."""
        i, n = 0, len(line)
        delimiter = self._delimiter
        while i < n:
            c = line[i]
            if self._quote is not None:
                if c == _BACKSLASH and self._quote != _BACKQUOTE and not self._no_backslash_escapes:
                    i += 2
                    continue
                if c == self._quote:
                    self._quote = None
                i += 1
            elif self._block_comment:
                if line.startswith(b"*/", i):
                    self._block_comment = False
                    i += 2
                else:
                    i += 1
            elif c in _QUOTES:
                self._quote = c
                self._statement_open = True
                i += 1
            elif line.startswith(b"/*", i):
                # /*!50003 ... */ and /*M!100000 ... */ hold code; other comments do not.
                if not (line.startswith(b"/*!", i) or line.startswith(b"/*M!", i)):
                    self._block_comment = True
                i += 2
            elif line.startswith(b"*/", i):
                i += 2  # the end of an executable comment
            elif c == ord("#") or (line.startswith(b"--", i) and line[i + 2 : i + 3] in b" \t\r\n"):
                return  # a comment to the end of the line
            elif line.startswith(delimiter, i):
                self._statement_open = False
                i += len(delimiter)
            else:
                if c not in b" \t\r\n":
                    self._statement_open = True
                i += 1


#: Warnings that say the server stored something else than the dump held.
_DATA_CHANGED = frozenset({1262, 1263, 1264, 1265, 1292, 1366, 1406})
_WARNING = re.compile(rb"Warning \(Code (\d+)\): (.*)")
_KEPT_WARNINGS = 10


class ClientOutput:
    """What the client prints while replaying (``--show-warnings``), kept small.

    Marker rows are kept to say how far a failed replay got; warnings that mean data
    was changed on the way in (truncated, out of range, invalid characters) are
    counted, and the first few kept, for the platform log.
    """

    def __init__(self) -> None:
        self.lines: set[bytes] = set()
        self.data_warnings = 0
        self.examples: list[str] = []
        self._partial = b""

    def write(self, data: bytes) -> int:
        lines = (self._partial + bytes(data)).split(b"\n")
        self._partial = lines.pop()[-4096:]
        for line in lines:
            if warning := _WARNING.match(line):
                if int(warning.group(1)) in _DATA_CHANGED:
                    self.data_warnings += 1
                    text = warning.group(2).decode("utf-8", "replace")[:200]
                    if len(self.examples) < _KEPT_WARNINGS and text not in self.examples:
                        self.examples.append(text)
            elif len(line) < 128:
                self.lines.add(line)
        return len(data)
