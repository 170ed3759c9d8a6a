"""Client-side encryption of artifact streams: envelope keys and a streamed AEAD.

Each Backup gets a fresh 256-bit data key.  It is wrapped (AES-256-GCM, bound to the
backup's namespace and uid) by a key-encryption key the admin owns, and the wrapped copy
is stored beside the manifest in ``keys.json``; re-wrapping under a new key rewrites only
that small object, never the data.  With per-tenant keys, each namespace's key-encryption
key is derived from the admin's by HKDF, so one tenant's wrapped keys are useless under
another's.

Streams are sealed with the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár
2015), as age and Tink do: the plaintext is cut into 64 KiB segments, each sealed with
AES-256-GCM under a per-stream key (HKDF of the data key and the stream's name) and the
nonce ``counter || last-flag``.  Reordering, dropping, truncating or appending segments,
or moving a stream to another name or backup, fails authentication.  Only primitives from
``cryptography`` are used; nothing here is a cipher of our own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
from collections.abc import Iterable, Mapping
from typing import IO, Any

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .._api.errors import ArtifactCorruptError, EncryptionKeyError

ALGORITHM = "aes-256-gcm-stream-64k"
SEGMENT = 64 * 1024
TAG = 16
KEYS_FILE = "keys.json"
_KEY_BYTES = 32
_COUNTER_LIMIT = 1 << 88  # an 11-byte counter; never reached in practice


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None, info=info).derive(key)


def derive_key(key: bytes, info: bytes) -> bytes:
    """A 256-bit key for one purpose (``info``) from ``key`` (HKDF-SHA256)."""
    return _hkdf(key, info)


def new_data_key() -> bytes:
    return os.urandom(_KEY_BYTES)


def stream_key(data_key: bytes, name: str) -> bytes:
    return _hkdf(data_key, b"cozybackup stream key\0" + name.encode())


def digest_key(data_key: bytes, name: str) -> bytes:
    """Keys the digest of an encrypted stream's plaintext: a bare sha256 of it would let
    anyone with read access to the bucket confirm a guessed content."""
    return _hkdf(data_key, b"cozybackup stream digest\0" + name.encode())


def key_check(data_key: bytes) -> str:
    """A fingerprint recorded in the manifest: an unwrapped key is the backup's own."""
    return hmac.new(data_key, b"cozybackup key check", hashlib.sha256).hexdigest()[:32]


def parse_key(material: str) -> bytes:
    """A key-encryption key from its Secret: 32 bytes, as base64 text (``stringData``) or
    as the raw bytes themselves (``data``, the Kubernetes way)."""
    try:
        raw = base64.b64decode(material.strip(), validate=True)
    except ValueError:
        raw = b""
    if len(raw) == _KEY_BYTES:
        return raw
    as_bytes = material.encode("utf-8", "surrogateescape")
    if len(as_bytes) == _KEY_BYTES:
        return as_bytes
    raise ValueError(
        f"must be {_KEY_BYTES} bytes, raw or base64 (got {len(as_bytes)} bytes of which "
        f"{'none decode' if not raw else f'base64 decodes {len(raw)}'})"
    )


