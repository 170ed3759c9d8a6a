"""The deduplicating format through the engine: backups and restores on a Local location
(the built-in one too) and on SeaweedFS, all with the setting left at its default; a second
backup adding little, a damaged pack refused before the target is touched, both formats
restoring after the setting changes, encryption and rekey."""

from __future__ import annotations

import base64
import os
import random
import re
import sqlite3
import threading
from pathlib import Path

import pytest
import s3fs
from cozybackup_sqlite import SQLiteDriver

from cozybackup_core import Backup, BackupContext
from cozybackup_core.testing import LocalPlatform, S3ServerInfo, local_location_yaml
from cozybackup_core.testing import key_secret_yaml as _key_secret

from support.drivers import FilesDriver, RaisingDriver
from support.manifests import FILES_CLASS, directory_app, directory_class

NS = "tenant-a"


def _local_location(dedup: bool | None = None, keys: str = "") -> str:
    """The built-in location overridden (``dedup`` None: the setting at its default)."""
    return local_location_yaml(deduplication=dedup) + keys


def _s3_location(s3: S3ServerInfo, prefix: str) -> str:
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: s3-creds}}
stringData: {{accessKeyId: "{s3.access_key}", secretAccessKey: "{s3.secret_key}"}}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {{name: cozy-backups}}
spec:
  provider: S3
  endpoint: "{s3.endpoint_url}"
  bucket: cozy-dedup
  prefix: {prefix}
  credentialsSecretRef: {{name: s3-creds}}
"""


SQLITE_CLASS = """
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {name: sqlite}
spec:
  strategies:
  - application: {apiGroup: apps.example.com, kind: SQLiteDatabase}
    strategyRef: {kind: SQLite, name: sqlite}
