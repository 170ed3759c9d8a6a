"""Restore drills: a scratch PostgreSQL server to restore into, and the check of what
arrived there.

One scratch target serves both modes.  A logical Backup is restored into the running
scratch server as into any application.  For a physical one the scratch location also
declares its data directory and the commands that stop and start a server on it (as an
admin declares them for a physical target), so the physical restore stops the scratch
server, puts the restored data directory in its place and starts it.  The restored
server has the source's roles only, so the drill logs in as its bootstrap superuser
(read from its files, ``_catalog``) through a Unix socket in the scratch directory
(mode 0700), which the scratch's own ``pg_hba.conf`` trusts; TCP on 127.0.0.1 is refused
to every role.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from cozybackup_core import AppLocation, Deadline, DriverError

from ._catalog import bootstrap_superuser
from ._pg import ADMIN_DB, SCRATCH_SOCKET, Server, find_tools, quoted
from ._restore import CLEANUP_SECONDS
from ._server import SERVER_USER, PostgresServer, as_server_user

_HBA = "drill_hba.conf"


def physical_login(loc: AppLocation, data_dir: Path) -> AppLocation:
    """``loc`` as a drill logs in to a restored physical backup in it: its bootstrap
    superuser, through the scratch socket; any other location as it is."""
    socket = loc.connection.get(SCRATCH_SOCKET)
    if not isinstance(socket, str):
        return loc
    conn = {k: v for k, v in loc.connection.items() if k != SCRATCH_SOCKET}
    return attrs.evolve(
        loc,
        connection={**conn, "host": socket},
        credentials={"username": bootstrap_superuser(data_dir)},
    )


def _physical_commands(server: PostgresServer) -> dict[str, Any]:
    """The connection keys that let a physical restore replace the scratch server."""
    hba = server.root / _HBA
    hba.write_text("# restore drill: the scratch socket only\nlocal all all trust\n")
    if os.geteuid() == 0:
        pw = pwd.getpwnam(SERVER_USER)
        os.chown(hba, pw.pw_uid, pw.pw_gid)
    hba.chmod(0o600)
    # Settings of the source that would not hold here are overridden (command-line
    # options win over its postgresql.conf and postgresql.auto.conf).
    opts = [
        f"-p {server.port}",
        f"-k {shlex.quote(str(server.root))}",
        "-c listen_addresses=127.0.0.1",
        f"-c hba_file={shlex.quote(str(hba))}",
        "-c ssl=off",
        "-c archive_mode=off",
        "-c fsync=off",
    ]
    ctl = [str(server.bindir / "pg_ctl"), "-D", str(server.data)]
    log = ["-l", str(server.root / "restored.log")]
    return {
        "dataDir": str(server.data),
        "startCommand": as_server_user([*ctl, *log, "-W", "-o", " ".join(opts), "start"]),
        "stopCommand": as_server_user([*ctl, "-m", "fast", "-w", "stop"]),
        SCRATCH_SOCKET: str(server.root),
    }


class Drills:
    """The optional methods of :class:`~cozybackup_core.Driver` that restore drills use;
    ``PostgresDriver`` inherits them (they keep no state: one driver instance serves every job)."""

    @contextlib.contextmanager
    def scratch_target(self, workdir: Path, like: AppLocation) -> Iterator[AppLocation]:
        """A throwaway PostgreSQL server in ``workdir`` (the worker's own binaries, listening
        on 127.0.0.1 only), stopped and removed when the drill ends; a physical restore
        replaces its data directory (see the module's docstring)."""
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
                connection={**server.connection(), **_physical_commands(server)},
                credentials=server.credentials(),
            )
        finally:
            server.destroy()

    def smoke_check(self, target: AppLocation, driver_metadata: Mapping[str, Any]) -> str:
        """Every database of the backup exists and answers; returns what was restored."""
        if driver_metadata.get("mode") == "physical":
            target = physical_login(target, Path(str(target.connection.get("dataDir"))))
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