@attrs.frozen(kw_only=True)
class KeyRing:
    """The admin's key-encryption keys for one storage location; the first one wraps."""

    keys: tuple[tuple[str, bytes], ...] = attrs.field(repr=lambda ks: repr([k for k, _ in ks]))
    active: str
    per_tenant: bool = False

    def _kek(self, key_id: str, namespace: str, per_tenant: bool) -> bytes | None:
        raw = dict(self.keys).get(key_id)
        if raw is None or not per_tenant:
            return raw
        return _hkdf(raw, b"cozybackup tenant key\0" + namespace.encode())

    @staticmethod
    def _aad(namespace: str, uid: str) -> bytes:
        return f"cozybackup data key\0{namespace}\0{uid}".encode()

    def wrap(self, data_key: bytes, namespace: str, uid: str) -> dict[str, Any]:
        kek = self._kek(self.active, namespace, self.per_tenant)
        if kek is None:
            raise EncryptionKeyError(
                "the platform's encryption key is not usable; ask the platform operator",
                admin_detail=f"the active key {self.active!r} is missing or unusable "
                "(its Secret does not exist, or its key is not 32 bytes)",
            )
        nonce = os.urandom(12)
        sealed = AESGCM(kek).encrypt(nonce, data_key, self._aad(namespace, uid))
        return {
            "keyId": self.active,
            "perTenant": self.per_tenant,
            "nonce": base64.b64encode(nonce).decode(),
            "wrapped": base64.b64encode(sealed).decode(),
        }

    def unwrap(
        self, wraps: Iterable[Mapping[str, Any]], namespace: str, uid: str, check: str
    ) -> bytes:
        tried = []
        for w in wraps:
            key_id = str(w.get("keyId"))
            tried.append(key_id)
            # The wrap says how it was made: switching perTenantKeys keeps old backups readable.
            kek = self._kek(key_id, namespace, bool(w.get("perTenant")))
            if kek is None:
                continue
            try:
                dk = AESGCM(kek).decrypt(
                    base64.b64decode(w["nonce"]),
                    base64.b64decode(w["wrapped"]),
                    self._aad(namespace, uid),
                )
            except (InvalidTag, KeyError, ValueError):
                continue
            if hmac.compare_digest(key_check(dk), check):
                return dk
        raise EncryptionKeyError(
            "the backup is encrypted with a key the platform cannot use; ask the platform operator",
            admin_detail=f"wrapped under key ids {tried}; the location's keys are "
            f"{[k for k, _ in self.keys]} (perTenantKeys={self.per_tenant})",
        )


def keys_document(wraps: list[dict[str, Any]]) -> bytes:
    return json.dumps({"formatVersion": 1, "wraps": wraps}, indent=2, sort_keys=True).encode()


def read_keys_document(data: bytes) -> list[dict[str, Any]]:
    try:
        doc = json.loads(data)
        wraps = doc["wraps"]
        if not isinstance(wraps, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ArtifactCorruptError("the backup's key file is unreadable") from None
    return [w for w in wraps if isinstance(w, dict)]


def _nonce(counter: int, last: bool) -> bytes:
    if counter >= _COUNTER_LIMIT:
        raise ArtifactCorruptError("stream too long to encrypt")
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class EncryptingWriter(io.RawIOBase):
    """Seals what is written into segments on ``target``; ``finish`` seals the last one."""

    def __init__(self, target: IO[bytes], key: bytes) -> None:
        self._target = target
        self._aead = AESGCM(key)
        self._buf = bytearray()
        self._counter = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        self._buf += view
        # Keep at least one byte back: the last segment must be sealed as the last.
        while len(self._buf) > SEGMENT:
            self._seal(bytes(self._buf[:SEGMENT]), last=False)
            del self._buf[:SEGMENT]
        return len(view)

    def _seal(self, plain: bytes, last: bool) -> None:
        self._target.write(self._aead.encrypt(_nonce(self._counter, last), plain, None))
        self._counter += 1

    def finish(self) -> None:
        self._seal(bytes(self._buf), last=True)
        self._buf.clear()


class DecryptingReader(io.RawIOBase):
    """Opens the segments of ``source``; any tampering or truncation raises."""

    def __init__(self, source: IO[bytes], key: bytes, name: str) -> None:
        self._source = source
        self._aead = AESGCM(key)
        self._name = name
        self._pending = bytearray()
        self._plain = b""
        self._pos = 0
        self._counter = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while self._pos >= len(self._plain):
            if self._done:
                return 0
            self._next_segment()
        n = min(len(b), len(self._plain) - self._pos)
        b[:n] = self._plain[self._pos : self._pos + n]
        self._pos += n
        return n

    def _next_segment(self) -> None:
        want = SEGMENT + TAG + 1  # one byte more tells whether this segment is the last
        while len(self._pending) < want:
            chunk = self._source.read(want - len(self._pending))
            if not chunk:
                break
            self._pending += chunk
        last = len(self._pending) <= SEGMENT + TAG
        size = len(self._pending) if last else SEGMENT + TAG
        sealed = bytes(self._pending[:size])
        del self._pending[:size]
        try:
            self._plain = self._aead.decrypt(_nonce(self._counter, last), sealed, None)
        except InvalidTag:
            raise ArtifactCorruptError(
                f"stream {self._name!r} of the backup failed decryption (corrupted, truncated or not its own)"
            ) from None
        self._pos = 0
        self._counter += 1
        self._done = last