"""


def _platform(tmp_path: Path, *docs: str) -> LocalPlatform:
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver, SQLiteDriver))
    plat.apply(*docs, FILES_CLASS, SQLITE_CLASS)
    return plat


def _repo_files(plat: LocalPlatform) -> list[Path]:
    return [p for p in plat.stored_files() if "_repos" in p.parts]


def _edit(data: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(3):
        at = rng.randrange(len(out))
        out[at:at] = rng.randbytes(50)  # insertions: every later byte shifts
    return bytes(out)


def _ok(job) -> None:  # type: ignore[no-untyped-def]
    assert job.status.phase == "Succeeded", job.status.message


def test_local_round_trip_and_a_second_backup_adds_little(tmp_path: Path) -> None:
    """On the built-in location (no StorageLocation applied): it deduplicates."""
    plat = _platform(tmp_path)
    original = random.Random(1).randbytes(48 << 20)
    ref = directory_app(plat, tmp_path / "app", original)
    _ok(plat.backup(NS, ref, "b1", "files"))
    first = sum(p.stat().st_size for p in _repo_files(plat))
    assert first > 47 << 20
    # Only the manifest is stored under the Backup's own folder.
    assert not [p for p in plat.stored_files() if p.suffix == ".zst"]

    edited = _edit(original, 2)
    (tmp_path / "app" / "x.bin").write_bytes(edited)
    second = plat.backup(NS, ref, "b2", "files")
    _ok(second)
    added = sum(p.stat().st_size for p in _repo_files(plat)) - first
    # Three 50-byte insertions (every later byte shifts) touch one or two chunks of
    # ~1.25 MiB each: measured 6-18% of this 48 MiB stream over random repository keys
    # (which seed the chunker); storing it again would add all of it.
    assert added < first * 0.3, (added, first)
    # The job's message says what was new, not only what the backup references.
    said = re.search(r"stored, ([0-9.]+) (KiB|MiB) of it new\)", second.status.message or "")
    assert said, second.status.message
    new = float(said.group(1)) * (1 << 10 if said.group(2) == "KiB" else 1 << 20)
    assert abs(new - added) <= max(0.06 * added, 64 << 10), (new, added)

    (tmp_path / "app" / "x.bin").write_bytes(b"current")
    _ok(plat.restore(NS, "b1", "r1"))
    assert (tmp_path / "app" / "x.bin").read_bytes() == original
    _ok(plat.restore(NS, "b2", "r2"))
    assert (tmp_path / "app" / "x.bin").read_bytes() == edited


def test_sqlite_driver_round_trip(tmp_path: Path) -> None:
    plat = _platform(tmp_path, _local_location())
    db = tmp_path / "app.sqlite"
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    con.executemany("INSERT INTO t(v) VALUES (?)", [(f"row {i} " * 20,) for i in range(20_000)])
    con.commit()
    ref = plat.declare_app(
        NS, "db", "SQLiteDatabase", {"path": str(db)}, api_group="apps.example.com"
    )
    _ok(plat.backup(NS, ref, "b1", "sqlite"))
    con.execute("DELETE FROM t WHERE id > 10")
    con.commit()
    con.close()
    _ok(plat.restore(NS, "b1", "r1"))
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM t").fetchone() == (20_000,)
    con.close()
    assert _repo_files(plat)


@pytest.mark.s3
def test_s3_round_trip_and_a_second_backup_adds_little(tmp_path: Path, s3: S3ServerInfo) -> None:
    plat = _platform(tmp_path, _s3_location(s3, f"e/{tmp_path.name}"))
    original = random.Random(3).randbytes(48 << 20)
    ref = directory_app(plat, tmp_path / "app", original)
    _ok(plat.backup(NS, ref, "b1", "files"))
    fs = s3fs.S3FileSystem(
        key=s3.access_key, secret=s3.secret_key, client_kwargs={"endpoint_url": s3.endpoint_url}
    )
    repo = f"cozy-dedup/e/{tmp_path.name}/_repos/{NS}"
    size = lambda: sum(fs.du(repo, total=False).values())  # noqa: E731
    fs.invalidate_cache()
    first = size()
    assert first > 47 << 20
    (tmp_path / "app" / "x.bin").write_bytes(_edit(original, 4))
    _ok(plat.backup(NS, ref, "b2", "files"))
    fs.invalidate_cache()
    assert size() - first < first * 0.3  # as on the Local location
    (tmp_path / "app" / "x.bin").write_bytes(b"current")
    _ok(plat.restore(NS, "b1", "r1"))
    assert (tmp_path / "app" / "x.bin").read_bytes() == original


def test_a_damaged_pack_is_refused_before_the_target_is_touched(tmp_path: Path) -> None:
    plat = _platform(tmp_path, _local_location())
    ref = directory_app(plat, tmp_path / "app", os.urandom(3 << 20))
    _ok(plat.backup(NS, ref, "b1", "files"))
    [pack] = [p for p in _repo_files(plat) if "packs" in p.parts]
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    pack.write_bytes(bytes(raw))
    (tmp_path / "app" / "x.bin").write_bytes(b"current")
    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "ArtifactCorrupt"
    assert "b1" in (job.status.message or ""), job.status.message
    assert (tmp_path / "app" / "x.bin").read_bytes() == b"current"
    # The Backup's own verification (what `cozybackup verify` and the checks record) fails.
    backup = plat.host.objects.get(Backup, NS, "b1")
    assert backup is not None
    v = plat.engine.verify(backup).status.last_verified
    assert v is not None and v.result == "Failed", v


def test_both_formats_restore_after_the_setting_changes(tmp_path: Path) -> None:
    plat = _platform(tmp_path, _local_location(dedup=False))
    data = random.Random(5).randbytes(2 << 20)
    ref = directory_app(plat, tmp_path / "app", data)
    _ok(plat.backup(NS, ref, "old", "files"))
    assert [p for p in plat.stored_files() if p.suffix == ".zst"]
    assert not _repo_files(plat)
    plat.engine.invalidate_stores()
    plat.apply(_local_location())  # the setting left out: the default, deduplicating
    _ok(plat.backup(NS, ref, "new", "files"))
    assert _repo_files(plat)
    for name in ("old", "new"):
        (tmp_path / "app" / "x.bin").write_bytes(b"current")
        _ok(plat.restore(NS, name, f"r-{name}"))
        assert (tmp_path / "app" / "x.bin").read_bytes() == data
    plat.engine.invalidate_stores()
    plat.apply(_local_location(dedup=False))
    (tmp_path / "app" / "x.bin").write_bytes(b"current")
    _ok(plat.restore(NS, "new", "r-again"))
    assert (tmp_path / "app" / "x.bin").read_bytes() == data


def test_encrypted_deduplicated_backups_hold_no_plaintext_and_rekey(tmp_path: Path) -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    keys = "  encryption: {keys: [{id: k1, secretRef: {name: key-one}}], perTenantKeys: true}\n"
    plat = _platform(tmp_path, _key_secret("key-one", k1), _local_location(keys=keys))
    text = b"".join(b"row %d: a tenant secret\n" % i for i in range(100_000))
    ref = directory_app(plat, tmp_path / "app", text)
    _ok(plat.backup(NS, ref, "b1", "files"))
    stored = b"".join(p.read_bytes() for p in plat.stored_files())
    assert b"tenant secret" not in stored
    assert k1 not in stored and base64.b64encode(k1) not in stored
    assert all("sealed" in p.parts for p in _repo_files(plat))

    # Rotation re-wraps the repository key; the chunks are untouched.
    chunks = {p: p.read_bytes() for p in _repo_files(plat) if "packs" in p.parts}
    plat.engine.invalidate_stores()
    keys2 = (
        "  encryption: {keys: [{id: k2, secretRef: {name: key-two}}, "
        "{id: k1, secretRef: {name: key-one}}], perTenantKeys: true}\n"
    )
    plat.apply(_key_secret("key-two", k2), _local_location(keys=keys2))
    assert plat.engine.rekey()[0] == 1
    plat.engine.invalidate_stores()
    keys3 = "  encryption: {keys: [{id: k2, secretRef: {name: key-two}}], perTenantKeys: true}\n"
    plat.apply(_local_location(keys=keys3))
    (tmp_path / "app" / "x.bin").write_bytes(b"current")
    _ok(plat.restore(NS, "b1", "r1"))
    assert (tmp_path / "app" / "x.bin").read_bytes() == text
    assert {p: p.read_bytes() for p in chunks} == chunks


def test_a_failed_backup_leaves_no_partial_pack(tmp_path: Path) -> None:
    plat = LocalPlatform(tmp_path / "home", drivers=(RaisingDriver,))
    plat.apply(_local_location(), directory_class("boom", "Raising"))
    ref = directory_app(plat, tmp_path / "app", b"data")
    job = plat.backup(NS, ref, "b1", "boom")
    assert job.status.phase == "Failed"
    # The repository's key stays (made on first use); no pack, no index, no manifest.
    assert [p.name for p in plat.stored_files()] == ["config.json"]


def test_prune_collects_what_only_the_pruned_backup_held(tmp_path: Path) -> None:
    """Retention deletes b1; the same pass collects its chunks.  b1's 8 MiB are one pack;
    b2 is an edited copy of its first 3 MiB, so whatever the chunker's seed, at most 3 MiB
    of that pack stay live: it is more than half dead and rewritten (a 5 MiB copy left it
    under half dead for some seeds, and nothing was collected).  What stays is at most
    twice what b2 references (the rewrite threshold), and b2 restores."""
    keep_one = FILES_CLASS.replace("spec:\n", "spec:\n  retention: {keepLast: 1}\n", 1)
    assert keep_one != FILES_CLASS
    plat = _platform(tmp_path, _local_location())
    plat.apply(keep_one)
    original = random.Random(8).randbytes(8 << 20)
    ref = directory_app(plat, tmp_path / "app", original)
    _ok(plat.backup(NS, ref, "b1", "files"))
    (tmp_path / "app" / "x.bin").write_bytes(_edit(original, 9)[: 3 << 20])
    _ok(plat.backup(NS, ref, "b2", "files"))
    packs = lambda: [p for p in _repo_files(plat) if "packs" in p.parts]  # noqa: E731
    before = sum(p.stat().st_size for p in packs())
    plat.engine.prune()
    assert [b.metadata.name for b in plat.backups(NS)] == ["b2"]
    assert len([p for p in plat.stored_files() if p.name == "manifest.json"]) == 1
    after = sum(p.stat().st_size for p in packs())
    backup = plat.host.objects.get(Backup, NS, "b2")
    assert backup is not None
    manifest = plat.engine.open_backup(backup).manifest
    live = sum({c.id: c.length for s in manifest.streams for c in s.chunks}.values())
    assert after < before and after <= 2 * live, (before, after, live)
    _ok(plat.restore(NS, "b2", "r1"))
    assert (tmp_path / "app" / "x.bin").read_bytes() == _edit(original, 9)[: 3 << 20]


def test_one_damaged_pack_fails_every_backup_that_references_it(tmp_path: Path) -> None:
    """b2 shares b1's head, so it references b1's pack; one byte of that pack that only
    b1 uses is damaged.  Both fail verification (the pack's sha256 differs from its
    index's), a restore of b2 is refused before the target is touched and names b2, and
    b3, which references nothing in that pack, still verifies."""
    plat = _platform(tmp_path, _local_location())
    first = random.Random(21).randbytes(12 << 20)
    ref = directory_app(plat, tmp_path / "app", first)
    _ok(plat.backup(NS, ref, "b1", "files"))
    [pack] = [p for p in _repo_files(plat) if "packs" in p.parts]
    (tmp_path / "app" / "x.bin").write_bytes(
        first[: 6 << 20] + random.Random(22).randbytes(1 << 20)
    )
    _ok(plat.backup(NS, ref, "b2", "files"))
    (tmp_path / "app" / "x.bin").write_bytes(random.Random(23).randbytes(1 << 20))
    _ok(plat.backup(NS, ref, "b3", "files"))

    def refs(name: str) -> list[tuple[str, int, int]]:
        backup = plat.host.objects.get(Backup, NS, name)
        assert backup is not None
        m = plat.engine.open_backup(backup).manifest
        return [(c.pack, c.offset, c.length) for s in m.streams for c in s.chunks]

    in_pack = [r for r in refs("b2") if r[0] == pack.name]
    assert in_pack  # b2 shares chunks of b1's pack
    assert not any(r[0] == pack.name for r in refs("b3"))
    damaged_at = pack.stat().st_size - 1  # in b1's last chunk, beyond what b2 shares
    assert all(offset + length <= damaged_at for _, offset, length in in_pack)
    raw = bytearray(pack.read_bytes())
    raw[damaged_at] ^= 0x01
    pack.write_bytes(bytes(raw))

    results = {}
    for name in ("b1", "b2", "b3"):
        backup = plat.host.objects.get(Backup, NS, name)
        assert backup is not None
        checked = plat.engine.verify(backup).status.last_verified
        assert checked is not None
        results[name] = checked.result
    assert results == {"b1": "Failed", "b2": "Failed", "b3": "Passed"}
    (tmp_path / "app" / "x.bin").write_bytes(b"current")
    job = plat.restore(NS, "b2", "r2")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "ArtifactCorrupt"
    assert "b2" in (job.status.message or ""), job.status.message
    assert (tmp_path / "app" / "x.bin").read_bytes() == b"current"
    _ok(plat.restore(NS, "b3", "r3"))


class _GatedDriver(FilesDriver):
    """Writes its streams, then waits at a gate before the engine commits them."""

    name = "gated"
    strategy_kind = "Gated"
    reached = threading.Event()
    go = threading.Event()

    def backup(self, ctx: BackupContext) -> None:
        super().backup(ctx)
        self.reached.set()
        assert self.go.wait(60)


def test_prune_racing_a_backup_keeps_every_chunk_it_references(tmp_path: Path) -> None:
    """b2 is written (referencing b0's chunks, found in the index when it started) and
    not yet committed when retention deletes b0 and collects: the collection waits for
    it, and once b2 is committed b0's pack is live again.  b2 restores exactly."""
    keep_one = directory_class("gated", "Gated").replace(
        "spec:\n", "spec:\n  retention: {keepLast: 1}\n", 1
    )
    plat = LocalPlatform(tmp_path / "home", drivers=(_GatedDriver,))
    plat.apply(_local_location(), keep_one)
    day0 = random.Random(61).randbytes(6 << 20)
    ref = directory_app(plat, tmp_path / "app", day0)
    _GatedDriver.go.set()
    _ok(plat.backup(NS, ref, "b0", "gated"))
    (tmp_path / "app" / "x.bin").write_bytes(random.Random(62).randbytes(1 << 20))
    _ok(plat.backup(NS, ref, "b1", "gated"))

    _GatedDriver.reached.clear()
    _GatedDriver.go.clear()
    (tmp_path / "app" / "x.bin").write_bytes(day0)  # b2 holds b0's data again
    done: list[object] = []
    running = threading.Thread(target=lambda: done.append(plat.backup(NS, ref, "b2", "gated")))
    running.start()
    try:
        assert _GatedDriver.reached.wait(60)
        plat.engine.prune(collect=True)  # deletes b0; b1 is the newest Backup
        assert [b.metadata.name for b in plat.backups(NS)] == ["b1"]
        pending = [p for p in _repo_files(plat) if "gc" in p.parts]
        assert pending, "the collection condemned b0's pack and waits for b2"
    finally:
        _GatedDriver.go.set()
        running.join(60)
    _ok(done[0])
    plat.engine.prune(collect=True)  # deletes b1; b0's pack is b2's now
    assert [b.metadata.name for b in plat.backups(NS)] == ["b2"]
    assert not [p for p in _repo_files(plat) if "gc" in p.parts or "writers" in p.parts]
    backup = plat.host.objects.get(Backup, NS, "b2")
    assert backup is not None
    plat.engine.verify_backup(NS, "b2")
    (tmp_path / "app" / "x.bin").write_bytes(b"current")
    _ok(plat.restore(NS, "b2", "r2"))
    assert (tmp_path / "app" / "x.bin").read_bytes() == day0
