"""The artifact's layout: which streams a backup writes, and the index a restore reads.

``db-<name>.dump``  one ``pg_dump -Fc --compress=0`` per database.
``globals.sql``     ``pg_dumpall --globals-only``: roles, memberships, tablespaces.
``roles.json``      every role's attributes, memberships and settings, defaults included
                    (``_roles``); backups made before it existed have none.
``tablespaces.json`` every tablespace's owner, privileges, options, comment (``_tablespaces``).
``index.json``      written last: which stream holds which database (database names may
                    hold any character; stream names may not), in format :data:`FORMAT`,
                    and per database what pg_dump does not carry (``_extras``).

A new key or stream is added without changing :data:`FORMAT` when a restore by an older
driver, which ignores it, still does what it did before; a reader here treats a missing
one as "made by an older driver".
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from cozybackup_core import DriverError, StreamSource

FORMAT = 1
INDEX_STREAM = "index.json"
GLOBALS_STREAM = "globals.sql"

_STREAM_SAFE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def stream_names(databases: Sequence[str]) -> dict[str, str]:
    """A distinct artifact stream name for every database name.

    Names that are already safe keep their spelling (``db-shop.dump``); others get a
    readable slug plus a digest of the exact name (``db-my-shop-3f2a9c1d.dump``).
    """
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in databases:
        if _STREAM_SAFE.match(name):
            stream = f"db-{name}.dump"
        else:
            slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:40] or "db"
            digest = hashlib.sha256(name.encode()).hexdigest()[:8]
            stream = f"db-{slug}-{digest}.dump"
        n = 1
        base = stream
        while stream in used:  # practically never: only a crafted collision
            n += 1
            stream = base.replace(".dump", f"-{n}.dump")
        used.add(stream)
        out[name] = stream
    return out


def read_index(source: StreamSource) -> dict[str, Any]:
    """The backup's index, checked: its format is ours and every stream it names is there."""
    if INDEX_STREAM not in source.names():
        raise DriverError("the backup was not written by the PostgreSQL driver (it has no index)")
    with source.open(INDEX_STREAM) as f:
        raw = f.read()
    try:
        index: dict[str, Any] = json.loads(raw)
        fmt = index["format"]
        entries = index["databases"]
        ok = (
            isinstance(entries, list)
            and all(
                isinstance(e, dict)
                and isinstance(e.get("name"), str)
                and isinstance(e.get("stream"), str)
                for e in entries
            )
            and isinstance(index["globals"]["stream"], str)
            # No record of roles or tablespaces (null or absent): a backup older than it.
            and all(
                isinstance(index.get(k) or {}, dict)
                and isinstance((index.get(k) or {}).get("stream", ""), str)
                for k in ("roles", "tablespaces")
            )
        )
    except (ValueError, KeyError, TypeError):
        ok, fmt = False, None
    if not ok:
        raise DriverError("the backup's index of databases is unreadable")
    if fmt != FORMAT:
        raise DriverError(
            f"the backup uses format {fmt} of the PostgreSQL driver; this version reads "
            f"format {FORMAT}: ask the platform operator to update the driver"
        )
    names = source.names()
    missing = [e["stream"] for e in entries if e["stream"] not in names]
    if index["globals"]["stream"] not in names:
        missing.append(index["globals"]["stream"])
    for record in (roles_stream(index), tablespaces_stream(index)):
        if record is not None and record not in names:
            missing.append(record)
    if missing:
        raise DriverError("the backup is incomplete: the dump of a database is missing")
    return index


def roles_stream(index: dict[str, Any]) -> str | None:
    """The stream with the record of roles (``_roles``), or None in a backup older than it."""
    return _record(index, "roles")


def tablespaces_stream(index: dict[str, Any]) -> str | None:
    """The stream with the record of tablespaces (``_tablespaces``), or None."""
    return _record(index, "tablespaces")


def _record(index: dict[str, Any], key: str) -> str | None:
    entry = index.get(key)
    return str(entry["stream"]) if isinstance(entry, dict) and "stream" in entry else None
