"""Fixtures: real PostgreSQL 15 servers (the postgres driver's test helper, as user
postgres, 127.0.0.1 only, stopped by PID) and the ``sqlite3`` CLI; BackupClasses whose
``Job`` strategy drives them with plain commands."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from cozybackup_postgres.testing import PostgresServer, ServerPool

BINDIR = Path("/usr/lib/postgresql/15/bin")
SQLITE3 = shutil.which("sqlite3") or "/usr/bin/sqlite3"
APP_DB = "appdb"


@pytest.fixture(scope="session", autouse=True)
def _tools_installed() -> None:
    if not (BINDIR / "initdb").is_file():
        pytest.fail(f"PostgreSQL 15 is not installed ({BINDIR}): apt-get install postgresql")
    if not Path(SQLITE3).is_file():
        pytest.fail("the sqlite3 CLI is not installed: apt-get install sqlite3")


@pytest.fixture
def pg_servers() -> Iterator[ServerPool]:
    pool = ServerPool(bindir=BINDIR)
    try:
        yield pool
    finally:
        pool.close()


# ---------------------------------------------------------------- PostgreSQL, one database

PG_CLASS = f"""
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {{name: pg-job}}
spec:
  strategies:
  - application: {{apiGroup: apps.cozystack.io, kind: Postgres}}
    strategyRef: {{kind: Job, name: pg-job}}
    parameters:
      image: registry.example.com/tools/postgres:15
      timeoutSeconds: 600
      stream: appdb.pgc
      versionCommand: [{BINDIR}/pg_dump, --version]
      env:
        PGHOST: "${{connection.host}}"
        PGPORT: "${{connection.port}}"
        PGUSER: "${{credentials.username}}"
        PGPASSWORD: "${{credentials.password}}"
        PGSSLMODE: disable
        PGCONNECT_TIMEOUT: "10"
      backup:
        command: [{BINDIR}/pg_dump, --format=custom, --compress=0, "--dbname=${{connection.database}}"]
      restore:
        command: [{BINDIR}/pg_restore, --clean, --if-exists, --exit-on-error,
                  --single-transaction, "--dbname=${{connection.database}}"]
"""


def pg_create_app_db(server: PostgresServer) -> None:
    server.psql(f"CREATE DATABASE {APP_DB}")


def pg_write(server: PostgresServer, seed: int, rows: int = 3000) -> None:
    """Same schema for every seed (``pg_restore --clean`` drops only what the dump
    holds), different contents."""
    server.psql(
        f"""
DROP SCHEMA IF EXISTS shop CASCADE;
CREATE SCHEMA shop;
CREATE TABLE shop.customers (id int PRIMARY KEY, email text UNIQUE NOT NULL, name text,
  joined timestamptz NOT NULL, attrs jsonb, photo bytea);
CREATE TABLE shop.orders (id bigserial PRIMARY KEY,
  customer_id int NOT NULL REFERENCES shop.customers(id), qty int CHECK (qty > 0), note text);
CREATE INDEX ON shop.orders (customer_id);
CREATE VIEW shop.totals AS SELECT customer_id, sum(qty) AS qty FROM shop.orders GROUP BY 1;
INSERT INTO shop.customers
  SELECT g, 'c' || g || '-{seed}@example.com', 'Zoë ✓ ' || md5((g * {seed + 1})::text),
         timestamptz '2024-01-01 00:00+00' + g * interval '{seed + 1} minutes',
         jsonb_build_object('g', g, 'seed', {seed}), decode(md5(g::text || '{seed}'), 'hex')
  FROM generate_series(1, {rows}) g;
INSERT INTO shop.orders (customer_id, qty, note)
  SELECT 1 + (g * 7 + {seed}) % {rows}, 1 + g % 9, E'line1\\nline2 ''q'' {seed}'
  FROM generate_series(1, {rows * 2}) g;
""",
        APP_DB,
    )


def pg_checksum(server: PostgresServer) -> str:
    sums = server.checksum(APP_DB)
    views = server.psql(
        "SELECT string_agg(viewname, ',' ORDER BY viewname) FROM pg_views "
        "WHERE schemaname = 'shop'",
        APP_DB,
    )
    text = repr(sorted(sums.items())) + views
    return hashlib.sha256(text.encode()).hexdigest()


def pg_connection(server: PostgresServer) -> dict[str, object]:
    return {"host": server.host, "port": server.port, "database": APP_DB}


# ---------------------------------------------------------------- SQLite, through its CLI

SQLITE_CLASS = f"""
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {{name: sqlite-job}}
spec:
  strategies:
  - application: {{apiGroup: apps.example.com, kind: SQLiteFile}}
    strategyRef: {{kind: Job, name: sqlite-job}}
    parameters:
      versionCommand: [{SQLITE3}, --version]
      backup:
        command: [{SQLITE3}, -readonly, -bail, "${{connection.path}}", .dump]
      restore:
        # An explicit shell: replay into a new file, then swap it in atomically.
        env: {{DB: "${{connection.path}}"}}
        command: [sh, -c, 'set -e; t="$DB.cozy-restore"; rm -f "$t"; {SQLITE3} -bail "$t"; mv -f "$t" "$DB"']
"""


def sqlite_write(path: Path, seed: int) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            DROP VIEW IF EXISTS v_totals; DROP TABLE IF EXISTS items; DROP TABLE IF EXISTS t_seed;
            CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, blob BLOB);
            CREATE INDEX items_name ON items(name);
            CREATE VIEW v_totals AS SELECT count(*) AS n, sum(price) AS total FROM items;
            """
        )
        db.execute(f"CREATE TABLE t_seed (seed INTEGER DEFAULT {int(seed)})")
        db.executemany(
            "INSERT INTO items (id, name, price, blob) VALUES (?, ?, ?, ?)",
            [
                (
                    i,
                    f"item {i} ✓ 'q' seed {seed}\nline2",
                    i * 1.25 + seed,
                    hashlib.sha256(f"{i}-{seed}".encode()).digest(),
                )
                for i in range(1, 2000 + seed)
            ],
        )
    db.close()


def sqlite_checksum(path: Path) -> str:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return hashlib.sha256("\n".join(db.iterdump()).encode()).hexdigest()
    finally:
        db.close()
