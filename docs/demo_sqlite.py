"""The README's main job: a real backup and restore on the embedded host, end to end.

Creates a throwaway home and a realistic SQLite database (several tables, an index, a
view, a trigger, blobs), then drives the ``cozybackup`` CLI exactly as an admin and a
tenant would: apply a BackupClass and the application, apply a BackupJob, run it (with
progress), damage the data, apply a RestoreJob, run it, and prove every table's checksum
is back.  Prints a short report and removes everything it made (``--keep`` to keep it).

The main demo (`docs/demo.py`) does the same with PostgreSQL; this one needs no server.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from demo_common import cli, compare, stored_mib, timed_run, verdict

NS = "tenant-demo"

ADMIN = """
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {name: sqlite}
spec:
  strategies:
  - application: {apiGroup: apps.example.com, kind: SQLiteDatabase}
    strategyRef: {kind: SQLite, name: sqlite}
---
apiVersion: local.backups.cozystack.io/v1alpha1
kind: Application
metadata: {name: shop, namespace: %(ns)s}
spec:
  apiGroup: apps.example.com
  kind: SQLiteDatabase
  connection: {path: "%(db)s"}
"""

BACKUP = """
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata: {name: shop-before-migration, namespace: %(ns)s}
spec:
  applicationRef: {apiGroup: apps.example.com, kind: SQLiteDatabase, name: shop}
  backupClassName: sqlite
"""

RESTORE = """
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata: {name: shop-rollback, namespace: %(ns)s}
spec:
  backupRef: {name: shop-before-migration}
"""

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
]


def make_database(path: Path, rows: int) -> None:
    rnd = random.Random(42)
    con = sqlite3.connect(path)
    try:
        con.executescript("""
            PRAGMA journal_mode=WAL;
            CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT, note TEXT);
            CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id),
                                total REAL, placed_at TEXT, payload BLOB);
            CREATE INDEX orders_by_customer ON orders(customer_id);
            CREATE TABLE audit(id INTEGER PRIMARY KEY, what TEXT);
            CREATE TRIGGER orders_audit AFTER INSERT ON orders BEGIN
                INSERT INTO audit(what) VALUES ('order ' || NEW.id); END;
            CREATE VIEW big_spenders AS SELECT customer_id, sum(total) AS spent FROM orders
                GROUP BY customer_id HAVING spent > 1000;
        """)
        con.executemany(
            "INSERT INTO customers VALUES (?,?,?,?)",
            (
                (
                    i,
                    f"{rnd.choice(WORDS)} {rnd.choice(WORDS)}",
                    f"user{i}@example.com",
                    " ".join(rnd.choices(WORDS, k=rnd.randint(5, 40))) + " — ünïcödé ✓",
                )
                for i in range(rows // 10)
            ),
        )
        con.executemany(
            "INSERT INTO orders VALUES (?,?,?,?,?)",
            (
                (
                    i,
                    rnd.randrange(rows // 10),
                    round(rnd.uniform(1, 500), 2),
                    f"2026-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}",
                    rnd.randbytes(rnd.randint(100, 1500)),
                )
                for i in range(rows)
            ),
        )
        con.commit()
    finally:
        con.close()


def table_checksums(path: Path) -> dict[str, str]:
    con = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        ]
        out = {}
        for t in tables:
            h = hashlib.sha256()
            for row in con.execute(f'SELECT * FROM "{t}" ORDER BY rowid'):
                h.update(repr(row).encode())
            out[t] = h.hexdigest()[:16]
        return out
    finally:
        con.close()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rows", type=int, default=200_000, help="orders to create (default %(default)s, ~200 MB)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cozybackup-demo-"))
    home, db = work / "home", work / "shop.sqlite"
    try:
        print(f"== creating a database with {args.rows} orders")
        t = time.monotonic()
        make_database(db, args.rows)
        size = db.stat().st_size + (
            Path(f"{db}-wal").stat().st_size if Path(f"{db}-wal").exists() else 0
        )
        print(f"   {size / 2**20:.1f} MiB in {time.monotonic() - t:.1f}s")
        before = table_checksums(db)

        print("== admin: a BackupClass and the application (tenants never see these)")
        cli(home, "apply", "-f", "-", stdin=ADMIN % {"ns": NS, "db": db})
        print("== tenant: a BackupJob")
        cli(home, "apply", "-f", "-", stdin=BACKUP % {"ns": NS})
        backup_s = timed_run(home)
        cli(home, "get", "backups", "-n", NS)
        cli(home, "verify", "backup", "shop-before-migration", "-n", NS)

        print("== damage: a bad migration drops orders and rewrites customers")
        con = sqlite3.connect(db)
        con.executescript("DELETE FROM orders WHERE id % 3 = 0; UPDATE customers SET email = NULL;")
        con.commit()
        con.close()
        damaged = table_checksums(db)
        assert damaged != before
        print(f"   tables changed: {sorted(k for k in before if before[k] != damaged.get(k))}")

        print("== tenant: a RestoreJob (in place)")
        cli(home, "apply", "-f", "-", stdin=RESTORE % {"ns": NS})
        restore_s = timed_run(home)
        cli(home, "describe", "restorejob", "shop-rollback", "-n", NS)

        after = table_checksums(db)
        print("== per-table checksums (before backup / after restore)")
        compare(before, after, width=12)
        print("== report")
        print(f"   database   {size / 2**20:8.1f} MiB")
        print(f"   stored     {stored_mib(home):8.1f} MiB (chunked, deduplicated, zstd)")
        print(
            f"   backup     {backup_s:8.1f} s  ({size / 2**20 / backup_s:.0f} MiB/s of database, incl. CLI start)"
        )
        print(
            f"   restore    {restore_s:8.1f} s  (checksums verified before the target was touched)"
        )
        return verdict(before, after, "every table is back exactly as it was backed up")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
