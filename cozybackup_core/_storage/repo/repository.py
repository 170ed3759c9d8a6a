"""One tenant's repository on one location: its key, its packs and the packs' indexes.

Chunk ids are BLAKE3 keyed by a secret of the repository, so a chunk's name says nothing
about its content to someone who can list the bucket (an unkeyed hash would confirm a
guessed file), and two tenants' ids for the same bytes differ.  The key is made on first
use and kept in ``config.json``, wrapped under the location's key-encryption key (bound to
the namespace, per-tenant when the location says so) when the location encrypts.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

import attrs
import blake3
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fsspec.implementations.local import LocalFileSystem

from ..._api.errors import ArtifactCorruptError, EncryptionKeyError, StorageError
from ..crypto import KeyRing, derive_key, key_check, new_data_key

log = logging.getLogger("cozybackup.storage.repo")

REPOS = "_repos"
CONFIG = "config.json"
FORMAT_VERSION = 1
#: ``EncryptionInfo.algorithm`` of a Backup whose chunks are sealed.
SEALED = "aes-256-gcm-chunks"
#: The "uid" the repository key is wrapped for (a Backup's uid is a UUID: no clash).
_WRAP_SUBJECT = "repository"
_NONCE = 12
_MAX_CHUNK = 16 << 20  # FastCDC's own ceiling; a bigger blob is not one of ours
_MAX_HOPS = 64  # forwards followed at most (each rewrite of a rewritten pack adds one)
_READ = 1 << 20


class Bucket(Protocol):
    """What a repository needs of the store (``ArtifactStore`` is one)."""

    fs: Any

    def put_atomic(self, path: str, data: bytes) -> None: ...

    def read_bytes(self, path: str) -> bytes: ...

    def read_range(self, path: str, start: int, length: int) -> bytes: ...

    def open_read(self, path: str) -> IO[bytes]: ...

    def open_write(self, path: str) -> IO[bytes]: ...


@attrs.frozen(kw_only=True)
class ChunkRef:
    """Where one chunk of a stream is: ``length`` stored bytes at ``offset`` in ``pack``,
    which open to ``size`` raw bytes whose keyed hash is ``id``."""

    id: str
    size: int
    pack: str
    offset: int
    length: int


@attrs.frozen
class RepoKey:
    secret: bytes = attrs.field(repr=False)

    @property
    def check(self) -> str:
        return key_check(self.secret)

    @property
    def id_key(self) -> bytes:
        return derive_key(self.secret, b"cozybackup chunk id")

    @property
    def seal_key(self) -> bytes:
        return derive_key(self.secret, b"cozybackup chunk seal")

    @property
    def seed(self) -> int:
        """FastCDC's gear-table seed (63 bits: what it accepts)."""
        return int.from_bytes(derive_key(self.secret, b"cozybackup chunker seed")[:8], "big") >> 1


