"""The artifact store over fsspec: streamed zstd + sha256, manifest written last.

Layout under the location's root (admin-visible only)::

    <bucket>/<prefix>/<namespace>/<kind>/<application>/<backup-uid>/
        streams/<name>.zst
        server/<name>/...    <- written by the application's server itself (opt-in)
        keys.json            <- the data key, wrapped (encrypted locations only)
        manifest.json        <- written last: its presence is the commit

With ``deduplication`` on the location, streams are not stored under the backup at all:
they are cut into chunks kept in the tenant's repository (see ``repo``), and the manifest
(format version 3; 2 before the whole-stream digest became BLAKE3) lists each stream's
chunk references.

Every stream records a digest of its raw bytes, which checks the whole pipeline end to
end (keyed when the stream is encrypted: see ``_crypto``):

- stream format: a sha256, beside the sha256 of the stored (compressed, maybe
  encrypted) bytes, which checks the store;
- format 2: a sha256 (each chunk is also checked by its own keyed hash);
- format 3: a BLAKE3, because the digest is computed in the thread that feeds the driver
  or takes its output (0.12 s per 743 MiB here against 0.43 s for sha256).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import functools
import hashlib
import hmac
import io
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, cast

import attrs
import blake3
import fsspec
import zstandard
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile

from .._api.errors import (
    ArtifactCorruptError,
    CozyError,
    EncryptionKeyError,
    NotFoundError,
    StorageError,
    UnsupportedError,
    ValidationError,
)
from .._api.types import ArtifactRecord
from .._drivers.contract import ServerSideTarget
from .crypto import (
    ALGORITHM,
    KEYS_FILE,
    DecryptingReader,
    EncryptingWriter,
    KeyRing,
    digest_key,
    key_check,
    keys_document,
    new_data_key,
    read_keys_document,
    stream_key,
)
from .repo import ChunkReader, ChunkRef, DedupStreamWriter, PackSink, Repository
from .repo.gc import Collected, Collector
from .repo.repository import (
    CONFIG,
    REPOS,
    SEALED,
    read_if_any,
    repository_for,
    repository_path,
    rewrap,
)

log = logging.getLogger("cozybackup.storage")

FORMAT_VERSION = 1
#: Streams as chunk references into the tenant's repository, each whole stream's digest
#: a sha256 (read, no longer written).
DEDUP_SHA256_FORMAT_VERSION = 2
#: The same with each whole stream's digest a BLAKE3: what is written.
DEDUP_FORMAT_VERSION = 3
_DEDUP_FORMATS = (DEDUP_SHA256_FORMAT_VERSION, DEDUP_FORMAT_VERSION)
MANIFEST = "manifest.json"
_STREAM_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
CHUNK = 1 << 20
# s3fs multipart part size.  Memory per open stream is about one part.
BLOCK_SIZE = 8 << 20


@attrs.frozen(kw_only=True)
class ArtifactKey:
    """Which backup: the path segments are validated so nothing escapes the root."""

    namespace: str
    kind: str
    application: str
    uid: str

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(type(self)):
            value = getattr(self, field.name)
            if not _SEGMENT.match(value) or value in (".", ".."):
                raise ValidationError([(field.name, f"{value[:40]!r} is not a safe path segment")])

    @property
    def relpath(self) -> str:
        return f"{self.namespace}/{self.kind}/{self.application}/{self.uid}"

    @classmethod
    def of(cls, record: ArtifactRecord) -> ArtifactKey:
        """The address of the artifact an ArtifactRecord describes (its name is the uid)."""
        spec = record.spec
        return cls(
            namespace=spec.namespace,
            kind=spec.application_kind,
            application=spec.application_name,
            uid=record.metadata.name,
        )


@attrs.frozen(kw_only=True)
class StreamInfo:
    name: str
    size_bytes: int
    stored_bytes: int
    sha256: str
    stored_sha256: str
    compression: str = "zstd"
    encryption: str = "none"
    #: Format 2 and 3: the stream's chunks, in order (``stored_sha256`` is then empty:
    #: each chunk is checked by its own keyed hash instead).
    chunks: tuple[ChunkRef, ...] = ()
    #: Format 3: the whole stream's BLAKE3 (keyed when encrypted), and ``sha256`` empty.
    blake3: str = ""


@attrs.frozen(kw_only=True)
class ServerFileInfo:
    """One object the application's server wrote under ``server/<stream>/``."""

    stream: str
    path: str  # relative to the stream's prefix
    size_bytes: int
    sha256: str


@attrs.frozen(kw_only=True)
class ServerSideAccess:
    """What a server needs to reach the bucket by itself (platform-only)."""

    endpoint: str
    access_key_id: str = attrs.field(repr=False)
    secret_access_key: str = attrs.field(repr=False)
    region: str | None = None


@attrs.frozen(kw_only=True)
class EncryptionInfo:
    algorithm: str
    #: Proves an unwrapped data key is this backup's (see ``_crypto.key_check``).
    key_check: str


