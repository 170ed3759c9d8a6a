"""Garbage collection of a tenant's repository (``_storage/repo/gc.py``): dead packs
deleted, mostly dead ones rewritten behind forwards, and a backup running meanwhile never
losing a chunk it references."""

from __future__ import annotations

import random

from cozybackup_core import ArtifactKey, ArtifactStore

from support.stores import manifest_of, read_streams, write_backup

NS = "tenant-a"


def _key(uid: str) -> ArtifactKey:
    return ArtifactKey(namespace=NS, kind="Directory", application="app1", uid=uid)


def _under(store: ArtifactStore, folder: str) -> dict[str, int]:
    base = f"{store.root}/_repos/{NS}/plain/{folder}"
    try:
        found = store.fs.find(base, detail=True)
    except FileNotFoundError:
        return {}
    return {p.rsplit("/", 1)[-1]: int(i["size"]) for p, i in found.items() if i["type"] == "file"}


def _collect(store: ArtifactStore):  # type: ignore[no-untyped-def]
    store.fs.invalidate_cache()
    return store.collect_garbage()[f"{NS}/plain"]


def test_dead_packs_go_mostly_dead_ones_are_rewritten_and_every_backup_still_reads(
    dedup_store: ArtifactStore,
) -> None:
    store = dedup_store
    rng = random.Random(11)
    a = {"dump": rng.randbytes(16 << 20)}
    # b shares a's head: every chunk of a's first 6 MiB but the last one cut there
    # (chunks are at most 4 MiB), so at least 2 MiB of a stays live, at most 6.
    b = {"dump": a["dump"][: 6 << 20] + rng.randbytes(4 << 20)}
    c = {"dump": rng.randbytes(3 << 20)}  # shares nothing
    for uid, data in (("u-a", a), ("u-b", b), ("u-c", c)):
        write_backup(store, _key(uid), data)
    before = _under(store, "packs")
    assert len(before) == 3  # one pack per backup, each under the pack size
    nothing = _collect(store)
    assert (nothing.deleted_packs, nothing.rewritten_packs) == (0, 0)

    store.delete(_key("u-a"))  # its pack: mostly dead (b references only its head)
    store.delete(_key("u-c"))  # its pack: all dead
    done = _collect(store)
    assert (done.deleted_packs, done.rewritten_packs, done.waiting) == (1, 1, 0)
    after = _under(store, "packs")
    assert len(after) == 2
    assert sum(after.values()) < sum(before.values()) - (13 << 20)
    assert done.freed_bytes == sum(before.values()) - sum(after.values())
    assert set(_under(store, "index")) == set(after)  # an index for each pack, no other
    assert len(_under(store, "moved")) == 1  # the rewritten pack's forward
    # b's manifest still names the old pack: read through the forward, fully checked.
    assert read_streams(store, _key("u-b")) == b
    store.reader(_key("u-b")).verify()

    # Nothing more to do: the forward stays while b needs it; no lock, no condemnation.
    again = _collect(store)
    assert (again.deleted_packs, again.rewritten_packs) == (0, 0)
    assert len(_under(store, "moved")) == 1
    assert not _under(store, "gc") and "gc.lock" not in _under(store, "")

    # A new backup of b's data deduplicates against the rewritten pack's chunks too.
    assert write_backup(store, _key("u-d"), b) == 0
    # b gone: the rewritten pack and the forward go too.
    store.delete(_key("u-b"))
    store.delete(_key("u-d"))
    _collect(store)
    assert not _under(store, "packs") and not _under(store, "index")
    assert not _under(store, "moved")


def test_a_backup_running_during_a_collection_keeps_every_chunk_it_references(
    dedup_store: ArtifactStore,
) -> None:
    """The backup found a's chunks in the index before a was deleted and the collection
    ran: the collection waits for it, and then finds those chunks live again."""
    store = dedup_store
    data = {"dump": random.Random(12).randbytes(5 << 20)}
    write_backup(store, _key("u-a"), data)
    running = store.writer(_key("u-b"))
    with running.open("dump") as out:
        out.write(data["dump"])  # every chunk already stored: referenced, not stored again
    assert running.added_bytes == 0

    store.delete(_key("u-a"))
    first = _collect(store)
    assert first.waiting == 1 and first.deleted_packs == 0
    assert len(_under(store, "gc")) == 1  # the condemnation, pending
    # A backup that starts now sees the condemnation: it stores the chunks again
    # instead of referencing the condemned pack.
    late = write_backup(store, _key("u-c"), data)
    assert late > 4 << 20, late
    still = _collect(store)
    assert still.waiting == 1 and still.deleted_packs == 0

    running.commit(manifest_of(running, _key("u-b")))
    settled = _collect(store)
    assert settled.waiting == 0
    assert not _under(store, "gc") and not _under(store, "writers")
    assert read_streams(store, _key("u-b")) == data  # a's pack was kept: b references it
    assert read_streams(store, _key("u-c")) == data


def test_a_crashed_writer_is_waited_for_until_its_artifact_is_removed(
    dedup_store: ArtifactStore,
) -> None:
    """A writer killed before its commit leaves its marker; removing the partial
    artifact (what recovery does) removes the marker, and the collection goes on."""
    store = dedup_store
    data = {"dump": random.Random(13).randbytes(3 << 20)}
    write_backup(store, _key("u-a"), data)
    crashed = store.writer(_key("u-b"))
    with crashed.open("dump") as out:
        out.write(random.Random(14).randbytes(2 << 20))
    crashed._sink.flush()  # type: ignore[union-attr]  # its pack stored, no manifest
    store.delete(_key("u-a"))
    assert _collect(store).waiting == 1
    store.delete(_key("u-b"))  # recovery: the partial artifact and its marker
    done = _collect(store)
    assert done.waiting == 0 and done.deleted_packs == 2
    assert not _under(store, "packs") and not _under(store, "index")


def test_a_pack_rewritten_after_a_wait_stays_reachable(dedup_store: ArtifactStore) -> None:
    """The condemnation waits for a writer; the run that settles it rewrites a's pack
    behind a forward and then marks afresh: the rewritten pack is live (b's chunks are in
    it), so nothing of b is lost in that run or the next."""
    store = dedup_store
    rng = random.Random(15)
    a = {"dump": rng.randbytes(16 << 20)}
    b = {"dump": a["dump"][: 6 << 20] + rng.randbytes(4 << 20)}
    write_backup(store, _key("u-a"), a)
    write_backup(store, _key("u-b"), b)
    running = store.writer(_key("u-w"))
    with running.open("dump") as out:
        out.write(rng.randbytes(2 << 20))
    store.delete(_key("u-a"))
    assert _collect(store).waiting == 1
    running.commit(manifest_of(running, _key("u-w")))
    settled = _collect(store)
    assert (settled.rewritten_packs, settled.deleted_packs, settled.waiting) == (1, 0, 0)
    assert len(_under(store, "moved")) == 1
    again = _collect(store)
    assert (again.rewritten_packs, again.deleted_packs) == (0, 0)
    assert read_streams(store, _key("u-b")) == b
    store.reader(_key("u-b")).verify()
