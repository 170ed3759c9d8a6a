"""Physical mode against real PostgreSQL 15 servers: base backups, WAL archived through
the platform's storage, restores into a fresh data directory to a moment in time."""

from __future__ import annotations

import json
import os
import pwd
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cozybackup_postgres import PostgresDriver
from cozybackup_postgres.testing import PostgresServer, ServerPool, free_port, write_dataset

from cozybackup_core import API_VERSION, ApplicationRef, RestoreJob, load
from cozybackup_core.testing import (
    LocalPlatform,
    driver_class_yaml,
    refused_parameters,
    typed_metadata,
)

from .conftest import BINDIR

NS = "tenant-a"
PHYSICAL = "pg-physical"


@pytest.fixture
def platform(tmp_path: Path) -> LocalPlatform:
    plat = LocalPlatform(tmp_path / "home", drivers=(PostgresDriver,))
    plat.apply(driver_class_yaml(PostgresDriver, PHYSICAL, json.dumps({"mode": "physical"})))
    return plat


class FreshTarget:
    """A data directory that does not exist yet, and the commands that start and stop a
    server on it (as the admin would declare them); :meth:`server` is that server once
    restored (the source's superuser and password: a physical restore brings them)."""

    def __init__(self, source: PostgresServer) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cozy-pg-target-"))
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        self.source = source
        ctl = [str(BINDIR / "pg_ctl"), "-D", str(self.data)]
        as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.start = [*as_pg, *ctl, "-l", str(self.root / "server.log"), "-W", "-o", opts, "start"]
        self.stop = [*as_pg, *ctl, "-m", "fast", "-w", "stop"]

    @property
    def data(self) -> Path:
        return self.root / "data"

    def connection(self, *, commands: bool = True) -> dict[str, Any]:
        conn: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "dataDir": str(self.data)}
        if commands:
            conn.update(startCommand=self.start, stopCommand=self.stop)
        return conn

    def server(self) -> PostgresServer:
        s = PostgresServer(
            root=self.root,
            port=self.port,
            bindir=BINDIR,
            superuser=self.source.superuser,
            password=self.source.password,
        )
        pid = s.data / "postmaster.pid"
        s.pid = int(pid.read_text().split("\n", 1)[0]) if pid.exists() else None
        return s

    def destroy(self) -> None:
        self.server().destroy()


@pytest.fixture
def fresh_targets() -> Iterator[list[FreshTarget]]:
    made: list[FreshTarget] = []
    try:
        yield made
    finally:
        for t in made:
            t.destroy()


def declare(plat: LocalPlatform, name: str, conn: dict[str, Any], src: PostgresServer) -> Any:
    return plat.declare_app(NS, name, "Postgres", conn, src.credentials())


def ok(job: Any) -> None:
    assert job.status.phase == "Succeeded", f"{job.kind} failed: {job.status.message}"


def restore(
    plat: LocalPlatform,
    backup: str,
    name: str,
    target: ApplicationRef | None,
    options: dict[str, Any] | None = None,
) -> RestoreJob:
    spec: dict[str, Any] = {"backupRef": {"name": backup}, "options": options}
    if target is not None:
        spec["targetApplicationRef"] = {
            "apiGroup": target.api_group,
            "kind": target.kind,
            "name": target.name,
        }
    doc = {
        "apiVersion": API_VERSION,
        "kind": "RestoreJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }
    job: RestoreJob = plat.host.objects.create(load(doc))
    return plat.engine.run_restore(job)


# ---------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"mode": "phsyical"}, "mode: must be one of logical, physical"),
        (
            {"mode": "physical", "databases": ["shop"]},
            "databases: means nothing with mode: physical",
        ),
        ({"walArchiving": True}, "walArchiving: means nothing with mode: logical"),
        ({"mode": "physical", "pitrWindowSeconds": 60}, "pitrWindowSeconds: needs walArchiving"),
    ],
)
def test_mode_parameters_are_checked_naming_the_field(
    parameters: dict[str, Any], expected: str
) -> None:
    assert expected in str(refused_parameters(PostgresDriver, json.dumps(parameters)))


# ---------------------------------------------------------------------------- base backups


def test_base_backup_restores_into_a_fresh_data_directory_exactly(
    platform: LocalPlatform, pg_servers: ServerPool, fresh_targets: list[FreshTarget]
) -> None:
    src = pg_servers.start()
    write_dataset(src, seed=3)
    ok(platform.backup(NS, declare(platform, "src", src.connection(), src), "b1", PHYSICAL))
    (backup,) = platform.backups(NS)
    meta = typed_metadata(backup.spec.driver_metadata)
    ident = src.psql("SELECT system_identifier FROM pg_control_system()").strip()
    assert meta["mode"] == "physical"
    assert meta["systemIdentifier"] == ident
    assert meta["serverVersion"] == src.psql("SHOW server_version").strip()
    expected = src.fingerprint()
    src.psql("INSERT INTO public.notes VALUES (-1, 'after the backup')")

    target = FreshTarget(src)
    fresh_targets.append(target)
    copy = declare(platform, "copy", target.connection(), src)
    ok(restore(platform, "b1", "r1", copy))
    restored = target.server()
    assert restored.fingerprint() == expected
    assert restored.psql("SELECT pg_is_in_recovery()").strip() == "f"
    # The recovery settings are gone once it is promoted; the staging directories too.
    assert restored.psql("SHOW restore_command").strip() == ""
    assert sorted(p.name for p in target.root.iterdir() if "cozybackup" in p.name) == []
    view = platform.tenant_view(NS)
    for secret in (str(target.root), src.password, "runuser", "pg_ctl"):
        assert secret not in view


def test_in_place_without_stop_and_start_commands_is_refused_untouched(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    src = pg_servers.start()
    conn = {**src.connection(), "dataDir": str(src.data)}
    ref = declare(platform, "db", conn, src)
    ok(platform.backup(NS, ref, "b1", PHYSICAL))
    src.psql("CREATE TABLE after_backup (x int)")
    before = src.fingerprint()
    job = restore(platform, "b1", "r1", None)
    assert job.status.phase == "Failed"
    assert "cannot stop and start this PostgreSQL server" in job.status.message
    assert src.fingerprint() == before
    assert str(src.data) not in platform.tenant_view(NS)
