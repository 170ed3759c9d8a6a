"""The core's conformance kit, run against real PostgreSQL 15 servers.

An application is a whole server (roles are server-wide), so every ``create_app``
starts a fresh one; a to-copy restore goes into a second server.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from cozybackup_postgres import PostgresDriver
from cozybackup_postgres.testing import PostgresServer, ServerPool, write_dataset

from cozybackup_core.testing import AppHandle, DriverConformance


class TestPostgresConformance(DriverConformance):
    driver = PostgresDriver
    kind = "Postgres"

    @pytest.fixture(autouse=True)
    def _pool(self, pg_servers: ServerPool) -> None:
        self.pool = pg_servers

    def create_app(self, tmp_path: Path, name: str) -> AppHandle:
        return AppHandle.of(self.pool.start(), "Postgres", name)

    def write_data(self, app: AppHandle, seed: int) -> None:
        write_dataset(app.extra["server"], seed)

    def checksum(self, app: AppHandle) -> str:
        server: PostgresServer = app.extra["server"]
        text = json.dumps(server.fingerprint(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def break_app(self, app: AppHandle) -> AppHandle:
        return app.with_credentials(password="not-the-" + app.credentials["password"])