class Repository:
    def __init__(self, bucket: Bucket, base: str, key: RepoKey, sealed: bool) -> None:
        self.bucket = bucket
        self.base = base
        self.key = key
        self.sealed = sealed
        self._id_key = key.id_key
        self._aead = AESGCM(key.seal_key) if sealed else None
        self._moved: dict[str, dict[str, ChunkRef]] = {}
        self._forwards: set[str] | None = None

    # ------------------------------------------------------------------ names

    def pack_path(self, pack: str) -> str:
        return f"{self.base}/packs/{pack[:2]}/{pack}"

    def index_path(self, pack: str) -> str:
        return f"{self.base}/index/{pack[:2]}/{pack}"

    @staticmethod
    def new_pack_id() -> str:
        return secrets.token_hex(16)

    # ------------------------------------------------------------------ chunks

    def chunk_id(self, data: bytes) -> str:
        return blake3.blake3(data, key=self._id_key).hexdigest()

    def seal(self, chunk_id: str, compressed: bytes) -> bytes:
        if self._aead is None:
            return compressed
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, compressed, b"chunk\0" + chunk_id.encode())

    def open_blob(self, ref: ChunkRef, blob: bytes) -> bytes:
        """The raw chunk, checked: authentic (when sealed), decodable, and its keyed hash
        and size are the ones recorded."""
        what = f"chunk {ref.id[:16]} in pack {ref.pack}"
        if self._aead is not None:
            try:
                blob = self._aead.decrypt(
                    blob[:_NONCE], blob[_NONCE:], b"chunk\0" + ref.id.encode()
                )
            except (InvalidTag, ValueError):
                raise ArtifactCorruptError(
                    "the backup's data in storage is corrupted (a chunk failed decryption)",
                    admin_detail=what,
                ) from None
        try:
            # A decompressor per call: chunks are opened in several threads at once.
            raw = zstandard.ZstdDecompressor().decompress(blob, max_output_size=_MAX_CHUNK)
        except zstandard.ZstdError:
            raise ArtifactCorruptError(
                "the backup's data in storage is corrupted (an undecodable chunk)",
                admin_detail=what,
            ) from None
        if len(raw) != ref.size or self.chunk_id(raw) != ref.id:
            raise ArtifactCorruptError(
                "the backup's data in storage does not match its recorded checksum",
                admin_detail=what,
            )
        return raw

    def read_chunk(self, ref: ChunkRef) -> bytes:
        try:
            blob = self.bucket.read_range(self.pack_path(ref.pack), ref.offset, ref.length)
        except FileNotFoundError:
            moved = self.moved(ref.pack, fresh=True).get(ref.id)
            if moved is None or moved.pack == ref.pack:
                raise ArtifactCorruptError(
                    "the backup's data is missing from storage",
                    admin_detail=f"pack {ref.pack} is missing",
                ) from None
            # Garbage collection rewrote the pack: the chunk is where its forward says.
            return self.read_chunk(moved)
        if len(blob) != ref.length:
            raise ArtifactCorruptError(
                "the backup's data in storage is truncated",
                admin_detail=f"pack {ref.pack} ends before chunk {ref.id[:16]}",
            )
        return self.open_blob(ref, blob)

    # ------------------------------------------------------------------ indexes

    def _seal_doc(self, pack: str, doc: bytes, what: bytes = b"index\0") -> bytes:
        if self._aead is None:
            return doc
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, doc, what + pack.encode())

    def _open_doc(self, pack: str, data: bytes, what: bytes = b"index\0") -> bytes:
        if self._aead is None:
            return data
        return self._aead.decrypt(data[:_NONCE], data[_NONCE:], what + pack.encode())

    def write_index(self, pack: str, refs: list[ChunkRef], sha256: str) -> None:
        """Written only once the pack is stored: an indexed chunk is always readable.
        ``sha256`` is the whole pack's, which verification checks."""
        doc = {
            "formatVersion": FORMAT_VERSION,
            "chunks": [[r.id, r.size, r.offset, r.length] for r in refs],
            "sha256": sha256,
        }
        path = self.index_path(pack)
        self.bucket.put_atomic(path, self._seal_doc(pack, json.dumps(doc).encode()))

    def names(self, folder: str) -> list[str]:
        """The object names (last path segment) under ``folder`` of the repository."""
        base = f"{self.base}/{folder}"
        try:
            paths = [p for p in self.bucket.fs.find(base) if p.rstrip("/") != base]
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise StorageError(
                "the backup storage could not be read", admin_detail=repr(exc)
            ) from exc
        names = (p.rstrip("/").rsplit("/", 1)[-1] for p in paths)
        return [n for n in names if not _partial(n)]

    def sizes(self, folder: str) -> dict[str, int]:
        """Name -> stored size of every object under ``folder``."""
        base = f"{self.base}/{folder}"
        try:
            found = self.bucket.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as exc:
            raise StorageError(
                "the backup storage could not be read", admin_detail=repr(exc)
            ) from exc
        out = {}
        for p, info in found.items():
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if p.rstrip("/") != base and info.get("type") != "directory" and not _partial(name):
                out[name] = int(info.get("size") or 0)
        return out

    def read_index(self, pack: str) -> list[ChunkRef]:
        """The chunks of one pack, as its index lists them (raises when unreadable)."""
        return self.read_index_doc(pack)[0]

    def read_index_doc(self, pack: str) -> tuple[list[ChunkRef], str | None]:
        """The pack's chunks and its recorded sha256 (None in an index written before
        packs had one)."""
        data = self.bucket.read_bytes(self.index_path(pack))
        try:
            doc = json.loads(self._open_doc(pack, data))
            refs = [
                ChunkRef(id=str(c), size=int(s), pack=pack, offset=int(o), length=int(n))
                for c, s, o, n in doc["chunks"]
            ]
            digest = doc.get("sha256")
            return refs, None if digest is None else str(digest)
        except (InvalidTag, ValueError, KeyError, TypeError) as exc:
            raise ArtifactCorruptError(
                "the backup's repository is unreadable",
                admin_detail=f"index of pack {pack}: {exc!r}",
            ) from None

    def locate(self, ref: ChunkRef, used: set[str] | None = None) -> ChunkRef:
        """Where a manifest's reference is now: through the forwards of rewritten packs (a
        forward wins over the old pack, which a crash may have left behind it); ``used``
        gathers the packs whose forwards were followed."""
        for _ in range(_MAX_HOPS):
            moved = self.moved(ref.pack).get(ref.id)
            if moved is None:
                return ref
            if used is not None:
                used.add(ref.pack)
            ref = moved
        raise ArtifactCorruptError(
            "the backup's repository is unreadable", admin_detail=f"forwards of {ref.pack} loop"
        )

    def check_pack(
        self,
        pack: str,
        refs: list[ChunkRef],
        on_bytes: Callable[[int], None],
        anchored: str | None = None,
    ) -> None:
        """Read the whole pack once: each reference must be a chunk its index lists
        there, and its sha256 must be the one its index recorded.  With ``anchored``
        (the sha256 a manifest recorded, which its Backup's checksum covers) the pack
        must also have that digest, and then no chunk need be opened: the bytes are
        those the backup wrote.  Without it, each referenced chunk must open (authentic,
        decodable, its keyed hash and size), since an index of an unsealed repository
        proves nothing by itself.  So a pack damaged anywhere fails every backup that
        references it, not only those whose chunk was hit."""
        try:
            listed, recorded = self.read_index_doc(pack)
        except ArtifactCorruptError as exc:
            raise ArtifactCorruptError(
                "the backup's data in storage is missing or unreadable",
                admin_detail=f"pack {pack}: {exc.admin_detail or exc}",
            ) from None
        at = {r.offset: r for r in listed}
        wanted = sorted({r.offset: r for r in refs}.values(), key=lambda r: r.offset)
        for ref in wanted:
            entry = at.get(ref.offset)
            if entry is None or (entry.id, entry.size, entry.length) != (
                ref.id,
                ref.size,
                ref.length,
            ):
                raise ArtifactCorruptError(
                    "the backup references data its storage does not hold",
                    admin_detail=f"chunk {ref.id[:16]} is not at {ref.offset} in pack {pack}",
                )
        digest = hashlib.sha256()
        buf = bytearray()
        start = 0  # the pack offset of buf[0]
        pending = iter(wanted)
        nxt = next(pending, None)
        try:
            with self.bucket.open_read(self.pack_path(pack)) as f:
                while piece := f.read(_READ):
                    digest.update(piece)
                    buf += piece
                    while nxt is not None and start + len(buf) >= nxt.offset + nxt.length:
                        if anchored is None:
                            lo = nxt.offset - start
                            self.open_blob(nxt, bytes(buf[lo : lo + nxt.length]))
                        on_bytes(nxt.length)  # progress in the stored bytes referenced
                        nxt = next(pending, None)
                    # Keep only what the next referenced chunk needs (memory: one chunk).
                    drop = len(buf) if nxt is None else min(len(buf), max(0, nxt.offset - start))
                    del buf[:drop]
                    start += drop
        except FileNotFoundError:
            raise ArtifactCorruptError(
                "the backup's data is missing from storage",
                admin_detail=f"pack {pack} is missing",
            ) from None
        except (ArtifactCorruptError, StorageError):
            raise
        except Exception as exc:
            raise StorageError(
                "the backup storage could not be read", admin_detail=repr(exc)
            ) from exc
        if nxt is not None:
            raise ArtifactCorruptError(
                "the backup's data in storage is truncated",
                admin_detail=f"pack {pack} ends before chunk {nxt.id[:16]}",
            )
        actual = digest.hexdigest()
        if anchored is not None and not hmac.compare_digest(actual, anchored):
            raise ArtifactCorruptError(
                "the backup's data in storage does not match its recorded checksum",
                admin_detail=f"pack {pack}: sha256 differs from the manifest's",
            )
        if recorded is not None and not hmac.compare_digest(actual, recorded):
            raise ArtifactCorruptError(
                "the backup's data in storage does not match its recorded checksum",
                admin_detail=f"pack {pack}: sha256 differs from its index",
            )

    # ------------------------------------------------------------------ collection

    def writer_path(self, writer: str) -> str:
        return f"{self.base}/writers/{writer}"

    def register_writer(self, writer: str, manifest: str, started: str) -> None:
        """Say, before reading the indexes, that a backup may reference what they list
        until ``manifest`` exists (see ``gc.py``)."""
        doc = {"manifest": manifest, "startedAt": started}
        self.bucket.put_atomic(self.writer_path(writer), json.dumps(doc).encode())

    def release_writer(self, writer: str) -> None:
        """The backup committed or gave up.  A marker left behind (storage down, a crash)
        only delays collection: its manifest, once it exists, releases it as well, and
        deleting the artifact removes it."""
        try:
            self.bucket.fs.rm_file(self.writer_path(writer))
        except FileNotFoundError:
            pass
        except Exception as exc:  # noqa: BLE001 - the backup stands; see above
            log.warning("could not remove writer marker %s: %r", writer, exc)

    def condemnation_path(self, run: str) -> str:
        return f"{self.base}/gc/{run}"

    def condemned(self) -> set[str]:
        """Every pack a collection under way condemned: no new backup references them."""
        out: set[str] = set()
        for run in self.names("gc"):
            data = read_if_any(self.bucket, self.condemnation_path(run))
            if data is None:
                continue  # finished meanwhile: its packs are gone or live again
            try:
                out.update(str(p) for p in json.loads(data)["packs"])
            except (ValueError, KeyError, TypeError):
                # Its packs are unknown: deduplicating against any could reference a
                # chunk about to go.  Refuse; the collector that wrote it replaces it.
                raise StorageError(
                    "the backup storage is being cleaned up; the backup is retried",
                    admin_detail=f"condemnation {run} of {self.base} is unreadable",
                ) from None
        return out

    def moved_path(self, pack: str) -> str:
        return f"{self.base}/moved/{pack[:2]}/{pack}"

    def write_moved(self, pack: str, refs: list[ChunkRef]) -> None:
        """Where the live chunks of a rewritten ``pack`` are now (manifests, which are
        immutable, keep naming the old pack)."""
        doc = {
            "formatVersion": FORMAT_VERSION,
            "chunks": {r.id: [r.pack, r.size, r.offset, r.length] for r in refs},
        }
        data = self._seal_doc(pack, json.dumps(doc).encode(), b"moved\0")
        self.bucket.put_atomic(self.moved_path(pack), data)

    def list_forwards(self) -> set[str]:
        """List the rewritten packs once: :meth:`locate` then fetches only their forwards
        (without it, one request per pack that has none).  Call again to see new ones."""
        self._forwards = set(self.names("moved"))
        return self._forwards

    def moved(self, pack: str, *, fresh: bool = False) -> dict[str, ChunkRef]:
        """A rewritten pack's forwards (empty when it was never rewritten).  ``fresh``:
        look in storage even if the listing did not show it (a reader that found the pack
        gone: a collection may have rewritten it since)."""
        cached = self._moved.get(pack)
        if cached is not None:
            return cached
        if not fresh and self._forwards is not None and pack not in self._forwards:
            return {}
        data = read_if_any(self.bucket, self.moved_path(pack))
        if data is None:
            return {}
        try:
            doc = json.loads(self._open_doc(pack, data, b"moved\0"))
            out = {
                str(c): ChunkRef(id=str(c), size=int(s), pack=str(p), offset=int(o), length=int(n))
                for c, (p, s, o, n) in doc["chunks"].items()
            }
        except (InvalidTag, ValueError, KeyError, TypeError) as exc:
            raise ArtifactCorruptError(
                "the backup's repository is unreadable",
                admin_detail=f"forwards of pack {pack}: {exc!r}",
            ) from None
        self._moved[pack] = out
        return out


