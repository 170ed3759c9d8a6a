"""End to end through the real ``cozybackup`` CLI, the driver found by its entry point:
an admin applies a BackupClass whose Job strategy runs ``pg_dump``/``pg_restore`` for
``apps.cozystack.io/Postgres`` (overriding what ``cozy-default`` would do), declares two
PostgreSQL applications with their credentials in Secrets; a tenant applies a BackupJob,
then RestoreJobs in place and into the other application."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml
from cozybackup_postgres.testing import PostgresServer, ServerPool

from cozybackup_core.testing import cli_ok as ok
from cozybackup_core.testing import run_cli

from conftest import PG_CLASS, pg_checksum, pg_connection, pg_create_app_db, pg_write

NS = "tenant-user1"


def cli(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(home, *args, stdin=stdin, timeout=120)


def admin_yaml(apps: dict[str, PostgresServer]) -> str:
    docs: list[dict[str, Any]] = []
    for name, server in apps.items():
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"{name}-credentials"},
                "stringData": server.credentials(),
            }
        )
        docs.append(
            {
                "apiVersion": "local.backups.cozystack.io/v1alpha1",
                "kind": "Application",
                "metadata": {"name": name, "namespace": NS},
                "spec": {
                    "apiGroup": "apps.cozystack.io",
                    "kind": "Postgres",
                    "connection": pg_connection(server),
                    "credentialsSecretRef": {"name": f"{name}-credentials"},
                },
            }
        )
    return PG_CLASS + "---\n" + yaml.safe_dump_all(docs, sort_keys=False)


BACKUPJOB = f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata: {{name: nightly-1, namespace: {NS}}}
spec:
  applicationRef: {{apiGroup: apps.cozystack.io, kind: Postgres, name: shop}}
  backupClassName: pg-job
"""
RESTORES = f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata: {{name: rollback, namespace: {NS}}}
spec:
  backupRef: {{name: nightly-1}}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata: {{name: drill, namespace: {NS}}}
spec:
  backupRef: {{name: nightly-1}}
  targetApplicationRef: {{apiGroup: apps.cozystack.io, kind: Postgres, name: shop-drill}}
"""


def test_backup_and_restores_through_the_cli(pg_servers: ServerPool, tmp_path: Path) -> None:
    home = tmp_path / "home"
    src, drill = pg_servers.start(), pg_servers.start()
    for server in (src, drill):
        pg_create_app_db(server)
    ok(cli(home, "apply", "-f", "-", stdin=admin_yaml({"shop": src, "shop-drill": drill})))
    drivers = ok(cli(home, "drivers"))
    assert "strategy=Job" in drivers and "any kind" in drivers, drivers
    pg_write(src, seed=21)
    expected = pg_checksum(src)

    ok(cli(home, "apply", "-f", "-", stdin=BACKUPJOB))
    run = cli(home, "run", "--once")
    assert "backupjob/nightly-1 Succeeded" in ok(run), run.stderr
    backup = json.loads(ok(cli(home, "get", "backup", "nightly-1", "-n", NS, "-o", "json")))
    assert backup["spec"]["strategyRef"]["kind"] == "Job"
    assert backup["spec"]["strategyRef"]["name"] == "pg-job"
    assert backup["spec"]["driverMetadata"] == {"tool": "pg_dump"}
    ok(cli(home, "verify", "backup", "nightly-1", "-n", NS))

    pg_write(src, seed=22)  # the damage
    assert pg_checksum(src) != expected
    ok(cli(home, "apply", "-f", "-", stdin=RESTORES))
    run = cli(home, "run", "--once")
    out = ok(run)
    assert "restorejob/rollback Succeeded" in out, run.stderr
    assert "restorejob/drill Succeeded" in out, run.stderr
    assert pg_checksum(src) == expected
    assert pg_checksum(drill) == expected

    tenant = "".join(
        cli(home, "get", kind, "-n", NS, "-o", "yaml").stdout
        for kind in ("backupjobs", "backups", "restorejobs")
    )
    assert "Backup nightly-1 is ready" in tenant
    for secret in ("127.0.0.1", str(home), src.password, drill.password, "pg_restore"):
        assert secret not in tenant


def test_cli_refuses_a_bad_job_class_with_the_field_path(tmp_path: Path) -> None:
    bad = PG_CLASS.replace(
        '"--dbname=${connection.database}"]', '"--password=${credentials.password}"]', 1
    )
    assert bad != PG_CLASS
    out = cli(tmp_path / "home", "apply", "-f", "-", stdin=bad)
    assert out.returncode == 2, out
    assert (
        "spec.strategies[0].parameters.backup.command[3]: ${credentials.password} is a "
        "credential" in out.stderr
    ), out.stderr
    out = cli(tmp_path / "home", "get", "backupclasses")
    assert "pg-job" not in out.stdout
