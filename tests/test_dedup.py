"""The deduplicating format (``deduplication: true``): chunks in per-tenant repositories."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import attrs
import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cozybackup_core import ArtifactCorruptError, ArtifactKey, ArtifactStore
from cozybackup_core._storage.crypto import KeyRing
from cozybackup_core._storage.repo import Chunker
from cozybackup_core._storage.repo.repository import REPOS
from cozybackup_core._storage.store import Manifest

from support.stores import read_streams, write_backup

KEY = ArtifactKey(namespace="tenant-a", kind="Directory", application="app1", uid="u-1")


def _key(uid: str, namespace: str = "tenant-a") -> ArtifactKey:
    return ArtifactKey(namespace=namespace, kind="Directory", application="app1", uid=uid)


def _ring() -> KeyRing:
    return KeyRing(keys=(("k1", os.urandom(32)),), active="k1")


def _objects(store: ArtifactStore, under: str) -> dict[str, int]:
    base = f"{store.root}/{under}"
    return {
        p: int(store.fs.size(p)) for p in store.fs.find(base) if p.rstrip("/") != base.rstrip("/")
    }


def _edited(data: bytes, seed: int, edits: int) -> bytes:
    """``data`` with a few small insertions, deletions and overwrites (shifting bytes)."""
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(len(out))
        how = rng.choice(["insert", "delete", "overwrite"])
        if how == "insert":
            out[at:at] = rng.randbytes(rng.randrange(1, 200))
        elif how == "delete":
            del out[at : at + rng.randrange(1, 200)]
        else:
            out[at : at + 100] = rng.randbytes(100)
    return bytes(out)


def test_chunker_cuts_the_same_whatever_the_write_sizes() -> None:
    data = random.Random(1).randbytes(40 << 20)
    whole: list[bytes] = []
    c = Chunker(whole.append, seed=7)
    c.write(memoryview(data))
    c.finish()
    pieces: list[bytes] = []
    c = Chunker(pieces.append, seed=7)
    step = 777_777
    for i in range(0, len(data), step):
        c.write(memoryview(data)[i : i + step])
    c.finish()
    assert b"".join(whole) == data
    assert [len(p) for p in pieces] == [len(w) for w in whole]
    assert 10 < len(whole) < 60  # ~1.25 MiB on average, never more than 4 MiB
    assert max(len(w) for w in whole) <= 4 << 20


def test_round_trip_and_a_second_backup_adds_little(dedup_store: ArtifactStore) -> None:
    rng = random.Random(2)
    first = {
        "dump": rng.randbytes(44 << 20) + b"text" * 1_000_000,
        "globals": b"CREATE ROLE x;\n",
        "empty": b"",
    }
    added1 = write_backup(dedup_store, _key("u-1"), first)
    assert read_streams(dedup_store, _key("u-1")) == first
    m = dedup_store.reader(_key("u-1")).manifest
    assert m.format_version == 3
    assert m.stream("dump").blake3 == blake3.blake3(first["dump"]).hexdigest()
    assert m.stream("dump").sha256 == ""
    assert len(m.stream("dump").chunks) > 10
    seen: list[int] = []
    dedup_store.reader(_key("u-1")).verify_stored(seen.append)  # progress in stored bytes
    assert sum(seen) == m.stored_bytes
    # Nothing per stream under the backup's own folder: only its manifest.
    assert [p.rsplit("/", 1)[-1] for p in _objects(dedup_store, _key("u-1").relpath)] == [
        "manifest.json"
    ]

    second = {"dump": _edited(first["dump"], 3, 3), "globals": first["globals"], "empty": b""}
    before = sum(_objects(dedup_store, REPOS).values())
    added2 = write_backup(dedup_store, _key("u-2"), second)
    grown = sum(_objects(dedup_store, REPOS).values()) - before
    assert read_streams(dedup_store, _key("u-2")) == second
    # 3 small edits touch one or two chunks of ~1.25 MiB each, of a 48 MiB stream:
    # measured 6-18% over random repository keys; a full copy would be all of `added1`.
    assert grown < added1 * 0.3, (grown, added1)
    assert added2 == pytest.approx(grown, rel=0.05)
    # Packs are tens of MiB, not one object per chunk.
    packs = [p for p in _objects(dedup_store, REPOS) if "/packs/" in p]
    assert len(packs) <= 4
    # The first backup still restores (nothing of it was rewritten).
    assert read_streams(dedup_store, _key("u-1")) == first


def test_tenants_have_repositories_of_their_own(dedup_store: ArtifactStore) -> None:
    data = {"dump": random.Random(4).randbytes(6 << 20)}
    a = write_backup(dedup_store, _key("u-1", "tenant-a"), data)
    b = write_backup(dedup_store, _key("u-2", "tenant-b"), data)
    assert a > 5 << 20 and b > 5 << 20  # stored twice: no deduplication across tenants
    objs_a = _objects(dedup_store, f"{REPOS}/tenant-a")
    objs_b = _objects(dedup_store, f"{REPOS}/tenant-b")
    names_a = {p.rsplit("/", 1)[-1] for p in objs_a}
    names_b = {p.rsplit("/", 1)[-1] for p in objs_b}
    assert names_a & names_b == {"config.json"}
    ids = lambda ns: {  # noqa: E731
        c.id
        for s in dedup_store.reader(
            _key("u-1" if ns == "a" else "u-2", f"tenant-{ns}")
        ).manifest.streams
        for c in s.chunks
    }
    assert not ids("a") & ids("b")  # keyed ids: the same bytes have other names
    assert read_streams(dedup_store, _key("u-2", "tenant-b")) == data
    # Tenant a's manifest planted as a backup of tenant b reads only from b's repository,
    # where a's packs are not: refused, not served from a's chunks.
    planted = _key("u-3", "tenant-b")
    dedup_store.put_atomic(
        dedup_store.path(planted, "manifest.json"),
        dedup_store.reader(_key("u-1", "tenant-a")).manifest_bytes,
    )
    with pytest.raises(ArtifactCorruptError):
        read_streams(dedup_store, planted)


def test_a_damaged_pack_fails_reading_and_verification(dedup_store: ArtifactStore) -> None:
    data = {"dump": random.Random(5).randbytes(3 << 20)}
    write_backup(dedup_store, KEY, data)
    pack = next(p for p in _objects(dedup_store, REPOS) if "/packs/" in p)
    blob = bytearray(dedup_store.fs.cat_file(pack))
    blob[len(blob) // 2] ^= 0x40
    dedup_store.fs.pipe_file(pack, bytes(blob))
    with pytest.raises(ArtifactCorruptError):
        dedup_store.reader(KEY).verify()
    with pytest.raises(ArtifactCorruptError):
        dedup_store.reader(KEY).verify_stored()
    with pytest.raises(ArtifactCorruptError):
        read_streams(dedup_store, KEY)
    dedup_store.fs.rm_file(pack)
    with pytest.raises(ArtifactCorruptError, match="missing"):
        dedup_store.reader(KEY).verify()


def test_packs_are_checked_several_at_once_and_any_damaged_one_fails(
    dedup_store: ArtifactStore,
) -> None:
    # Three backups, a pack each; a fourth holds all their data, so it references three
    # packs, which verify_stored checks in threads.
    dedup_store.threads = 3
    parts = [random.Random(20 + i).randbytes(2 << 20) for i in range(3)]
    for i, part in enumerate(parts):
        write_backup(dedup_store, _key(f"part-{i}"), {"dump": part})
    packs = sorted(p for p in _objects(dedup_store, REPOS) if "/packs/" in p)
    assert len(packs) == 3
    write_backup(dedup_store, _key("all"), {f"s{i}": part for i, part in enumerate(parts)})
    assert len([p for p in _objects(dedup_store, REPOS) if "/packs/" in p]) == 3
    seen: list[int] = []
    dedup_store.reader(_key("all")).verify_stored(seen.append)
    reader = dedup_store.reader(_key("all"))
    assert sum(seen) == sum(s.stored_bytes for s in reader.manifest.streams)
    blob = bytearray(dedup_store.fs.cat_file(packs[1]))
    blob[-100] ^= 0x01
    dedup_store.fs.pipe_file(packs[1], bytes(blob))
    with pytest.raises(ArtifactCorruptError):
        dedup_store.reader(_key("all")).verify_stored()
    failed = []
    for i in range(3):
        try:
            dedup_store.reader(_key(f"part-{i}")).verify_stored()
        except ArtifactCorruptError:
            failed.append(i)
    assert len(failed) == 1  # only the backup whose own pack was damaged


def _forge(store: ArtifactStore, pack: str) -> None:
    """Change a byte of ``pack`` and record the new sha256 in its (unsealed) index, as
    someone who can write to the bucket could: only the manifest still knows better."""
    blob = bytearray(store.fs.cat_file(pack))
    blob[len(blob) // 3] ^= 0x10
    store.fs.pipe_file(pack, bytes(blob))
    index = pack.replace("/packs/", "/index/")
    doc = json.loads(store.fs.cat_file(index))
    doc["sha256"] = hashlib.sha256(bytes(blob)).hexdigest()
    store.fs.pipe_file(index, json.dumps(doc).encode())


def test_the_manifest_anchors_every_referenced_packs_digest(tmp_path: Path) -> None:
    store = ArtifactStore.local(str(tmp_path / "bucket"))
    store.deduplicate = True
    # Over twice the largest chunk: the repository's random seed moves the cuts, but the
    # first chunk ends before the shared head does, so u-2 always reuses u-1's pack.
    first = random.Random(30).randbytes(9 << 20)
    write_backup(store, _key("u-1"), {"dump": first})
    write_backup(store, _key("u-2"), {"dump": first + random.Random(31).randbytes(1 << 20)})
    packs = {
        p.rsplit("/", 1)[-1]: hashlib.sha256(store.fs.cat_file(p)).hexdigest()
        for p in _objects(store, REPOS)
        if "/packs/" in p
    }
    assert len(packs) == 2
    # The second backup reuses the first one's pack and adds its own: both anchored.
    assert dict(store.reader(_key("u-2")).manifest.pack_sha256) == packs
    (one,) = store.reader(_key("u-1")).manifest.pack_sha256
    assert store.reader(_key("u-1")).manifest.pack_sha256[one] == packs[one]


def test_a_forged_pack_fails_verification_with_or_without_the_anchor(tmp_path: Path) -> None:
    store = ArtifactStore.local(str(tmp_path / "bucket"))
    store.deduplicate = True
    write_backup(store, KEY, {"dump": random.Random(32).randbytes(3 << 20)})
    (pack,) = [p for p in _objects(store, REPOS) if "/packs/" in p]
    _forge(store, pack)
    with pytest.raises(ArtifactCorruptError, match="recorded checksum") as caught:
        store.reader(KEY).verify_stored()  # by the manifest's digest, no chunk opened
    assert "differs from the manifest's" in (caught.value.admin_detail or "")
    reader = store.reader(KEY)
    # A manifest without digests (made before they were recorded): each chunk is opened.
    reader.manifest = attrs.evolve(reader.manifest, pack_sha256={})
    with pytest.raises(ArtifactCorruptError):
        reader.verify_stored()
    with pytest.raises(ArtifactCorruptError):
        read_streams(store, KEY)


@pytest.mark.parametrize("sealed", [False, True])
def test_the_whole_streams_digest_catches_chunks_out_of_order(tmp_path: Path, sealed: bool) -> None:
    """Each chunk passes its own keyed hash wherever it is listed: only the whole stream's
    digest (BLAKE3 since format 3) sees two of them swapped."""
    store = ArtifactStore.local(str(tmp_path / "bucket"))
    store.deduplicate = True
    if sealed:
        store.keyring = _ring()
    write_backup(store, KEY, {"dump": random.Random(33).randbytes(12 << 20)})
    reader = store.reader(KEY)
    info = reader.manifest.stream("dump")
    assert len(info.chunks) > 2 and info.blake3 and not info.sha256
    swapped = (info.chunks[1], info.chunks[0], *info.chunks[2:])
    reader.manifest = attrs.evolve(reader.manifest, streams=(attrs.evolve(info, chunks=swapped),))
    with pytest.raises(ArtifactCorruptError, match="recorded checksum"), reader.open("dump") as f:
        while f.read(1 << 20):
            pass


def test_encrypted_repository_holds_no_plaintext(tmp_path: Path) -> None:
    store = ArtifactStore.local(str(tmp_path / "bucket"))
    store.deduplicate, store.keyring = True, _ring()
    text = b"".join(b"row %d: the tenant's secret value\n" % i for i in range(200_000))
    data = {"dump": text, "random": os.urandom(2 << 20)}
    write_backup(store, KEY, data)
    assert read_streams(store, KEY) == data
    stored = b"".join(
        p.read_bytes() for p in sorted((tmp_path / "bucket").rglob("*")) if p.is_file()
    )
    assert b"secret value" not in stored
    assert data["random"][1000:1064] not in stored
    for _, raw in store.keyring.keys:
        assert raw not in stored
    m = store.reader(KEY).manifest
    assert m.encryption is not None and m.encryption.algorithm == "aes-256-gcm-chunks"
    assert m.stream("dump").blake3 not in ("", blake3.blake3(text).hexdigest())  # keyed
    # The index is sealed too: chunk ids and sizes are not listed in the clear.
    for idx in (tmp_path / "bucket").rglob("index/*/*"):
        assert m.stream("dump").chunks[0].id.encode() not in idx.read_bytes()


def test_memory_stays_bounded_on_a_large_stream(tmp_path: Path) -> None:
    """256 MiB written and read back: Python's peak allocation stays a quarter of it at
    most, whatever the stream's size (bounded buffers, not the stream)."""
    import tracemalloc

    store = ArtifactStore.local(str(tmp_path / "bucket"))
    store.deduplicate = True
    size, piece = 256 << 20, 1 << 20
    tracemalloc.start()
    try:
        writer = store.writer(KEY)
        with writer.open("big") as out:
            for _ in range(size // piece):
                out.write(os.urandom(piece))  # new data: every chunk is stored
        writer.commit(
            Manifest(
                format_version=1,
                backup_uid=KEY.uid,
                namespace=KEY.namespace,
                application={"kind": KEY.kind, "name": KEY.application},
                driver={"name": "t", "version": "1"},
                strategy_ref={"kind": "T", "name": "t"},
                parameters={},
                taken_at="2026-01-01T00:00:00Z",
                streams=tuple(writer.streams),
            )
        )
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        reader = store.reader(KEY)
        with reader.open("big") as f:
            total = 0
            while block := f.read(piece):
                total += len(block)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert writer.added_bytes > size  # random data: all of it stored (zstd adds a little)
    # Measured ~26-34 MiB writing (the 16 MiB window, chunks in flight to the compressing
    # threads) and ~33-42 MiB reading (four chunks ahead, each up to 4 MiB raw + stored).
    assert write_peak < 64 << 20, f"writing peaked at {write_peak >> 20} MiB"
    assert read_peak < 64 << 20, f"reading peaked at {read_peak >> 20} MiB"


def test_a_missing_or_wrong_key_fails_before_reading(tmp_path: Path) -> None:
    from cozybackup_core import EncryptionKeyError

    store = ArtifactStore.local(str(tmp_path / "bucket"))
    store.deduplicate, store.keyring = True, _ring()
    write_backup(store, KEY, {"a": b"data" * 1000})
    store.keyring = None
    with pytest.raises(EncryptionKeyError, match="encrypted"):
        store.reader(KEY).unlock()
    store.keyring = _ring()  # same id, other bytes
    with pytest.raises(EncryptionKeyError, match="operator"):
        store.reader(KEY).unlock()
    # A new backup needs the repository's key: the error says so, not "the backup is...".
    with pytest.raises(EncryptionKeyError) as err:
        write_backup(store, _key("u-new"), {"a": b"more"})
    assert err.value.message.startswith("the tenant's backup repository is encrypted")
    assert "config.json" in err.value.admin_detail and "cozybackup rekey" in err.value.admin_detail


def test_a_repository_key_replaced_while_writing_fails_the_commit(tmp_path: Path) -> None:
    """Two first backups racing on S3 may both write config.json: the one whose key lost
    must not commit a manifest whose chunks no one can read."""
    from cozybackup_core import StorageError
    from cozybackup_core._storage.repo.repository import repository_path

    store = ArtifactStore.local(str(tmp_path / "bucket"))
    store.deduplicate = True
    writer = store.writer(KEY)
    with writer.open("a") as out:
        out.write(os.urandom(100_000))
    config = Path(repository_path(store.root, KEY.namespace, False)) / "config.json"
    config.unlink()
    store.repository(KEY.namespace, sealed=False)  # another backup makes its own key
    with pytest.raises(StorageError, match="changed"):
        writer.commit(
            Manifest(
                format_version=1,
                backup_uid=KEY.uid,
                namespace=KEY.namespace,
                application={"kind": KEY.kind, "name": KEY.application},
                driver={"name": "t", "version": "1"},
                strategy_ref={"kind": "T", "name": "t"},
                parameters={},
                taken_at="2026-01-01T00:00:00Z",
                streams=tuple(writer.streams),
            )
        )
    assert not store.is_committed(KEY)


def test_an_unreadable_index_costs_deduplication_only(tmp_path: Path) -> None:
    store = ArtifactStore.local(str(tmp_path / "bucket"))
    store.deduplicate = True
    data = {"a": random.Random(6).randbytes(3 << 20)}
    write_backup(store, _key("u-1"), data)
    [index] = (tmp_path / "bucket").rglob("index/*/*")
    index.write_bytes(b"not json")
    assert write_backup(store, _key("u-2"), data) > 3 << 20  # stored again, not referenced
    assert read_streams(store, _key("u-1")) == data == read_streams(store, _key("u-2"))


def test_reordered_chunk_references_are_refused(tmp_path: Path) -> None:
    import json

    store = ArtifactStore.local(str(tmp_path / "bucket"))
    store.deduplicate = True
    write_backup(store, KEY, {"a": random.Random(7).randbytes(6 << 20)})
    path = Path(store.path(KEY, "manifest.json"))
    doc = json.loads(path.read_bytes())
    chunks = doc["streams"][0]["chunks"]
    assert len(chunks) > 2
    chunks[0], chunks[1] = chunks[1], chunks[0]
    path.write_text(json.dumps(doc))
    with pytest.raises(ArtifactCorruptError, match="checksum"):
        store.reader(KEY).verify()


@settings(max_examples=12, deadline=None)
@given(
    size=st.integers(0, 40 << 20),  # beyond the 16 MiB window: cut more than once
    splits=st.lists(st.integers(1, 5 << 20), min_size=1, max_size=8),
    seed=st.integers(0, (1 << 63) - 1),
)
def test_chunks_do_not_depend_on_how_the_stream_is_written(
    size: int, splits: list[int], seed: int
) -> None:
    """Whatever sizes a driver writes in, the cuts are those of the whole stream (so a
    second backup deduplicates against the first however its tool buffers)."""
    data = random.Random(size).randbytes(size)
    whole: list[bytes] = []
    c = Chunker(whole.append, seed=seed)
    c.write(memoryview(data))
    c.finish()
    pieces: list[bytes] = []
    c = Chunker(pieces.append, seed=seed)
    at, i = 0, 0
    while at < len(data):
        step = splits[i % len(splits)]
        c.write(memoryview(data)[at : at + step])
        at, i = at + step, i + 1
    c.finish()
    assert pieces == whole
    assert b"".join(whole) == data
    assert all(len(w) <= 4 << 20 for w in whole)
