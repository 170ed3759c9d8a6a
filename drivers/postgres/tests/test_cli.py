"""End to end through the real CLI, the driver found by its entry point: the seed-style
manifests (a BackupJob and a Plan for a Postgres application, RestoreJobs in place and
to a copy) against real PostgreSQL 15 servers, on the built-in ``cozy-default`` class."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import attrs
from cozybackup_postgres.testing import PostgresServer, ServerPool, write_dataset

from cozybackup_core import Plan
from cozybackup_core.testing import LocalPlatform, run_cli

NS = "tenant-user1"


def cli(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(home, *args, stdin=stdin, timeout=300)


def admin_yaml(name: str, server: PostgresServer) -> str:
    return f"""\
apiVersion: v1
kind: Secret
metadata: {{name: {name}-superuser}}
stringData: {{username: {server.superuser}, password: "{server.password}"}}
---
apiVersion: local.backups.cozystack.io/v1alpha1
kind: Application
metadata: {{name: {name}, namespace: {NS}}}
spec:
  apiGroup: apps.cozystack.io
  kind: Postgres
  connection: {{host: {server.host}, port: {server.port}}}
  credentialsSecretRef: {{name: {name}-superuser}}
"""


BACKUPJOB = f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata:
  name: oneshot-postgres
  namespace: {NS}
spec:
  applicationRef:
    apiGroup: apps.cozystack.io
    kind: Postgres
    name: pgdb
  backupClassName: cozy-default
"""

PLAN = f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: Plan
metadata:
  name: pg-nightly-backups
  namespace: {NS}
spec:
  applicationRef:
    apiGroup: apps.cozystack.io
    kind: Postgres
    name: pgdb
  backupClassName: cozy-default
  schedule:
    type: cron
    cron: "0 2 * * *" # at 02:00
"""

RESTORE_IN_PLACE = f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata:
  name: rollback-postgres
  namespace: {NS}
spec:
  backupRef:
    name: oneshot-postgres
"""

RESTORE_TO_COPY = f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata:
  name: drill-postgres
  namespace: {NS}
spec:
  backupRef:
    name: oneshot-postgres
  targetApplicationRef:
    apiGroup: apps.cozystack.io
    kind: Postgres
    name: pgdb-drill
"""


def test_seed_style_manifests_end_to_end(tmp_path: Path, pg_servers: ServerPool) -> None:
    home = tmp_path / "home"
    src, drill = pg_servers.start(), pg_servers.start()
    write_dataset(src, seed=21)
    expected = src.fingerprint()

    out = cli(
        home,
        "apply",
        "-f",
        "-",
        stdin=admin_yaml("pgdb", src) + "---\n" + admin_yaml("pgdb-drill", drill),
    )
    assert out.returncode == 0, out.stderr
    drivers = cli(home, "drivers")
    assert "postgres" in drivers.stdout and "Postgres" in drivers.stdout, drivers.stdout
    out = cli(home, "apply", "-f", "-", stdin=BACKUPJOB + "---\n" + PLAN)
    assert out.returncode == 0, out.stderr
    # Make the Plan's 02:00 slot due now (as if it had been created days ago).
    objects = LocalPlatform(home).host.objects
    (plan,) = objects.list(Plan, NS)
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    objects.update_status(
        attrs.evolve(plan, status=attrs.evolve(plan.status, last_schedule_time=past))
    )

    run = cli(home, "run", "--once")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "backupjob/oneshot-postgres Succeeded" in run.stdout
    assert "pg-nightly-backups-" in run.stdout
    assert 'dumping database "shop"' in run.stderr, "progress is shown"
    backups = cli(home, "get", "backups", "-n", NS).stdout
    assert "oneshot-postgres" in backups and "pg-nightly-backups-" in backups
    assert cli(home, "verify", "backup", "oneshot-postgres", "-n", NS).returncode == 0

    write_dataset(src, seed=22)  # the damage
    assert src.fingerprint() != expected
    out = cli(home, "apply", "-f", "-", stdin=RESTORE_IN_PLACE + "---\n" + RESTORE_TO_COPY)
    assert out.returncode == 0, out.stderr
    run = cli(home, "run", "--once")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "restorejob/rollback-postgres Succeeded" in run.stdout
    assert "restorejob/drill-postgres Succeeded" in run.stdout
    assert src.fingerprint() == expected
    assert drill.fingerprint() == expected

    tenant = "".join(
        cli(home, "get", kind, "-n", NS, "-o", "yaml").stdout
        for kind in ("backupjobs", "backups", "restorejobs", "plans")
    )
    assert "Backup oneshot-postgres is ready" in tenant
    for secret in (src.password, drill.password, src.host, str(home)):
        assert secret not in tenant
