"""Artifacts and state written by earlier versions still restore, exactly.

``tests/data/format-v1/home`` is a home directory written by cozybackup at commit 0791b16
(``make.py`` there says how): two SQLite backups, one plain and one encrypted, in the
stream format.  ``tests/data/format-v2/home`` was written by the same ``make.py`` at
commit d4801eb: the same two, deduplicated, in format 2 (whole-stream sha256).
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sqlite3
from pathlib import Path

import pytest
from cozybackup_sqlite import SQLiteDriver

from cozybackup_core import ApplicationRef
from cozybackup_core.testing import LocalPlatform

DATA = Path(__file__).parent / "data" / "format-v1"
V2 = Path(__file__).parent / "data" / "format-v2"


def _fill() -> object:
    spec = importlib.util.spec_from_file_location("format_v1_make", DATA / "make.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fill


def _rows(db: Path) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as c, c:
        return c.execute("SELECT id, name, price, data FROM items ORDER BY id").fetchall()


def _old_home(tmp_path: Path, data: Path) -> tuple[LocalPlatform, Path]:
    """A copy of ``data``'s home, and a database holding what its backups hold."""
    expected_db = tmp_path / "expected.sqlite"
    _fill()(expected_db)  # type: ignore[operator]
    shutil.copytree(data / "home", tmp_path / "home")
    return LocalPlatform(tmp_path / "home", drivers=(SQLiteDriver,)), expected_db


def _declare(plat: LocalPlatform, name: str, db: Path) -> ApplicationRef:
    return plat.declare_app(
        "tenant-a", name, "SQLiteDatabase", {"path": str(db)}, api_group="apps.example.com"
    )


def _restores_exactly(plat: LocalPlatform, tmp_path: Path, backup: str, expected: Path) -> None:
    """``backup`` restored into a new copy holds every row of ``expected``."""
    target = tmp_path / f"restored-{backup}.sqlite"
    job = plat.restore(
        "tenant-a", backup, f"r-{backup}", target=_declare(plat, f"copy-{backup}", target)
    )
    assert job.status.phase == "Succeeded", job.status.message
    assert _rows(target) == _rows(expected)
    assert len(_rows(target)) == 300


@pytest.mark.parametrize("backup", ["plain", "sealed"])
@pytest.mark.parametrize("data", [DATA, V2], ids=["format-v1", "format-v2"])
def test_an_old_backup_verifies_and_restores_exactly(
    tmp_path: Path, backup: str, data: Path
) -> None:
    plat, expected_db = _old_home(tmp_path, data)
    [old] = [b for b in plat.backups("tenant-a") if b.metadata.name == backup]
    assert plat.manifest("tenant-a", backup).format_version == int(data.name[-1])
    assert old.status.phase == "Ready"
    checked = plat.engine.verify(old).status.last_verified
    assert checked is not None and checked.result == "Passed", checked
    _restores_exactly(plat, tmp_path, backup, expected_db)


@pytest.mark.parametrize("location", ["plain", "sealed"])
def test_an_old_backup_restores_beside_backups_of_the_new_default(
    tmp_path: Path, location: str
) -> None:
    """The old home's locations do not name ``deduplication``: written when the stream
    format was the default, they deduplicate now.  A new backup there is chunks in the
    tenant's repository, and the old stream-format Backup still restores exactly."""
    plat, expected_db = _old_home(tmp_path, DATA)
    assert (
        "deduplication"
        not in (tmp_path / f"home/state/StorageLocation/_cluster/{location}.yaml").read_text()
    )
    assert not plat.manifest("tenant-a", location).deduplicated

    job = plat.backup("tenant-a", _declare(plat, "shop-now", expected_db), "now", location)
    assert job.status.phase == "Succeeded", job.status.message
    assert plat.manifest("tenant-a", "now").deduplicated
    assert [p for p in plat.stored_files() if "_repos" in p.parts and "packs" in p.parts]
    _restores_exactly(plat, tmp_path, location, expected_db)


@pytest.mark.parametrize("location", ["plain", "sealed"])
def test_a_new_backup_reuses_a_format_2_backups_chunks(tmp_path: Path, location: str) -> None:
    """Format 3 changed only the whole-stream digest: the same data backed up again into
    the format-2 home's repository stores no new chunk, and both restore exactly."""
    plat, expected_db = _old_home(tmp_path, V2)
    job = plat.backup("tenant-a", _declare(plat, "shop", expected_db), "again", location)
    assert job.status.phase == "Succeeded", job.status.message
    new = plat.manifest("tenant-a", "again")
    assert new.format_version == 3 and new.new_bytes == 0
    for backup in (location, "again"):
        _restores_exactly(plat, tmp_path, backup, expected_db)
