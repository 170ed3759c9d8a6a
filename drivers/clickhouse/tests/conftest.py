"""Fixtures: real ClickHouse 18.16 servers and chdb data directories, one per application."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cozybackup_clickhouse import ClickHouseDriver
from cozybackup_clickhouse.testing import (
    ADMIN_PASSWORD,
    SERVER,
    ChdbApp,
    ClickHouseServer,
    Runner,
    rows,
)

from cozybackup_core import ApplicationRef, ArtifactRecord
from cozybackup_core.testing import LocalPlatform, driver_class_yaml

if not Path(SERVER).exists():  # pragma: no cover
    pytest.exit(
        f"{SERVER} missing: apt-get install clickhouse-server clickhouse-client", returncode=4
    )

ServerFactory = Callable[[], ClickHouseServer]
ChdbFactory = Callable[[str], ChdbApp]


@pytest.fixture
def clickhouse() -> Iterator[ServerFactory]:
    """``clickhouse()`` starts a fresh 18.16 server; every one is stopped by PID after the test."""
    servers: list[ClickHouseServer] = []

    def make() -> ClickHouseServer:
        server = ClickHouseServer.start()
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.destroy()
        assert not any(s.running for s in servers)


@pytest.fixture
def chdb_dir(tmp_path: Path) -> Iterator[ChdbFactory]:
    """``chdb_dir(name)`` makes an empty chdb data directory under the test's tmp_path."""
    made: list[Path] = []

    def make(name: str) -> ChdbApp:
        path = tmp_path / "chdb" / name
        made.append(path)
        return ChdbApp(path)

    try:
        yield make
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------- platform helpers

NS = "tenant-a"


def class_yaml(name: str, parameters: str) -> str:
    return driver_class_yaml(ClickHouseDriver, name, parameters)


def make_platform(
    tmp_path: Path, driver: type[ClickHouseDriver] = ClickHouseDriver
) -> LocalPlatform:
    return LocalPlatform(tmp_path / "home", drivers=(driver,))


def declare(
    plat: LocalPlatform,
    name: str,
    app: ClickHouseServer | ChdbApp,
    *,
    creds: dict[str, str] | None = None,
) -> ApplicationRef:
    if isinstance(app, ClickHouseServer):
        return plat.declare_app(
            NS, name, "ClickHouse", app.connection(), creds or app.credentials()
        )
    return plat.declare_app(NS, name, "ClickHouse", app.connection())


def assert_nothing_committed(plat: LocalPlatform) -> None:
    assert plat.backups(NS) == []
    assert plat.leftovers() == []
    assert plat.host.objects.list(ArtifactRecord) == []


def assert_no_secrets(
    plat: LocalPlatform, *apps: ClickHouseServer | ChdbApp, extra: tuple[str, ...] = ()
) -> None:
    view = plat.tenant_view(NS)
    secrets = [ADMIN_PASSWORD, "127.0.0.1", str(plat.home), *extra]
    for app in apps:
        secrets.append(str(app.base if isinstance(app, ClickHouseServer) else app.path))
    leaks = [s for s in secrets if s in view]
    assert not leaks, f"tenant-visible text contains {leaks}"
    assert "Traceback" not in view


def scratch_databases(run: Runner) -> list[str]:
    return [
        r[0]
        for r in rows(run, "SELECT name FROM system.databases")
        if r[0].startswith("cozybackup_")
    ]
