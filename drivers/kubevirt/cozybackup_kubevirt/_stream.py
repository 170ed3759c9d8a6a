"""The disk stream: only the non-zero 64 KiB blocks of the guest-visible content.

Layout (big-endian)::

    header  b"CZVMDISK" u32 version=1  u64 virtual_size  u32 block_size
    record  b"D" u64 offset u32 length  <length bytes>        (offset block-aligned)
    end     b"E" u64 data_bytes u64 blocks  32-byte content digest

Extents the image reports as reading zero (holes, zero clusters) are never read; data
extents are read in whole blocks and any block that is all zeros is dropped too, so the
records are cut only at runs of zeros and at multiples of 4 MiB (``canonical``), so the
stream is canonical: the same guest content gives the same records whatever the image
format, cluster size or allocation, or whether it was read through NBD or front to back.  The content digest is sha256 over
``(u64 offset, block)`` of every non-zero block; a restore recomputes it from the image it
wrote, through the same reader.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import IO

import attrs

from ._nbd import MAX_REQUEST, NBDClient

MAGIC = b"CZVMDISK"
VERSION = 1
BLOCK = 64 << 10
_HEADER = struct.Struct(">8sIQI")
_RECORD = struct.Struct(">cQI")
_END = struct.Struct(">cQQ32s")
#: 64 TiB: the largest virtual size a stream may claim (a sanity bound for restores).
MAX_VIRTUAL_SIZE = 64 << 40
_ZERO = bytes(BLOCK)


class StreamInvalid(Exception):
    """The stream is not a disk stream this version can read (operator text)."""


@attrs.define
class Summary:
    virtual_size: int
    data_bytes: int = 0
    blocks: int = 0
    digest: str = ""
    #: Bytes read from the source (less than the data where only changes were read).
    read_bytes: int = 0


def nonzero_runs(client: NBDClient, tick: Callable[[], None]) -> Iterator[tuple[int, bytes]]:
    """``(offset, data)`` runs of consecutive non-zero blocks, block-aligned, ≤ 4 MiB each."""
    size = client.size
    done = 0  # everything below has been read (or is known to read as zeros)
    for start, length, zero in client.extents():
        if zero:
            continue
        lo = max(start // BLOCK * BLOCK, done)
        hi = min(-(-(start + length) // BLOCK) * BLOCK, size)
        pos = lo
        while pos < hi:
            tick()
            n = min(MAX_REQUEST, hi - pos)
            yield from runs_in(pos, client.read(pos, n))
            pos += n
        done = max(done, hi)


def sequential_runs(
    src: IO[bytes], size: int, tick: Callable[[], None]
) -> Iterator[tuple[int, bytes]]:
    """The non-zero runs of a raw image read front to back from ``src`` (``size`` bytes,
    an HTTP body): every byte is read, zero blocks are dropped as from an NBD extent."""
    pos = 0
    while pos < size:
        tick()
        chunk = _exact(src, min(MAX_REQUEST, size - pos))
        yield from runs_in(pos, chunk)
        pos += len(chunk)
    if src.read(1):
        raise StreamInvalid(f"the image is longer than its declared {size} bytes")


def runs_in(pos: int, chunk: bytes) -> Iterator[tuple[int, bytes]]:
    """The runs of non-zero blocks of ``chunk``, which starts at ``pos`` (block-aligned)."""
    run_start: int | None = None
    for i in range(0, len(chunk), BLOCK):
        block = chunk[i : i + BLOCK]
        if block == _ZERO[: len(block)]:
            if run_start is not None:
                yield pos + run_start, chunk[run_start:i]
                run_start = None
        elif run_start is None:
            run_start = i
    if run_start is not None:
        yield pos + run_start, chunk[run_start:]


class Digest:
    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.data_bytes = 0
        self.blocks = 0

    def add(self, offset: int, data: bytes) -> None:
        for i in range(0, len(data), BLOCK):
            block = data[i : i + BLOCK]
            self._h.update(struct.pack(">Q", offset + i))
            self._h.update(block)
            self.blocks += 1
        self.data_bytes += len(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def raw(self) -> bytes:
        return self._h.digest()


def content_digest(client: NBDClient, tick: Callable[[], None]) -> Summary:
    return runs_digest(client.size, nonzero_runs(client, tick))


def runs_digest(size: int, runs: Iterable[tuple[int, bytes]]) -> Summary:
    """The content digest of ``runs`` (what a stream of them would end with)."""
    digest = Digest()
    for offset, data in runs:
        digest.add(offset, data)
    return Summary(size, digest.data_bytes, digest.blocks, digest.hexdigest())


def write_stream(client: NBDClient, out: IO[bytes], tick: Callable[[], None]) -> Summary:
    """Write the disk behind ``client`` to ``out``."""
    return write_runs(out, client.size, nonzero_runs(client, tick))


def canonical(runs: Iterable[tuple[int, bytes]]) -> Iterator[tuple[int, bytes]]:
    """``runs`` (increasing) as records: every maximal run of consecutive non-zero blocks,
    cut at each multiple of 4 MiB, whatever pieces the reader found them in (NBD extents,
    4 MiB reads of a body), so one content gives one stream."""
    start, pending = 0, bytearray()
    for offset, data in runs:
        if pending and offset != start + len(pending):
            yield start, bytes(pending)
            pending.clear()
        if not pending:
            start = offset
        pending += data
        while (start + len(pending)) // MAX_REQUEST > start // MAX_REQUEST:
            cut = (start // MAX_REQUEST + 1) * MAX_REQUEST - start
            if cut == len(pending):
                break
            yield start, bytes(pending[:cut])
            del pending[:cut]
            start += cut
        if start + len(pending) == (start // MAX_REQUEST + 1) * MAX_REQUEST:
            yield start, bytes(pending)
            pending.clear()
    if pending:
        yield start, bytes(pending)


@attrs.frozen
class Change:
    """Blocks ``[offset, offset + length)`` (block-aligned) that differ from the base:
    read anew, or known to read as zeros (``zero``)."""

    offset: int
    length: int
    zero: bool = False


def overlay(
    base: Iterable[tuple[int, bytes]],
    changes: Iterable[Change],
    read: Callable[[int, int], bytes],
    tick: Callable[[], None],
) -> Iterator[tuple[int, bytes]]:
    """The runs of a disk whose ``changes`` (increasing, not overlapping) are read with
    ``read(offset, length)`` and whose other blocks are those of ``base`` (the previous
    stream's records): the runs a read of the whole disk would give.  ``base`` is read
    to its end, so a damaged one fails here, before anything is committed."""
    records = iter(base)
    pending = next(records, None)

    def take(end: int, keep: bool) -> Iterator[tuple[int, bytes]]:
        """Base data below ``end``: yielded if ``keep``, else dropped."""
        nonlocal pending
        while pending is not None and pending[0] < end:
            offset, data = pending
            cut = min(len(data), end - offset)
            if keep:
                yield offset, data[:cut]
            pending = (offset + cut, data[cut:]) if cut < len(data) else next(records, None)

    for change in changes:
        yield from take(change.offset, keep=True)
        yield from take(change.offset + change.length, keep=False)
        pos, end = change.offset, change.offset + change.length
        while pos < end and not change.zero:
            tick()
            n = min(MAX_REQUEST, end - pos)
            yield from runs_in(pos, read(pos, n))
            pos += n
    yield from take(MAX_VIRTUAL_SIZE, keep=True)


def aligned(changes: Iterable[Change], size: int) -> Iterator[Change]:
    """``changes`` (increasing) widened to whole blocks and merged where they touch; a
    zero change that does not cover its blocks whole is read instead."""
    last: Change | None = None
    for c in changes:
        lo = c.offset // BLOCK * BLOCK
        hi = min(-(-(c.offset + c.length) // BLOCK) * BLOCK, size)
        zero = c.zero and lo == c.offset and (hi == c.offset + c.length)
        if last is not None and lo <= last.offset + last.length:
            end = max(hi, last.offset + last.length)
            last = Change(last.offset, end - last.offset, last.zero and zero)
            continue
        if last is not None:
            yield last
        last = Change(lo, hi - lo, zero)
    if last is not None:
        yield last


def write_runs(out: IO[bytes], size: int, runs: Iterable[tuple[int, bytes]]) -> Summary:
    """Write a disk of ``size`` bytes whose non-zero content is ``runs`` to ``out``."""
    out.write(_HEADER.pack(MAGIC, VERSION, size, BLOCK))
    digest = Digest()
    for offset, data in canonical(runs):
        out.write(_RECORD.pack(b"D", offset, len(data)))
        out.write(data)
        digest.add(offset, data)
    out.write(_END.pack(b"E", digest.data_bytes, digest.blocks, digest.raw()))
    return Summary(size, digest.data_bytes, digest.blocks, digest.hexdigest())


def _exact(src: IO[bytes], n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = src.read(n - len(buf))
        if not chunk:
            raise StreamInvalid("the disk stream ends early")
        buf += chunk
    return bytes(buf)


def read_header(src: IO[bytes]) -> int:
    """The virtual size the stream declares."""
    magic, version, size, block = _HEADER.unpack(_exact(src, _HEADER.size))
    if magic != MAGIC:
        raise StreamInvalid("not a disk stream")
    if version != VERSION or block != BLOCK:
        raise StreamInvalid(f"disk stream version {version}/block {block} is not supported")
    if not 0 < size <= MAX_VIRTUAL_SIZE:
        raise StreamInvalid(f"implausible virtual size {size}")
    return int(size)


def records(src: IO[bytes], size: int, summary: Summary) -> Iterator[tuple[int, bytes]]:
    """``(offset, data)`` of every record; checks order, bounds and the end record, and
    fills ``summary`` (digest recomputed from the data read)."""
    digest = Digest()
    last_end = 0
    while True:
        kind = _exact(src, 1)
        if kind == b"D":
            offset, length = struct.unpack(">QI", _exact(src, 12))
            if (
                offset % BLOCK
                or offset < last_end
                or not 0 < length <= MAX_REQUEST
                or offset + length > size
            ):
                raise StreamInvalid(f"bad record {offset}+{length}")
            data = _exact(src, length)
            digest.add(offset, data)
            last_end = offset + length
            yield offset, data
        elif kind == b"E":
            data_bytes, blocks, raw = struct.unpack(">QQ32s", _exact(src, _END.size - 1))
            if (data_bytes, blocks, raw) != (digest.data_bytes, digest.blocks, digest.raw()):
                raise StreamInvalid("the disk stream's end record does not match its content")
            if src.read(1):
                raise StreamInvalid("data after the end record")
            summary.data_bytes, summary.blocks = digest.data_bytes, digest.blocks
            summary.digest = digest.hexdigest()
            return
        else:
            raise StreamInvalid(f"unknown record type {kind!r}")
