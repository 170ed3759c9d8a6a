"""End to end through the real CLI, the driver found by its entry point: the seed-style
manifests (a BackupJob and a Plan for a Postgres application, RestoreJobs in place and
to a copy) against real PostgreSQL 15 servers, on the built-in ``cozy-default`` class."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import attrs
from cozybackup_postgres.testing import ServerPool, write_dataset

from cozybackup_core import Plan
from cozybackup_core.testing import CLI_NS as NS
from cozybackup_core.testing import AppHandle, Cli, LocalPlatform, cli_round_trip

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


def test_seed_style_manifests_end_to_end(tmp_path: Path, pg_servers: ServerPool) -> None:
    home = tmp_path / "home"
    src, drill = pg_servers.start(), pg_servers.start()

    def make_the_plan_due() -> None:
        """Make the Plan's 02:00 slot due now (as if it had been created days ago)."""
        objects = LocalPlatform(home).host.objects
        (plan,) = objects.list(Plan, NS)
        past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
        objects.update_status(
            attrs.evolve(plan, status=attrs.evolve(plan.status, last_schedule_time=past))
        )

    def check_backup_run(run: subprocess.CompletedProcess[str]) -> None:
        assert "pg-nightly-backups-" in run.stdout
        assert 'dumping database "shop"' in run.stderr, "progress is shown"
        backups = Cli(home).ok("get", "backups", "-n", NS)
        assert "oneshot-postgres" in backups and "pg-nightly-backups-" in backups

    cli_round_trip(
        Cli(home, timeout=300),
        AppHandle.of(src, "Postgres", "pgdb"),
        AppHandle.of(drill, "Postgres", "pgdb-drill"),
        write_data=lambda app, seed: write_dataset(app.extra["server"], seed),
        checksum=lambda app: app.extra["server"].fingerprint(),
        backup="oneshot-postgres",
        in_place="rollback-postgres",
        to_copy="drill-postgres",
        tenant=(PLAN,),
        drivers_show=("postgres", "Postgres"),
        before_backup=make_the_plan_due,
        check_backup_run=check_backup_run,
        tenant_kinds=("backupjobs", "backups", "restorejobs", "plans"),
        secrets=(src.password, drill.password, src.host),
    )
