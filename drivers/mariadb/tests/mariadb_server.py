"""Real MariaDB servers for the tests (Debian ``mariadb-server`` 10.11).

Each server lives in its own private temp dir (datadir, socket, pid file, error log),
listens on 127.0.0.1 on a free port and is stopped by its PID.  A template datadir is
made once per session (``mariadb-install-db`` takes seconds) and copied per server.

This file is also the servers' control program, so that an application can declare
``startCommand``/``stopCommand`` the driver runs for physical restores::

    python mariadb_server.py start <dir> <port> [--fail-once FLAGFILE]
    python mariadb_server.py stop <dir>

``start`` forks ``mariadbd`` into its own session and returns at once (the driver
waits for the server to answer); ``stop`` sends SIGTERM to the PID in the pid file and
waits until the process is gone.  Only the standard library is used here.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve()
MYSQL_USER = "mysql"
#: The account the platform uses in the tests (cozystack uses root; a distinct name
#: makes leak checks meaningful: "root" is a common word).
ADMIN_USER = "cozy_admin"
#: Every character an option file or a shell could trip on.
ADMIN_PASSWORD = "p@ss wo\"rd'#;$x\\y`" + secrets.token_hex(6)
SERVER_OPTIONS = (
    "--skip-log-bin",
    "--skip-name-resolve",
    "--innodb-log-file-size=16M",
    "--innodb-buffer-pool-size=64M",
    "--innodb-flush-log-at-trx-commit=0",
    "--character-set-server=utf8mb4",
    "--collation-server=utf8mb4_general_ci",
)


def mariadbd() -> str:
    path = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    if not Path(path).exists():
        raise RuntimeError("mariadbd not found: apt-get install mariadb-server")
    return path


def server_argv(base: Path, port: int) -> list[str]:
    """The server's command line; ``<base>/extra-options`` adds options, one a line."""
    extra = base / "extra-options"
    more = extra.read_text().split() if extra.exists() else []
    return [
        mariadbd(),
        "--no-defaults",
        f"--user={MYSQL_USER}",
        f"--datadir={base / 'data'}",
        f"--port={port}",
        "--bind-address=127.0.0.1",
        f"--socket={base / 'mysqld.sock'}",
        f"--pid-file={base / 'mysqld.pid'}",
        f"--log-error={base / 'err.log'}",
        *SERVER_OPTIONS,
        *more,
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return len(s.recv(5)) == 5
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# ---------------------------------------------------------------------- control program


def _spawn(base: Path, port: int) -> int:
    """Fork mariadbd into its own session (no pipes held); returns its PID."""
    argv = server_argv(base, port)
    pid = os.fork()
    if pid == 0:  # child: become mariadbd
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.closerange(3, 65536)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    return pid


def stop_pid(pid: int, marker: str, timeout: float = 60.0) -> None:
    """SIGTERM the server with this PID (only if its command line names ``marker``)."""
    if not alive(pid) or marker not in cmdline(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.05)


def read_pid(base: Path) -> int | None:
    try:
        return int((base / "mysqld.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def main(argv: Sequence[str]) -> int:
    cmd, base = argv[0], Path(argv[1])
    if cmd == "start":
        port = int(argv[2])
        if len(argv) > 4 and argv[3] == "--fail-once":
            flag = Path(argv[4])
            if flag.exists():
                flag.unlink()
                print("refusing to start (test: --fail-once)", file=sys.stderr)
                return 3
        print(_spawn(base, port))
        return 0
    if cmd == "stop":
        pid = read_pid(base)
        if pid is not None:
            stop_pid(pid, str(base / "data"))
        return 0
    print(f"usage: {HERE.name} start DIR PORT | stop DIR", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------- for the tests


def private_dir(prefix: str) -> Path:
    """A temp dir the mysql user owns (pytest's tmp_path is not readable by mysql)."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    pw = pwd.getpwnam(MYSQL_USER)
    os.chown(base, pw.pw_uid, pw.pw_gid)
    return base


def chown_tree(root: Path) -> None:
    pw = pwd.getpwnam(MYSQL_USER)
    os.chown(root, pw.pw_uid, pw.pw_gid)
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(Path(dirpath, name), pw.pw_uid, pw.pw_gid)


class MariaDBServer:
    """One server in ``base``; ``pids`` remembers every PID it ever ran as."""

    def __init__(self, base: Path, port: int | None = None) -> None:
        self.base = base
        self.port = port or free_port()
        self.pids: set[int] = set()

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def marker(self) -> str:
        return str(self.datadir)

    def control(self, command: str, *extra: str) -> list[str]:
        args = [sys.executable, str(HERE), command, str(self.base)]
        if command == "start":
            args.append(str(self.port))
        return [*args, *extra]

    def start(self, timeout: float = 60.0) -> None:
        out = subprocess.run(
            self.control("start"), capture_output=True, text=True, timeout=30, check=True
        )
        pid = int(out.stdout.strip())
        self.pids.add(pid)
        end = time.monotonic() + timeout
        while not answers(self.port):
            if not alive(pid) or time.monotonic() > end:
                raise RuntimeError(f"mariadbd did not start:\n{self.error_log()}")
            time.sleep(0.05)

    def current_pid(self) -> int | None:
        pid = read_pid(self.base)
        if pid is not None and alive(pid) and self.marker in cmdline(pid):
            self.pids.add(pid)
            return pid
        return None

    def running(self) -> bool:
        return self.current_pid() is not None or answers(self.port)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        pid = self.current_pid()
        if pid is not None:
            os.kill(pid, sig)
            while alive(pid):
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop by PID (the pid file's and every PID seen), never by name."""
        self.current_pid()
        for pid in sorted(self.pids):
            stop_pid(pid, self.marker)

    def error_log(self) -> str:
        try:
            return (self.base / "err.log").read_text(errors="replace")[-4000:]
        except OSError:
            return "(no error log)"

    # -- SQL through the real client (no Python driver needed)

    def option_file(self, user: str, password: str) -> Path:
        path = self.base / f"client-{secrets.token_hex(4)}.cnf"
        esc = password.replace("\\", "\\\\").replace('"', '\\"')
        path.write_text(
            f'[client]\nuser="{user}"\npassword="{esc}"\nhost=127.0.0.1\nport={self.port}\n'
            "protocol=TCP\n"
        )
        path.chmod(0o600)
        return path

    def sql(
        self,
        script: str,
        *,
        user: str = ADMIN_USER,
        password: str = ADMIN_PASSWORD,
        database: str | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        cnf = self.option_file(user, password)
        try:
            args = [
                shutil.which("mariadb") or "mariadb",
                f"--defaults-file={cnf}",
                "--batch",
                "--skip-column-names",
                "--default-character-set=utf8mb4",
            ]
            if database:
                args.append(database)
            out = subprocess.run(
                args, input=script, capture_output=True, text=True, timeout=120, check=False
            )
        finally:
            cnf.unlink()
        if check and out.returncode != 0:
            raise RuntimeError(f"SQL failed ({out.returncode}): {out.stderr}\n{script[:500]}")
        return out

    def rows(self, query: str, **kw: str) -> list[list[str]]:
        out = self.sql(query, **kw).stdout  # type: ignore[arg-type]
        return [line.split("\t") for line in out.splitlines()]


def make_template(base: Path) -> Path:
    """Install a datadir once, with the platform's account; returns the data dir."""
    data = base / "data"
    subprocess.run(
        [
            shutil.which("mariadb-install-db") or "mariadb-install-db",
            "--no-defaults",
            f"--user={MYSQL_USER}",
            f"--datadir={data}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--innodb-log-file-size=16M",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = MariaDBServer(base)
    server.start()
    try:
        esc = ADMIN_PASSWORD.replace("\\", "\\\\").replace("'", "\\'")
        server.sql(
            f"CREATE USER '{ADMIN_USER}'@'%' IDENTIFIED BY '{esc}';\n"
            f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'%' WITH GRANT OPTION;\n"
            # As root has: a restore re-grants the tenants' PROXY privileges.
            f"GRANT PROXY ON ''@'%' TO '{ADMIN_USER}'@'%' WITH GRANT OPTION;\n"
            # Only the socket root is left: no passwordless account over TCP.
            "DROP USER IF EXISTS 'root'@'127.0.0.1', 'root'@'::1';\n"
            "DELETE FROM mysql.global_priv WHERE User='root' AND Host NOT IN "
            "('localhost', '127.0.0.1', '::1');\n"
            "FLUSH PRIVILEGES;\n",
            user="root",
            password="",
        )
    finally:
        server.stop()
    return data


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
