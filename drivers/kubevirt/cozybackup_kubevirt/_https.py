"""The two HTTPS endpoints a disk's data crosses on Kubernetes: a VirtualMachineExport's
raw image (GET, with the export's token) and CDI's upload proxy (POST, with an upload
token).  Both verify the server against the CA the platform names, never skip it.

The upload sends the raw image gzip-compressed, chunked: CDI's upload accepts compressed
images, and zeros shrink about 230-fold at level 1, so a sparse disk costs its data and
about 1/230 of its holes on the wire, not its virtual size.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl
import urllib.parse
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from cozybackup_core import Deadline, DriverError

from ._nbd import MAX_REQUEST

#: The export server's token header (KubeVirt's ``x-kubevirt-export-token``).
EXPORT_TOKEN_HEADER = "x-kubevirt-export-token"  # noqa: S105 - a header name
#: Zeros are fed to the compressor in pieces of this size (memory stays flat).
_ZEROS = bytes(MAX_REQUEST)
#: Read timeout of one socket operation (the job's deadline bounds the whole).
_IO_TIMEOUT = 60.0


def _connection(url: str, ca_pem: str | None, deadline: Deadline) -> tuple[Any, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise DriverError(
            "the platform's KubeVirt endpoints are misdeclared; ask the platform operator",
            admin_detail=f"not an https URL: {url!r}",
        )
    ctx = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    timeout = max(1.0, min(_IO_TIMEOUT, deadline.remaining()))
    conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=ctx)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    return conn, path


@contextlib.contextmanager
def download(
    url: str, token: str, ca_pem: str | None, deadline: Deadline, what: str
) -> Iterator[tuple[IO[bytes], int]]:
    """The body of a raw image export and its length (``Content-Length``)."""
    conn, path = _connection(url, ca_pem, deadline)
    try:
        with _io_errors(what, url):
            conn.request("GET", path, headers={EXPORT_TOKEN_HEADER: token})
            resp = conn.getresponse()
        if resp.status != 200:
            raise DriverError(
                f"{what} failed; ask the platform operator",
                admin_detail=f"GET {url}: HTTP {resp.status} {resp.read(300)!r}",
            )
        length = resp.getheader("Content-Length")
        if length is None or not length.isdigit():
            raise DriverError(
                f"{what} failed; ask the platform operator",
                admin_detail=f"GET {url}: no Content-Length (the raw format has one)",
            )
        with _io_errors(what, url):
            yield resp, int(length)
    finally:
        conn.close()


def upload(
    url: str,
    token: str,
    ca_pem: str | None,
    deadline: Deadline,
    what: str,
    body: Iterable[bytes],
) -> None:
    """POST ``body`` (chunked) to CDI's upload proxy with the upload token."""
    conn, path = _connection(url, ca_pem, deadline)
    try:
        with _io_errors(what, url):
            conn.request(
                "POST",
                path,
                body=body,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/octet-stream",
                },
                encode_chunked=True,
            )
            resp = conn.getresponse()
            answer = resp.read(300)
        if resp.status != 200:
            raise DriverError(
                f"{what} failed; ask the platform operator",
                admin_detail=f"POST {url}: HTTP {resp.status} {answer!r}",
            )
    finally:
        conn.close()


class BackupEndpoint:
    """One volume's endpoints of a pull-mode VirtualMachineBackup: ``map`` (JSON pages of
    extents) and ``data`` (``?offset=&length=``, the bytes as of the backup's start), on
    one connection to the export server, with the backup's token."""

    def __init__(
        self, map_url: str, data_url: str, token: str, ca_pem: str | None, deadline: Deadline
    ) -> None:
        self.map_url, self.data_url = map_url, data_url
        self._token, self._ca, self._deadline = token, ca_pem, deadline
        self._conn: Any = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def extents(self, what: str) -> Iterator[dict[str, Any]]:
        """Every extent the map lists (``offset``, ``length``, ``description``), page by
        page (``next_offset`` null on the last)."""
        offset = 0
        while True:
            page = json.loads(self._get(self.map_url, {"offset": offset}, what, None))
            yield from page.get("extents") or ()
            if page.get("next_offset") is None:
                return
            if int(page["next_offset"]) <= offset:
                raise DriverError(
                    f"{what} failed; ask the platform operator",
                    admin_detail=f"GET {self.map_url}: next_offset {page['next_offset']} "
                    f"does not move past {offset}",
                )
            offset = int(page["next_offset"])

    def read(self, offset: int, length: int, what: str) -> bytes:
        return self._get(self.data_url, {"offset": offset, "length": length}, what, length)

    def _get(self, url: str, query: dict[str, int], what: str, exact: int | None) -> bytes:
        full = f"{url}{'&' if '?' in url else '?'}{urllib.parse.urlencode(query)}"
        for attempt in (1, 2):  # a kept-alive connection the server closed: once more
            conn, path = _connection(full, self._ca, self._deadline)
            if self._conn is None:
                self._conn = conn
            else:
                conn.close()  # only its path was wanted: the open connection is kept
            try:
                self._conn.request("GET", path, headers={EXPORT_TOKEN_HEADER: self._token})
                resp = self._conn.getresponse()
                body: bytes = resp.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt == 2:
                    raise DriverError(
                        f"{what} failed: the connection broke; ask the platform operator",
                        admin_detail=f"GET {url}: {exc!r}",
                    ) from None
        if resp.status != 200 or (exact is not None and len(body) != exact):
            raise DriverError(
                f"{what} failed; ask the platform operator",
                admin_detail=f"GET {url} {query}: HTTP {resp.status}, {len(body)} bytes "
                f"{body[:200]!r}",
            )
        return body


def gzip_image(
    size: int, runs: Iterable[tuple[int, bytes]], tick: Callable[[], None]
) -> Iterator[bytes]:
    """The raw image of ``size`` bytes whose non-zero content is ``runs``, gzip-compressed."""
    gz = zlib.compressobj(1, zlib.DEFLATED, 31)
    pos = 0

    def zeros(upto: int) -> Iterator[bytes]:
        nonlocal pos
        while pos < upto:
            tick()
            n = min(len(_ZEROS), upto - pos)
            pos += n
            yield gz.compress(_ZEROS[:n])

    for offset, data in runs:
        yield from zeros(offset)
        pos += len(data)
        yield gz.compress(data)
    yield from zeros(size)
    yield gz.flush()


@contextlib.contextmanager
def _io_errors(what: str, url: str) -> Iterator[None]:
    try:
        yield
    except (OSError, http.client.HTTPException) as exc:
        raise DriverError(
            f"{what} failed: the connection broke; ask the platform operator",
            admin_detail=f"{url}: {exc!r}",
        ) from None
