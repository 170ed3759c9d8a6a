"""End to end through the real ``cozybackup`` CLI, the driver found by its entry point:
an admin applies a BackupClass whose Job strategy runs ``pg_dump``/``pg_restore`` for
``apps.cozystack.io/Postgres`` (overriding what ``cozy-default`` would do), declares two
PostgreSQL applications with their credentials in Secrets; a tenant applies a BackupJob,
then RestoreJobs in place and into the other application."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from cozybackup_postgres.testing import PostgresServer, ServerPool

from cozybackup_core.testing import AppHandle, Cli, cli_round_trip, run_cli

from conftest import PG_CLASS, pg_checksum, pg_connection, pg_create_app_db, pg_write


def cli(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(home, *args, stdin=stdin, timeout=120)


def application(name: str, server: PostgresServer) -> AppHandle:
    pg_create_app_db(server)
    return AppHandle.of(server, "Postgres", name, connection=pg_connection(server))


def check_backup(backup: dict[str, Any]) -> None:
    assert backup["spec"]["strategyRef"]["kind"] == "Job"
    assert backup["spec"]["strategyRef"]["name"] == "pg-job"
    assert backup["spec"]["driverMetadata"] == {"tool": "pg_dump"}


def test_backup_and_restores_through_the_cli(pg_servers: ServerPool, tmp_path: Path) -> None:
    src, drill = pg_servers.start(), pg_servers.start()
    cli_round_trip(
        Cli(tmp_path / "home", timeout=120),
        application("shop", src),
        application("shop-drill", drill),
        write_data=lambda app, seed: pg_write(app.extra["server"], seed=seed),
        checksum=lambda app: pg_checksum(app.extra["server"]),
        backup="nightly-1",
        in_place="rollback",
        to_copy="drill",
        backup_class="pg-job",
        admin=(PG_CLASS,),
        drivers_show=("strategy=Job", "any kind"),
        check_backup=check_backup,
        secrets=("127.0.0.1", src.password, drill.password, "pg_restore"),
    )


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
