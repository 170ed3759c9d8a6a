"""The name of a data directory's bootstrap superuser (the role with oid 10), read from
its files with no server running.

A restore drill of a physical Backup starts the restored server on a scratch data
directory, where the only roles are the source's: the drill connects as the one role
every cluster has, its bootstrap superuser, whatever it is called.  Its name is in the
shared catalog ``pg_authid``, a heap whose file ``global/pg_filenode.map`` names; this
reads both as PostgreSQL 12 and later lay them out (``oid`` is the first column of
``pg_authid`` and ``rolname`` the second).
"""

from __future__ import annotations

import struct
from pathlib import Path

from cozybackup_core import DriverError

_MAP_MAGIC = 0x592717
_PG_AUTHID = 1260
_BOOTSTRAP_SUPERUSER = 10
_PAGE = 8192
_PAGE_HEADER = 24
_LP_NORMAL = 1
_XMAX_INVALID = 0x0800
_NAME_LEN = 64


def bootstrap_superuser(data_dir: Path) -> str:
    """The bootstrap superuser's name; :class:`DriverError` when it cannot be read."""
    try:
        names = _names_of_oid_10(data_dir / "global" / str(_authid_file(data_dir)))
    except (OSError, struct.error, ValueError) as exc:
        raise DriverError(
            "the restored data directory's roles could not be read", admin_detail=repr(exc)
        ) from None
    if not names:
        raise DriverError(
            "the restored data directory has no bootstrap superuser",
            admin_detail=f"{data_dir}: no row of oid 10 in pg_authid",
        )
    live = [name for name, alive in names if alive]
    return (live or [name for name, _ in names])[-1]


def _authid_file(data_dir: Path) -> int:
    raw = (data_dir / "global" / "pg_filenode.map").read_bytes()
    magic, count = struct.unpack_from("<ii", raw)
    if magic != _MAP_MAGIC:
        raise ValueError(f"pg_filenode.map: unknown magic {magic:#x}")
    for i in range(count):
        oid, filenode = struct.unpack_from("<II", raw, 8 + 8 * i)
        if oid == _PG_AUTHID:
            return int(filenode)
    raise ValueError("pg_filenode.map does not map pg_authid")


def _names_of_oid_10(heap: Path) -> list[tuple[str, bool]]:
    """Every version of the row of oid 10 in the heap file, and whether it is the live
    one as far as its header says (no deleting transaction)."""
    found: list[tuple[str, bool]] = []
    with open(heap, "rb") as f:
        while page := f.read(_PAGE):
            (lower,) = struct.unpack_from("<H", page, 12)
            for at in range(_PAGE_HEADER, min(lower, _PAGE), 4):
                (item,) = struct.unpack_from("<I", page, at)
                off, flags, length = item & 0x7FFF, (item >> 15) & 3, item >> 17
                if flags != _LP_NORMAL or not length:
                    continue
                (xmax,) = struct.unpack_from("<I", page, off + 4)
                (infomask,) = struct.unpack_from("<H", page, off + 20)
                data = off + page[off + 22]  # t_hoff
                (oid,) = struct.unpack_from("<I", page, data)
                if oid == _BOOTSTRAP_SUPERUSER:
                    name = page[data + 4 : data + 4 + _NAME_LEN].split(b"\0", 1)[0]
                    alive = xmax == 0 or bool(infomask & _XMAX_INVALID)
                    found.append((name.decode(errors="replace"), alive))
    return found
