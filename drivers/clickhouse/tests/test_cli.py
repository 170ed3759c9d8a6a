"""End to end through the real CLI, the driver found by its entry point alone: a tenant's
BackupJob and RestoreJobs (in place and to a copy) for ClickHouse applications on the
built-in ``cozy-default`` class, against real ClickHouse 18.16 servers."""

from __future__ import annotations

from pathlib import Path

from cozybackup_clickhouse.testing import (
    ADMIN_PASSWORD,
    ClickHouseServer,
    fingerprint,
    write_dataset,
)

from cozybackup_core.testing import cli_ok as ok
from cozybackup_core.testing import run_cli as cli

from conftest import ServerFactory

NS = "tenant-user1"


def admin_yaml(name: str, server: ClickHouseServer) -> str:
    password = ADMIN_PASSWORD.replace("\\", "\\\\").replace('"', '\\"')
    return f"""\
apiVersion: v1
kind: Secret
metadata: {{name: {name}-credentials}}
stringData: {{username: cozy_admin, password: "{password}"}}
---
apiVersion: local.backups.cozystack.io/v1alpha1
kind: Application
metadata: {{name: {name}, namespace: {NS}}}
spec:
  apiGroup: apps.cozystack.io
  kind: ClickHouse
  connection: {{host: 127.0.0.1, port: {server.http_port}}}
  credentialsSecretRef: {{name: {name}-credentials}}
"""


TENANT_BACKUP = f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata:
  name: oneshot-clickhouse
  namespace: {NS}
spec:
  applicationRef:
    apiGroup: apps.cozystack.io
    kind: ClickHouse
    name: analytics
  backupClassName: cozy-default
"""

TENANT_RESTORES = f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata:
  name: rollback-clickhouse
  namespace: {NS}
spec:
  backupRef:
    name: oneshot-clickhouse
---
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata:
  name: drill-clickhouse
  namespace: {NS}
spec:
  backupRef:
    name: oneshot-clickhouse
  targetApplicationRef:
    apiGroup: apps.cozystack.io
    kind: ClickHouse
    name: analytics-drill
"""


def test_tenant_manifests_end_to_end(tmp_path: Path, clickhouse: ServerFactory) -> None:
    home = tmp_path / "home"
    src, drill = clickhouse(), clickhouse()
    write_dataset(src.run, seed=21, memory=False)  # other processes come and go
    expected = fingerprint(src.run)

    ok(cli(home, "apply", "-f", "-", stdin=admin_yaml("analytics", src) + "---\n"
           + admin_yaml("analytics-drill", drill)))  # fmt: skip
    drivers = ok(cli(home, "drivers"))
    assert "clickhouse" in drivers and "strategy=ClickHouse" in drivers, drivers
    ok(cli(home, "apply", "-f", "-", stdin=TENANT_BACKUP))
    run = cli(home, "run", "--once")
    assert "backupjob/oneshot-clickhouse Succeeded" in ok(run), run.stdout + run.stderr
    assert "oneshot-clickhouse" in ok(cli(home, "get", "backups", "-n", NS))
    ok(cli(home, "verify", "backup", "oneshot-clickhouse", "-n", NS))

    write_dataset(src.run, seed=22, memory=False)  # the damage
    assert fingerprint(src.run) != expected
    ok(cli(home, "apply", "-f", "-", stdin=TENANT_RESTORES))
    run = cli(home, "run", "--once")
    out = ok(run)
    assert "restorejob/rollback-clickhouse Succeeded" in out, out + run.stderr
    assert "restorejob/drill-clickhouse Succeeded" in out, out + run.stderr
    assert fingerprint(src.run) == expected
    assert fingerprint(drill.run) == expected

    tenant = "".join(
        cli(home, "get", kind, "-n", NS, "-o", "yaml").stdout
        for kind in ("backupjobs", "backups", "restorejobs")
    )
    assert "mode: logical" in tenant and "serverVersion: 18.16.1" in tenant
    for secret in (ADMIN_PASSWORD, "127.0.0.1", str(src.base), str(home)):
        assert secret not in tenant
