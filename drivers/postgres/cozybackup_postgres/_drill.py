"""Restore drills: a scratch PostgreSQL server to restore into, and the check of what
arrived there."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cozybackup_core import AppLocation, Deadline, DriverError

from ._pg import ADMIN_DB, Server, find_tools, quoted
from ._restore import CLEANUP_SECONDS
from ._server import PostgresServer


class Drills:
    """The optional methods of :class:`~cozybackup_core.Driver` that restore drills use;
    ``PostgresDriver`` inherits them (they keep no state: one driver instance serves every job)."""

    @contextlib.contextmanager
    def scratch_target(self, workdir: Path, like: AppLocation) -> Iterator[AppLocation]:
        """A throwaway PostgreSQL server in ``workdir`` (the worker's own binaries, listening
        on 127.0.0.1 only), stopped and removed when the drill ends."""
        try:
            server = PostgresServer.start(parent=workdir)
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "output", b"") or b""
            raise DriverError(
                "a scratch PostgreSQL server for the restore drill could not be started on "
                "the backup worker; ask the platform operator",
                admin_detail=f"{exc!r}: {detail.decode(errors='replace')[-2000:]}",
            ) from None
        try:
            yield AppLocation(
                ref=like.ref,
                namespace=like.namespace,
                connection=server.connection(),
                credentials=server.credentials(),
            )
        finally:
            server.destroy()

    def smoke_check(self, target: AppLocation, driver_metadata: Mapping[str, Any]) -> str:
        """Every database of the backup exists and answers; returns what was restored."""
        server = Server.from_location(target, find_tools())
        # A drill's check runs after the job's restore: it gets the time a clean-up gets.
        deadline = Deadline.after(CLEANUP_SECONDS)
        doing = "checking the restored databases"
        present = server.query_json(
            "SELECT coalesce(json_agg(datname), '[]') FROM pg_database WHERE NOT datistemplate",
            deadline=deadline,
            database=ADMIN_DB,
            doing=doing,
        )
        expected = [d for d in driver_metadata.get("databases") or [] if isinstance(d, str)]
        # (Names the core's redactor masked in the metadata cannot be looked for.)
        missing = [d for d in expected if d not in present and "[redacted]" not in d]
        if missing:
            raise DriverError(
                "the restore drill is missing databases: " + ", ".join(quoted(m) for m in missing)
            )
        tables = rows = 0
        for db in present:
            if expected and db not in expected:
                continue  # the scratch server's own "postgres" when the backup had none
            counts = server.query_json(
                """SELECT json_build_object('tables', count(*),
                     'rows', coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint)
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relkind IN ('r', 'p')
                     AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                     AND n.nspname NOT LIKE 'pg_toast%'""",
                deadline=deadline,
                database=db,
                doing=f"checking database {quoted(db)}",
            )
            tables += int(counts["tables"])
            rows += int(counts["rows"])
        n = len(expected) or len(present)
        return f"{n} databases with {tables} tables and about {rows} rows restored and readable"
