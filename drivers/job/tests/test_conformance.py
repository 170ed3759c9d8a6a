"""The core's conformance kit, run on the generic Job strategy twice: PostgreSQL through
``pg_dump``/``pg_restore`` (real servers, the password only in env) and SQLite files
through the ``sqlite3`` CLI (an explicit ``sh -c`` restore)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cozybackup_job import JobDriver
from cozybackup_postgres.testing import PostgresServer, ServerPool

from cozybackup_core import ApplicationRef
from cozybackup_core.testing import AppHandle, DriverConformance

from conftest import (
    PG_CLASS,
    SQLITE_CLASS,
    pg_checksum,
    pg_connection,
    pg_create_app_db,
    pg_write,
    sqlite_checksum,
    sqlite_write,
)


class TestPostgresThroughJob(DriverConformance):
    driver = JobDriver
    kind = "Postgres"
    backup_class_yaml = PG_CLASS
    backup_class = "pg-job"

    @pytest.fixture(autouse=True)
    def _pool(self, pg_servers: ServerPool) -> None:
        self.pool = pg_servers

    def create_app(self, tmp_path: Path, name: str) -> AppHandle:
        server = self.pool.start()
        pg_create_app_db(server)
        return AppHandle.of(server, "Postgres", name, connection=pg_connection(server))

    def write_data(self, app: AppHandle, seed: int) -> None:
        pg_write(app.extra["server"], seed)

    def checksum(self, app: AppHandle) -> str:
        server: PostgresServer = app.extra["server"]
        return pg_checksum(server)

    def break_app(self, app: AppHandle) -> AppHandle:
        return app.with_credentials(password="not-the-" + app.credentials["password"])


class TestSQLiteThroughJob(DriverConformance):
    driver = JobDriver
    kind = "SQLiteFile"
    api_group = "apps.example.com"
    backup_class_yaml = SQLITE_CLASS
    backup_class = "sqlite-job"

    def create_app(self, tmp_path: Path, name: str) -> AppHandle:
        path = tmp_path / "apps" / name / "data.sqlite"
        path.parent.mkdir(parents=True)
        sqlite_write(path, seed=0)
        return AppHandle(
            ref=ApplicationRef(api_group="apps.example.com", kind="SQLiteFile", name=name),
            connection={"path": str(path)},
            extra={"path": path},
        )

    def write_data(self, app: AppHandle, seed: int) -> None:
        sqlite_write(app.extra["path"], seed)

    def checksum(self, app: AppHandle) -> str:
        return sqlite_checksum(app.extra["path"])

    def break_app(self, app: AppHandle) -> AppHandle:
        # -readonly never creates a file: a database that is not there fails the dump.
        missing = Path(app.connection["path"]).with_name("gone.sqlite")
        return AppHandle(ref=app.ref, connection={"path": str(missing)}, extra=app.extra)
