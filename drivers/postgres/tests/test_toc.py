"""The staged head of an archive (``_toc``): the post-data section restored with
``pg_restore -j`` from it, whatever the size of the table of contents, and never more
than the schema's bytes staged."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest
from cozybackup_postgres import PostgresDriver
from cozybackup_postgres import _pg as pg
from cozybackup_postgres._toc import FIRST_HEAD, staged_head
from cozybackup_postgres.testing import PostgresServer, ServerPool

from cozybackup_core import Deadline, DriverError
from cozybackup_core.testing import LocalPlatform

NS = "tenant-a"


def _server(s: PostgresServer) -> pg.Server:
    return pg.Server(
        host=s.host, port=s.port, user=s.superuser, password=s.password, tools=pg.find_tools()
    )


def _many_objects(server: PostgresServer, db: str, tables: int) -> None:
    """``tables`` tables, each with rows, an index, a check, a foreign key, a trigger and
    a comment: a table of contents of several hundred KiB, mostly post-data."""
    server.psql(f'CREATE DATABASE "{db}"')
    server.psql(
        f"""
CREATE TABLE parent (id int PRIMARY KEY);
INSERT INTO parent SELECT generate_series(1, 10);
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN NEW.note := coalesce(NEW.note, '') || '.'; RETURN NEW; END$$;
DO $$
BEGIN
  FOR i IN 1..{tables} LOOP
    EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, p int REFERENCES parent,
                      note text, CHECK (id > 0))', i);
    EXECUTE format('INSERT INTO t%s SELECT g, 1 + g %% 10, md5(g::text)
                      FROM generate_series(1, 20) g', i);
    EXECUTE format('CREATE INDEX t%s_note ON t%s (note)', i, i);
    EXECUTE format('CREATE TRIGGER t%s_touch BEFORE UPDATE ON t%s
                      FOR EACH ROW EXECUTE FUNCTION touch()', i, i);
    EXECUTE format('COMMENT ON INDEX t%s_note IS %L', i, 'index of table ' || i);
  END LOOP;
END $$;
""",
        db,
    )


def test_a_table_of_contents_larger_than_the_first_head_restores_exactly(
    tmp_path: Path, pg_servers: ServerPool
) -> None:
    server = pg_servers.start()
    _many_objects(server, "wide", 800)
    schema = subprocess.run(
        [str(server.bindir / "pg_dump"), "-Fc", "--schema-only", "-d", "wide"],
        env=server.env(),
        capture_output=True,
        check=True,
    ).stdout
    assert len(schema) > 2 * FIRST_HEAD  # the head is staged at least three times
    plat = LocalPlatform(tmp_path / "home", drivers=(PostgresDriver,))
    ref = plat.declare_app(NS, "db", "Postgres", server.connection(), server.credentials())
    assert plat.backup(NS, ref, "b1").status.phase == "Succeeded"
    backed_up = server.fingerprint()
    server.psql("DROP TABLE t7; DROP INDEX t9_note; DROP TRIGGER t3_touch ON t3", "wide")
    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Succeeded", job.status.message
    assert server.fingerprint() == backed_up
    definitions = server.psql(
        "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 't%_note';"
        "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 't%_touch';"
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f'",
        "wide",
    ).split()
    assert definitions == ["800", "800", "800"]


class _Counted(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self.source = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self.source.read(size)


def test_a_stream_that_is_not_an_archive_fails_after_staging_only_the_first_head(
    pg_session: PostgresServer,
) -> None:
    source = _Counted(os.urandom(8 * FIRST_HEAD))
    with (
        pytest.raises(DriverError) as err,
        staged_head(_server(pg_session), source, deadline=Deadline.after(60), doing="restoring x"),
    ):
        pass
    assert str(err.value).startswith("pg_restore failed while restoring x"), err.value
    assert source.source.tell() == FIRST_HEAD


def test_the_whole_archive_reads_back_from_the_staged_head_and_the_stream(
    pg_session: PostgresServer,
) -> None:
    pg_session.psql(
        "CREATE TABLE IF NOT EXISTS big AS SELECT g, md5(g::text) FROM generate_series(1, 40000) g"
    )
    archive = subprocess.run(
        [str(pg_session.bindir / "pg_dump"), "-Fc", "-Z0", "-d", "postgres"],
        env=pg_session.env(),
        capture_output=True,
        check=True,
    ).stdout
    assert len(archive) > 2 * FIRST_HEAD
    with staged_head(
        _server(pg_session), _Counted(archive), deadline=Deadline.after(60), doing="x"
    ) as (head, whole):
        staged = head.read_bytes()
        assert archive.startswith(staged)
        assert len(staged) == FIRST_HEAD
        # Read as run_tool feeds a tool: in chunks, until one comes back empty.
        assert b"".join(iter(lambda: whole.read(1 << 16), b"")) == archive
