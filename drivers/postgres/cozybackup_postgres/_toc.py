"""The head of a custom-format archive staged in a small file, for ``pg_restore -j``.

``pg_restore -j`` needs a seekable file; the stream is not one.  But the post-data
section (indexes, constraints, triggers, rules, policies, materialized view refreshes)
has no data of its own: its statements are all in the table of contents at the start
of the archive.  So the restore stages the stream's first bytes in a file, more until
``pg_restore -l`` reads a whole table of contents from them (their size is the schema's,
not the data's: the data follows, and at most as much of it as of the schema is staged),
then restores pre-data and data from the stream (those bytes again, then the rest) and
the post-data section from the staged head with several connections at once.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast

from cozybackup_core import Deadline, DriverError

from ._pg import Server

#: Bytes staged at first; doubled until they hold the whole table of contents.
FIRST_HEAD = 256 << 10
#: What pg_restore says when the staged head ends inside the table of contents.
_CUT_SHORT = "end of file"


class _Then(io.RawIOBase):
    """Everything of ``first``, then the rest of ``rest``: the stream as it was."""

    def __init__(self, first: IO[bytes], rest: IO[bytes]) -> None:
        self.first = first
        self.rest = rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self.first.read(size) or self.rest.read(size)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return len(b)


def _fill(source: IO[bytes], head: IO[bytes], size: int) -> bool:
    """Copy from ``source`` until ``head`` holds ``size`` bytes; whether ``source`` ended."""
    while (missing := size - head.tell()) > 0:
        data = source.read(min(missing, 1 << 20))
        if not data:
            return True
        head.write(data)
    return False


@contextmanager
def staged_head(
    server: Server, source: IO[bytes], *, deadline: Deadline, doing: str
) -> Iterator[tuple[Path, IO[bytes]]]:
    """Stage the start of ``source`` (a custom-format archive) until it holds the whole
    table of contents; yields the staged file and a reader giving the whole archive
    (the staged bytes, then the rest of ``source``).  The file is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="cozy-pg-toc-") as tmp:
        path = Path(tmp) / "head.dump"
        with path.open("w+b") as head:
            size = FIRST_HEAD
            while True:
                ended = _fill(source, head, size)
                head.flush()
                try:
                    server.run(
                        "pg_restore",
                        ["-l", str(path)],
                        deadline=deadline,
                        stdout=cast(IO[bytes], _Discard()),
                        doing=doing,
                    )
                    break
                except DriverError as exc:
                    # Cut short inside the table of contents: stage more.  Anything
                    # else (or the whole stream staged) is the archive's own error.
                    if ended or _CUT_SHORT not in (exc.admin_detail or ""):
                        raise
                size *= 2
            head.seek(0)
            yield path, cast(IO[bytes], _Then(head, source))
