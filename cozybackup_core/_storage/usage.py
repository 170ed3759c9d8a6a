"""What a tenant's backups cost in one location, from the committed manifests.

For each backup: its logical bytes (what it restores), the stored bytes it added when it
was made, and the stored bytes it alone holds now (what deleting it would free: the
chunks no other committed backup references; all of a stream-format backup's, and what
an application's server wrote).  Per application and per tenant: logical bytes, stored
bytes (each chunk counted once), and their ratio.  Deduplicated chunks are counted where
they are now (through the forwards of rewritten packs); a chunk shared by two
applications of a tenant counts in each application's figure and once in the tenant's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import attrs

from .repo import Repository
from .store import ArtifactStore, Manifest


@attrs.frozen(kw_only=True)
class BackupUsage:
    uid: str
    kind: str
    application: str
    logical_bytes: int
    #: Stored bytes the backup added when it was made.
    new_bytes: int
    #: Stored bytes no other backup references: what deleting it would free.
    unique_bytes: int


@attrs.frozen(kw_only=True)
class Totals:
    backups: int
    logical_bytes: int
    stored_bytes: int

    @property
    def ratio(self) -> float:
        """Logical over stored (1.0 when nothing is stored)."""
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 1.0


@attrs.frozen(kw_only=True)
class TenantUsage:
    namespace: str
    backups: tuple[BackupUsage, ...]
    #: ``(kind, application)`` -> its backups' totals.
    applications: dict[tuple[str, str], Totals]
    total: Totals

    _held: dict[str, dict[tuple[str, str], int]] = attrs.field(factory=dict, repr=False)
    _own_bytes: dict[str, int] = attrs.field(factory=dict, repr=False)

    def freed_by(self, uids: Iterable[str]) -> int:
        """Stored bytes deleting all of ``uids`` together would free (chunks shared only
        among them included, which no one of them frees alone)."""
        gone = set(uids)
        kept = {k for uid, chunks in self._held.items() if uid not in gone for k in chunks}
        freed = {k: n for uid in gone for k, n in self._held.get(uid, {}).items() if k not in kept}
        return sum(freed.values()) + sum(self._own_bytes.get(uid, 0) for uid in gone)


def tenant_usage(store: ArtifactStore, namespace: str) -> TenantUsage:
    """Read every committed manifest of ``namespace`` in ``store`` (and, for
    deduplicated ones, the forwards of rewritten packs)."""
    repos: dict[bool, Repository] = {}
    held: dict[str, dict[tuple[str, str], int]] = {}
    own_bytes: dict[str, int] = {}
    meta: dict[str, tuple[str, str, Manifest]] = {}
    for path, m in store.manifests(namespace):
        kind, app, uid = path.rsplit("/", 4)[1:4]
        meta[uid] = (kind, app, m)
        own_bytes[uid] = m.own_bytes
        if not any(s.chunks for s in m.streams):
            continue  # the stream format, or only what the server wrote: no repository
        sealed = m.encryption is not None
        if sealed not in repos:
            repos[sealed] = store.repository(namespace, sealed=sealed, create=False)
            repos[sealed].list_forwards()
        repo = repos[sealed]
        chunks: dict[tuple[str, str], int] = {}
        for s in m.streams:
            for ref in s.chunks:
                at = repo.locate(ref)
                chunks[(at.pack, at.id)] = at.length
        held[uid] = chunks
    refs = Counter(k for chunks in held.values() for k in chunks)
    backups = []
    for uid, (kind, app, m) in sorted(meta.items()):
        unique = own_bytes[uid] + sum(n for k, n in held.get(uid, {}).items() if refs[k] == 1)
        backups.append(
            BackupUsage(
                uid=uid,
                kind=kind,
                application=app,
                logical_bytes=m.size_bytes,
                new_bytes=m.added_bytes,
                unique_bytes=unique,
            )
        )
    groups: dict[tuple[str, str], list[str]] = {}
    for b in backups:
        groups.setdefault((b.kind, b.application), []).append(b.uid)
    return TenantUsage(
        namespace=namespace,
        backups=tuple(backups),
        applications={
            app: _totals(uids, meta, held, own_bytes) for app, uids in sorted(groups.items())
        },
        total=_totals(list(meta), meta, held, own_bytes),
        held=held,
        own_bytes=own_bytes,
    )


def _totals(
    uids: list[str],
    meta: dict[str, tuple[str, str, Manifest]],
    held: dict[str, dict[tuple[str, str], int]],
    own_bytes: dict[str, int],
) -> Totals:
    chunks: dict[tuple[str, str], int] = {}
    for uid in uids:
        chunks.update(held.get(uid, {}))
    return Totals(
        backups=len(uids),
        logical_bytes=sum(meta[u][2].size_bytes for u in uids),
        stored_bytes=sum(chunks.values()) + sum(own_bytes.get(u, 0) for u in uids),
    )
