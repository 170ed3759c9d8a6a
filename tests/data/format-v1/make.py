"""How ``home/`` was made: two SQLite backups (plain and encrypted) written by cozybackup
before the core was reorganised into layer folders (commit 0791b16).

    git worktree add /tmp/old 0791b16
    PYTHONPATH=/tmp/old:/tmp/old/plugins-example python tests/data/format-v1/make.py tests/data/format-v1

``tests/test_formats.py`` restores both with today's code and compares every row.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import sys
from pathlib import Path

from cozybackup_sqlite import SQLiteDriver

from cozybackup_core.testing import LocalPlatform

KEY = "Y296eWJhY2t1cC10ZXN0LWtleS0zMi1ieXRlcy0hISE="  # 32 bytes, a test key only
ADMIN = f"""
apiVersion: v1
kind: Secret
metadata: {{name: sealed-key}}
stringData: {{key: "{KEY}"}}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {{name: plain}}
spec: {{bucket: plain}}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {{name: sealed}}
spec:
  bucket: sealed
  encryption: {{keys: [{{id: k1, secretRef: {{name: sealed-key}}}}]}}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {{name: plain}}
spec:
  storageRef: {{name: plain}}
  strategies:
  - application: {{apiGroup: apps.example.com, kind: SQLiteDatabase}}
    strategyRef: {{kind: SQLite, name: sqlite}}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {{name: sealed}}
spec:
  storageRef: {{name: sealed}}
  strategies:
  - application: {{apiGroup: apps.example.com, kind: SQLiteDatabase}}
    strategyRef: {{kind: SQLite, name: sqlite}}
"""


def fill(db: Path) -> None:
    with contextlib.closing(sqlite3.connect(db)) as c, c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, data BLOB)")
        c.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?)",
            [
                (i, f"item {i} ✓", i / 7, bytes((i * 31 + j) % 256 for j in range(i % 97)))
                for i in range(300)
            ],
        )


def main(out: Path) -> None:
    home = out / "home"
    shutil.rmtree(home, ignore_errors=True)
    app = out / "shop.sqlite"
    app.unlink(missing_ok=True)
    fill(app)
    plat = LocalPlatform(home, drivers=(SQLiteDriver,))
    plat.apply(ADMIN)
    ref = plat.declare_app(
        "tenant-a", "shop", "SQLiteDatabase", {"path": str(app)}, api_group="apps.example.com"
    )
    for klass in ("plain", "sealed"):
        job = plat.backup("tenant-a", ref, klass, klass)
        assert job.status.phase == "Succeeded", job.status.message
    app.unlink()
    # The Application's absolute path is of the machine that made it: the test declares its own.
    shutil.rmtree(home / "state" / "Application")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
