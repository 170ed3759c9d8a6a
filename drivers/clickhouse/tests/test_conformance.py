"""The core's conformance kit, against a real ClickHouse 18.16 server and against chdb."""

from __future__ import annotations

from pathlib import Path

import pytest
from cozybackup_clickhouse import ClickHouseDriver
from cozybackup_clickhouse.testing import ChdbApp, ClickHouseServer, checksum, write_dataset

from cozybackup_core import APPS_GROUP, ApplicationRef
from cozybackup_core.testing import AppHandle, DriverConformance

from conftest import ChdbFactory, ServerFactory


class TestServerConformance(DriverConformance):
    """Logical mode through the HTTP interface, on the built-in ``cozy-default`` class."""

    driver = ClickHouseDriver
    kind = "ClickHouse"

    @pytest.fixture(autouse=True)
    def _servers(self, clickhouse: ServerFactory) -> None:
        self._start = clickhouse

    def create_app(self, tmp_path: Path, name: str) -> AppHandle:
        return AppHandle.of(self._start(), "ClickHouse", name)

    def write_data(self, app: AppHandle, seed: int) -> None:
        write_dataset(self._server(app).run, seed)

    def checksum(self, app: AppHandle) -> str:
        return checksum(self._server(app).run)

    def break_app(self, app: AppHandle) -> AppHandle:
        return app.with_credentials(password="not-the-" + app.credentials["password"])

    @staticmethod
    def _server(app: AppHandle) -> ClickHouseServer:
        server = app.extra["server"]
        assert isinstance(server, ClickHouseServer)
        return server


class TestChdbConformance(DriverConformance):
    """The same driver code on chdb (ClickHouse 26.x in this process)."""

    driver = ClickHouseDriver
    kind = "ClickHouse"

    @pytest.fixture(autouse=True)
    def _dirs(self, chdb_dir: ChdbFactory) -> None:
        self._make = chdb_dir

    def create_app(self, tmp_path: Path, name: str) -> AppHandle:
        app = self._make(name)
        return AppHandle(
            ref=ApplicationRef(api_group=APPS_GROUP, kind="ClickHouse", name=name),
            connection=app.connection(),
            extra={"app": app},
        )

    def write_data(self, app: AppHandle, seed: int) -> None:
        with self._app(app).session() as run:
            write_dataset(run, seed, memory=False, chain_from_view=False)

    def checksum(self, app: AppHandle) -> str:
        with self._app(app).session() as run:
            return checksum(run)

    def break_app(self, app: AppHandle) -> AppHandle:
        broken = dict(app.connection, path=app.connection["path"] + "-missing")
        return AppHandle(ref=app.ref, connection=broken, extra=app.extra)

    @staticmethod
    def _app(app: AppHandle) -> ChdbApp:
        chdb = app.extra["app"]
        assert isinstance(chdb, ChdbApp)
        return chdb
