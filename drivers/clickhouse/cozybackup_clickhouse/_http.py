"""The ClickHouse HTTP interface, with the standard library only (``http.client``).

* Credentials travel in the ``X-ClickHouse-User`` / ``X-ClickHouse-Key`` headers, never
  in a URL (URLs end up in access logs and ``system.query_log``).
* Queries travel in the request body.  An INSERT's statement must be in the URL (the body
  is its data); it holds only names, never a value.
* ``SELECT ... FORMAT Native`` is read in 1 MiB chunks and handed on as it arrives;
  ``INSERT ... FORMAT Native`` is sent with chunked transfer encoding from an iterator:
  memory stays flat whatever the table's size.

A server that fails after the first bytes of a result were sent cannot change the
status line any more: it appends its error text to the body and ends the response
normally (18.16), or breaks the connection (newer releases).  :func:`trailing_error`
recognises the first; the second raises :class:`Unreachable`.  The driver orders the
columns so that a result never ends with a free-text column where it can help it
(:func:`cozybackup_clickhouse._catalog.dump_columns`), which makes a row that happens to
end with a server error's exact wording practically impossible.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import ssl
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping

from cozybackup_core import Deadline

from ._client import HttpTarget, ServerError, Unreachable, parse_tsv, server_error

CHUNK = 1 << 20
CONNECT_TIMEOUT = 30.0
#: How much of a response's end is kept to look for an appended error.
_TAIL = 64 << 10
#: How much of an error response is read (the message; never a whole body).
_ERROR_BODY = 64 << 10

# 18.16: "Code: 60, e.displayText() = DB::Exception: ..., e.what() = DB::Exception\n"
_OLD_ERROR = re.compile(
    rb"Code: \d+, (?:e\.code\(\) = \d+, )?e\.displayText\(\) = .*, e\.what\(\) = [^\n]*\n\Z", re.S
)
# 19.x and later: "Code: 60. DB::Exception: ... (UNKNOWN_TABLE) (version 23.8.1.1)\n"
_NEW_ERROR = re.compile(rb"Code: \d+\. [A-Za-z:]*Exception: .*\(version [^\n]*\)\n?\Z", re.S)
# 24.11 and later may frame it: "__exception__\r\n<tag>\r\n<message>...__exception__\r\n"
_TAGGED_ERROR = re.compile(rb"__exception__\r?\n.*__exception__\r?\n?\Z", re.S)


def trailing_error(tail: bytes) -> ServerError | None:
    """The server error a result ends with, if it ends with one."""
    if m := _TAGGED_ERROR.search(tail):
        return server_error(m.group(0).decode(errors="replace"))
    for start in (m.start() for m in re.finditer(rb"Code: \d+[,.] ", tail)):
        rest = tail[start:]
        if _OLD_ERROR.match(rest) or _NEW_ERROR.match(rest):
            return server_error(rest.decode(errors="replace"))
    return None


class HttpClient:
    """A session with one server over HTTP; each statement is one request."""

    transport = "server"

    def __init__(self, target: HttpTarget, deadline: Deadline) -> None:
        self._target = target
        self.deadline = deadline
        self._settings: dict[str, str] = {}
        self.version = self.rows("SELECT version()")[0][0]

    # ------------------------------------------------------------------ the protocol

    def use_settings(self, settings: Mapping[str, str]) -> None:
        self._settings.update(settings)

    def rows(self, sql: str) -> list[tuple[str, ...]]:
        # TabSeparated is the HTTP interface's default output format in every release; no
        # FORMAT clause is added, as some statements (BACKUP, RESTORE) take none.
        with self._request(sql) as resp:
            return parse_tsv(self._read_all(resp))

    def execute(self, sql: str) -> None:
        with self._request(sql) as resp:
            self._read_all(resp)

    @contextlib.contextmanager
    def select_native(self, sql: str) -> Iterator[Iterator[bytes]]:
        with self._request(sql + "\nFORMAT Native") as resp:
            yield self._checked_chunks(resp)

    def insert_native(self, insert: str, chunks: Iterable[bytes]) -> None:
        with self._request(None, query=f"{insert} FORMAT Native", body=chunks) as resp:
            self._read_all(resp)

    def close(self) -> None:
        """Nothing stays open between statements."""

    # ------------------------------------------------------------------ requests

    def _connection(self) -> http.client.HTTPConnection:
        """A connected socket: at most 30 s to connect, then the job's remaining time
        for each read (a long INSERT ... SELECT answers only when it is done)."""
        t = self._target
        connect = min(CONNECT_TIMEOUT, max(self.deadline.remaining(), 0.1))
        conn: http.client.HTTPConnection
        if t.secure:
            context = ssl.create_default_context()
            conn = http.client.HTTPSConnection(t.host, t.port, timeout=connect, context=context)
        else:
            conn = http.client.HTTPConnection(t.host, t.port, timeout=connect)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            self.deadline.check()
            raise Unreachable(f"connect: {type(exc).__name__}: {exc}") from None
        assert conn.sock is not None
        conn.sock.settimeout(max(self.deadline.remaining(), 0.1))
        return conn

    @contextlib.contextmanager
    def _request(
        self, sql: str | None, *, query: str | None = None, body: Iterable[bytes] | None = None
    ) -> Iterator[http.client.HTTPResponse]:
        """Send one statement; yields the response once its status says it succeeded."""
        self.deadline.check()
        conn = self._connection()
        try:
            yield self._send(conn, sql, query, body)
        finally:
            conn.close()

    def _send(
        self,
        conn: http.client.HTTPConnection,
        sql: str | None,
        query: str | None,
        body: Iterable[bytes] | None,
    ) -> http.client.HTTPResponse:
        params = dict(self._settings)
        if query is not None:
            params["query"] = query
        url = "/?" + urllib.parse.urlencode(params) if params else "/"
        # bytes, not str: http.client would encode a str as Latin-1, and a password may
        # hold any character (ClickHouse reads the header as UTF-8).
        headers: dict[str, str | bytes] = {
            "X-ClickHouse-User": self._target.username.encode(),
            "X-ClickHouse-Key": self._target.password.encode(),
        }
        try:
            try:
                if sql is not None:
                    headers["Content-Type"] = "text/plain; charset=utf-8"
                    conn.request("POST", url, body=sql.encode(), headers=headers)
                else:
                    headers["Content-Type"] = "application/octet-stream"
                    data = self._paced(body or ())
                    conn.request("POST", url, body=data, headers=headers, encode_chunked=True)
            except (BrokenPipeError, ConnectionResetError) as exc:
                # The server may have refused the statement before reading all the data:
                # its answer says why.
                resp = self._response(conn, exc)
            else:
                resp = self._response(conn, None)
            if resp.status == 200:
                return resp
            code = resp.getheader("X-ClickHouse-Exception-Code")
            text = resp.read(_ERROR_BODY).decode(errors="replace")
        except (OSError, http.client.HTTPException) as exc:
            self.deadline.check()  # a timeout at the deadline is the deadline's
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        if not text.strip():
            text = f"HTTP {resp.status} {resp.reason}"
        raise server_error(text, int(code) if code and code.isdigit() else None)

    def _response(
        self, conn: http.client.HTTPConnection, cause: OSError | None
    ) -> http.client.HTTPResponse:
        try:
            return conn.getresponse()
        except (OSError, http.client.HTTPException):
            if cause is not None:
                raise cause from None
            raise

    def _paced(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.deadline.check()
            if chunk:
                yield chunk

    def _read_all(self, resp: http.client.HTTPResponse) -> bytes:
        parts = list(self._checked_chunks(resp))
        return b"".join(parts)

    def _checked_chunks(self, resp: http.client.HTTPResponse) -> Iterator[bytes]:
        tail = b""
        while True:
            try:
                chunk = resp.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                self.deadline.check()
                raise Unreachable(
                    f"connection broke mid-result: {type(exc).__name__}: {exc}"
                ) from None
            if not chunk:
                break
            self.deadline.check()
            tail = (tail + chunk[-_TAIL:])[-_TAIL:]
            yield chunk
        if tail and (error := trailing_error(tail)) is not None:
            raise error
