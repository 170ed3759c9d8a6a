"""Reading a few small members out of a tar stream as it passes, without holding it.

``pg_basebackup`` writes its tar to stdout; the base backup's ``backup_label`` and
``backup_manifest`` (where the WAL it needs starts and ends) are inside.  A
:class:`TarPeek` is fed every chunk on its way into the artifact and keeps only the
members it was asked for: memory does not grow with the data directory.
"""

from __future__ import annotations

from collections.abc import Set
from typing import IO

BLOCK = 512


class TarPeek:
    def __init__(self, keep: Set[str], limit: int = 64 << 20) -> None:
        self.keep = keep
        self.limit = limit
        #: The kept members' contents, by name.
        self.files: dict[str, bytes] = {}
        self._header = bytearray()
        self._data = 0  # bytes of the current member's data still to come
        self._pad = 0  # then padding to the next block
        self._name = ""
        self._capture: bytearray | None = None
        self._ended = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk)
        while len(view) and not self._ended:
            if self._data:
                n = min(self._data, len(view))
                if self._capture is not None:
                    self._capture.extend(view[:n])
                self._data -= n
                view = view[n:]
                if not self._data and self._capture is not None:
                    self.files[self._name] = bytes(self._capture)
                    self._capture = None
            elif self._pad:
                n = min(self._pad, len(view))
                self._pad -= n
                view = view[n:]
            else:
                need = BLOCK - len(self._header)
                self._header.extend(view[:need])
                view = view[need:]
                if len(self._header) == BLOCK:
                    self._start_member(bytes(self._header))
                    self._header.clear()

    def _start_member(self, header: bytes) -> None:
        if not header.strip(b"\0"):
            self._ended = True  # end-of-archive blocks
            return
        name = header[0:100].split(b"\0", 1)[0].decode(errors="replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode(errors="replace")
        if prefix and header[257:262] == b"ustar":
            name = f"{prefix}/{name}"
        size = _size(header[124:136])
        self._name = name
        self._data = size
        self._pad = -size % BLOCK
        wanted = name in self.keep and size <= self.limit
        self._capture = bytearray() if wanted and size else None
        if wanted and not size:
            self.files[name] = b""


def _size(field: bytes) -> int:
    if field[0] & 0x80:  # base-256, for members of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


class PeekingWriter:
    """A writable stream that writes through to ``sink`` and shows every chunk to ``peek``."""

    def __init__(self, sink: IO[bytes], peek: TarPeek) -> None:
        self.sink = sink
        self.peek = peek

    def write(self, chunk: bytes) -> int:
        self.sink.write(chunk)
        self.peek.feed(chunk)
        return len(chunk)