@attrs.frozen(kw_only=True)
class Manifest:
    format_version: int
    backup_uid: str
    namespace: str
    application: Mapping[str, str]
    driver: Mapping[str, str]
    strategy_ref: Mapping[str, str]
    parameters: Mapping[str, Any]
    taken_at: str
    streams: tuple[StreamInfo, ...]
    tool_versions: Mapping[str, str] = attrs.field(factory=dict)
    driver_metadata: Mapping[str, Any] = attrs.field(factory=dict)
    server_files: tuple[ServerFileInfo, ...] = ()
    encryption: EncryptionInfo | None = None
    #: ``Backup.status.underlyingResources`` as the driver described it (scrubbed).
    resources: Mapping[str, Any] = attrs.field(factory=dict)
    #: What the backup cannot bring back exactly: ``{"reason": …, "message": …}`` each.
    warnings: tuple[Mapping[str, str], ...] = ()
    #: Format 2: the stored bytes this backup added to the tenant's repository (the rest
    #: of ``stored_bytes`` it shares with earlier backups).  None: not deduplicated.
    new_bytes: int | None = None
    #: Format 2: each referenced pack's sha256 when the backup was made.  Anchored by
    #: the manifest's checksum (in the Backup record), so checking a pack against it
    #: proves every chunk in it without opening one (see ``ArtifactReader.verify_packs``).
    pack_sha256: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def deduplicated(self) -> bool:
        """Format 2 or 3: the streams are chunk references into the tenant's repository."""
        return self.format_version in _DEDUP_FORMATS

    @property
    def size_bytes(self) -> int:
        return sum(s.size_bytes for s in self.streams) + self._server_bytes

    @property
    def stored_bytes(self) -> int:
        return sum(s.stored_bytes for s in self.streams) + self._server_bytes

    @property
    def added_bytes(self) -> int:
        """Stored bytes the backup added when it was made: all of a stream-format one's;
        of a deduplicated one, its new chunks and what the application's server wrote."""
        if self.new_bytes is None:
            return self.stored_bytes
        return self.new_bytes + self._server_bytes

    @property
    def own_bytes(self) -> int:
        """Stored bytes under the backup's own folder, which no other backup shares: all
        of a stream-format one's; of a deduplicated one, what the server wrote."""
        return self._server_bytes if self.deduplicated else self.stored_bytes

    @property
    def _server_bytes(self) -> int:
        return sum(f.size_bytes for f in self.server_files)

    def stream(self, name: str) -> StreamInfo:
        for s in self.streams:
            if s.name == name:
                return s
        raise NotFoundError(f"the backup has no stream named {name!r}")


def _manifest_to_json(m: Manifest) -> bytes:
    from .._api.wire import unstructure

    return json.dumps(unstructure(m), indent=2, sort_keys=True).encode()


def _manifest_from_json(data: bytes) -> Manifest:
    from .._api.wire import structure

    try:
        raw = json.loads(data)
    except ValueError:
        raise ArtifactCorruptError("the backup's manifest is unreadable") from None
    try:
        m: Manifest = structure(raw, Manifest)
    except ValidationError as exc:
        raise ArtifactCorruptError(
            "the backup's manifest is malformed", admin_detail=str(exc)
        ) from None
    if m.format_version not in (FORMAT_VERSION, *_DEDUP_FORMATS):
        raise ArtifactCorruptError(f"unsupported artifact format version {m.format_version}")
    return m


def checksum_of(manifest_bytes: bytes) -> str:
    return "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()


