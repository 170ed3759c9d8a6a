"""Client-side encryption: streamed AEAD segments, envelope keys, rotation, wrong keys."""

from __future__ import annotations

import base64
import os
import resource
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cozybackup_core import ArtifactCorruptError, ArtifactKey, ArtifactStore, EncryptionKeyError
from cozybackup_core._storage.crypto import (
    SEGMENT,
    TAG,
    DecryptingReader,
    EncryptingWriter,
    KeyRing,
    read_keys_document,
)
from cozybackup_core.testing import LocalPlatform
from cozybackup_core.testing import key_secret_yaml as _key_secret

from support.drivers import FilesDriver
from support.manifests import FILES_CLASS, directory_app
from support.stores import manifest_of, read_streams

KEY = ArtifactKey(namespace="tenant-a", kind="Directory", application="app1", uid="u-1")


def _seal(plain: bytes, key: bytes, pieces: int = 1) -> bytes:
    import io

    out = io.BytesIO()
    w = EncryptingWriter(out, key)
    step = max(1, len(plain) // pieces)
    for i in range(0, len(plain), step):
        w.write(plain[i : i + step])
    w.finish()
    return out.getvalue()


def _open(sealed: bytes, key: bytes) -> bytes:
    import io

    return io.BufferedReader(DecryptingReader(io.BytesIO(sealed), key, "s")).read()


sizes = st.sampled_from([0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT]) | st.integers(
    0, 4 * SEGMENT
)


@settings(max_examples=40, deadline=None)
@given(size=sizes, pieces=st.integers(1, 7))
def test_stream_round_trips_at_every_size_and_chunking(size: int, pieces: int) -> None:
    key, plain = os.urandom(32), os.urandom(size)
    sealed = _seal(plain, key, pieces)
    segments = max(1, -(-size // SEGMENT))
    assert len(sealed) == size + segments * TAG
    assert _open(sealed, key) == plain


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 3 * SEGMENT), data=st.data())
def test_any_change_truncation_or_extension_is_refused(size: int, data: st.DataObject) -> None:
    key, plain = os.urandom(32), os.urandom(size)
    sealed = bytearray(_seal(plain, key))
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "drop-segment"]))
    if how == "flip":
        i = data.draw(st.integers(0, len(sealed) - 1))
        sealed[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == "truncate":
        del sealed[data.draw(st.integers(0, len(sealed) - 1)) :]
    elif how == "extend":
        sealed += data.draw(st.binary(min_size=1, max_size=64))
    else:
        if len(sealed) <= SEGMENT + TAG:
            return  # a single segment: nothing to drop but everything (covered by truncate)
        del sealed[: SEGMENT + TAG]
    with pytest.raises(ArtifactCorruptError):
        _open(bytes(sealed), key)


def test_dropping_whole_trailing_segments_is_refused() -> None:
    """The last segment is sealed as the last: a cut at a segment boundary is not a stream."""
    key = os.urandom(32)
    sealed = _seal(os.urandom(3 * SEGMENT + 10), key)
    for kept in (1, 2, 3):
        with pytest.raises(ArtifactCorruptError):
            _open(sealed[: kept * (SEGMENT + TAG)], key)


def test_a_wrong_key_is_refused() -> None:
    sealed = _seal(b"secret data", os.urandom(32))
    with pytest.raises(ArtifactCorruptError):
        _open(sealed, os.urandom(32))


# ---------------------------------------------------------------- the artifact store


def _ring(*ids: str, per_tenant: bool = False, keys: dict[str, bytes] | None = None) -> KeyRing:
    keys = keys or {}
    return KeyRing(
        keys=tuple((i, keys.get(i) or os.urandom(32)) for i in ids),
        active=ids[0],
        per_tenant=per_tenant,
    )


def _write(store: ArtifactStore, streams: dict[str, bytes], key: ArtifactKey = KEY) -> None:
    writer = store.writer(key)
    for name, data in streams.items():
        with writer.open(name) as out:
            out.write(data)
    writer.commit(manifest_of(writer, key))


def _stored(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_encrypted_store_round_trips_and_holds_no_plaintext_or_key(tmp_path: Path) -> None:
    store = ArtifactStore.local(str(tmp_path / "bucket"))
    store.keyring = _ring("k1")
    # Random data does not compress: without encryption it would be stored verbatim.
    streams = {"a": os.urandom(200_000), "b": b""}
    _write(store, streams)
    assert read_streams(store, KEY) == streams
    stored = _stored(tmp_path / "bucket")
    assert streams["a"][1000:1064] not in stored
    manifest = store.reader(KEY).manifest
    assert manifest.encryption is not None
    assert {s.encryption for s in manifest.streams} == {"aes-256-gcm-stream-64k"}
    # The plaintext digest is keyed: a bare sha256 would confirm guessed content.
    import hashlib

    assert manifest.stream("a").sha256 != hashlib.sha256(streams["a"]).hexdigest()
    for _, raw in store.keyring.keys:
        assert raw not in stored and base64.b64encode(raw) not in stored


def test_missing_or_wrong_key_fails_before_reading(tmp_path: Path) -> None:
    store = ArtifactStore.local(str(tmp_path / "bucket"))
    store.keyring = _ring("k1")
    _write(store, {"a": b"data" * 100})
    store.keyring = None
    with pytest.raises(EncryptionKeyError, match="encrypted"):
        store.reader(KEY).unlock()
    store.keyring = _ring("k1")  # same id, different bytes
    with pytest.raises(EncryptionKeyError) as err:
        store.reader(KEY).unlock()
    assert "ask the platform operator" in str(err.value)
    # The store itself still checks the stored bytes without any key.
    store.reader(KEY).verify_stored()


def test_rotation_rewraps_only_the_key_file(tmp_path: Path) -> None:
    old = _ring("k1")
    store = ArtifactStore.local(str(tmp_path / "bucket"))
    store.keyring = old
    streams = {"a": os.urandom(100_000)}
    _write(store, streams)
    base = tmp_path / "bucket" / KEY.relpath
    before = {p: p.read_bytes() for p in base.rglob("*") if p.is_file()}

    store.keyring = _ring("k2", "k1", keys=dict(old.keys))  # a new active key; k1 kept
    assert store.rekey(KEY) is True
    assert store.rekey(KEY) is False  # idempotent
    after = {p: p.read_bytes() for p in base.rglob("*") if p.is_file()}
    assert [p.name for p in before if before[p] != after[p]] == ["keys.json"]
    wraps = read_keys_document((base / "keys.json").read_bytes())
    assert [w["keyId"] for w in wraps] == ["k2"]

    store.keyring = _ring("k2", keys={"k2": dict(store.keyring.keys)["k2"]})  # k1 retired
    assert read_streams(store, KEY) == streams


def test_per_tenant_keys_do_not_open_another_tenants_backup(tmp_path: Path) -> None:
    store = ArtifactStore.local(str(tmp_path / "bucket"))
    store.keyring = _ring("k1", per_tenant=True)
    other = ArtifactKey(namespace="tenant-b", kind="Directory", application="app1", uid="u-2")
    _write(store, {"a": b"tenant a data"})
    _write(store, {"a": b"tenant b data"}, other)
    assert read_streams(store, other) == {"a": b"tenant b data"}
    # Tenant b's wrapped key, planted beside tenant a's backup, unwraps to nothing.
    a_keys = tmp_path / "bucket" / KEY.relpath / "keys.json"
    a_keys.write_bytes((tmp_path / "bucket" / other.relpath / "keys.json").read_bytes())
    with pytest.raises(EncryptionKeyError):
        read_streams(store, KEY)


def test_memory_stays_flat_while_encrypting(tmp_path: Path) -> None:
    store = ArtifactStore.local(str(tmp_path / "bucket"))
    store.keyring = _ring("k1")
    chunk = os.urandom(1 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    writer = store.writer(KEY)
    with writer.open("big") as out:
        for _ in range(192):
            out.write(chunk)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 96, f"peak RSS grew by {grown_mib:.0f} MiB for a 192 MiB stream"


# ---------------------------------------------------------------- through the engine


def _location(keys: list[tuple[str, str]], per_tenant: bool = False) -> str:
    items = ", ".join(f"{{id: {i}, secretRef: {{name: {s}}}}}" for i, s in keys)
    return f"""
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {{name: cozy-backups}}
spec:
  bucket: cozy-backups
  encryption: {{keys: [{items}], perTenantKeys: {str(per_tenant).lower()}}}
"""


CLASS = FILES_CLASS


def test_engine_encrypts_rotates_and_refuses_a_restore_without_the_key(tmp_path: Path) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,))
    plat.apply(_key_secret("key-one", k1), _location([("k1", "key-one")]), CLASS)
    data, original = tmp_path / "app", os.urandom(150_000)
    ref = directory_app(plat, data, original)
    assert plat.backup("tenant-a", ref, "b1", "files").status.phase == "Succeeded"
    assert original[5000:5100] not in b"".join(p.read_bytes() for p in plat.stored_files())

    # The key's Secret is replaced by another key: the restore fails before the target changes.
    plat.engine.invalidate_stores()
    plat.apply(_key_secret("key-one", k2))
    (data / "x.bin").write_bytes(b"current")
    job = plat.restore("tenant-a", "b1", "r1")
    assert job.status.phase == "Failed"
    assert "key" in (job.status.message or "") and "operator" in (job.status.message or "")
    assert (data / "x.bin").read_bytes() == b"current"

    # Rotation: k2 becomes active, k1 is kept until every backup is re-wrapped, then retired.
    plat.engine.invalidate_stores()
    plat.apply(
        _key_secret("key-one", k1),
        _key_secret("key-two", k2),
        _location([("k2", "key-two"), ("k1", "key-one")]),
    )
    assert plat.engine.rekey() == (1, 0, [])
    plat.engine.invalidate_stores()
    plat.apply(_location([("k2", "key-two")]))
    assert plat.restore("tenant-a", "b1", "r2").status.phase == "Succeeded"
    assert (data / "x.bin").read_bytes() == original

    view = plat.tenant_view("tenant-a")
    for raw in (k1, k2):
        assert base64.b64encode(raw).decode() not in view and raw.hex() not in view
    assert "key-one" not in view and "key-two" not in view