# ---------------------------------------------------------------------- the key


def repository_path(root: str, namespace: str, sealed: bool) -> str:
    # A sealed repository is never one a plaintext chunk was written to: turning
    # encryption on starts a new one instead of referencing old plaintext.
    return f"{root}/{REPOS}/{namespace}/{'sealed' if sealed else 'plain'}"


def repository_for(
    bucket: Bucket,
    root: str,
    namespace: str,
    keyring: KeyRing | None,
    *,
    sealed: bool,
    create: bool,
) -> Repository:
    """The tenant's repository, its key made and stored on first use when ``create``."""
    if sealed and keyring is None:
        raise EncryptionKeyError(
            "the backup is encrypted but the platform has no key for it; ask the platform operator",
            admin_detail="the StorageLocation holding it has no encryption keys configured",
        )
    base = repository_path(root, namespace, sealed)
    path = f"{base}/{CONFIG}"
    if create and not _exists(bucket, path):
        secret = new_data_key()
        doc: dict[str, Any] = {"formatVersion": FORMAT_VERSION, "keyCheck": key_check(secret)}
        if keyring is not None:
            doc["wraps"] = [keyring.wrap(secret, namespace, _WRAP_SUBJECT)]
        else:
            doc["key"] = base64.b64encode(secret).decode()
        _create_once(bucket, path, json.dumps(doc, indent=2, sort_keys=True).encode())
    # Always what is stored: if another backup made the key first, its key is the key.
    return Repository(bucket, base, read_key(bucket, path, namespace, keyring), sealed)