class _HashingSink(io.RawIOBase):
    """Counts and hashes what passes through to ``target`` (the stored bytes)."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.hash = hashlib.sha256()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        try:
            self.target.write(data)  # may upload a multipart part
        except Exception as exc:
            # Raised through the driver's own write call: name it a storage fault, so the
            # job is retried and the tenant is told it was the platform's storage.
            raise StorageError(
                "the backup storage could not be written", admin_detail=repr(exc)
            ) from exc
        self.hash.update(data)
        self.count += len(data)
        return len(data)


class _StreamWriter(io.RawIOBase):
    """What a driver writes to: raw bytes in, zstd + hashes on the way to storage."""

    def __init__(
        self,
        target: IO[bytes],
        threads: int,
        on_bytes: Callable[[int], None],
        name: str,
        data_key: bytes | None,
    ) -> None:
        self._sink = _HashingSink(target)
        self._enc = (
            EncryptingWriter(cast(IO[bytes], self._sink), stream_key(data_key, name))
            if data_key
            else None
        )
        cctx = zstandard.ZstdCompressor(level=3, threads=threads, write_checksum=True)
        self._zw = cctx.stream_writer(
            cast(IO[bytes], self._enc or self._sink), closefd=False, write_return_read=True
        )
        self._hash = _raw_digest(data_key, name)
        self.count = 0
        self._on_bytes = on_bytes

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        self._zw.write(view)
        self._hash.update(view)
        self.count += len(view)
        self._on_bytes(len(view))
        return len(view)

    def finish(self, name: str) -> StreamInfo:
        self._zw.flush(zstandard.FLUSH_FRAME)
        self._zw.close()  # type: ignore[no-untyped-call]
        if self._enc:
            self._enc.finish()
        return StreamInfo(
            name=name,
            size_bytes=self.count,
            stored_bytes=self._sink.count,
            sha256=self._hash.hexdigest(),
            stored_sha256=self._sink.hash.hexdigest(),
            encryption=ALGORITHM if self._enc else "none",
        )


def _raw_digest(data_key: bytes | None, name: str) -> Any:
    if data_key is None:
        return hashlib.sha256()
    return hmac.new(digest_key(data_key, name), digestmod=hashlib.sha256)


def _chunked_digest(format_version: int, secret: bytes | None, name: str) -> Any:
    """The whole-stream digest of a deduplicated stream of ``format_version``, keyed by
    the repository's secret when it is sealed (the name keeps two streams' keys apart)."""
    if format_version == DEDUP_SHA256_FORMAT_VERSION:
        return _raw_digest(secret, name)
    if secret is None:
        return blake3.blake3()
    return blake3.blake3(key=digest_key(secret, name))


class _HashingSource(io.RawIOBase):
    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.source.read(size)
        self.hash.update(data)
        self.count += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class _VerifyingReader(io.RawIOBase):
    """Decompresses a stored stream; at EOF both digests and sizes must match."""

    def __init__(
        self,
        source: IO[bytes],
        info: StreamInfo,
        on_bytes: Callable[[int], None],
        data_key: bytes | None,
    ) -> None:
        self._on_bytes = on_bytes
        self._src = _HashingSource(source)
        plain: IO[bytes] = cast(IO[bytes], self._src)
        if data_key is not None:
            plain = cast(
                IO[bytes],
                io.BufferedReader(
                    DecryptingReader(plain, stream_key(data_key, info.name), info.name), CHUNK
                ),
            )
        self._zr = zstandard.ZstdDecompressor().stream_reader(plain, read_across_frames=True)
        self._hash = _raw_digest(data_key, info.name)
        self._count = 0
        self._info = info
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._done:
            return 0
        try:
            data = self._zr.read(len(b))
        except zstandard.ZstdError:
            raise ArtifactCorruptError(
                f"stream {self._info.name!r} of the backup is corrupted (undecodable)"
            ) from None
        if not data:
            self._verify()
            return 0
        self._hash.update(data)
        self._count += len(data)
        self._on_bytes(len(data))
        b[: len(data)] = data
        return len(data)

    def _verify(self) -> None:
        self._done = True
        # Drain trailing stored bytes (none in a sound stream) so the stored digest is complete.
        while self._src.read(CHUNK):
            pass
        info = self._info
        if (
            self._src.count != info.stored_bytes
            or self._src.hash.hexdigest() != info.stored_sha256
            or self._count != info.size_bytes
            or self._hash.hexdigest() != info.sha256
        ):
            raise ArtifactCorruptError(
                f"stream {info.name!r} of the backup does not match its recorded checksum"
            )


class ArtifactWriter:
    """Named streams of one backup being written.  ``commit`` writes the manifest last."""

    def __init__(
        self, store: ArtifactStore, key: ArtifactKey, on_bytes: Callable[[int], None]
    ) -> None:
        self.store = store
        self.key = key
        self.streams: list[StreamInfo] = []
        self.server_files: list[ServerFileInfo] = []
        self.server_streams: list[str] = []
        self._open: set[str] = set()
        self._on_bytes = on_bytes
        self.deduplicate = store.deduplicate
        # A fresh data key for every backup; only its wrapped form is ever stored.
        self._data_key = new_data_key() if store.keyring and not self.deduplicate else None
        self._sink: PackSink | None = None
        # A driver may open its first streams from several threads at once (Postgres
        # dumps databases in parallel): one sink for them all, or a pack goes unindexed.
        self._sink_lock = threading.Lock()

    @property
    def encryption(self) -> EncryptionInfo | None:
        if self.deduplicate and self.store.keyring is not None:
            repo = self._packs().repo
            return EncryptionInfo(algorithm=SEALED, key_check=repo.key.check)
        if self._data_key is None:
            return None
        return EncryptionInfo(algorithm=ALGORITHM, key_check=key_check(self._data_key))

    def _packs(self) -> PackSink:
        """The tenant's repository, its key made on the first backup that needs it."""
        with self._sink_lock:
            if self._sink is None:
                repo = self.store.repository(self.key.namespace, sealed=bool(self.store.keyring))
                self._sink = PackSink(
                    repo,
                    _discard,
                    threads=self.store.threads,
                    writer=self.key.uid,
                    manifest=self.store.path(self.key, MANIFEST),
                )
            return self._sink

    @property
    def added_bytes(self) -> int:
        """Stored bytes this backup added to the tenant's repository (format 2)."""
        return self._sink.added_bytes if self._sink else 0

    def server_side(self, name: str) -> ServerSideTarget:
        if not _STREAM_NAME.match(name):
            raise ValueError(f"stream name {name!r} must match {_STREAM_NAME.pattern}")
        if name in self.server_streams or any(s.name == name for s in self.streams):
            raise ValueError(f"stream {name!r} was already written")
        target = self.store.server_target(self.key, name)
        self.server_streams.append(name)
        return target

    def inventory_server_side(self, on_bytes: Callable[[int], None] = lambda n: None) -> None:
        """Hash every object the server wrote, for the manifest.  Reading them back is the
        only way to know what was stored: the server reports success, not the bytes."""
        for name in self.server_streams:
            found = self.store.hash_tree(self.store.server_path(self.key, name), on_bytes)
            if not found:
                raise StorageError(
                    f"the application's server reported a backup of {name!r} but stored nothing"
                )
            self.server_files.extend(
                ServerFileInfo(stream=name, path=rel, size_bytes=size, sha256=digest)
                for rel, size, digest in found
            )

    @property
    def empty(self) -> bool:
        return not self.streams and not self.server_streams

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        if not _STREAM_NAME.match(name):
            raise ValueError(f"stream name {name!r} must match {_STREAM_NAME.pattern}")
        if name in self._open or any(s.name == name for s in self.streams):
            raise ValueError(f"stream {name!r} was already written")
        if self.deduplicate:
            self._open.add(name)
            try:
                with self._open_chunked(name) as chunked:
                    yield chunked
            finally:
                self._open.discard(name)
            return
        self._open.add(name)
        path = self.store.stream_path(self.key, name)
        try:
            target = self.store.fs.open(path, "wb", block_size=BLOCK_SIZE)
        except Exception as exc:
            raise StorageError(
                "the backup storage could not be written", admin_detail=repr(exc)
            ) from exc
        writer = _StreamWriter(target, self.store.threads, self._on_bytes, name, self._data_key)
        ok = False
        try:
            yield writer  # type: ignore[misc]
            info = writer.finish(name)
            ok = True
        finally:
            self._open.discard(name)
            if ok:
                try:
                    target.close()
                except Exception as exc:
                    raise StorageError(
                        "the backup storage could not be written", admin_detail=repr(exc)
                    ) from exc
            else:
                _discard(target)
                with contextlib.suppress(Exception):
                    self.store.fs.rm_file(path)
        self.streams.append(info)

    @contextlib.contextmanager
    def _open_chunked(self, name: str) -> Iterator[IO[bytes]]:
        sink = self._packs()
        sealed = sink.repo.sealed
        digest = _chunked_digest(
            DEDUP_FORMAT_VERSION, sink.repo.key.secret if sealed else None, name
        )
        writer = DedupStreamWriter(sink, digest, self._on_bytes)
        yield writer  # type: ignore[misc]
        refs, whole = writer.finish()
        self.streams.append(
            StreamInfo(
                name=name,
                size_bytes=writer.count,
                stored_bytes=sum(r.length for r in refs),
                sha256="",
                blake3=whole,
                stored_sha256="",
                encryption=SEALED if sealed else "none",
                chunks=tuple(refs),
            )
        )

    def abort(self) -> None:
        """The backup failed: drop the pack being written (packs already stored stay,
        with their indexes: sound chunks that later backups may reference)."""
        if self._sink is not None:
            self._sink.abort()

    def commit(self, manifest: Manifest) -> bytes:
        """Write ``manifest.json``; from then on the artifact exists.  Returns its bytes."""
        if self.deduplicate:
            manifest = attrs.evolve(manifest, format_version=DEDUP_FORMAT_VERSION)
            if self._sink is not None:
                self._sink.flush()  # every pack and index before the manifest naming them
                stored = self.store.repository(self.key.namespace, sealed=self._sink.repo.sealed)
                if stored.key.check != self._sink.repo.key.check:
                    raise StorageError(
                        "the backup storage changed while the backup was written",
                        admin_detail="another backup created the tenant's repository key at "
                        "the same time; this attempt's chunks are not under it",
                    )
                packs = {ref.pack for info in manifest.streams for ref in info.chunks}
                manifest = attrs.evolve(manifest, pack_sha256=self._sink.pack_digests(packs))
        data = _manifest_to_json(manifest)
        if self._data_key is not None:
            assert self.store.keyring is not None
            wrap = self.store.keyring.wrap(self._data_key, self.key.namespace, self.key.uid)
            self.store.put_atomic(self.store.path(self.key, KEYS_FILE), keys_document([wrap]))
        self.store.put_atomic(self.store.path(self.key, MANIFEST), data)
        if self._sink is not None:
            self._sink.release()  # after the manifest: it names every chunk from now on
        return data


