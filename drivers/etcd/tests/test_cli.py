"""End to end through the real ``cozybackup`` CLI, the driver found by its entry point:
an admin declares two etcd applications with client-certificate TLS (a one-member
cluster and a fresh three-member one), a tenant applies a BackupJob on the built-in
``cozy-default`` class, then RestoreJobs in place and into the other application."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from cozybackup_etcd.testing import LocalEtcd, TLSFiles

from cozybackup_core.testing import cli_ok as ok
from cozybackup_core.testing import run_cli as cli

from conftest import DISTRO_BIN, ClusterFactory, fingerprint, write_dataset

NS = "tenant-user1"


def admin_yaml(apps: dict[str, LocalEtcd]) -> str:
    docs: list[dict[str, Any]] = []
    for name, cluster in apps.items():
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"{name}-client-tls"},
                "stringData": cluster.credentials(),
            }
        )
        docs.append(
            {
                "apiVersion": "local.backups.cozystack.io/v1alpha1",
                "kind": "Application",
                "metadata": {"name": name, "namespace": NS},
                "spec": {
                    "apiGroup": "apps.cozystack.io",
                    "kind": "Etcd",
                    "connection": cluster.connection(),
                    "credentialsSecretRef": {"name": f"{name}-client-tls"},
                },
            }
        )
    return yaml.safe_dump_all(docs, sort_keys=False)


BACKUPJOB = f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata: {{name: oneshot-etcd, namespace: {NS}}}
spec:
  applicationRef: {{apiGroup: apps.cozystack.io, kind: Etcd, name: etcd}}
  backupClassName: cozy-default
"""
RESTORE_IN_PLACE = f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata: {{name: rollback-etcd, namespace: {NS}}}
spec:
  backupRef: {{name: oneshot-etcd}}
"""
RESTORE_TO_COPY = f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata: {{name: drill-etcd, namespace: {NS}}}
spec:
  backupRef: {{name: oneshot-etcd}}
  targetApplicationRef: {{apiGroup: apps.cozystack.io, kind: Etcd, name: etcd-drill}}
"""


def test_backup_and_restores_through_the_cli(
    etcd_clusters: ClusterFactory, tls_files: TLSFiles, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    src = etcd_clusters(DISTRO_BIN, tls=tls_files)
    drill = etcd_clusters(DISTRO_BIN, members=3, tls=tls_files, started=False)
    ok(cli(home, "apply", "-f", "-", stdin=admin_yaml({"etcd": src, "etcd-drill": drill})))
    drivers = ok(cli(home, "drivers"))
    assert "etcd" in drivers and "strategy=Etcd" in drivers, drivers
    write_dataset(src, seed=31)
    expected = fingerprint(src)

    ok(cli(home, "apply", "-f", "-", stdin=BACKUPJOB))
    run = cli(home, "run", "--once")
    assert "backupjob/oneshot-etcd Succeeded" in ok(run), run.stderr
    backup = json.loads(ok(cli(home, "get", "backup", "oneshot-etcd", "-n", NS, "-o", "json")))
    meta = backup["spec"]["driverMetadata"]
    assert meta["format"] == "etcd-v3-snapshot" and meta["members"] == 1
    assert meta["revision"] == expected["revision"]
    assert backup["spec"]["strategyRef"]["kind"] == "Etcd"
    ok(cli(home, "verify", "backup", "oneshot-etcd", "-n", NS))

    write_dataset(src, seed=32)  # the damage
    ok(cli(home, "apply", "-f", "-", stdin=RESTORE_IN_PLACE + "---\n" + RESTORE_TO_COPY))
    run = cli(home, "run", "--once")
    out = ok(run)
    assert "restorejob/rollback-etcd Succeeded" in out, run.stderr
    assert "restorejob/drill-etcd Succeeded" in out, run.stderr
    assert fingerprint(src) == expected
    assert fingerprint(drill) == expected
    assert len(drill.running()) == 3

    tenant = "".join(
        cli(home, "get", kind, "-n", NS, "-o", "yaml").stdout
        for kind in ("backupjobs", "backups", "restorejobs")
    )
    assert "Backup oneshot-etcd is ready" in tenant
    for secret in ("127.0.0.1", str(home), str(src.base), str(drill.base), "BEGIN"):
        assert secret not in tenant


def test_cli_refuses_a_bad_etcd_class_with_the_field_path(tmp_path: Path) -> None:
    bad = """\
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {name: cozy-default}
spec:
  strategies:
  - application: {apiGroup: apps.cozystack.io, kind: Etcd}
    strategyRef: {apiGroup: strategy.backups.cozystack.io, kind: Etcd, name: cozy-default}
    parameters: {snapshotFrom: nearest}
"""
    out = cli(tmp_path / "home", "apply", "-f", "-", stdin=bad)
    assert out.returncode == 2
    assert (
        "error: spec.strategies[0].parameters.snapshotFrom: 'nearest' is not a member "
        'choice; use one of "leader", "follower", "any"' in out.stderr
    )
    assert "Traceback" not in out.stderr
