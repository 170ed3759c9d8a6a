"""A stream into chunks and back: the writer a driver writes to, the reader it reads.

Memory is bounded whatever the stream's size: the chunker's window, a few chunks in
flight to the compressing threads, the pack's upload buffer, a few chunks read ahead.  What grows is the list of
chunk references (one per ~1.25 MiB); the repository's known chunk ids are in a
temporary SQLite file (``known.py``), not in memory.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import io
import threading
from collections.abc import Callable
from typing import IO, Any

import zstandard

from ..._api.errors import ArtifactCorruptError, StorageError
from .chunking import Chunker
from .known import KnownChunks, known_chunks
from .repository import ChunkRef, Repository

#: A pack is closed once it holds this much: few objects, yet small enough to re-read.
PACK_TARGET = 32 << 20
READ_AHEAD = 4


class PackSink:
    """The packs of one backup: new chunks are appended to the open pack; a chunk the
    repository (or this backup) already holds is referenced, not stored again."""

    def __init__(
        self,
        repo: Repository,
        discard: Callable[[IO[bytes]], None],
        *,
        threads: int = 1,
        pack_target: int = PACK_TARGET,
        writer: str = "",
        manifest: str = "",
    ) -> None:
        self.repo = repo
        #: Registered with the repository before its indexes are read (see ``gc.py``).
        self._writer = writer
        self._manifest = manifest
        self._registered = False
        self._discard = discard
        self._pack_target = pack_target
        self._threads = max(1, threads)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        #: How many chunks a stream may have in flight (memory: this many, ~1.25 MiB each).
        self.depth = 2 * self._threads
        self._lock = threading.Lock()  # a driver may write two streams at once
        self._known: KnownChunks | None = None
        self._pack: str | None = None
        self._file: IO[bytes] | None = None
        self._digest = hashlib.sha256()
        self._offset = 0
        self._entries: list[ChunkRef] = []
        #: Stored bytes this backup added to the repository.
        self.added_bytes = 0

    def add(self, chunk: bytes) -> ChunkRef:
        return self.prepare(chunk)()

    def prepare(self, chunk: bytes) -> Callable[[], ChunkRef]:
        """Start storing ``chunk`` (compressed and sealed in a worker thread: zstd
        releases the GIL); the call returned finishes it.  A stream calls those in
        its own order, so its chunks are appended in order."""
        cid = self.repo.chunk_id(chunk)
        with self._lock:
            ref = self._known_ids().get(cid)
        if ref is not None:
            held = ref
            return lambda: held
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self._threads, "cozybackup-pack")
        size = len(chunk)
        blob = self._pool.submit(self._seal, cid, chunk)
        return lambda: self._store(cid, size, blob.result())

    def _seal(self, cid: str, chunk: bytes) -> bytes:
        return self.repo.seal(cid, zstandard.ZstdCompressor(level=3).compress(chunk))

    def _store(self, cid: str, size: int, blob: bytes) -> ChunkRef:
        with self._lock:
            known = self._known_ids()
            held = known.get(cid)
            if held is not None:  # stored meanwhile (an earlier repeat, or the other stream)
                return held
            ref = self._append(cid, size, blob)
            known.add([ref])
            return ref

    def _known_ids(self) -> KnownChunks:
        if self._known is None:
            if self._writer:
                started = dt.datetime.now(dt.timezone.utc).isoformat()
                self.repo.register_writer(self._writer, self._manifest, started)
                self._registered = True
            self._known = known_chunks(self.repo)
        return self._known

    def release(self) -> None:
        """The manifest is written (or the backup gave up): a collection need not wait."""
        if self._registered:
            self.repo.release_writer(self._writer)
            self._registered = False
        with self._lock:
            if self._known is not None:
                self._known.close()
                self._known = None

    def _append(self, cid: str, size: int, blob: bytes) -> ChunkRef:
        if self._file is None:
            self._pack = self.repo.new_pack_id()
            self._file = _guard(
                lambda: self.repo.bucket.open_write(self.repo.pack_path(self._pack or ""))
            )
            self._offset = 0
            self._digest = hashlib.sha256()
        file = self._file
        assert self._pack is not None and file is not None
        _guard(lambda: file.write(blob))
        self._digest.update(blob)
        ref = ChunkRef(id=cid, size=size, pack=self._pack, offset=self._offset, length=len(blob))
        self._offset += len(blob)
        self._entries.append(ref)
        self.added_bytes += len(blob)
        if self._offset >= self._pack_target:
            self._close_pack()
        return ref

    def _close_pack(self) -> None:
        file, pack, entries = self._file, self._pack, self._entries
        self._file, self._pack, self._entries = None, None, []
        if file is None or pack is None:
            return
        _guard(file.close)
        digest = self._digest.hexdigest()
        self.repo.write_index(pack, entries, digest)
        if self._known is not None:
            self._known.add_pack(pack, digest)

    def flush(self) -> None:
        """Store the open pack and its index (before the manifest that references it)."""
        with self._lock:
            self._close_pack()
        self._stop()

    def pack_digests(self, packs: set[str]) -> dict[str, str]:
        """The sha256 of each of ``packs`` (the ones a manifest references) as recorded
        when it was stored; a pack whose index recorded none is left out."""
        with self._lock:
            known = self._known
            if known is None:
                return {}
            found = {p: known.pack_sha256(p) for p in sorted(packs)}
        return {p: d for p, d in found.items() if d is not None}

    def _stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        with self._lock:
            if self._file is not None and self._pack is not None:
                # On S3 the multipart upload is aborted: no object; locally the partial
                # file is removed.  Its chunks leave the known set with it.
                self._discard(self._file)
                with contextlib.suppress(Exception):
                    self.repo.bucket.fs.rm_file(self.repo.pack_path(self._pack))
                if self._known is not None:
                    for ref in self._entries:
                        self._known.discard(ref.id)
            self._file, self._pack, self._entries = None, None, []
        self._stop()
        self.release()


def _guard(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except (StorageError, ArtifactCorruptError):
        raise
    except Exception as exc:
        raise StorageError(
            "the backup storage could not be written", admin_detail=repr(exc)
        ) from exc


class DedupStreamWriter(io.RawIOBase):
    """What a driver writes to: raw bytes in, chunk references out."""

    def __init__(self, sink: PackSink, digest: Any, on_bytes: Callable[[int], None]) -> None:
        self._sink = sink
        self._chunker = Chunker(self._add, seed=sink.repo.key.seed)
        self._hash = digest
        self._on_bytes = on_bytes
        self.refs: list[ChunkRef] = []
        self._inflight: collections.deque[Callable[[], ChunkRef]] = collections.deque()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        self._chunker.write(view)
        self._hash.update(view)
        self.count += len(view)
        self._on_bytes(len(view))
        return len(view)

    def _add(self, chunk: bytes) -> None:
        self._inflight.append(self._sink.prepare(chunk))
        while len(self._inflight) > self._sink.depth:
            self.refs.append(self._inflight.popleft()())

    def finish(self) -> tuple[list[ChunkRef], str]:
        self._chunker.finish()
        while self._inflight:
            self.refs.append(self._inflight.popleft()())
        return self.refs, self._hash.hexdigest()


class ChunkReader(io.RawIOBase):
    """A stream's chunks in order, a few fetched ahead in threads; each is checked as it
    opens, and at the end the size and digest of the whole stream."""

    def __init__(
        self,
        repo: Repository,
        refs: tuple[ChunkRef, ...],
        *,
        name: str,
        size: int,
        digest_hex: str,
        digest: Any,
        on_bytes: Callable[[int], None],
        on_stored: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._repo = repo
        #: Called with each chunk's stored length once it is checked (verify's progress).
        self._on_stored = on_stored
        self._refs = iter(refs)
        self._name = name
        self._size = size
        self._digest_hex = digest_hex
        self._hash = digest
        self._on_bytes = on_bytes
        self._pool = concurrent.futures.ThreadPoolExecutor(READ_AHEAD, "cozybackup-read")
        self._pending: collections.deque[tuple[ChunkRef, concurrent.futures.Future[bytes]]] = (
            collections.deque()
        )
        self._chunk = b""
        self._pos = 0
        self._count = 0
        self._done = False
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < READ_AHEAD:
            ref = next(self._refs, None)
            if ref is None:
                return
            self._pending.append((ref, self._pool.submit(self._repo.read_chunk, ref)))

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._pos >= len(self._chunk):
            if self._done:
                return 0
            if not self._pending:
                self._verify()
                return 0
            self._chunk = self._next()
            self._pos = 0
        n = min(len(b), len(self._chunk) - self._pos)
        # Through a view: slicing the bytes would copy each piece once more.
        b[:n] = memoryview(self._chunk)[self._pos : self._pos + n]
        self._pos += n
        self._on_bytes(n)
        return n

    def _next(self) -> bytes:
        ref, future = self._pending.popleft()
        try:
            chunk = future.result()
        except (ArtifactCorruptError, StorageError):
            raise
        except Exception as exc:
            raise StorageError(
                "the backup storage could not be read", admin_detail=repr(exc)
            ) from exc
        self._fill()
        self._hash.update(chunk)
        self._count += len(chunk)
        self._on_stored(ref.length)
        return chunk

    def _verify(self) -> None:
        self._done = True
        if self._count != self._size or self._hash.hexdigest() != self._digest_hex:
            raise ArtifactCorruptError(
                f"stream {self._name!r} of the backup does not match its recorded checksum"
            )

    def close(self) -> None:
        for _, future in self._pending:
            future.cancel()
        self._pending.clear()
        with contextlib.suppress(Exception):
            self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()
