"""The integrity of an etcd v3 snapshot, checked as its bytes pass.

A snapshot from the maintenance API (and the file ``etcdctl snapshot save`` writes) is
the member's bbolt database followed by the sha256 of that database, computed by the
member as it read it.  :class:`SnapshotCheck` hashes everything but the last 32 bytes
without holding more than those 32 bytes back, so a backup can be refused before it is
committed and a restore before anything is touched.
"""

from __future__ import annotations

import hashlib

from cozybackup_core import DriverError, TransientError

SHA_SIZE = 32
#: bbolt's meta page: a 16-byte page header, then the magic number (little endian).
_BOLT_MAGIC = (0xED0CDAED).to_bytes(4, "little")
_MAGIC_AT = slice(16, 20)


class SnapshotCorrupt(TransientError):
    """The snapshot a member sent does not match its own checksum (damaged in transit)."""

    reason = "SnapshotCorrupt"


class SnapshotCheck:
    """Feed every byte of a snapshot; :meth:`finish` checks its sha256 trailer."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._tail = b""
        self._head = b""
        self.size = 0

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if len(self._head) < _MAGIC_AT.stop:
            self._head += chunk[: _MAGIC_AT.stop - len(self._head)]
        data = self._tail + chunk
        if len(data) > SHA_SIZE:
            self._hash.update(data[:-SHA_SIZE])
            self._tail = data[-SHA_SIZE:]
        else:
            self._tail = data

    def problem(self) -> str | None:
        """None when the bytes fed are a complete, intact snapshot; else what is wrong."""
        if self.size <= SHA_SIZE + _MAGIC_AT.stop:
            return f"only {self.size} bytes"
        if self._head[_MAGIC_AT] != _BOLT_MAGIC:
            return "not a bbolt database (no meta page magic)"
        if self._hash.digest() != self._tail:
            return f"sha256 of the database {self._hash.hexdigest()} != trailer {self._tail.hex()}"
        return None

    @property
    def digest(self) -> str:
        """The database's sha256 (hex), as recorded in its trailer."""
        return self._tail.hex()


def check_sent(check: SnapshotCheck, expected: int | None) -> None:
    """After a backup's stream: the member sent ``expected`` database bytes plus the
    sha256, and they agree.  Raised inside the artifact stream, nothing is committed."""
    if expected is not None and check.size != expected + SHA_SIZE:
        raise SnapshotCorrupt(
            "the etcd member's snapshot stream ended early; nothing was stored. Check "
            "that the cluster is healthy, then run the job again",
            admin_detail=f"got {check.size} bytes, the member announced {expected} + "
            f"{SHA_SIZE} (sha256)",
        )
    problem = check.problem()
    if problem is not None:
        raise SnapshotCorrupt(
            "the snapshot the etcd member sent does not match its own checksum (it was "
            "damaged on the way); nothing was stored. Run the job again",
            admin_detail=problem,
        )


def check_stored(check: SnapshotCheck) -> None:
    """Before a restore touches anything: the backed-up snapshot is intact."""
    problem = check.problem()
    if problem is not None:
        raise DriverError(
            "the backed-up etcd snapshot fails its own integrity check (sha256); the "
            "cluster was not touched. Restore from another backup",
            admin_detail=problem,
        )
