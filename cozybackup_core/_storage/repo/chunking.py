"""Content-defined chunking (FastCDC) of a stream that is pushed, not pulled.

A driver writes to us in pieces of any size; FastCDC wants a buffer.  Boundaries depend
only on the bytes since the last boundary, so cutting a window and keeping back its last
(possibly truncated) chunk gives exactly the cuts of the whole stream, with memory bounded
by the window whatever the stream's size.
"""

from __future__ import annotations

from collections.abc import Callable

from pyfastcdc import FastCDC

#: restic's and borg's order of magnitude: small edits touch one chunk, and a 100 GiB
#: stream is ~80k references.  FastCDC's real mean is avg + min (about 1.25 MiB here).
AVG_SIZE = 1 << 20
MIN_SIZE = 256 << 10
MAX_SIZE = 4 << 20
#: How much is gathered before cutting; at least a few maximal chunks.
WINDOW = 16 << 20


class Chunker:
    """Feeds ``emit`` each chunk, in order; ``finish`` emits the tail."""

    def __init__(self, emit: Callable[[bytes], None], seed: int = 0) -> None:
        # The seed (from the repository key) picks the gear table, so chunk sizes do not
        # fingerprint known content for someone who can only list the bucket.
        self._cdc = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, seed=seed)
        self._emit = emit
        self._buf = bytearray()

    def write(self, data: memoryview) -> None:
        self._buf += data
        if len(self._buf) >= WINDOW:
            self._cut(final=False)

    def finish(self) -> None:
        if self._buf:
            self._cut(final=True)

    def _cut(self, final: bool) -> None:
        # Offsets only: no view of the buffer may outlive this, or it cannot shrink.
        cuts = [(c.offset, c.length) for c in self._cdc.cut_buf(self._buf)]
        if not final:
            cuts = cuts[:-1]  # may end only because the window does: cut it again later
        end = 0
        with memoryview(self._buf) as view:
            for offset, length in cuts:
                self._emit(bytes(view[offset : offset + length]))
                end = offset + length
        del self._buf[:end]
