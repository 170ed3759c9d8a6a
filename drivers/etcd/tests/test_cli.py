"""End to end through the real ``cozybackup`` CLI, the driver found by its entry point:
an admin declares two etcd applications with client-certificate TLS (a one-member
cluster and a fresh three-member one), a tenant applies a BackupJob on the built-in
``cozy-default`` class, then RestoreJobs in place and into the other application."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cozybackup_etcd.testing import TLSFiles

from cozybackup_core.testing import AppHandle, Cli, cli_round_trip, run_cli, typed_metadata

from conftest import DISTRO_BIN, ClusterFactory, class_yaml, fingerprint, write_dataset


def test_backup_and_restores_through_the_cli(
    etcd_clusters: ClusterFactory, tls_files: TLSFiles, tmp_path: Path
) -> None:
    src = etcd_clusters(DISTRO_BIN, tls=tls_files)
    drill = etcd_clusters(DISTRO_BIN, members=3, tls=tls_files, started=False)

    def check_backup(backup: dict[str, Any]) -> None:
        meta = typed_metadata(backup["spec"]["driverMetadata"])
        assert meta["format"] == "etcd-v3-snapshot" and meta["members"] == 1
        assert meta["revision"] == fingerprint(src)["revision"]
        assert backup["spec"]["strategyRef"]["kind"] == "Etcd"

    cli_round_trip(
        Cli(tmp_path / "home"),
        AppHandle.of(src, "Etcd", "etcd"),
        AppHandle.of(drill, "Etcd", "etcd-drill"),
        write_data=lambda app, seed: write_dataset(app.extra["server"], seed=seed),
        checksum=lambda app: fingerprint(app.extra["server"]),
        backup="oneshot-etcd",
        in_place="rollback-etcd",
        to_copy="drill-etcd",
        drivers_show=("etcd", "strategy=Etcd"),
        seeds=(31, 32),
        check_backup=check_backup,
        secrets=("127.0.0.1", str(src.base), str(drill.base), "BEGIN"),
    )
    assert len(drill.running()) == 3


def test_cli_refuses_a_bad_etcd_class_with_the_field_path(tmp_path: Path) -> None:
    bad = class_yaml("cozy-default", "{snapshotFrom: nearest}")
    out = run_cli(tmp_path / "home", "apply", "-f", "-", stdin=bad)
    assert out.returncode == 2
    assert (
        "error: spec.strategies[0].parameters.snapshotFrom: 'nearest' is not a member "
        'choice; use one of "leader", "follower", "any"' in out.stderr
    )
    assert "Traceback" not in out.stderr