def read_key(bucket: Bucket, path: str, namespace: str, keyring: KeyRing | None) -> RepoKey:
    try:
        doc = json.loads(bucket.read_bytes(path))
        check = str(doc["keyCheck"])
    except (ValueError, KeyError, TypeError):
        raise ArtifactCorruptError(
            "the backup's repository is unreadable", admin_detail=f"{path} is malformed"
        ) from None
    if "wraps" in doc:
        if keyring is None:
            raise EncryptionKeyError(
                "the backup is encrypted but the platform has no key for it; ask the platform operator",
                admin_detail="the StorageLocation holding it has no encryption keys configured",
            )
        try:
            return RepoKey(keyring.unwrap(doc["wraps"], namespace, _WRAP_SUBJECT, check))
        except EncryptionKeyError as exc:
            # Said of the repository: a new backup needs its key too, and "the backup is
            # encrypted..." would speak of a backup that does not exist yet.
            raise EncryptionKeyError(
                "the tenant's backup repository is encrypted with a key the platform "
                "cannot use; ask the platform operator",
                admin_detail=f"{path}: {exc.admin_detail}. If a key's material was "
                "replaced under the same id, add the previous material back under its id "
                "(as a second key) and run `cozybackup rekey`; this repository's key, "
                "every backup in it and new backups depend on it",
            ) from None
    try:
        secret = base64.b64decode(doc["key"], validate=True)
    except (KeyError, ValueError, TypeError):
        raise ArtifactCorruptError(
            "the backup's repository is unreadable", admin_detail=f"{path} holds no key"
        ) from None
    if key_check(secret) != check:
        raise ArtifactCorruptError(
            "the backup's repository is unreadable", admin_detail=f"{path}: key check fails"
        )
    return RepoKey(secret)


