"""End to end through the CLI with a real driver found by its entry point (plugins-example):
BackupJob -> Backup -> RestoreJob in place and to a copy, on the local bucket and on S3."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from cozybackup_core.testing import S3ServerInfo, backup_class_yaml, run_cli, s3_location_yaml

NS = "tenant-user1"


def cli(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(home, *args, stdin=stdin, timeout=300, env={"AWS_DEFAULT_REGION": "us-east-1"})


def make_db(path: Path, seed: int) -> None:
    con = sqlite3.connect(path)
    try:
        con.executescript("""
            DROP TABLE IF EXISTS items; DROP TABLE IF EXISTS notes;
            CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, blob BLOB, price REAL);
            CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT);
            CREATE INDEX items_name ON items(name);
        """)
        con.executemany(
            "INSERT INTO items VALUES (?,?,?,?)",
            ((i, f"item-{seed}-{i} ✓", os.urandom(64), i * 1.5) for i in range(20_000)),
        )
        con.executemany(
            "INSERT INTO notes VALUES (?,?)", ((i, f"note {seed} {i}\nline2") for i in range(2000))
        )
        con.commit()
    finally:
        con.close()


def checksums(path: Path) -> dict[str, str]:
    con = sqlite3.connect(path)
    try:
        out = {}
        for (table,) in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"
        ):
            h = hashlib.sha256()
            for row in con.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                h.update(repr(row).encode())
            out[table] = h.hexdigest()
        return out
    finally:
        con.close()


def _storage_yaml(kind: str, s3: S3ServerInfo | None) -> str:
    if kind == "local":
        return ""
    assert s3 is not None
    return "---\n" + s3_location_yaml(s3, "s3-main", "cozy-backups", prefix="e2e")


@pytest.mark.parametrize("storage", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_backup_restore_in_place_and_to_copy(
    tmp_path: Path, storage: str, request: pytest.FixtureRequest
) -> None:
    s3 = request.getfixturevalue("s3") if storage == "s3" else None
    home = tmp_path / "home"
    db, copy = tmp_path / "shop.db", tmp_path / "shop-drill.db"
    make_db(db, seed=1)
    original = checksums(db)
    sqlite_class = backup_class_yaml(
        "sqlite",
        "SQLiteDatabase",
        "SQLite",
        api_group="apps.example.com",
        storage="s3-main" if storage == "s3" else None,
    )
    admin = (
        sqlite_class
        + f"""---
apiVersion: local.backups.cozystack.io/v1alpha1
kind: Application
metadata: {{name: shop, namespace: {NS}}}
spec: {{apiGroup: apps.example.com, kind: SQLiteDatabase, connection: {{path: "{db}"}}}}
---
apiVersion: local.backups.cozystack.io/v1alpha1
kind: Application
metadata: {{name: shop-drill, namespace: {NS}}}
spec: {{apiGroup: apps.example.com, kind: SQLiteDatabase, connection: {{path: "{copy}"}}}}
"""
        + _storage_yaml(storage, s3)
    )
    applied = cli(home, "apply", "-f", "-", stdin=admin)
    assert applied.returncode == 0, applied.stderr
    drivers = cli(home, "drivers")
    assert "sqlite" in drivers.stdout and "BROKEN" not in drivers.stdout

    job = f"""apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata: {{name: shop-b1, namespace: {NS}}}
spec:
  applicationRef: {{apiGroup: apps.example.com, kind: SQLiteDatabase, name: shop}}
  backupClassName: sqlite
"""
    assert cli(home, "apply", "-f", "-", stdin=job).returncode == 0
    run = cli(home, "run", "--once")
    assert run.returncode == 0, run.stdout + run.stderr
    backup = json.loads(cli(home, "get", "backup", "shop-b1", "-n", NS, "-o", "json").stdout)
    assert backup["status"]["phase"] == "Ready"
    assert backup["status"]["artifact"]["uri"].startswith("cozy://backups/")
    if storage == "s3":
        assert not (home / "buckets").exists(), "the S3 class must not write the local bucket"
        assert s3 is not None
    assert cli(home, "verify", "backup", "shop-b1", "-n", NS).returncode == 0

    make_db(db, seed=2)  # the tenant's data moves on ...
    assert checksums(db) != original
    restores = f"""apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata: {{name: drill, namespace: {NS}}}
spec:
  backupRef: {{name: shop-b1}}
  targetApplicationRef: {{apiGroup: apps.example.com, kind: SQLiteDatabase, name: shop-drill}}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata: {{name: rollback, namespace: {NS}}}
spec:
  backupRef: {{name: shop-b1}}
"""
    assert cli(home, "apply", "-f", "-", stdin=restores).returncode == 0
    run = cli(home, "run", "--once")
    assert run.returncode == 0, run.stdout + run.stderr
    assert checksums(copy) == original
    assert checksums(db) == original
    for name in ("drill", "rollback"):
        got = json.loads(cli(home, "get", "restorejob", name, "-n", NS, "-o", "json").stdout)
        assert got["status"]["phase"] == "Succeeded", got["status"]
