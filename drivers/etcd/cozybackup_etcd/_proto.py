"""The few protobuf messages of etcd's v3 API the driver speaks, encoded by hand.

etcd's ``rpc.proto`` is stable across 3.4, 3.5 and 3.6, and the driver needs five
small messages of it.  Encoding them here (the protobuf wire format is a handful of
rules) spares a ``protobuf`` runtime dependency, generated code and its version
pinning; ``grpcio`` alone carries the bytes.  Field numbers are etcd's
(``api/etcdserverpb/rpc.proto``); unknown fields are skipped, as protobuf requires.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeAlias

#: A decoded field value: varints as int, length-delimited fields as bytes.
Value: TypeAlias = int | bytes

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MASK64 = (1 << 64) - 1


class ProtoError(ValueError):
    """Bytes that are not a well-formed protobuf message."""


# ---------------------------------------------------------------------- encoding


def _varint(value: int) -> bytes:
    value &= _MASK64  # negative int64 values travel as their two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field_int(number: int, value: int) -> bytes:
    """A varint field (int64, uint64, bool); zero is the default and is left out."""
    return _varint(number << 3 | _VARINT) + _varint(value) if value else b""


def field_bytes(number: int, value: bytes | str) -> bytes:
    """A length-delimited field (bytes, string, embedded message); empty is left out."""
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | _LEN) + _varint(len(data)) + data if data else b""


def field_message(number: int, body: bytes) -> bytes:
    """An embedded message, present even when all its fields are defaults."""
    return _varint(number << 3 | _LEN) + _varint(len(body)) + body


# ---------------------------------------------------------------------- decoding


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ProtoError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & _MASK64, pos
        shift += 7


def fields(data: bytes) -> Iterator[tuple[int, Value]]:
    """Every ``(field number, value)`` of a message, in wire order."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError("field number 0")
        if wire == _VARINT:
            value, pos = _read_varint(data, pos)
            yield number, value
        elif wire == _LEN:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise ProtoError("length-delimited field runs past the message")
            yield number, data[pos : pos + size]
            pos += size
        elif wire in (_I64, _I32):
            width = 8 if wire == _I64 else 4
            if pos + width > len(data):
                raise ProtoError("fixed-width field runs past the message")
            yield number, int.from_bytes(data[pos : pos + width], "little")
            pos += width
        else:
            raise ProtoError(f"unsupported wire type {wire}")


def as_int64(value: int) -> int:
    """A decoded varint read as a signed int64 (lease IDs, TTLs, sizes)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def one(message: bytes, number: int, default: Value) -> Value:
    """The last value of field ``number`` (protobuf: the last one wins), else ``default``."""
    found = default
    for n, value in fields(message):
        if n == number:
            found = value
    return found


def ints(message: bytes, number: int) -> int:
    value = one(message, number, 0)
    if not isinstance(value, int):
        raise ProtoError(f"field {number} is not a varint")
    return value


def blob(message: bytes, number: int) -> bytes:
    value = one(message, number, b"")
    if not isinstance(value, bytes):
        raise ProtoError(f"field {number} is not length-delimited")
    return value


def text(message: bytes, number: int) -> str:
    return blob(message, number).decode("utf-8", errors="replace")


def repeated(message: bytes, number: int) -> list[bytes]:
    """Every occurrence of a repeated message/bytes/string field."""
    out: list[bytes] = []
    for n, value in fields(message):
        if n == number:
            if not isinstance(value, bytes):
                raise ProtoError(f"field {number} is not length-delimited")
            out.append(value)
    return out
