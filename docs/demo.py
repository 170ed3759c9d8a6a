"""The README's main job: back up and restore a real PostgreSQL on the embedded host.

Starts a throwaway PostgreSQL 15 (Debian's binaries, as user postgres, 127.0.0.1 only, a
free port, password authentication), loads a realistic dataset (``pgbench -i`` plus a
second database with several schemas), then drives the ``cozybackup`` CLI exactly as the
admin and a tenant would: the admin declares the application and its credentials; the
tenant applies a BackupJob with ``backupClassName: cozy-default`` (no class to write: the
default binds Postgres), the runner backs it up with progress, the data is damaged, the
tenant applies a RestoreJob, the runner restores it, and every table's checksum is compared
with the one taken before the backup.  Prints a report; stops the server and removes
everything it made (``--keep`` to keep the directory).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cozybackup_postgres.testing import PostgresServer
from demo_common import cli, compare, stored_mib, timed_run, verdict

NS = "tenant-demo"

ADMIN = """
apiVersion: v1
kind: Secret
metadata: {name: shop-db-superuser}
stringData: {username: "%(user)s", password: "%(password)s"}
---
apiVersion: local.backups.cozystack.io/v1alpha1
kind: Application
metadata: {name: shop, namespace: %(ns)s}
spec:
  kind: Postgres
  connection: {host: 127.0.0.1, port: %(port)d}
  credentialsSecretRef: {name: shop-db-superuser}
"""

BACKUP = """
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata: {name: shop-before-migration, namespace: %(ns)s}
spec:
  applicationRef: {apiGroup: apps.cozystack.io, kind: Postgres, name: shop}
  backupClassName: cozy-default
"""

RESTORE = """
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata: {name: shop-rollback, namespace: %(ns)s}
spec:
  backupRef: {name: shop-before-migration}
"""

CRM = """
CREATE SCHEMA sales; CREATE SCHEMA support;
CREATE TABLE sales.customers(id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE, since date);
CREATE TABLE sales.orders(id bigserial PRIMARY KEY, customer_id int REFERENCES sales.customers,
                          total numeric(12,2), placed timestamptz, items jsonb);
CREATE TABLE support.tickets(id serial PRIMARY KEY, customer_id int, subject text, body text,
                             opened timestamptz DEFAULT now());
CREATE VIEW sales.big_spenders AS
  SELECT customer_id, sum(total) AS spent FROM sales.orders GROUP BY 1 HAVING sum(total) > 5000;
INSERT INTO sales.customers(name, email, since)
  SELECT 'customer ' || i, 'c' || i || '@example.com', date '2020-01-01' + (i % 1500)
  FROM generate_series(1, 20000) i;
INSERT INTO sales.orders(customer_id, total, placed, items)
  SELECT 1 + i % 20000, round((random() * 900)::numeric, 2), now() - (i || ' minutes')::interval,
         jsonb_build_object('sku', md5(i::text), 'qty', 1 + i % 7)
  FROM generate_series(1, 200000) i;
INSERT INTO support.tickets(customer_id, subject, body)
  SELECT 1 + i % 20000, 'ticket ' || i, repeat(md5(i::text) || ' ', 20) FROM generate_series(1, 30000) i;
"""


def checksums(server: PostgresServer) -> dict[str, str]:
    return {
        f"{db}/{table}": digest
        for db in ("shop", "crm")
        for table, digest in server.checksum(db).items()
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--scale", type=int, default=20, help="pgbench scale (default %(default)s: ~300 MB)"
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep the home directory (the server is stopped)"
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cozybackup-demo-"))
    work.chmod(0o755)  # the postgres user must reach the server's directory inside it
    home = work / "home"
    server = PostgresServer.start(parent=work, superuser="shop_admin")
    try:
        print(
            f"== a PostgreSQL {server.psql('SHOW server_version').strip()} on 127.0.0.1:{server.port}"
        )
        t = time.monotonic()
        server.psql("CREATE DATABASE shop; CREATE DATABASE crm;")
        subprocess.run(
            [str(server.bindir / "pgbench"), "-i", "-q", "-s", str(args.scale), "shop"],
            env=server.env(),
            check=True,
            capture_output=True,
        )
        server.psql(CRM, "crm")
        size = int(
            server.psql(
                "SELECT sum(pg_database_size(datname)) FROM pg_database WHERE datname IN ('shop','crm')"
            )
        )
        print(f"   loaded {size / 2**20:.0f} MiB in two databases in {time.monotonic() - t:.1f}s")
        before = checksums(server)

        print("== admin: how to reach the application (tenants never see this)")
        cli(
            home,
            "apply",
            "-f",
            "-",
            stdin=ADMIN
            % {
                "ns": NS,
                "port": server.port,
                "user": server.superuser,
                "password": server.password,
            },
        )
        print("== tenant: a BackupJob with the default class")
        cli(home, "apply", "-f", "-", stdin=BACKUP % {"ns": NS})
        backup_s = timed_run(home)
        cli(home, "get", "backups", "-n", NS)

        print("== damage: a bad migration")
        server.psql(
            "DELETE FROM pgbench_accounts WHERE aid % 3 = 0; DROP TABLE pgbench_history;", "shop"
        )
        server.psql("DROP SCHEMA support CASCADE; UPDATE sales.customers SET email = NULL;", "crm")
        damaged = checksums(server)
        print(
            f"   {sum(1 for k in before if damaged.get(k) != before[k])} of {len(before)} tables changed or gone"
        )

        print("== tenant: a RestoreJob (in place)")
        cli(home, "apply", "-f", "-", stdin=RESTORE % {"ns": NS})
        restore_s = timed_run(home)
        cli(home, "get", "restorejobs", "-n", NS)

        after = checksums(server)
        print("== per-table checksums: before the backup / after the restore")
        compare(before, after, width=42, digits=12)
        print("== report")
        print(f"   databases  {size / 2**20:8.0f} MiB on disk (tables + indexes)")
        print(
            f"   stored     {stored_mib(home):8.0f} MiB (pg_dump -Fc -Z0, chunked, deduplicated "
            "and zstd-compressed by cozybackup)"
        )
        print(
            f"   backup     {backup_s:8.1f} s   restore {restore_s:.1f} s (checksums verified first; both incl. CLI start)"
        )
        return verdict(
            before, after, "every table of both databases is back exactly as it was backed up"
        )
    finally:
        server.destroy()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