def rewrap(bucket: Bucket, root: str, namespace: str, keyring: KeyRing) -> bool:
    """Re-wrap a sealed repository's key under the active key (``cozybackup rekey``)."""
    path = f"{repository_path(root, namespace, True)}/{CONFIG}"
    try:
        doc = json.loads(bucket.read_bytes(path))
        wraps = [w for w in doc["wraps"] if isinstance(w, dict)]
    except (ValueError, KeyError, TypeError):
        raise ArtifactCorruptError(
            "the backup's repository is unreadable", admin_detail=f"{path} is malformed"
        ) from None
    if [w.get("keyId") for w in wraps] == [keyring.active] and all(
        bool(w.get("perTenant")) == keyring.per_tenant for w in wraps
    ):
        return False
    key = read_key(bucket, path, namespace, keyring)
    doc["wraps"] = [keyring.wrap(key.secret, namespace, _WRAP_SUBJECT)]
    bucket.put_atomic(path, json.dumps(doc, indent=2, sort_keys=True).encode())
    return True


def _partial(name: str) -> bool:
    """A local atomic write's temporary file (a crash may leave one)."""
    return ".tmp-" in name


def read_if_any(bucket: Bucket, path: str) -> bytes | None:
    """The object's bytes, or None when there is none."""
    try:
        return bucket.read_bytes(path)
    except ArtifactCorruptError:  # how the store says "missing" (or "not a file")
        if not _exists(bucket, path):
            return None
        raise


def _exists(bucket: Bucket, path: str) -> bool:
    try:
        return bool(bucket.fs.exists(path))
    except Exception as exc:
        raise StorageError("the backup storage is unreachable", admin_detail=repr(exc)) from exc


def _create_once(bucket: Bucket, path: str, data: bytes) -> None:
    """Create ``path`` unless it exists.  Exclusive on a local bucket (a hard link fails on
    an existing name); on S3 two first backups racing may both write, and the loser then
    fails at commit when it sees the stored key is not the one it used (and is retried)."""
    if not isinstance(bucket.fs, LocalFileSystem):
        bucket.put_atomic(path, data)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
