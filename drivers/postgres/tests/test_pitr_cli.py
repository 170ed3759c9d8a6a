"""Point-in-time recovery end to end through the real CLI, the driver found by its entry
point: an admin declares a physical class with WAL archiving, a source and a fresh target;
``cozybackup run`` streams the WAL and takes the tenant's backup; the tenant's seed-style
RestoreJob with ``options.recoveryTime`` runs with ``cozybackup run --once``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from cozybackup_postgres import PostgresDriver
from cozybackup_postgres.testing import ServerPool, write_dataset

from cozybackup_core.testing import CLI_NS as NS
from cozybackup_core.testing import AppHandle, Cli, app_manifests, driver_class_yaml

from .test_physical import FreshTarget, switch_and_wait_for, wait_for

PITR_CLASS = driver_class_yaml(
    PostgresDriver, "pg-pitr", json.dumps({"mode": "physical", "walArchiving": True})
)
PLAN = f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: Plan
metadata:
  name: pg-nightly
  namespace: {NS}
spec:
  applicationRef: {{apiGroup: apps.cozystack.io, kind: Postgres, name: pgdb}}
  backupClassName: pg-pitr
  schedule: {{type: cron, cron: "0 2 1 1 *"}}
"""
BACKUP_JOB = f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata:
  name: base-postgres
  namespace: {NS}
spec:
  applicationRef: {{apiGroup: apps.cozystack.io, kind: Postgres, name: pgdb}}
  backupClassName: pg-pitr
"""


def restore_job(recovery_time: str) -> str:
    # Cozystack's RestoreJob, as its console writes one: a copy, to a moment.
    return f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata:
  name: before-the-bad-migration
  namespace: {NS}
spec:
  backupRef:
    name: base-postgres
  targetApplicationRef:
    apiGroup: apps.cozystack.io
    kind: Postgres
    name: pgdb-pitr
  options:
    recoveryTime: "{recovery_time}"
"""


def test_seed_style_restore_job_with_recovery_time_end_to_end(
    tmp_path: Path, pg_servers: ServerPool
) -> None:
    home = tmp_path / "home"
    cli = Cli(home, timeout=300)
    src = pg_servers.start()
    write_dataset(src, seed=9)
    target = FreshTarget(src)
    try:
        source = AppHandle.of(src, "Postgres", "pgdb")
        copy = AppHandle.of(src, "Postgres", "pgdb-pitr", connection=target.connection())
        cli.apply(PITR_CLASS, *app_manifests(source), *app_manifests(copy), PLAN)
        env = {**os.environ, "COZYBACKUP_HOME": str(home)}
        env.pop("COZYBACKUP_PLUGINS", None)
        log = (tmp_path / "runner.log").open("ab")
        runner = subprocess.Popen(
            [sys.executable, "-m", "cozybackup_core.cli", "run", "--interval", "1"],
            env=env,
            stdout=log,
            stderr=log,
        )
        try:
            wait_for(
                "the streamer's slot",
                lambda: (
                    src.psql("SELECT count(*) FROM pg_replication_slots WHERE active").strip()
                    == "1"
                ),
            )
            cli.apply(BACKUP_JOB)
            wait_for(
                "the base backup",
                lambda: "Succeeded" in cli("get", "backupjob", "base-postgres", "-n", NS).stdout,
            )
            src.psql("INSERT INTO public.notes VALUES (500, 'before the migration')")
            mid = src.psql("SELECT clock_timestamp()").strip()
            expected = src.fingerprint()
            src.psql("DROP TABLE public.notes")  # the bad migration
            switch_and_wait_for(lambda: archived_in(home), src)
        finally:
            runner.send_signal(signal.SIGTERM)
            runner.wait(timeout=60)
            log.close()
        cli.apply(restore_job(mid.replace(" ", "T")))
        cli.run_once("restorejob/before-the-bad-migration")
        job = cli.get("restorejob", "before-the-bad-migration")
        assert job["status"]["phase"] == "Succeeded"
        assert target.server().fingerprint() == expected
        text = cli.tenant_text()
        for secret in (src.password, str(target.root), "pg_ctl"):
            assert secret not in text
    finally:
        target.destroy()


def archived_in(home: Path) -> set[str]:
    return {m.parent.name for m in (home / "buckets").rglob("_archive/**/manifest.json")}
