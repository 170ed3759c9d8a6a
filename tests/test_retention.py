"""Retention: property-tested against an independent reading of the policy, and pruning
through the engine (artifact then record, surviving a crash in between)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import attrs
import pytest
from cozybackup_sqlite import SQLiteDriver
from hypothesis import given, settings
from hypothesis import strategies as st

from cozybackup_core import Backup
from cozybackup_core._api.types import ArtifactRecord, Retention
from cozybackup_core._api.units import parse_duration
from cozybackup_core._policy.retention import Candidate, decide
from cozybackup_core.testing import LocalPlatform

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
NS = "tenant-a"

counts = st.none() | st.integers(min_value=1, max_value=6)
policies = st.builds(
    Retention,
    keep_last=counts,
    keep_hourly=counts,
    keep_daily=counts,
    keep_weekly=counts,
    keep_monthly=counts,
    keep_yearly=counts,
    max_age=st.none() | st.sampled_from(["6h", "3d", "2w", "90d"]),
    min_count=st.integers(min_value=1, max_value=4),
)
candidates = st.lists(
    st.builds(
        Candidate,
        name=st.uuids().map(str),
        taken_at=st.integers(min_value=0, max_value=400 * 86400).map(
            lambda s: NOW - dt.timedelta(seconds=s)
        ),
        pinned=st.sampled_from([False, False, False, True]),
    ),
    max_size=40,
    unique_by=lambda c: c.name,
)


def oracle(backups: list[Candidate], p: Retention, now: dt.datetime) -> set[str]:
    """The policy, read literally and computed differently (by grouping, not scanning)."""
    newest_first = sorted(backups, key=lambda b: (b.taken_at, b.name), reverse=True)
    cutoff = now - parse_duration(p.max_age) if p.max_age else None
    young = [b for b in newest_first if cutoff is None or b.taken_at >= cutoff]
    rules = {
        "keep_hourly": "%Y%m%d%H",
        "keep_daily": "%Y%m%d",
        "keep_monthly": "%Y%m",
        "keep_yearly": "%Y",
    }
    keep: set[str] = set()
    any_count = any(getattr(p, r) is not None for r in ("keep_last", "keep_weekly", *rules))
    if not any_count:
        keep |= {b.name for b in young}
    if p.keep_last:
        keep |= {b.name for b in young[: p.keep_last]}
    buckets: dict[str, dict[str, list[Candidate]]] = {}
    for rule, fmt in [*rules.items(), ("keep_weekly", None)]:
        groups: dict[str, list[Candidate]] = {}
        for b in young:
            t = b.taken_at.astimezone(UTC)
            year, week, _ = t.isocalendar()
            key = f"{year}-{week:02d}" if fmt is None else t.strftime(fmt)
            groups.setdefault(key, []).append(b)
        buckets[rule] = groups
        n = getattr(p, rule)
        if n:
            for key in sorted(
                groups, key=lambda k: max(x.taken_at for x in groups[k]), reverse=True
            )[:n]:
                keep.add(max(groups[key], key=lambda x: (x.taken_at, x.name)).name)
    keep |= {b.name for b in newest_first[: max(1, p.min_count)]}
    keep |= {b.name for b in backups if b.pinned}
    return keep


@settings(max_examples=400, deadline=None)
@given(backups=candidates, policy=policies)
def test_retention_keeps_exactly_what_the_policy_says(
    backups: list[Candidate], policy: Retention
) -> None:
    keep, delete = decide(backups, policy, NOW)
    assert set(keep) | set(delete) == {b.name for b in backups}
    assert not set(keep) & set(delete)
    assert set(keep) == oracle(backups, policy, NOW)
    if backups:
        newest = max(backups, key=lambda b: (b.taken_at, b.name))
        assert newest.name in keep
        assert len(keep) >= min(policy.min_count, len(backups))
    assert all(b.name in keep for b in backups if b.pinned)
    for name, why in delete.items():
        assert why, name


def test_reasons_are_readable() -> None:
    backups = [Candidate(f"b{i}", NOW - dt.timedelta(days=i)) for i in range(10)]
    keep, delete = decide(backups, Retention(keep_daily=3, max_age="7d"), NOW)
    assert keep["b0"] == ["keepDaily=3 (2026-11-24)", "newest", "minCount=1"]
    assert delete["b5"] == "not selected by keepDaily=3"
    assert delete["b9"] == "older than maxAge=7d"


def _platform(tmp_path: Path, now: list[dt.datetime]) -> tuple[LocalPlatform, Path]:
    """Four hourly backups of a real SQLite database through a class that keeps two."""
    plat = LocalPlatform(tmp_path / "home", drivers=(SQLiteDriver,), clock=lambda: now[0])
    plat.apply("""
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {name: sqlite}
spec:
  retention: {keepLast: 2}
  strategies:
  - application: {apiGroup: apps.example.com, kind: SQLiteDatabase}
    strategyRef: {kind: SQLite, name: sqlite}
