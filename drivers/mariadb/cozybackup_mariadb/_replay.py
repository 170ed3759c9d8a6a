"""Feeding ``databases.sql`` to the ``mariadb`` client, with the late grants put in.

``mariadb-dump --databases`` writes every database's tables, data, triggers and
routines first, then (after a ``-- Final view structure for view`` comment) the views
of all of them.  Table, column and routine grants go in just before that comment: their
objects exist by then, and a view over a ``SQL SECURITY DEFINER`` view is only accepted
when that view's definer holds its rights.  Without views they go at the end.

Marker rows (``SELECT '<mark>-db-<n>'``) before each database and before the grants
let a failed replay say exactly how far it got.  Lines are only recognised outside
``DELIMITER ;;`` blocks: a routine body is copied as it is.
"""

from __future__ import annotations

from typing import IO

#: Line starts of mariadb-dump's output this filter acts on.
_DATABASE = b"-- Current Database: "
_VIEWS = b"-- Final view structure for view "
_DELIMITER = b"DELIMITER "
_PREFIXES = (_DATABASE, _VIEWS, _DELIMITER)
#: Enough of a line to know what it is (a DELIMITER line is short).
_HEAD = 80
_CHUNK = 1 << 20


class DumpWithGrants:
    """A read-only stream: the dump, with ``late_grants`` and marker rows put in."""

    def __init__(self, dump: IO[bytes], late_grants: bytes, mark: str) -> None:
        self._dump = dump
        self._late_grants = late_grants
        self._mark = mark
        self._out = bytearray()
        self._carry = b""
        self._at_line_start = True
        self._in_delimiter_block = False
        self._databases = 0
        self._grants_in = False
        self._eof = False

    # -- what the output says once the client ran it

    def database_marker(self, n: int) -> bytes:
        return f"{self._mark}-db-{n}".encode()

    def grants_marker(self) -> bytes:
        return f"{self._mark}-grants".encode()

    # -- the stream

    def read(self, size: int = -1) -> bytes:
        want = size if size > 0 else 1 << 62
        while len(self._out) < want and not self._eof:
            self._fill()
        if size < 0:
            size = len(self._out)
        data = bytes(self._out[:size])
        del self._out[:size]
        return data

    def _select(self, marker: bytes) -> bytes:
        return b"SELECT '" + marker + b"';\n"

    def _put_grants(self) -> None:
        if not self._grants_in:
            self._grants_in = True
            self._out += self._select(self.grants_marker()) + self._late_grants

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

    def _scan(self, data: bytes, *, final: bool) -> None:
        pos = 0
        while pos < len(data):
            if self._at_line_start:
                newline = data.find(b"\n", pos, pos + _HEAD)
                head = data[pos : pos + _HEAD] if newline < 0 else data[pos:newline]
                if newline < 0 and not final and len(data) - pos < _HEAD:
                    self._carry = data[pos:]  # too little of the line to tell yet
                    return
                self._line_start(head)
            newline = data.find(b"\n", pos)
            end = len(data) if newline < 0 else newline + 1
            self._out += data[pos:end]
            self._at_line_start = newline >= 0
            pos = end

    def _line_start(self, head: bytes) -> None:
        if head.startswith(_DELIMITER):
            self._in_delimiter_block = head[len(_DELIMITER) :].strip() != b";"
        elif self._in_delimiter_block or self._grants_in:
            return
        elif head.startswith(_VIEWS):
            self._put_grants()
        elif head.startswith(_DATABASE):
            self._out += self._select(self.database_marker(self._databases))
            self._databases += 1
