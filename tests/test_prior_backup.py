"""``BackupContext.prior``: the application's previous Backup of the same class, open for
reading, for drivers that store only what changed on top of it (the KubeVirt driver's
changed blocks)."""

from __future__ import annotations

import datetime as dt
import itertools
from pathlib import Path
from typing import Any, ClassVar

from cozybackup_core import BackupContext
from cozybackup_core.testing import LocalPlatform

from support.drivers import FilesDriver
from support.manifests import directory_app, directory_class

NS = "tenant-a"


class _PriorDriver(FilesDriver):
    """Records what ``prior()`` gave each backup: (name, metadata, x.bin as stored)."""

    name = "prior"
    strategy_kind = "Prior"
    seen: ClassVar[list[Any]] = []

    def backup(self, ctx: BackupContext) -> None:
        prior = ctx.prior()
        if prior is None:
            self.seen.append(None)
        else:
            with prior.artifact.open("x.bin") as f:
                self.seen.append((prior.name, dict(prior.driver_metadata), f.read()))
        super().backup(ctx)
        ctx.metadata["generation"] = len(self.seen)


def _platform(tmp_path: Path) -> LocalPlatform:
    _PriorDriver.seen.clear()
    # A minute between reads of the clock: each Backup is newer than the one before.
    minutes = itertools.count()
    start = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    clock = lambda: start + dt.timedelta(minutes=next(minutes))  # noqa: E731
    plat = LocalPlatform(tmp_path / "home", drivers=(_PriorDriver,), clock=clock)
    plat.apply(directory_class("prior", "Prior"), directory_class("other", "Prior"))
    return plat


def _ok(job: Any) -> None:
    assert job.status.phase == "Succeeded", job.status.message


def test_each_backup_is_given_the_newest_ready_backup_of_its_class(tmp_path: Path) -> None:
    plat = _platform(tmp_path)
    ref = directory_app(plat, tmp_path / "app", b"day one")
    _ok(plat.backup(NS, ref, "b1", "prior"))
    (tmp_path / "app" / "x.bin").write_bytes(b"day two")
    _ok(plat.backup(NS, ref, "b2", "prior"))
    _ok(plat.backup(NS, ref, "o1", "other"))  # another class: starts afresh
    _ok(plat.backup(NS, ref, "b3", "prior"))
    assert _PriorDriver.seen == [
        None,
        ("b1", {"files": 1, "generation": 1}, b"day one"),
        None,
        ("b2", {"files": 1, "generation": 2}, b"day two"),
    ]


def test_a_prior_backup_whose_data_is_gone_is_not_offered(tmp_path: Path) -> None:
    """The driver then backs up everything: the new Backup does not depend on it."""
    plat = _platform(tmp_path)
    ref = directory_app(plat, tmp_path / "app", b"day one")
    _ok(plat.backup(NS, ref, "b1", "prior"))
    manifests = list((tmp_path / "home").rglob("manifest.json"))
    assert len(manifests) == 1
    manifests[0].write_bytes(manifests[0].read_bytes() + b" ")
    _ok(plat.backup(NS, ref, "b2", "prior"))
    assert _PriorDriver.seen == [None, None]
    (tmp_path / "app" / "x.bin").write_bytes(b"changed")
    _ok(plat.restore(NS, "b2", "r2"))
    assert (tmp_path / "app" / "x.bin").read_bytes() == b"day one"
