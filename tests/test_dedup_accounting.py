"""Storage accounting: what each Backup stored when made and alone holds now, `get
backups` in human units, `cozybackup usage` per tenant and application, and what `prune
--dry-run` says retention would free."""

from __future__ import annotations

import json
import random
from pathlib import Path

from cozybackup_core import Backup
from cozybackup_core._api.types import ANNOTATION_STORED_BYTES, ANNOTATION_UNIQUE_BYTES
from cozybackup_core._api.units import human_bytes
from cozybackup_core.testing import LocalPlatform

from support.cli import cli
from support.drivers import FilesDriver
from support.manifests import FILES_CLASS, directory_app

NS = "tenant-a"
LOCATION = """
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {name: cozy-backups}
spec: {bucket: cozy-backups, deduplication: true}
"""


def _notes(plat: LocalPlatform, name: str) -> dict[str, int]:
    b = plat.host.objects.get(Backup, NS, name)
    assert b is not None
    keys = {"stored": ANNOTATION_STORED_BYTES, "alone": ANNOTATION_UNIQUE_BYTES}
    return {
        k: int(b.metadata.annotations[v]) for k, v in keys.items() if v in b.metadata.annotations
    }


def _chunks(plat: LocalPlatform, name: str) -> dict[str, int]:
    b = plat.host.objects.get(Backup, NS, name)
    assert b is not None
    m = plat.engine.open_backup(b).manifest
    return {c.id: c.length for s in m.streams for c in s.chunks}


def test_each_backup_says_what_it_stored_and_alone_holds(tmp_path: Path) -> None:
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,))
    plat.apply(LOCATION, FILES_CLASS)
    first = random.Random(31).randbytes(8 << 20)
    ref = directory_app(plat, tmp_path / "app", first)
    for name, data in (
        ("b1", first),
        ("b2", first[: 6 << 20] + random.Random(32).randbytes(2 << 20)),  # shares b1's head
        ("b3", random.Random(33).randbytes(1 << 20)),  # shares nothing
    ):
        (tmp_path / "app" / "x.bin").write_bytes(data)
        assert plat.backup(NS, ref, name, "files").status.phase == "Succeeded"
    # Made: what each stored; what each alone holds is not measured before a prune pass.
    chunks = {n: _chunks(plat, n) for n in ("b1", "b2", "b3")}
    shared = {c: n for c, n in chunks["b1"].items() if c in chunks["b2"]}
    assert shared
    assert _notes(plat, "b1") == {"stored": sum(chunks["b1"].values())}
    assert _notes(plat, "b2") == {"stored": sum(chunks["b2"].values()) - sum(shared.values())}

    plat.engine.prune()  # no retention policy: nothing deleted, the accounting measured
    alone = {n: _notes(plat, n)["alone"] for n in chunks}
    assert alone["b1"] == sum(chunks["b1"].values()) - sum(shared.values())
    assert alone["b2"] == _notes(plat, "b2")["stored"]  # its new chunks are its alone
    assert alone["b3"] == _notes(plat, "b3")["stored"] == sum(chunks["b3"].values())

    home = tmp_path / "home"
    table = cli(home, "get", "backups", "-n", NS).stdout
    b1_row = next(line for line in table.splitlines() if line.startswith("b1 "))
    assert (
        human_bytes(alone["b1"]) in b1_row and human_bytes(_notes(plat, "b1")["stored"]) in b1_row
    )

    # usage: per application and per tenant, each chunk counted once.
    out = cli(home, "usage", "-n", NS, "-o", "json")
    assert out.returncode == 0, out.stderr
    rows = {r["application"]: r for r in json.loads(out.stdout)}
    distinct = sum({c: n for m in chunks.values() for c, n in m.items()}.values())
    logical = (8 << 20) * 2 + (1 << 20)
    assert rows["Directory/app1"]["storedBytes"] == distinct
    assert rows["(all)"]["logicalBytes"] == logical
    assert rows["(all)"]["ratio"] == round(logical / distinct, 3)
    text = cli(home, "usage").stdout
    assert (
        "RATIO" in text and f"{logical / distinct:.2f}x" in text and human_bytes(distinct) in text
    )

    # prune --dry-run: what keepLast 1 would free, each and together (b1's and b2's
    # shared chunks are freed only by deleting both).
    plat.apply(FILES_CLASS.replace("spec:\n", "spec:\n  retention: {keepLast: 1}\n", 1))
    dry = cli(home, "prune", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "FREES" in dry.stdout
    together = alone["b1"] + alone["b2"] + sum(shared.values())
    assert f"retention would free {human_bytes(together)} of storage in all" in dry.stdout
    frees = plat.engine.retention_frees(plat.engine.prune(dry_run=True))
    assert frees.alone == {(NS, "b1"): alone["b1"], (NS, "b2"): alone["b2"]}
    assert frees.total == together
    assert [b.metadata.name for b in plat.backups(NS)] == ["b1", "b2", "b3"]  # dry run


def test_a_backup_past_the_tenants_quota_fails_before_writing(tmp_path: Path) -> None:
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,))
    quota = lambda size: FILES_CLASS.replace(  # noqa: E731
        "spec:\n", f"spec:\n  quota: {{storagePerTenant: {size}}}\n", 1
    )
    plat.apply(LOCATION, quota("10Mi"))
    ref = directory_app(plat, tmp_path / "app", random.Random(41).randbytes(6 << 20))
    assert plat.backup(NS, ref, "b1", "files").status.phase == "Succeeded"
    stored = plat.stored_files()

    (tmp_path / "app" / "x.bin").write_bytes(random.Random(42).randbytes(6 << 20))
    job = plat.backup(NS, ref, "b2", "files")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "QuotaExceeded"
    message = job.status.message or ""
    assert "use 6.0 MiB of the 10.0 MiB BackupClass files allows" in message, message
    assert "the last backup of this application stored 6.0 MiB" in message, message
    assert plat.stored_files() == stored  # refused before anything was written
    assert [b.metadata.name for b in plat.backups(NS)] == ["b1"]

    plat.apply(quota("20Mi"))
    assert plat.backup(NS, ref, "b3", "files").status.phase == "Succeeded"

    bad = cli(tmp_path / "home", "apply", "-f", "-", stdin=quota("10 GB"))
    assert bad.returncode != 0
    assert "spec.quota.storagePerTenant" in bad.stderr and "500Mi" in bad.stderr, bad.stderr


def test_a_pass_collects_and_measures_when_due_not_every_time(tmp_path: Path) -> None:
    """b2 holds b1's very data, so b1 no longer holds anything alone; a pass that deleted
    nothing within the hour after the last collection does not re-read every manifest,
    a forced one (what `cozybackup prune` does) does."""
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,))
    plat.apply(LOCATION, FILES_CLASS)
    ref = directory_app(plat, tmp_path / "app", random.Random(51).randbytes(3 << 20))
    assert plat.backup(NS, ref, "b1", "files").status.phase == "Succeeded"
    plat.engine.prune()
    alone = _notes(plat, "b1")["alone"]
    assert alone == _notes(plat, "b1")["stored"] > 0
    assert plat.backup(NS, ref, "b2", "files").status.phase == "Succeeded"
    assert _notes(plat, "b2")["stored"] == 0  # all of it deduplicated
    plat.engine.prune()
    assert _notes(plat, "b1")["alone"] == alone  # not due yet
    plat.engine.prune(collect=True)
    assert _notes(plat, "b1")["alone"] == 0 == _notes(plat, "b2")["alone"]
