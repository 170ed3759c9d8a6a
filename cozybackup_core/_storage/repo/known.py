"""The chunks a writer may reference, kept on disk so memory stays flat.

A dict of every indexed chunk took ~300 B per chunk (measured: 11.6 MiB for 40,000
chunks, about 49 GiB of data), so ~240 MB for a 1 TiB repository, in every backup.
SQLite's private temporary database (``connect("")``) keeps them in a file that goes
with the connection, behind a page cache of a few MiB; a lookup is one primary-key probe.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import weakref

from ..._api.errors import ArtifactCorruptError
from .repository import ChunkRef, Repository

log = logging.getLogger("cozybackup.storage.repo")

#: SQLite's page cache, in KiB (negative: a size, not a page count).
_CACHE_KIB = 4096


class KnownChunks:
    """id -> where the chunk is; the few calls a :class:`PackSink` makes of a dict."""

    def __init__(self) -> None:
        self._db = sqlite3.connect("", check_same_thread=False)
        # Closed with the object even when a writer is abandoned (a crash, a failed
        # commit nobody aborts): the temporary file goes, and no connection is left open.
        self._closer = weakref.finalize(self, self._db.close)
        self._lock = threading.Lock()
        self._db.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        self._db.execute(
            "CREATE TABLE chunk (id BLOB PRIMARY KEY, size INT, pack TEXT, "
            "offset INT, length INT) WITHOUT ROWID"
        )
        self._db.execute("CREATE TABLE pack (id TEXT PRIMARY KEY, sha256 TEXT) WITHOUT ROWID")

    def add(self, refs: list[ChunkRef]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO chunk VALUES (?, ?, ?, ?, ?)",
                [(bytes.fromhex(r.id), r.size, r.pack, r.offset, r.length) for r in refs],
            )

    def add_pack(self, pack: str, sha256: str) -> None:
        """The whole pack's sha256, as its index recorded it (a manifest anchors it)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO pack VALUES (?, ?)", (pack, sha256))

    def pack_sha256(self, pack: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT sha256 FROM pack WHERE id = ?", (pack,)).fetchone()
        return None if row is None else str(row[0])

    def get(self, cid: str) -> ChunkRef | None:
        with self._lock:
            row = self._db.execute(
                "SELECT size, pack, offset, length FROM chunk WHERE id = ?", (bytes.fromhex(cid),)
            ).fetchone()
        if row is None:
            return None
        size, pack, offset, length = row
        return ChunkRef(id=cid, size=size, pack=pack, offset=offset, length=length)

    def discard(self, cid: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM chunk WHERE id = ?", (bytes.fromhex(cid),))

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM chunk").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._closer()


def known_chunks(repo: Repository) -> KnownChunks:
    """Every indexed chunk of the repository a new backup may reference: all but those
    of packs a garbage collection condemned (``gc.py``).  An unreadable index only loses
    deduplication against its pack, so it is logged and skipped.  The caller closes it."""
    condemned = repo.condemned()
    out = KnownChunks()
    try:
        for pack in repo.names("index"):
            if pack in condemned:
                continue
            try:
                refs, sha256 = repo.read_index_doc(pack)
            except ArtifactCorruptError as exc:
                log.warning(
                    "index of pack %s is unreadable, not deduplicating against it: %s",
                    pack,
                    exc.admin_detail,
                )
                continue
            out.add(refs)
            if sha256 is not None:
                out.add_pack(pack, sha256)
    except BaseException:
        out.close()
        raise
    return out