class ArtifactReader:
    def __init__(
        self, store: ArtifactStore, key: ArtifactKey, manifest: Manifest, raw: bytes
    ) -> None:
        self.store = store
        self.key = key
        self.manifest = manifest
        self.manifest_bytes = raw
        #: Called with the number of raw bytes each read returns (progress reporting).
        self.on_bytes: Callable[[int], None] = lambda n: None
        self._data_key: bytes | None = None
        self._repo: Repository | None = None

    @property
    def deduplicated(self) -> bool:
        return self.manifest.deduplicated

    def unlock(self) -> None:
        """Unwrap the data key of an encrypted backup (no-op otherwise).  Raises
        :class:`EncryptionKeyError` when the platform lacks the key: call it before
        touching a restore's target."""
        enc = self.manifest.encryption
        if self.deduplicated:
            self._unlock_repository(enc)
            return
        if enc is None or self._data_key is not None:
            return
        if self.store.keyring is None:
            raise EncryptionKeyError(
                "the backup is encrypted but the platform has no key for it; ask the platform operator",
                admin_detail="the StorageLocation holding it has no encryption keys configured",
            )
        wraps = read_keys_document(self.store.read_bytes(self.store.path(self.key, KEYS_FILE)))
        self._data_key = self.store.keyring.unwrap(
            wraps, self.key.namespace, self.key.uid, enc.key_check
        )

    def _unlock_repository(self, enc: EncryptionInfo | None) -> None:
        if self._repo is not None or not self.manifest.streams:
            return  # nothing to read from it (a backup of server-side streams only)
        # The tenant's own repository, whatever the manifest says: a backup never reads
        # another namespace's chunks.
        repo = self.store.repository(self.key.namespace, sealed=enc is not None, create=False)
        if enc is not None and not hmac.compare_digest(repo.key.check, enc.key_check):
            raise ArtifactCorruptError(
                "the backup's repository key is not the one it was written with"
            )
        self._repo = repo

    def names(self) -> list[str]:
        return [s.name for s in self.manifest.streams]

    def server_side(self, name: str) -> ServerSideTarget:
        if not any(f.stream == name for f in self.manifest.server_files):
            raise NotFoundError(f"the backup has no server-side stream named {name!r}")
        return self.store.server_target(self.key, name)

    @contextlib.contextmanager
    def open(
        self, name: str, on_stored: Callable[[int], None] = lambda n: None
    ) -> Iterator[IO[bytes]]:
        info = self.manifest.stream(name)
        self.unlock()
        if self._repo is not None:
            repo, fmt = self._repo, self.manifest.format_version
            chunks = ChunkReader(
                repo,
                info.chunks,
                name=name,
                size=info.size_bytes,
                digest_hex=info.sha256 if fmt == DEDUP_SHA256_FORMAT_VERSION else info.blake3,
                digest=_chunked_digest(fmt, repo.key.secret if repo.sealed else None, name),
                on_bytes=self.on_bytes,
                on_stored=on_stored,
            )
            try:
                yield io.BufferedReader(chunks, CHUNK)
            finally:
                chunks.close()
            return
        try:
            source = self.store.open_read(self.store.stream_path(self.key, name))
        except ArtifactCorruptError:
            raise
        except FileNotFoundError:
            raise ArtifactCorruptError(f"stream {name!r} of the backup is missing") from None
        except Exception as exc:
            raise StorageError(
                "the backup storage could not be read", admin_detail=repr(exc)
            ) from exc
        try:
            yield io.BufferedReader(
                _VerifyingReader(source, info, self.on_bytes, self._data_key), CHUNK
            )
        finally:
            source.close()

    def verify_stored(self, on_bytes: Callable[[int], None] = lambda n: None) -> None:
        """Check every stored byte against the digest and size recorded at backup time,
        without decompressing (about 1.5 GB/s of sha256 instead of a full decode).  What
        was stored is what was written; the raw digest is checked again as a driver reads.

        A deduplicated backup has its packs checked instead (``verify_packs``); what the
        application's server wrote is checked the same way in both formats."""
        if self.deduplicated:
            self.verify_packs(on_bytes)
            self._verify_server_files(on_bytes)
            return
        for info in self.manifest.streams:
            path = self.store.stream_path(self.key, info.name)
            digest, count = hashlib.sha256(), 0
            try:
                with self.store.open_read(path) as f:
                    while chunk := f.read(CHUNK):
                        digest.update(chunk)
                        count += len(chunk)
                        on_bytes(len(chunk))
            except ArtifactCorruptError:
                raise
            except FileNotFoundError:
                raise ArtifactCorruptError(
                    f"stream {info.name!r} of the backup is missing"
                ) from None
            except Exception as exc:
                raise StorageError(
                    "the backup storage could not be read", admin_detail=repr(exc)
                ) from exc
            if count != info.stored_bytes or digest.hexdigest() != info.stored_sha256:
                raise ArtifactCorruptError(
                    f"stream {info.name!r} of the backup does not match its recorded checksum"
                )
        self._verify_server_files(on_bytes)

    def verify_packs(self, on_bytes: Callable[[int], None] = lambda n: None) -> None:
        """Every pack the backup references (through the forwards of rewritten ones) is
        read whole, once: every reference must be a chunk its index lists, and its
        sha256 must be the one the manifest recorded for it when the backup was made
        (which the Backup's checksum covers, like the stream format's digests); a pack
        the manifest has no digest for (rewritten by a collection since, or a manifest
        from before they were recorded) has its index's sha256 checked and every
        referenced chunk opened (authentic, decodable, its keyed hash and size: this
        needs the repository key, so it unlocks first).  One damaged pack thus fails
        every backup that references it.  The chunks' order and the whole stream's
        digest are checked as a reader reads the streams, where every chunk is opened."""
        self.unlock()
        repo = self._repo
        if repo is None:
            return  # no stream (server-side streams only)
        for attempt in (1, 2):
            repo.list_forwards()
            by_pack: dict[str, list[ChunkRef]] = {}
            for info in self.manifest.streams:
                for ref in info.chunks:
                    at = repo.locate(ref)
                    by_pack.setdefault(at.pack, []).append(at)
            try:
                self._check_packs(repo, by_pack, on_bytes)
                return
            except ArtifactCorruptError:
                if attempt == 2:
                    raise
                # A collection may have rewritten a pack since it was located: once more,
                # from a fresh listing of the forwards.  Damage fails both times.

    def _check_packs(
        self,
        repo: Repository,
        by_pack: dict[str, list[ChunkRef]],
        on_bytes: Callable[[int], None],
    ) -> None:
        """``check_pack`` for each pack, several at once (sha256, decompression and the
        keyed hash run outside the GIL).  The first failure is raised; the others are
        cancelled."""
        lock = threading.Lock()
        # A pack the manifest anchored (not rewritten since: a rewritten one has a new
        # name) is checked by its sha256 alone; any other has each chunk opened.
        anchored = self.manifest.pack_sha256

        def progress(n: int) -> None:
            with lock:
                on_bytes(n)

        packs = sorted(by_pack)
        with concurrent.futures.ThreadPoolExecutor(
            max(1, min(self.store.threads, len(packs))), thread_name_prefix="cozybackup-check"
        ) as pool:
            futures = [
                pool.submit(repo.check_pack, p, by_pack[p], progress, anchored.get(p))
                for p in packs
            ]
            try:
                for future in concurrent.futures.as_completed(futures):
                    future.result()
            finally:
                for future in futures:
                    future.cancel()

    def _verify_server_files(self, on_bytes: Callable[[int], None]) -> None:
        expected: dict[str, dict[str, tuple[int, str]]] = {}
        for f in self.manifest.server_files:
            expected.setdefault(f.stream, {})[f.path] = (f.size_bytes, f.sha256)
        for stream, files in expected.items():
            found = self.store.hash_tree(self.store.server_path(self.key, stream), on_bytes)
            actual = {rel: (size, digest) for rel, size, digest in found}
            if actual != files:
                missing = sorted(set(files) - set(actual))
                what = "is missing files" if missing else "does not match its recorded checksums"
                raise ArtifactCorruptError(f"server-side stream {stream!r} of the backup {what}")

    def verify(self, on_bytes: Callable[[int], None] = lambda n: None) -> None:
        """Read and decode every stream to the end: stored and raw digests, sizes, zstd
        frame checksums, and every server-side object's digest; deduplicated, every pack
        the backup references first (``verify_packs``).  Raise
        :class:`ArtifactCorruptError` on any mismatch."""
        if self.deduplicated:
            self.verify_packs()
        saved, self.on_bytes = self.on_bytes, on_bytes
        try:
            for name in self.names():
                with self.open(name) as stream:
                    while stream.read(CHUNK):
                        pass
        finally:
            self.on_bytes = saved
        self._verify_server_files(on_bytes)


