"""Real PostgreSQL 15 servers for the driver's tests (Debian binaries, as user postgres).

Every server listens on 127.0.0.1 only, on a free port, in its own temp dir, and is
stopped by its PID (``PostgresServer.destroy``) when the test or the session ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cozybackup_postgres.testing import PostgresServer, ServerPool

BINDIR = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="session", autouse=True)
def _postgres_installed() -> None:
    if not (BINDIR / "initdb").is_file():
        pytest.fail(f"PostgreSQL 15 is not installed ({BINDIR}): apt-get install postgresql")


@pytest.fixture
def pg_servers() -> Iterator[ServerPool]:
    pool = ServerPool(bindir=BINDIR)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="session")
def pg_session() -> Iterator[PostgresServer]:
    """One server shared by the tests that only read from it or use their own databases."""
    pool = ServerPool(bindir=BINDIR)
    try:
        yield pool.start()
    finally:
        pool.close()
