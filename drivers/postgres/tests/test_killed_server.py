"""A target server killed with SIGKILL in the middle of a restore (an OOM kill, a node
lost): the RestoreJob fails saying where each database's previous contents are, and once
the server is up again they are there exactly, and the same backup restores exactly."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cozybackup_postgres import PostgresDriver
from cozybackup_postgres._toc import FIRST_HEAD
from cozybackup_postgres.testing import PostgresServer, ServerPool, write_dataset

from cozybackup_core import RestoreContext
from cozybackup_core.testing import LocalPlatform

NS = "tenant-a"
#: The database whose restore the server dies in, and how far into its stream: past the
#: head a restore stages first (the table of contents, read before anything is changed),
#: 64 KiB into what pg_restore streams into the database.
VICTIM_DB = "shop"
KILL_AT = FIRST_HEAD + 64 * 1024


class KilledServerDriver(PostgresDriver):
    """Restores normally, but the server is killed while ``VICTIM_DB``'s data arrives."""

    victim: PostgresServer | None = None

    def restore(self, ctx: RestoreContext) -> None:
        if self.victim is not None:
            ctx.artifact = _KillHalfway(ctx.artifact, self.victim)
        super().restore(ctx)


class _KillHalfway:
    """The artifact; the victim database's stream stops halfway until the server, which
    pg_restore is by then writing into, has been killed."""

    def __init__(self, source: Any, server: PostgresServer) -> None:
        self.source, self.server = source, server

    def names(self) -> list[str]:
        return list(self.source.names())

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[Any]:
        with self.source.open(name) as stream:
            yield _Halfway(stream, self.server) if VICTIM_DB in name else stream


class _Halfway:
    def __init__(self, stream: Any, server: PostgresServer) -> None:
        self.stream, self.server, self.sent, self.killed = stream, server, 0, False

    def read(self, size: int = -1) -> bytes:
        if self.sent >= KILL_AT and not self.killed:
            self.killed = True
            kill_when_restoring(self.server)
        data: bytes = self.stream.read(size if self.killed else min(size, 16 * 1024))
        self.sent += len(data)
        return data


def kill_when_restoring(server: PostgresServer) -> None:
    """SIGKILL the postmaster and every backend, once pg_restore writes into VICTIM_DB."""
    writing = (
        "SELECT count(*) FROM pg_stat_activity "
        f"WHERE application_name = 'pg_restore' AND datname = '{VICTIM_DB}'"
    )
    end = time.monotonic() + 60
    while server.psql(writing).strip() != "1" and time.monotonic() < end:
        time.sleep(0.1)
    assert server.pid is not None
    family = [server.pid, *_children(server.pid)]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    # Gone, not only dead: a zombie postmaster's PID in postmaster.pid stops a restart.
    end = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in family) and time.monotonic() < end:
        time.sleep(0.05)


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry.name))
    return found


def test_a_server_killed_mid_restore_says_where_the_data_is_and_a_rerun_restores_it(
    tmp_path: Path, pg_servers: ServerPool
) -> None:
    plat = LocalPlatform(tmp_path / "home", drivers=(KilledServerDriver,))
    server = pg_servers.start()
    write_dataset(server, seed=3, rows=3000)
    ref = plat.declare_app(NS, "db", "Postgres", server.connection(), server.credentials())
    assert plat.backup(NS, ref, "b1").status.phase == "Succeeded"
    backed_up = server.fingerprint()
    write_dataset(server, seed=4, rows=3000)
    before = server.fingerprint()
    KilledServerDriver.victim = server
    try:
        job = plat.restore(NS, "b1", "r1")
    finally:
        KilledServerDriver.victim = None
    assert job.status.phase == "Failed"
    message = job.status.message or ""
    assert f'while restoring database "{VICTIM_DB}"' in message, message
    # Where each database's previous contents are: the server was gone, nothing moved back.
    asides = dict(
        re.findall(
            r'database "([^"]+)" could not be put back: its previous contents are in '
            r'database "(cozybackup_old_[0-9a-f]+)"',
            message,
        )
    )
    assert VICTIM_DB in asides, message
    assert "the roles and tablespaces could not be put back" in message
    assert "ask the platform operator" in message

    server.restart()  # the operator brings the server back; it recovers from its WAL
    assert server.pid is not None
    databases = before["databases"]
    assert isinstance(databases, dict)
    for name, aside in asides.items():
        # Set aside closed to connections; the operator opens it to look.
        server.psql(f'ALTER DATABASE "{aside}" WITH ALLOW_CONNECTIONS true')
        assert server.checksum(aside) == databases[name]["tables"], name
    job = plat.restore(NS, "b1", "r2")
    assert job.status.phase == "Succeeded", job.status.message
    after = server.fingerprint()
    assert isinstance(after["databases"], dict)
    for aside in asides.values():  # left for the operator, as the message said
        del after["databases"][aside]
    assert after == backed_up
    view = plat.tenant_view(NS)
    for private in (server.password, str(server.root), f"port={server.port}"):
        assert private not in view