def _discard(f: Any) -> None:
    if isinstance(f, AbstractBufferedFile):
        # s3fs: abort the multipart upload instead of completing a partial object, then
        # mark the file closed so neither close() nor __del__ uploads the rest later.  If
        # the abort itself fails (storage down), the bucket's lifecycle rule for
        # incomplete uploads reclaims the parts; no object was ever created.
        with contextlib.suppress(Exception):
            f.discard()
        f.closed = True
    else:
        with contextlib.suppress(Exception):
            f.close()


@attrs.define
class ArtifactStore:
    """Artifacts under ``root`` on an fsspec filesystem."""

    fs: Any
    root: str
    threads: int = attrs.field(factory=lambda: min(4, os.cpu_count() or 1))
    #: Set only where the admin opted in (``serverSideAccess: true`` on an S3 location).
    server_access: ServerSideAccess | None = None
    #: Set where the location has encryption keys: every new backup is encrypted.
    keyring: KeyRing | None = None
    #: The location's ``deduplication`` (on unless it says false; the providers set it):
    #: new backups go to the tenant's repository.  Off here, for a store made directly.
    deduplicate: bool = False

    def repository(self, namespace: str, *, sealed: bool, create: bool = True) -> Repository:
        return repository_for(
            self, self.root, namespace, self.keyring, sealed=sealed, create=create
        )

    def open_write(self, path: str) -> IO[bytes]:
        opened: IO[bytes] = self.fs.open(path, "wb", block_size=BLOCK_SIZE)
        return opened

    def read_range(self, path: str, start: int, length: int) -> bytes:
        """``length`` bytes at ``start`` (fewer at the end): one ranged GET on S3."""
        try:
            if isinstance(self.fs, LocalFileSystem):
                with self.open_read(path) as f:
                    f.seek(start)
                    return f.read(length)
            data: bytes = self.fs.cat_file(path, start=start, end=start + length)
            return data
        except (ArtifactCorruptError, FileNotFoundError):
            raise
        except Exception as exc:
            raise StorageError(
                "the backup storage could not be read", admin_detail=repr(exc)
            ) from exc

    @classmethod
    def local(cls, path: str) -> ArtifactStore:
        fs = fsspec.filesystem("file", auto_mkdir=True)
        fs.makedirs(path, exist_ok=True)
        # Owner-only: unencrypted streams below must not be readable by other local users.
        root = Path(path)
        st = root.stat()
        if st.st_mode & 0o077 and st.st_uid == os.geteuid():
            root.chmod(0o700)
        return cls(fs, path.rstrip("/"))

    @classmethod
    def s3(
        cls,
        *,
        endpoint: str | None,
        bucket: str,
        prefix: str,
        key: str,
        secret: str,
        region: str | None = None,
        server_side: bool = False,
    ) -> ArtifactStore:
        client_kwargs: dict[str, Any] = {}
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        # Fail fast at this layer: the engine retries whole attempts with its own backoff.
        config: dict[str, Any] = {
            "signature_version": "s3v4",
            "connect_timeout": 10,
            "read_timeout": 120,
            "retries": {"max_attempts": 3, "mode": "standard"},
        }
        if region:
            # Not in client_kwargs: that would send a LocationConstraint on mkdir.
            config["region_name"] = region
        fs = fsspec.filesystem(
            "s3",
            key=key,
            secret=secret,
            client_kwargs=client_kwargs,
            config_kwargs=config,
            use_listings_cache=False,
            skip_instance_cache=True,
        )
        fs.retries = 2  # s3fs's own retry loop, on top of botocore's
        root = "/".join(p for p in (bucket, prefix.strip("/")) if p)
        try:
            if not fs.exists(bucket):
                fs.mkdir(bucket)
        except Exception as exc:
            raise StorageError("the backup storage is unreachable", admin_detail=repr(exc)) from exc
        access = None
        if server_side:
            access = ServerSideAccess(
                endpoint=endpoint or f"https://s3.{region or 'us-east-1'}.amazonaws.com",
                access_key_id=key,
                secret_access_key=secret,
                region=region,
            )
        return cls(fs, root, server_access=access)

    def path(self, key: ArtifactKey, name: str = "") -> str:
        base = f"{self.root}/{key.relpath}"
        return f"{base}/{name}" if name else base

    def stream_path(self, key: ArtifactKey, name: str) -> str:
        return self.path(key, f"streams/{name}.zst")

    def server_path(self, key: ArtifactKey, name: str) -> str:
        return self.path(key, f"server/{name}")

    def server_target(self, key: ArtifactKey, name: str) -> ServerSideTarget:
        access = self.server_access
        if access is None:
            raise UnsupportedError(
                "this backup needs the application's server to write to storage itself, "
                "which the platform's storage for this class does not allow",
                admin_detail="set serverSideAccess: true on an S3 StorageLocation of its own "
                "(the server sees its credentials) and point the BackupClass at it",
            )
        return ServerSideTarget(
            url=f"{access.endpoint.rstrip('/')}/{self.server_path(key, name)}/",
            access_key_id=access.access_key_id,
            secret_access_key=access.secret_access_key,
            region=access.region,
        )

    def hash_tree(
        self, base: str, on_bytes: Callable[[int], None] = lambda n: None
    ) -> list[tuple[str, int, str]]:
        """``(relative path, size, sha256)`` of every object under ``base``, sorted."""
        out: list[tuple[str, int, str]] = []
        try:
            paths = sorted(p for p in self.fs.find(base) if p.rstrip("/") != base)
            for p in paths:
                digest, count = hashlib.sha256(), 0
                with self.open_read(p) as f:
                    while chunk := f.read(CHUNK):
                        digest.update(chunk)
                        count += len(chunk)
                        on_bytes(len(chunk))
                out.append((p[len(base) :].lstrip("/"), count, digest.hexdigest()))
        except FileNotFoundError:
            return out
        except Exception as exc:
            raise StorageError(
                "the backup storage could not be read", admin_detail=repr(exc)
            ) from exc
        return out

    def writer(
        self, key: ArtifactKey, on_bytes: Callable[[int], None] = lambda n: None
    ) -> ArtifactWriter:
        return ArtifactWriter(self, key, on_bytes)

    def put_atomic(self, path: str, data: bytes) -> None:
        try:
            if isinstance(self.fs, LocalFileSystem):
                # A deduplicated backup stores nothing before its manifest: make its folder.
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                tmp = f"{path}.tmp-{os.getpid()}"
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            else:
                self.fs.pipe_file(path, data)  # one PUT: atomic on S3
        except Exception as exc:
            raise StorageError(
                "the backup storage could not be written", admin_detail=repr(exc)
            ) from exc

    def open_read(self, path: str) -> IO[bytes]:
        """Open a stored object for reading.  On a local bucket only a regular file is
        opened, without following a link and without blocking on a FIFO: anything planted
        in the bucket is refused as corrupt instead of hanging verify and the runner."""
        if not isinstance(self.fs, LocalFileSystem):
            opened: IO[bytes] = self.fs.open(path, "rb", block_size=BLOCK_SIZE)
            return opened
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise ArtifactCorruptError(
                "the backup's data in storage is not a regular file",
                admin_detail=f"{path} is a link",
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ArtifactCorruptError(
                    "the backup's data in storage is not a regular file",
                    admin_detail=f"{path} is a link or a special file",
                )
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb", buffering=BLOCK_SIZE)
        except BaseException:
            os.close(fd)
            raise

    def read_bytes(self, path: str) -> bytes:
        try:
            with self.open_read(path) as f:
                data = f.read()
        except ArtifactCorruptError:
            raise
        except FileNotFoundError:
            raise ArtifactCorruptError("the backup's data is missing from storage") from None
        except Exception as exc:
            raise StorageError(
                "the backup storage could not be read", admin_detail=repr(exc)
            ) from exc
        return data

    def rekey(self, key: ArtifactKey) -> bool:
        """Re-wrap an encrypted backup's data key under the active key (one small PUT; the
        streams are untouched).  Returns whether anything changed."""
        ring = self.keyring
        if ring is None:
            return False
        reader = self.reader(key)
        enc = reader.manifest.encryption
        if enc is None:
            return False
        if reader.deduplicated:
            return rewrap(self, self.root, key.namespace, ring)
        path = self.path(key, KEYS_FILE)
        wraps = read_keys_document(self.read_bytes(path))
        if [w.get("keyId") for w in wraps] == [ring.active] and all(
            bool(w.get("perTenant")) == ring.per_tenant for w in wraps
        ):
            return False
        data_key = ring.unwrap(wraps, key.namespace, key.uid, enc.key_check)
        self.put_atomic(path, keys_document([ring.wrap(data_key, key.namespace, key.uid)]))
        return True

    def is_committed(self, key: ArtifactKey) -> bool:
        try:
            return bool(self.fs.exists(self.path(key, MANIFEST)))
        except Exception as exc:
            raise StorageError("the backup storage is unreachable", admin_detail=repr(exc)) from exc

    def reader(self, key: ArtifactKey) -> ArtifactReader:
        raw = self.read_bytes(self.path(key, MANIFEST))
        return ArtifactReader(self, key, _manifest_from_json(raw), raw)

    def delete(self, key: ArtifactKey) -> None:
        """Remove an artifact, manifest first so a half-deleted one is never 'committed';
        then a deduplicated writer's marker (a crashed backup's), so a collection of its
        repository stops waiting for it.  Its chunks go with the next collection."""
        base = self.path(key)
        try:
            if self.fs.exists(self.path(key, MANIFEST)):
                self.fs.rm_file(self.path(key, MANIFEST))
            if self.fs.exists(base):
                self.fs.rm(base, recursive=True)
            for sealed in (False, True):
                marker = f"{repository_path(self.root, key.namespace, sealed)}/writers/{key.uid}"
                if self.fs.exists(marker):
                    self.fs.rm_file(marker)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise StorageError(
                "the backup storage could not be cleaned up", admin_detail=repr(exc)
            ) from exc

    def manifests(self, namespace: str) -> Iterator[tuple[str, Manifest]]:
        """``(path, manifest)`` of every committed backup of a namespace, both formats (one
        deleted meanwhile is skipped; an unreadable one raises)."""
        try:
            paths = sorted(self.fs.glob(f"{self.root}/{namespace}/*/*/*/{MANIFEST}"))
        except FileNotFoundError:
            return
        except Exception as exc:
            raise StorageError(
                "the backup storage could not be read", admin_detail=repr(exc)
            ) from exc
        for path in paths:
            data = read_if_any(self, path)
            if data is not None:
                yield path, _manifest_from_json(data)

    def repositories(self) -> Iterator[tuple[str, bool]]:
        """``(namespace, sealed)`` of every tenant repository in this location."""
        base = f"{self.root}/{REPOS}"
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(base, detail=False)]
        except FileNotFoundError:
            return
        except Exception as exc:
            raise StorageError(
                "the backup storage could not be read", admin_detail=repr(exc)
            ) from exc
        for ns in sorted(names):
            for sealed in (False, True):
                if self.fs.exists(f"{repository_path(self.root, ns, sealed)}/{CONFIG}"):
                    yield ns, sealed

    def chunk_references(self, namespace: str, sealed: bool) -> Iterator[tuple[ChunkRef, ...]]:
        """Every stream's chunks, of each committed backup in that repository."""
        for _, m in self.manifests(namespace):
            if m.deduplicated and (m.encryption is not None) == sealed:
                yield from (s.chunks for s in m.streams)

    def collect_garbage(self) -> dict[str, Collected]:
        """Collect every tenant repository here (``repo/gc.py``); what each one did,
        by ``<namespace>/<plain|sealed>``.  A repository that fails is logged and
        left for the next pass; the others go on."""
        out: dict[str, Collected] = {}
        for ns, sealed in self.repositories():
            name = f"{ns}/{'sealed' if sealed else 'plain'}"
            if sealed and self.keyring is None:
                log.warning(
                    "repository %s is sealed and the location has no keys: not collected", name
                )
                continue
            try:
                repo = self.repository(ns, sealed=sealed, create=False)
                done = Collector(
                    repo, functools.partial(self.chunk_references, ns, sealed), self._is_stored
                ).run()
            except CozyError as exc:
                log.warning("repository %s not collected: %s (%s)", name, exc, exc.admin_detail)
                continue
            if done is not None:
                out[name] = done
        return out

    def tenant_bytes(self, namespace: str) -> int:
        """What a tenant's data takes here: its backups' folders and its repositories
        (garbage not yet collected included: it is stored, and paid for)."""
        total = 0
        for base in (f"{self.root}/{namespace}", f"{self.root}/{REPOS}/{namespace}"):
            try:
                total += int(self.fs.du(base, total=True))
            except FileNotFoundError:
                continue
            except Exception as exc:
                raise StorageError(
                    "the backup storage could not be read", admin_detail=repr(exc)
                ) from exc
        return total

    def _is_stored(self, path: str) -> bool:
        try:
            return bool(self.fs.exists(path))
        except Exception as exc:
            raise StorageError("the backup storage is unreachable", admin_detail=repr(exc)) from exc

    def exists(self, key: ArtifactKey) -> bool:
        """Whether any object of the artifact is stored (empty "directories" do not count)."""
        try:
            base = self.path(key)
            # SeaweedFS lists an emptied "directory" as an entry of its own name: not data.
            return any(p.rstrip("/") != base for p in self.fs.find(base))
        except Exception as exc:
            raise StorageError("the backup storage is unreachable", admin_detail=repr(exc)) from exc
