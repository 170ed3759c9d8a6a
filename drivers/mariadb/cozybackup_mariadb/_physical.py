"""Physical mode: ``mariabackup --stream=xbstream`` out; unpack, prepare and swap in.

Backup
    ``mariabackup --backup --stream=xbstream`` reads the server's data files (so the
    backup worker must see the data directory: same host, or the volume mounted)
    and streams them into the one artifact stream ``datadir.xbstream``.

Restore, step by step (the target is untouched until step 5):

1.  Checks: the target's ``datadir`` is declared; if a server is running on it, the
    host must be able to stop and start it (``stopCommand``/``startCommand``),
    otherwise the restore is refused before anything happens; the local
    ``mariabackup`` must be of the backup's MariaDB major.minor version.
2.  ``mbstream -x`` unpacks the stream into a fresh directory beside the datadir
    (same filesystem, so the swap is a rename).
3.  ``mariabackup --prepare`` makes it consistent; it gets the datadir's owner.
4.  The server is stopped (``stopCommand``), and the driver waits until no process
    holds the InnoDB/Aria lock files of the datadir.
5.  The datadir is renamed aside and the prepared directory takes its name.
6.  The server is started (``startCommand``) and must answer within
    ``serviceTimeoutSeconds``.  If it does not, the previous datadir is put back and
    the server started again: a failed restore leaves the target as it was.
7.  The previous datadir is deleted.

A physical restore replaces the whole server, accounts included: afterwards the
target accepts the *source's* passwords.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from cozybackup_core import (
    BackupContext,
    Deadline,
    DriverError,
    RestoreContext,
    UnsupportedError,
    run_admin_command,
)

from ._conn import Server, find_tool, misconfigured, run
from ._conn import query as sql_query
from ._params import MariaDBParameters

DATADIR_STREAM = "datadir.xbstream"
FORMAT = 1
_LOCK_FILES = ("ibdata*", "aria_log_control")
_POLL = 0.2


# ---------------------------------------------------------------------- backup


def backup(
    ctx: BackupContext, server: Server, params: MariaDBParameters, deadline: Deadline
) -> None:
    tool = find_tool("mariabackup", "mariadb-backup")
    with (
        server.option_file() as cnf,
        tempfile.TemporaryDirectory(prefix="cozybackup-mariabackup-") as work,
    ):
        ctx.progress.stage("connecting")
        version, datadir, size = sql_query(
            server,
            cnf,
            [
                "SELECT VERSION()",
                "SELECT @@datadir",
                "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.TABLES",
            ],
            deadline=deadline,
            doing="connecting to the server",
        )
        server_version = version[0][0]
        local = server.datadir or datadir[0][0]
        if not Path(local, "mysql").is_dir():
            raise DriverError(
                "a physical backup reads the server's data files, and this backup worker "
                "cannot see them; ask the platform operator (or use mode: logical)",
                admin_detail=f"{server.ref}: no datadir with a mysql/ schema at {local!r}",
            )
        argv = [
            tool,
            f"--defaults-file={cnf}",
            "--backup",
            "--stream=xbstream",
            f"--target-dir={work}",
            f"--tmpdir={work}",
            f"--parallel={params.parallel}",
        ]
        if server.datadir:
            argv.append(f"--datadir={server.datadir}")
        ctx.progress.stage("copying data files", bytes_total=int(size[0][0] or 0) or None)
        with ctx.artifact.open(DATADIR_STREAM) as out:
            run(
                argv,
                stdout=out,
                deadline=deadline,
                what="mariabackup",
                doing="copying the data files",
            )
    ctx.metadata.update({"mode": "physical", "format": FORMAT, "serverVersion": server_version})
    ctx.tool_versions["mariadb-server"] = server_version
    ctx.tool_versions["mariabackup"] = _mariabackup_version(tool)


# ---------------------------------------------------------------------- restore


def restore(
    ctx: RestoreContext, server: Server, params: MariaDBParameters, deadline: Deadline
) -> None:
    if server.datadir is None:
        raise misconfigured(
            server.ref,
            "a physical restore needs connection key 'datadir' (the target's data directory)",
        )
    datadir = Path(server.datadir)
    if datadir.is_mount():
        raise misconfigured(
            server.ref,
            f"datadir {datadir} is a mount point and cannot be swapped by a rename; "
            "declare a directory inside the volume as the datadir",
        )
    running = in_use(datadir) or server.answers()
    if running and not server.can_stop_and_start:
        where = "in place" if ctx.in_place else "into this application"
        raise UnsupportedError(
            f"a physical backup cannot be restored {where}: the platform cannot stop and "
            "start this MariaDB server here. Restore it into a new, stopped MariaDB "
            "application, or use a BackupClass with mode: logical",
            admin_detail=f"{server.ref}: server running on {datadir} and no "
            "stopCommand/startCommand in its connection settings",
        )
    tool = find_tool("mariabackup", "mariadb-backup")
    unpack = find_tool("mbstream")
    _check_version(ctx, tool)
    uid, gid, mode = _ownership(server, datadir)
    parent = datadir.parent
    if not parent.is_dir():
        raise misconfigured(server.ref, f"the parent directory of datadir {datadir} does not exist")
    with _file_errors(server, "make a staging directory beside the data directory"):
        stage = Path(tempfile.mkdtemp(prefix=f".{datadir.name}.cozybackup-restore-", dir=parent))
    try:
        ctx.progress.stage("unpacking the data files")
        with ctx.artifact.open(DATADIR_STREAM) as stream:
            run(
                [unpack, "-x", "-C", str(stage), f"--parallel={params.parallel}"],
                stdin=stream,
                deadline=deadline,
                what="mbstream",
                doing="unpacking the backup; the target was not touched",
            )
        ctx.progress.stage("preparing the data files")
        run(
            [tool, "--no-defaults", "--prepare", f"--target-dir={stage}", "--use-memory=256M"],
            deadline=deadline,
            what="mariabackup --prepare",
            doing="preparing the backup; the target was not touched",
        )
        with _file_errors(server, "hand the restored files to the database's user"):
            _chown_tree(stage, uid, gid)
            stage.chmod(mode)
        deadline.check()
        if running:
            ctx.progress.stage("stopping the server")
            try:
                _stop(server, datadir, deadline)
            except DriverError:
                if not server.answers():  # it went half-way down: bring it back
                    with contextlib.suppress(DriverError):
                        _start(server, datadir, Deadline.after(server.service_timeout))
                raise
        ctx.progress.stage("putting the restored data in place")
        try:
            old = _swap_in(datadir, stage)
        except OSError as exc:
            if running:
                with contextlib.suppress(DriverError):
                    _start(server, datadir, Deadline.after(server.service_timeout))
            raise DriverError(
                "the restored data could not be put in place; the server's data was not "
                "changed. Ask the platform operator",
                admin_detail=f"{server.ref}: swapping {stage} into {datadir}: {exc!r}",
            ) from None
        if server.start_command is not None:
            ctx.progress.stage("starting the server")
            try:
                _start(server, datadir, deadline)
            except DriverError as exc:
                _roll_back(ctx, server, datadir, stage, old, exc, was_running=running)
        elif running:  # pragma: no cover - running implies both commands (checked above)
            raise AssertionError("running server without a start command")
        else:
            ctx.log.warning(
                "%s: data restored into %s; the server was not running and has no "
                "startCommand, so it was left stopped",
                server.ref,
                datadir,
            )
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _check_version(ctx: RestoreContext, tool: str) -> None:
    taken = str(ctx.driver_metadata.get("serverVersion", ""))
    local = _mariabackup_version(tool)
    want, have = _major_minor(taken), _major_minor(local)
    if want and have and want != have:
        raise DriverError(
            f"the backup was taken from MariaDB {want} and this worker's mariabackup is "
            f"{have}; a physical backup can only be restored with the same MariaDB "
            "version (use a logical backup to move between versions)",
            admin_detail=f"backup server {taken!r}, local {local!r}",
        )


def _major_minor(version: str) -> str | None:
    m = re.search(r"(\d+)\.(\d+)\.\d+", version)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def _mariabackup_version(tool: str) -> str:
    try:
        out = subprocess.run(
            [tool, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stderr + out.stdout).strip()
    m = re.search(r"MariaDB server (\S+)", text)
    return m.group(1) if m else text[:100] or "unknown"


# ---------------------------------------------------------------------- the datadir


def in_use(datadir: Path) -> bool:
    """Whether a server holds the datadir: InnoDB and Aria keep fcntl locks on their files."""
    for pattern in _LOCK_FILES:
        for path in datadir.glob(pattern):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    return True
            else:
                fcntl.lockf(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
    return False


def _ownership(server: Server, datadir: Path) -> tuple[int, int, int]:
    """uid, gid and mode the restored datadir gets: declared, else the current one's."""
    if server.datadir_owner:
        user, _, group = server.datadir_owner.partition(":")
        try:
            pw = pwd.getpwnam(user)
            gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
        except KeyError:
            raise misconfigured(
                server.ref, f"datadirOwner {server.datadir_owner!r}: no such user or group"
            ) from None
        mode = datadir.stat().st_mode & 0o7777 if datadir.exists() else 0o750
        return pw.pw_uid, gid, mode
    ref = datadir if datadir.exists() else datadir.parent
    st = ref.stat()
    mode = st.st_mode & 0o7777 if datadir.exists() else 0o750
    return st.st_uid, st.st_gid, mode


