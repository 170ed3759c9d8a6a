"""The one small protocol both ClickHouse transports implement, and how a target is declared.

The driver's SQL is written once and runs through a :class:`Client`: over the server's
HTTP interface (:mod:`._http`) or inside this process on chdb (:mod:`._chdb`), the
in-process ClickHouse engine.  The client only moves statements and bytes; every
decision (what to dump, in which order, how to restore) is the driver's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import attrs

from cozybackup_core import (
    ApplicationMisconfigured,
    ApplicationRef,
    AppLocation,
    Deadline,
    misconfigured,
)

DEFAULT_HTTP_PORT = 8123
DEFAULT_HTTPS_PORT = 8443

__all__ = ["ApplicationMisconfigured", "misconfigured"]


# ---------------------------------------------------------------------- what can go wrong


class ServerError(Exception):
    """ClickHouse refused or failed a statement.  ``text`` is the server's own message
    (platform log only: it can hold account names, paths and statement text)."""

    def __init__(self, code: int | None, text: str) -> None:
        super().__init__(f"Code: {code}: {text}")
        self.code = code
        self.text = text


class Unreachable(Exception):
    """The server could not be reached, or the connection broke mid-statement."""


_CODE = re.compile(r"Code: (\d+)")


def server_error(text: str, code: int | None = None) -> ServerError:
    """A :class:`ServerError` from a server message (``Code: N...``)."""
    if code is None and (m := _CODE.search(text)):
        code = int(m.group(1))
    return ServerError(code, text.strip())


# ---------------------------------------------------------------------- the protocol


class Client(Protocol):
    """One session with one ClickHouse.  Statements are plain SQL without ``FORMAT``."""

    #: ``SELECT version()``, e.g. ``"18.16.1"``.
    version: str
    #: ``"server"`` (HTTP) or ``"chdb"`` (in-process).
    transport: str
    #: Every statement checks it first; long reads stop at it.
    deadline: Deadline

    def use_settings(self, settings: Mapping[str, str]) -> None:
        """Apply these settings to every later statement of the session."""

    def rows(self, sql: str) -> list[tuple[str, ...]]:
        """Run a query; its rows as tuples of strings (TSV values, unescaped)."""

    def execute(self, sql: str) -> None:
        """Run a statement that returns nothing of interest (DDL, INSERT ... SELECT)."""

    def select_native(self, sql: str) -> AbstractContextManager[Iterator[bytes]]:
        """Stream the result of a query in the Native format, in chunks.

        Iterating to the end raises :class:`ServerError` if the server failed part-way:
        a truncated result never looks complete.
        """

    def insert_native(self, insert: str, chunks: Iterable[bytes]) -> None:
        """``insert`` is ``INSERT INTO t (cols)``; ``chunks`` the Native bytes, streamed."""

    def close(self) -> None: ...


# ---------------------------------------------------------------------- TSV


_TSV_ESCAPES = {"b": "\b", "f": "\f", "r": "\r", "n": "\n", "t": "\t", "0": "\0", "'": "'"}
_TSV_ESCAPES["\\"] = "\\"


def parse_tsv(data: bytes) -> list[tuple[str, ...]]:
    """ClickHouse ``TabSeparated`` output → rows (names may hold any character)."""
    text = data.decode("utf-8", errors="surrogateescape")
    return [tuple(_unescape(v) for v in line.split("\t")) for line in text.split("\n") if line]


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out: list[str] = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            out.append(_TSV_ESCAPES.get(nxt, "\\" + nxt))
        else:
            out.append(ch)
    return "".join(out)


# ---------------------------------------------------------------------- targets


@attrs.frozen(kw_only=True)
class HttpTarget:
    """A ClickHouse server reached over its HTTP interface."""

    ref: ApplicationRef
    host: str
    port: int
    secure: bool
    username: str
    password: str = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class ChdbTarget:
    """A chdb data directory opened inside this process."""

    ref: ApplicationRef
    path: str


Target = HttpTarget | ChdbTarget

_KNOWN_KEYS = {"engine", "host", "port", "secure", "path"}


def target_of(loc: AppLocation) -> Target:
    """The admin's connection keys and credentials → a typed target (or a clear refusal)."""
    conn: Mapping[str, Any] = loc.connection
    ref = loc.ref
    unknown = sorted(set(conn) - _KNOWN_KEYS)
    if unknown:
        raise misconfigured(
            ref, f"unknown connection keys {unknown} (known: {sorted(_KNOWN_KEYS)})"
        )
    engine = conn.get("engine", "server")
    if engine == "chdb":
        path = conn.get("path")
        if not isinstance(path, str) or not Path(path).is_absolute() or "?" in path:
            raise misconfigured(ref, "engine chdb needs 'path': an absolute directory, no '?'")
        extra = sorted(set(conn) - {"engine", "path"})
        if extra:
            raise misconfigured(ref, f"engine chdb takes only 'path', not {extra}")
        return ChdbTarget(ref=ref, path=path)
    if engine != "server":
        raise misconfigured(
            ref, f"connection key 'engine' must be 'server' or 'chdb', not {engine!r}"
        )
    host = conn.get("host")
    if not isinstance(host, str) or not host or any(c in host for c in "/?#@ \t\r\n\x00"):
        raise misconfigured(ref, "connection needs 'host' (a host name or address)")
    secure = conn.get("secure", False)
    if not isinstance(secure, bool):
        raise misconfigured(ref, "connection key 'secure' must be true or false")
    port = conn.get("port", DEFAULT_HTTPS_PORT if secure else DEFAULT_HTTP_PORT)
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise misconfigured(ref, f"connection key 'port' must be 1..65535, got {port!r}")
    creds = loc.credentials
    username = creds.get("username", "default") or "default"
    password = creds.get("password", "")
    for key, value in (("username", username), ("password", password)):
        if any(c in value for c in "\x00\r\n"):
            raise misconfigured(ref, f"credential {key!r} contains a NUL or line break")
    return HttpTarget(
        ref=ref, host=host, port=port, secure=secure, username=username, password=password
    )


def secrets_of(target: Target) -> list[str]:
    """Values to mask in any text that leaves the driver."""
    return [target.password] if isinstance(target, HttpTarget) and target.password else []


def mask(text: str, secrets: Iterable[str]) -> str:
    """Replace each secret in ``text`` (longest first).  Secrets shorter than 4
    characters are replaced only as whole words, so the rest stays readable."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
        else:
            text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "[redacted]", text)
    return text
