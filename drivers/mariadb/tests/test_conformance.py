"""The core's conformance kit, run against real MariaDB servers in both modes."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
from cozybackup_mariadb import MariaDBDriver
from mariadb_server import MariaDBServer

from cozybackup_core import ApplicationRef
from cozybackup_core.testing import AppHandle, DriverConformance

from conftest import ServerFactory, checksum, class_yaml, connection, credentials, write_data

PHYSICAL_CLASS = class_yaml("mariadb-physical", "{mode: physical, parallel: 2}")


class _MariaDBApps(DriverConformance):
    driver = MariaDBDriver
    kind = "MariaDB"
    #: Physical restores need the datadir and the commands that stop/start the server.
    control: ClassVar[bool] = False

    @pytest.fixture(autouse=True)
    def _servers(self, mariadb: ServerFactory) -> None:
        self._make = mariadb

    def create_app(self, tmp_path: Path, name: str) -> AppHandle:
        server = self._make()
        return AppHandle(
            ref=ApplicationRef(kind="MariaDB", name=name),
            connection=connection(server, control=self.control),
            credentials=credentials(),
            extra={"server": server},
        )

    def write_data(self, app: AppHandle, seed: int) -> None:
        write_data(self._server(app), seed)

    def checksum(self, app: AppHandle) -> str:
        return checksum(self._server(app))

    def break_app(self, app: AppHandle) -> AppHandle:
        return app.with_credentials(password="wrong-password-123")

    def local_paths(self, app: AppHandle) -> list[Path]:
        """Physical mode reads and replaces the declared datadir; logical mode uses none."""
        return [Path(app.connection["datadir"])] if self.control else []

    @staticmethod
    def _server(app: AppHandle) -> MariaDBServer:
        server = app.extra["server"]
        assert isinstance(server, MariaDBServer)
        return server


class TestMariaDBConformance(_MariaDBApps):
    """Logical mode, through the built-in ``cozy-default`` class (no class applied)."""


class TestMariaDBPhysicalConformance(_MariaDBApps):
    backup_class_yaml = PHYSICAL_CLASS
    backup_class = "mariadb-physical"
    control = True