@contextlib.contextmanager
def _file_errors(server: Server, doing: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise DriverError(
            f"the backup worker could not {doing}; the target was not touched. Ask the "
            "platform operator",
            admin_detail=f"{server.ref}: {exc!r}",
        ) from None


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    if (os.geteuid(), os.getegid()) == (uid, gid):
        return
    try:
        os.chown(root, uid, gid)
        for base, dirs, files in os.walk(root):
            for name in dirs + files:
                os.lchown(Path(base, name), uid, gid)
    except PermissionError as exc:
        raise DriverError(
            "the restored data files could not be given to the database's system user; "
            "ask the platform operator",
            admin_detail=f"chown to {uid}:{gid} under {root}: {exc!r}",
        ) from None


def _swap_in(datadir: Path, stage: Path) -> Path | None:
    """Rename the datadir aside and the stage into its place; returns where the old one is."""
    old: Path | None = None
    if datadir.exists():
        old = datadir.with_name(f".{datadir.name}.cozybackup-old-{secrets.token_hex(6)}")
        datadir.rename(old)
    try:
        stage.rename(datadir)
    except OSError:
        if old is not None:
            old.rename(datadir)
        raise
    return old


def _roll_back(
    ctx: RestoreContext,
    server: Server,
    datadir: Path,
    stage: Path,
    old: Path | None,
    cause: DriverError,
    *,
    was_running: bool,
) -> NoReturn:
    """The restored data did not start: put the previous datadir back and start it."""
    ctx.log.warning("%s: restored data did not start (%s); rolling back", server.ref, cause)
    # The rollback gets its own time: a half-swapped datadir is worse than a late job.
    grace = Deadline.after(server.service_timeout * 2 + 30)
    try:
        with contextlib.suppress(DriverError):
            _stop(server, datadir, grace)
        if in_use(datadir):
            raise DriverError("the server still holds the restored data")
        datadir.rename(stage)  # removed by the caller's cleanup
        if old is not None:
            old.rename(datadir)
        if was_running:
            _start(server, datadir, grace)
    except (DriverError, OSError) as exc:
        raise DriverError(
            "the restored data did not start, and putting the previous data back failed "
            "too; the server needs the platform operator's attention",
            admin_detail=f"{server.ref}: start failed: {cause.admin_detail or cause}; "
            f"rollback failed: {getattr(exc, 'admin_detail', None) or exc!r}; "
            f"previous data at {old}",
        ) from None
    raise DriverError(
        "the restored data did not start, so the previous data was put back and the "
        "server started again; nothing was changed. Ask the platform operator to check "
        "the server's log",
        admin_detail=f"{server.ref}: {cause.admin_detail or cause}",
    )


# ---------------------------------------------------------------------- stop / start


def _stop(server: Server, datadir: Path, deadline: Deadline) -> None:
    assert server.stop_command is not None
    limit = Deadline.after(min(server.service_timeout, deadline.remaining()))
    _command(server.stop_command, limit, "stopping the server")
    while in_use(datadir) or server.answers(timeout=0.5):
        if limit.expired:
            raise DriverError(
                "the MariaDB server did not stop in time; nothing was changed",
                admin_detail=f"{server.ref}: still running {server.service_timeout:.0f}s "
                f"after stopCommand ({datadir})",
            )
        time.sleep(_POLL)


def _start(server: Server, datadir: Path, deadline: Deadline) -> None:
    assert server.start_command is not None
    limit = Deadline.after(min(server.service_timeout, deadline.remaining()))
    _command(server.start_command, limit, "starting the server")
    while not server.answers(timeout=0.5):
        if limit.expired:
            raise DriverError(
                "the MariaDB server did not start in time",
                admin_detail=f"{server.ref}: no answer {server.service_timeout:.0f}s after "
                f"startCommand ({datadir})",
            )
        time.sleep(_POLL)


def _command(argv: tuple[str, ...], limit: Deadline, doing: str) -> None:
    """Run an admin-declared control command (stop/start the server)."""
    run_admin_command(argv, deadline=limit, doing=doing)
