"""A throwaway PostgreSQL server: restore drills' scratch targets, tests, demos, benchmarks.

Starts the Debian binaries (``/usr/lib/postgresql/<major>/bin``) in a private temp dir,
listening on 127.0.0.1 only, on a free port, with password (SCRAM) authentication over
TCP.  ``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the
``postgres`` user through ``runuser``.  :meth:`PostgresServer.stop` stops the server by
the PID in ``postmaster.pid`` and waits until that process is gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")
SERVER_USER = "postgres"


def find_bindir() -> Path:
    """``$COZYBACKUP_PG_BINDIR``, else the newest ``/usr/lib/postgresql/*/bin``."""
    env = os.environ.get("COZYBACKUP_PG_BINDIR")
    if env:
        return Path(env)
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else DEFAULT_BINDIR


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def as_server_user(argv: Sequence[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVER_USER, "--", *argv]
    return list(argv)


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for init to reap it counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@attrs.define
class PostgresServer:
    """One running server.  Use :meth:`start` (or :func:`running`) to get one."""

    root: Path
    port: int
    bindir: Path
    superuser: str
    password: str
    pid: int | None = None
    extra_conf: tuple[str, ...] = ()

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def connection(self) -> dict[str, object]:
        """The ``connection`` keys of a local ``Application`` for this server."""
        return {"host": self.host, "port": self.port}

    def credentials(self) -> dict[str, str]:
        return {"username": self.superuser, "password": self.password}

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def start(
        cls,
        *,
        bindir: Path | None = None,
        superuser: str = "cozy_admin",
        password: str | None = None,
        settings: Sequence[str] = (),
        parent: Path | None = None,
    ) -> PostgresServer:
        """initdb + start in a new temp dir (under ``parent`` or the system temp dir).

        As root, ``parent`` is made traversable (``o+x``) for the ``postgres`` user.
        """
        bindir = bindir or find_bindir()
        if parent is not None and os.geteuid() == 0:
            # The server runs as user postgres: it must be able to pass through ``parent``.
            parent.chmod(parent.stat().st_mode | 0o011)
        root = Path(tempfile.mkdtemp(prefix="cozy-pg-", dir=parent))
        server = cls(
            root=root,
            port=0,
            bindir=bindir,
            superuser=superuser,
            password=password or hashlib.sha256(os.urandom(16)).hexdigest()[:24],
            extra_conf=tuple(settings),
        )
        try:
            server._initdb()
            server._start_with_free_port()
        except BaseException:
            server.stop()
            shutil.rmtree(root, ignore_errors=True)
            raise
        return server

    def _initdb(self) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.root.chmod(0o700)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            pw = pwd.getpwnam(SERVER_USER)
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        try:
            self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    self.superuser,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            )
        finally:
            pwfile.unlink()

    def _start_with_free_port(self) -> None:
        last: Exception | None = None
        for _ in range(5):
            self.port = free_port()
            try:
                self._pg_ctl_start()
                return
            except subprocess.CalledProcessError as exc:  # port taken in the meantime?
                last = exc
                if "could not bind" not in self.log_path.read_text(errors="replace"):
                    raise
        assert last is not None
        raise last

    def _pg_ctl_start(self) -> None:
        opts = [
            f"-p {self.port}",
            f"-k {self.root}",
            "-c listen_addresses=127.0.0.1",
            "-c fsync=off",
            "-c full_page_writes=off",
            "-c synchronous_commit=off",
            *(f"-c {s}" for s in self.extra_conf),
        ]
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                "60",
                "-o",
                " ".join(opts),
                "start",
            ]
        )
        self.pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def restart(self) -> None:
        """Start it again (same port) after :meth:`stop` or :meth:`kill`."""
        self._pg_ctl_start()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and make sure its postmaster process is gone."""
        pid = self.pid
        if self.data.exists() and (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run(
                    [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]
                )
        if pid is not None:
            deadline = time.monotonic() + 30
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.pid = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, argv: Sequence[str]) -> None:
        subprocess.run(
            as_server_user(argv),
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.root,
        )

    # ------------------------------------------------------------------ SQL helpers

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.superuser,
            "PGPASSWORD": self.password,
            "PGSSLMODE": "disable",
            "PGCONNECT_TIMEOUT": "10",
        }

    def psql(self, sql: str, db: str = "postgres", *, check: bool = True) -> str:
        """Run SQL (one script, stops at the first error); return unaligned output."""
        proc = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                conninfo_dbname(db),
            ],
            input=sql,
            capture_output=True,
            text=True,
            env=self.env(),
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"psql failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def databases(self) -> list[str]:
        out = self.psql(
            "SELECT json_agg(datname ORDER BY datname) FROM pg_database WHERE NOT datistemplate"
        )
        names: list[str] = json.loads(out)
        return names

    def checksum(self, db: str) -> dict[str, str]:
        """md5 of every user table's rows (in a total order) and of every large object."""
        tables = self.psql(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
            db,
        ).split("\n")
        sums: dict[str, str] = {}
        queries = []
        for t in filter(None, tables):
            label = "'" + t.replace("'", "''") + "'"
            # t comes from format('%I.%I'): quoted identifiers.
            queries.append(
                f"SELECT {label}, md5(coalesce(string_agg(x::text, E'\\n' "  # noqa: S608
                f"ORDER BY x::text), '')), count(*) FROM {t} x"
            )
        queries.append(
            "SELECT 'large objects', md5(coalesce(string_agg(oid::text || ':' || "
            "md5(lo_get(oid)), ',' ORDER BY oid), '')), count(*) FROM pg_largeobject_metadata"
        )
        out = self.psql(";\n".join(queries) + ";", db)
        for line in out.split("\n"):
            if line:
                name, digest, count = line.rsplit("|", 2)
                sums[name] = f"{digest}/{count}"
        return sums

    def fingerprint(self, *, exclude_roles: Sequence[str] = ()) -> dict[str, object]:
        """Everything a logical backup must bring back, server-independent.

        Per database: owner, extensions, every table's rows (md5 in a total order) and
        large objects; server-wide: roles, their attributes and memberships, and table
        privileges.  The connecting superuser (whose password differs per server) and
        ``exclude_roles`` are left out.
        """
        skip = {self.superuser, *exclude_roles}
        roles = self.psql(
            "SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, "
            "rolconnlimit, rolpassword IS NOT NULL FROM pg_authid "
            "WHERE rolname !~ '^pg_' ORDER BY 1"
        )
        members = self.psql(
            "SELECT r.rolname, m.rolname FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid "
            "JOIN pg_roles m ON m.oid = a.member ORDER BY 1, 2"
        )
        dbs: dict[str, object] = {}
        for db in self.databases():
            meta = self.psql(
                "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datacl::text "
                "FROM pg_database WHERE datname = current_database();"
                "SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension;"
                "SELECT string_agg(f, ',' ORDER BY f) FROM (SELECT "
                "format('%s.%s:%s/%s', table_schema, table_name, grantee, privilege_type) AS f "
                "FROM information_schema.role_table_grants "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')) g;",
                db,
            )
            dbs[db] = {"meta": _drop_roles(meta, skip), "tables": self.checksum(db)}
        return {
            "roles": _drop_roles(roles, skip),
            "members": _drop_roles(members, skip),
            "databases": dbs,
        }


def _drop_roles(text: str, roles: set[str]) -> list[str]:
    """Lines of psql output, without those mentioning one of ``roles`` as a token."""
    out = []
    for line in text.split("\n"):
        tokens = set(re.split(r"[|,=/:{}]+", line))
        if line and not tokens & roles:
            out.append(line)
    return out


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def conninfo_dbname(name: str) -> str:
    """A libpq conninfo string selecting database ``name`` (any characters, safely quoted)."""
    return "dbname='" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"