""")
    db = tmp_path / "app.sqlite"
    ref = plat.declare_app(
        NS, "app1", "SQLiteDatabase", {"path": str(db)}, api_group="apps.example.com"
    )
    for i in range(4):
        con = sqlite3.connect(db)
        con.execute("CREATE TABLE IF NOT EXISTS t(v)")
        con.execute("INSERT INTO t VALUES (?)", (f"generation {i}",))
        con.commit()
        con.close()
        now[0] += dt.timedelta(hours=1)
        assert plat.backup(NS, ref, f"b{i}", "sqlite").status.phase == "Succeeded"
    return plat, db


def _manifests(plat: LocalPlatform) -> int:
    return len([p for p in plat.stored_files() if p.name == "manifest.json"])


def test_prune_removes_artifact_and_record(tmp_path: Path) -> None:
    now = [NOW]
    plat, db = _platform(tmp_path, now)
    dry = plat.engine.prune(dry_run=True)
    assert [(a.backup, a.delete) for a in dry] == [
        ("b0", True),
        ("b1", True),
        ("b2", False),
        ("b3", False),
    ]
    assert _manifests(plat) == 4
    plat.engine.prune()
    assert sorted(b.metadata.name for b in plat.backups(NS)) == ["b2", "b3"]
    assert _manifests(plat) == 2
    assert len(plat.host.objects.list(ArtifactRecord)) == 2
    assert plat.restore(NS, "b2", "r1").status.phase == "Succeeded"  # what is kept restores
    con = sqlite3.connect(db)
    assert con.execute("SELECT v FROM t ORDER BY rowid").fetchall() == [
        (f"generation {i}",) for i in range(3)
    ]
    con.close()


def test_pinned_backup_survives(tmp_path: Path) -> None:
    now = [NOW]
    plat, _ = _platform(tmp_path, now)
    b0 = plat.host.objects.get(Backup, NS, "b0")
    assert b0 is not None
    plat.host.objects.set_metadata(
        attrs.evolve(
            b0,
            metadata=attrs.evolve(b0.metadata, annotations={"backups.cozystack.io/pinned": "true"}),
        )
    )
    plat.engine.prune()
    assert sorted(b.metadata.name for b in plat.backups(NS)) == ["b0", "b2", "b3"]


def test_prune_survives_a_crash_between_artifact_and_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [NOW]
    plat, _ = _platform(tmp_path, now)
    real = plat.host.objects.delete

    def crash_on_record(cls, namespace, name):  # type: ignore[no-untyped-def]
        if cls is ArtifactRecord:
            raise KeyboardInterrupt("killed")
        return real(cls, namespace, name)

    monkeypatch.setattr(plat.host.objects, "delete", crash_on_record)
    with pytest.raises(KeyboardInterrupt):
        plat.engine.prune()
    monkeypatch.setattr(plat.host.objects, "delete", real)
    b0 = plat.host.objects.get(Backup, NS, "b0")
    assert b0 is not None and b0.status.phase == "Deleting"
    assert (
        plat.restore(NS, "b0", "r-deleting").status.phase == "Failed"
    )  # never from a half-deleted one
    notes = plat.engine.recover()
    assert any("deletion finished" in n for n in notes)
    plat.engine.prune()
    assert sorted(b.metadata.name for b in plat.backups(NS)) == ["b2", "b3"]
    assert _manifests(plat) == 2 and len(plat.host.objects.list(ArtifactRecord)) == 2
