"""Garbage collection of one tenant's repository: packs no committed manifest needs go.

What is live is what the committed manifests of the namespace reference (a deleted
Backup's manifest is deleted first, so its chunks stop being live with it).  A pack with
no live chunk is deleted; a pack at least ``REWRITE_DEAD`` dead is rewritten: its live
chunks are copied into a new pack and a forward (``moved/<pack>``) says where each went,
since manifests are immutable (a Backup records its manifest's checksum) and keep naming
the old pack.  Below that a pack keeps its dead chunks: rewriting 32 MiB to free less
than half of it costs more reads and writes than it saves (restic's and borg's compaction
thresholds are of the same kind).

A backup running meanwhile references chunks it found in the indexes when it started,
and names them only in its manifest, written last.  Nothing it may reference goes:

1. every writer puts a marker ``writers/<uid>`` *before* it reads the indexes, and reads
   the condemnations ``gc/<run>`` after; it never references a chunk of a condemned pack
   (it stores that chunk again instead);
2. a collection marks, condemns the packs it would delete or rewrite (``gc/<run>``),
   and only *then* lists the writers' markers: those are the only writers that may hold
   a condemned chunk without having seen it condemned;
3. a condemned pack is touched only once each of them has gone or committed (its
   manifest exists), and after marking again from a fresh listing of the manifests: a
   chunk one of them came to reference is live again, and kept.

A writer's manifest is written before its marker is removed, so a writer absent from the
second listing of markers has a manifest the second marking sees.  Every step is one
object written or deleted, in an order where a crash anywhere leaves what the next
collection finishes: an index is deleted before its pack, a rewritten pack's copy and
index are stored before its forward, the forward before the old pack goes.  A crashed
writer's marker is removed with its partial artifact (recovery), or ignored once older
than ``WRITER_STALE`` (longer than any backup's deadline).  One collection at a time per
repository (``gc.lock``): the platform runs one controller; two at once could each delete
a forward the other just wrote.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Iterable

import attrs

from ..._api.errors import CozyError, StorageError
from .repository import ChunkRef, Repository, read_if_any

log = logging.getLogger("cozybackup.storage.gc")

#: A pack at least this dead (in stored bytes) is rewritten; less dead, it is kept.
REWRITE_DEAD = 0.5
#: A writer's marker older than this is a crashed writer's (backups time out at 12 h).
WRITER_STALE = dt.timedelta(hours=24)
#: A collection's lock older than this is a crashed collection's.
LOCK_STALE = dt.timedelta(hours=6)


@attrs.frozen(kw_only=True)
class Collected:
    """What one collection of one repository did."""

    deleted_packs: int = 0
    rewritten_packs: int = 0
    freed_bytes: int = 0
    #: Writers a condemnation still waits for (nothing of it was touched yet).
    waiting: int = 0


@attrs.frozen(kw_only=True)
class Marks:
    """The repository as the committed manifests see it."""

    #: pack -> its stored size, every pack stored.
    packs: dict[str, int]
    #: pack -> the live chunks in it (by id), after following forwards.
    live: dict[str, dict[str, ChunkRef]]
    #: forwards a live reference goes through, and every forward stored.
    used_forwards: set[str]
    forwards: set[str]

    def dead_fraction(self, pack: str) -> float:
        size = self.packs.get(pack, 0)
        if size <= 0:
            return 1.0
        live = sum(r.length for r in self.live.get(pack, {}).values())
        return max(0.0, (size - live) / size)

    def condemnable(self) -> list[str]:
        return sorted(p for p in self.packs if self.dead_fraction(p) >= REWRITE_DEAD)


def mark(repo: Repository, references: Iterable[Iterable[ChunkRef]]) -> Marks:
    """``references``: each committed manifest's chunk references (raising when one is
    unreadable: what it references is unknown, so nothing may be collected)."""
    forwards = repo.list_forwards()  # afresh: this collection may have just written some
    used: set[str] = set()
    live: dict[str, dict[str, ChunkRef]] = {}
    for refs in references:
        for ref in refs:
            at = repo.locate(ref, used)
            live.setdefault(at.pack, {})[at.id] = at
    return Marks(
        packs=repo.sizes("packs"),
        live=live,
        used_forwards=used,
        forwards=forwards,
    )


class Collector:
    def __init__(
        self,
        repo: Repository,
        references: Callable[[], Iterable[Iterable[ChunkRef]]],
        committed: Callable[[str], bool],
    ) -> None:
        self.repo = repo
        self._references = references
        self._committed = committed
        self._owner = secrets.token_hex(8)
        self._deleted = self._rewritten = self._freed = self._waiting = 0

    def run(self) -> Collected | None:
        """One collection; None when another holds the repository's lock."""
        if not self._lock():
            return None
        try:
            if self._settle_pending():
                marks = mark(self.repo, self._references())
                condemned = marks.condemnable()
                if condemned:
                    self._condemn_and_sweep(condemned)
        finally:
            self._unlock()
        return Collected(
            deleted_packs=self._deleted,
            rewritten_packs=self._rewritten,
            freed_bytes=self._freed,
            waiting=self._waiting,
        )

    # ------------------------------------------------------------------ steps

    def _settle_pending(self) -> bool:
        """Finish what earlier (maybe crashed) collections condemned; False while one still
        waits for a writer (no new condemnation then: one at a time is enough)."""
        settled = True
        for run in self.repo.names("gc"):
            path = self.repo.condemnation_path(run)
            data = read_if_any(self.repo.bucket, path)
            if data is None:
                continue
            try:
                doc = json.loads(data)
                packs = [str(p) for p in doc["packs"]]
                waiting = doc.get("waiting")
            except (ValueError, KeyError, TypeError):
                log.warning("condemnation %s of %s is unreadable; dropped", run, self.repo.base)
                self._drop(path)
                continue
            if waiting is None:  # a crash between its two writes: wait for every writer
                waiting = self._writers()
                self.repo.bucket.put_atomic(
                    path, json.dumps({"packs": packs, "waiting": waiting}).encode()
                )
            still = set(waiting) & set(self._writers())
            if still:
                self._waiting += len(still)
                settled = False
                continue
            self._sweep(packs)
            self._drop(path)
        return settled

    def _condemn_and_sweep(self, packs: list[str]) -> None:
        run = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
        path = self.repo.condemnation_path(run)
        self.repo.bucket.put_atomic(path, json.dumps({"packs": packs}).encode())
        waiting = self._writers()  # listed after the condemnation is stored: the order matters
        if waiting:
            self._waiting += len(waiting)
            self.repo.bucket.put_atomic(
                path, json.dumps({"packs": packs, "waiting": waiting}).encode()
            )
            return
        self._sweep(packs)
        self._drop(path)

    def _sweep(self, condemned: list[str]) -> None:
        marks = mark(self.repo, self._references())  # after the writers are gone: fresh
        for pack in condemned:
            if pack not in marks.packs:
                continue  # gone already (a crashed collection got this far)
            if not marks.live.get(pack):
                self._delete_pack(pack, marks.packs[pack])
            elif marks.dead_fraction(pack) >= REWRITE_DEAD:
                self._rewrite(pack, marks)
            # else: live again (a writer it waited for came to reference it): kept
        for pack in marks.forwards - marks.used_forwards:
            self._drop(self.repo.moved_path(pack))

    def _delete_pack(self, pack: str, size: int) -> None:
        self._drop(self.repo.index_path(pack))  # first: no new reader of the index finds it
        self._drop(self.repo.pack_path(pack))
        self._deleted += 1
        self._freed += size

    def _rewrite(self, pack: str, marks: Marks) -> None:
        repo = self.repo
        live = sorted(marks.live[pack].values(), key=lambda r: r.offset)
        new = repo.new_pack_id()
        moved: list[ChunkRef] = []
        digest = hashlib.sha256()
        try:
            with repo.bucket.open_write(repo.pack_path(new)) as out:
                offset = 0
                for ref in live:
                    blob = repo.bucket.read_range(repo.pack_path(pack), ref.offset, ref.length)
                    repo.open_blob(ref, blob)  # never copy a damaged chunk into a sound pack
                    out.write(blob)
                    digest.update(blob)
                    moved.append(attrs.evolve(ref, pack=new, offset=offset))
                    offset += len(blob)
        except CozyError as exc:
            # Kept as it is: verification names the Backups a damaged chunk belongs to.
            log.warning("pack %s not rewritten: %s (%s)", pack, exc, exc.admin_detail)
            self._drop(repo.pack_path(new))
            return
        repo.write_index(new, moved, digest.hexdigest())
        repo.write_moved(pack, moved)
        size = marks.packs[pack]
        self._delete_pack(pack, size)
        self._deleted -= 1
        self._rewritten += 1
        self._freed -= sum(r.length for r in moved)

    # ------------------------------------------------------------------ markers

    def _writers(self) -> list[str]:
        """The writers that may still reference what they read: not committed, not stale."""
        now = dt.datetime.now(dt.timezone.utc)
        out = []
        for writer in self.repo.names("writers"):
            data = read_if_any(self.repo.bucket, self.repo.writer_path(writer))
            if data is None:
                continue
            try:
                doc = json.loads(data)
                manifest = str(doc["manifest"])
                started = dt.datetime.fromisoformat(str(doc["startedAt"]))
            except (ValueError, KeyError, TypeError):
                log.warning("writer marker %s of %s is unreadable; ignored", writer, self.repo.base)
                continue
            if self._committed(manifest):
                self.repo.release_writer(writer)  # its references are in its manifest
            elif now - started > WRITER_STALE:
                log.warning("writer %s of %s is stale; ignored", writer, self.repo.base)
            else:
                out.append(writer)
        return sorted(out)

    # ------------------------------------------------------------------ lock

    def _lock(self) -> bool:
        """Best effort on S3 (no exclusive create): write, then read back our own name."""
        path = f"{self.repo.base}/gc.lock"
        now = dt.datetime.now(dt.timezone.utc)
        held = read_if_any(self.repo.bucket, path)
        if held is not None:
            try:
                at = dt.datetime.fromisoformat(str(json.loads(held)["at"]))
            except (ValueError, KeyError, TypeError):
                at = now - LOCK_STALE
            if now - at < LOCK_STALE:
                log.info("repository %s is being collected by another process", self.repo.base)
                return False
        doc = {"owner": self._owner, "at": now.isoformat()}
        self.repo.bucket.put_atomic(path, json.dumps(doc).encode())
        mine = read_if_any(self.repo.bucket, path)
        return mine is not None and json.loads(mine).get("owner") == self._owner

    def _unlock(self) -> None:
        self._drop(f"{self.repo.base}/gc.lock")

    def _drop(self, path: str) -> None:
        try:
            self.repo.bucket.fs.rm_file(path)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise StorageError(
                "the backup storage could not be cleaned up", admin_detail=repr(exc)
            ) from exc
