"""The ``quote()`` SQL function a dump is rendered with."""

from __future__ import annotations

import math
import sqlite3
from typing import Any


class Quote:
    """SQLite's ``quote()`` minus its two flaws, registered over the built-in one.

    The built-in writes +/-Infinity as ``Inf`` (not valid SQL: such a dump could never
    be restored) and silently cuts text at its first NUL character.  NUL and CR are
    written as ``char(0)``/``char(13)``, so the dump also replays exactly through the
    ``sqlite3`` shell (which reads CR LF as LF).  Finite floats
    still go through the built-in, on a private in-memory connection: SQLite's own
    text-to-double parser is not correctly rounded, and only the built-in picks digits
    that SQLite reads back as the very same double (Python's ``repr`` does not, for
    about one value in 30 000).
    """

    def __init__(self) -> None:
        self._plain = sqlite3.connect(":memory:")

    def __call__(self, value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            if math.isinf(value):  # the literal the sqlite3 shell uses; reads back as Inf
                return "9.0e+999" if value > 0 else "-9.0e+999"
            if value == 0.0:  # the built-in drops the sign of -0.0
                return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
            text: str = self._plain.execute("SELECT quote(?)", (value,)).fetchone()[0]
            return text
        if isinstance(value, str):
            text = "'" + value.replace("'", "''") + "'"
            if "\x00" in text:
                text = text.replace("\x00", "'||char(0)||'")
            if "\r" in text:  # the sqlite3 shell would read a raw "\r\n" back as "\n"
                text = text.replace("\r", "'||char(13)||'")
            return text
        if isinstance(value, bytes):
            return "X'" + value.hex() + "'"
        raise TypeError(f"unexpected SQLite value of type {type(value).__name__}")

    def close(self) -> None:
        self._plain.close()
