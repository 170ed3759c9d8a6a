"""End to end through the real CLI, the driver found by its entry point alone: a tenant's
BackupJob and RestoreJobs (in place and to a copy) for ClickHouse applications on the
built-in ``cozy-default`` class, against real ClickHouse 18.16 servers."""

from __future__ import annotations

from pathlib import Path

from cozybackup_clickhouse.testing import (
    ADMIN_PASSWORD,
    fingerprint,
    write_dataset,
)

from cozybackup_core.testing import AppHandle, Cli, cli_round_trip

from conftest import ServerFactory


def test_tenant_manifests_end_to_end(tmp_path: Path, clickhouse: ServerFactory) -> None:
    src, drill = clickhouse(), clickhouse()
    tenant = cli_round_trip(
        Cli(tmp_path / "home"),
        AppHandle.of(src, "ClickHouse", "analytics"),
        AppHandle.of(drill, "ClickHouse", "analytics-drill"),
        # memory=False: other processes come and go
        write_data=lambda app, seed: write_dataset(app.extra["server"].run, seed, memory=False),
        checksum=lambda app: fingerprint(app.extra["server"].run),
        backup="oneshot-clickhouse",
        in_place="rollback-clickhouse",
        to_copy="drill-clickhouse",
        drivers_show=("clickhouse", "strategy=ClickHouse"),
        secrets=(ADMIN_PASSWORD, "127.0.0.1", str(src.base), str(drill.base)),
    )
    assert "mode: logical" in tenant and "serverVersion: 18.16.1" in tenant
