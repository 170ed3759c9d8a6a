"""The disk stream format and the NBD reader, without the engine."""

from __future__ import annotations

import io
import random
import re
import struct
from pathlib import Path

import pytest
from cozybackup_kubevirt._nbd import serve
from cozybackup_kubevirt._stream import (
    BLOCK,
    Change,
    Digest,
    StreamInvalid,
    Summary,
    aligned,
    content_digest,
    overlay,
    read_header,
    records,
    runs_in,
    write_runs,
    write_stream,
)

from cozybackup_core import Deadline, DeadlineExceeded

from conftest import MiB, make_image

SIZE = 16 * MiB


def build(blocks: list[tuple[int, bytes]], *, size: int = SIZE, end: bytes | None = None) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">8sIQI", b"CZVMDISK", 1, size, BLOCK))
    digest = Digest()
    for offset, data in blocks:
        out.write(struct.pack(">cQI", b"D", offset, len(data)))
        out.write(data)
        digest.add(offset, data)
    if end is None:
        end = struct.pack(">cQQ32s", b"E", digest.data_bytes, digest.blocks, digest.raw())
    out.write(end)
    return out.getvalue()


def parse(raw: bytes) -> tuple[list[tuple[int, int]], Summary]:
    src = io.BytesIO(raw)
    size = read_header(src)
    summary = Summary(size)
    got = [(o, len(d)) for o, d in records(src, size, summary)]
    return got, summary


def test_a_valid_stream_parses() -> None:
    got, summary = parse(build([(0, b"\1" * BLOCK), (3 * BLOCK, b"\2" * (2 * BLOCK))]))
    assert got == [(0, BLOCK), (3 * BLOCK, 2 * BLOCK)]
    assert summary.data_bytes == 3 * BLOCK and summary.blocks == 3


_INVALID = [
        (b"NOTADISK" + bytes(16), "not a disk stream"),
        (struct.pack(">8sIQI", b"CZVMDISK", 2, SIZE, BLOCK), "version 2"),
        (struct.pack(">8sIQI", b"CZVMDISK", 1, 0, BLOCK), "implausible virtual size"),
        (build([(100, b"x" * 10)]), "bad record 100+10"),
        (build([(2 * BLOCK, b"x" * BLOCK), (BLOCK, b"y" * BLOCK)]), "bad record"),
        (build([(SIZE - BLOCK, b"x" * (2 * BLOCK))]), "bad record"),
        (build([(0, b"x" * BLOCK)])[:-5], "ends early"),
        (build([(0, b"x" * BLOCK)]) + b"!", "data after the end record"),
        (build([(0, b"x" * BLOCK)], end=struct.pack(">cQQ32s", b"E", BLOCK, 1, bytes(32))), "does not match"),
        (build([], end=b"Z"), "unknown record type"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "problem"), _INVALID, ids=[p for _, p in _INVALID])
def test_invalid_streams_are_refused(raw: bytes, problem: str) -> None:
    with pytest.raises(StreamInvalid, match=re.escape(problem)):
        parse(raw)


def test_a_flipped_data_byte_fails_the_end_record() -> None:
    raw = bytearray(build([(0, b"\1" * BLOCK)]))
    raw[30] ^= 0xFF
    with pytest.raises(StreamInvalid, match="does not match"):
        parse(bytes(raw))


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_reader_drops_holes_and_zero_blocks(tmp_path: Path, fmt: str) -> None:
    img = make_image(
        tmp_path / f"d.{fmt}",
        fmt,
        SIZE,
        patterns=((0x00, 0, 2 * MiB), (0x7F, 5 * MiB + 3, 10), (0x01, SIZE - 512, 512)),
    )
    deadline = Deadline.after(60)
    out = io.BytesIO()
    with serve(img, fmt, deadline=deadline) as client:
        summary = write_stream(client, out, deadline.check)
    assert summary.blocks == 2 and summary.data_bytes == 2 * BLOCK
    got, parsed = parse(out.getvalue())
    assert got == [(5 * MiB, BLOCK), (SIZE - BLOCK, BLOCK)]
    assert parsed.digest == summary.digest
    with serve(img, fmt, deadline=deadline) as client:
        assert content_digest(client, deadline.check).digest == summary.digest


def test_a_passed_deadline_stops_the_read(tmp_path: Path) -> None:
    img = make_image(tmp_path / "d.qcow2", "qcow2", SIZE, patterns=((1, 0, MiB),))
    deadline = Deadline.after(60)
    with serve(img, "qcow2", deadline=deadline) as client:
        client._deadline = Deadline.after(0)
        with pytest.raises(DeadlineExceeded):
            write_stream(client, io.BytesIO(), client._deadline.check)


def _stream_of(image: bytes) -> bytes:
    out = io.BytesIO()
    write_runs(out, len(image), runs_in(0, image))
    return out.getvalue()


@pytest.mark.parametrize("seed", range(6))
def test_changed_blocks_laid_over_the_previous_stream_give_the_new_disks_stream(
    seed: int,
) -> None:
    """Only the changed extents are read (a few bytes off block edges, zeroed blocks
    included), yet the stream is byte for byte the one a read of the whole disk gives."""
    rnd = random.Random(seed)
    size = 9 * MiB + 3 * BLOCK
    old = bytearray(size)
    for _ in range(8):
        at = rnd.randrange(size - 600_000)
        old[at : at + 300_000] = rnd.randbytes(300_000)
    new = bytearray(old)
    changes = []
    for at in sorted(rnd.sample(range(0, size - 200_000, 150_001), 6)):
        n = rnd.randrange(1, 150_000)
        zero = rnd.random() < 0.3
        new[at : at + n] = bytes(n) if zero else rnd.randbytes(n)
        changes.append(Change(at, n, zero))
    reads: list[tuple[int, int]] = []

    def read(offset: int, n: int) -> bytes:
        reads.append((offset, n))
        return bytes(new[offset : offset + n])

    src = io.BytesIO(_stream_of(bytes(old)))
    base = records(src, read_header(src), Summary(size))
    out = io.BytesIO()
    write_runs(out, size, overlay(base, aligned(changes, size), read, lambda: None))
    assert out.getvalue() == _stream_of(bytes(new))
    read_total = sum(n for _, n in reads)
    assert read_total <= sum(c.length + 2 * BLOCK for c in changes)


def test_a_damaged_base_fails_the_overlay() -> None:
    image = random.Random(7).randbytes(2 * MiB)
    raw = bytearray(_stream_of(image))
    raw[100] ^= 1
    src = io.BytesIO(bytes(raw))
    base = records(src, read_header(src), Summary(len(image)))
    with pytest.raises(StreamInvalid):
        list(overlay(base, [Change(0, BLOCK)], lambda o, n: image[o : o + n], lambda: None))
