"""Physical mode: ``mariabackup --stream=xbstream`` out; unpack, prepare and swap in.

Backup
    ``mariabackup --backup --stream=xbstream`` reads the server's data files (so the
    backup worker must see the data directory: same host, or the volume mounted)
    and streams them into the one artifact stream ``datadir.xbstream``.  The data
    directory is the one the admin declared (``datadir``), never the server's own
    ``@@datadir``: the server is the tenant's.

Local paths
    The server writes its data directory, and the worker is more privileged.  So the
    declared ``datadir`` and its parents are reached without following links (the
    core's ``LocalDir``) and held open; tools get ``/proc/<pid>/fd/<n>`` names of the
    held directories.  A backup refuses a data directory holding a symlink, a FIFO or
    device, or an InnoDB ``.isl`` file (a table kept elsewhere with ``DATA
    DIRECTORY``): mariabackup would read those targets.  That check runs before
    mariabackup starts; a server that plants a link during the copy is not stopped
    by it (see the README's limits).

Restore, step by step (the target is untouched until step 5):

1.  Checks: the target's ``datadir`` is declared; if a server is running on it, the
    host must be able to stop and start it (``stopCommand``/``startCommand``),
    otherwise the restore is refused before anything happens; the local
    ``mariabackup`` must be of the backup's MariaDB major.minor version.
2.  ``mbstream -x`` unpacks the stream into a fresh 0700 directory beside the datadir
    (same filesystem, so the swap is a rename), reached through its descriptor.
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
import fnmatch
import grp
import os
import pwd
import re
import secrets
import shutil
import stat
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
    LocalDir,
    RestoreContext,
    UnsafeLocalPath,
    UnsupportedError,
    chown_tree,
    run_admin_command,
)

from ._conn import Server, find_tool, misconfigured, run
from ._conn import query as sql_query
from ._params import MariaDBParameters

DATADIR_STREAM = "datadir.xbstream"
FORMAT = 1
_LOCK_FILES = ("ibdata*", "aria_log_control")
_POLL = 0.2
_WHAT = "data directory"  # "the application's data directory is a symbolic link"


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
        if server.datadir is None:
            # @@datadir is the server's word, and the server is the tenant's.
            raise misconfigured(
                server.ref,
                "a physical backup reads the data directory the platform declares: "
                f"connection key 'datadir' is missing (the server reports {datadir[0][0]!r})",
            )
        with LocalDir.open(server.datadir, what=_WHAT) as data:
            if not _has_schema(data):
                raise DriverError(
                    "a physical backup reads the server's data files, and this backup worker "
                    "cannot see them; ask the platform operator (or use mode: logical)",
                    admin_detail=f"{server.ref}: no mysql/ schema in datadir "
                    f"{server.datadir!r} (the server reports {datadir[0][0]!r})",
                )
            _refuse_outside_data(server, data)
            argv = [
                tool,
                f"--defaults-file={cnf}",
                "--backup",
                "--stream=xbstream",
                f"--target-dir={work}",
                f"--tmpdir={work}",
                f"--parallel={params.parallel}",
                # The held directory, not the name: it cannot be swapped under the copy.
                f"--datadir={data.fd_path}",
            ]
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
    # The whole data directory: every database, account and grant, byte for byte.
    ctx.resources.update(
        {"mode": "physical", "serverVersion": server_version, "dataBytes": int(size[0][0] or 0)}
    )
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
    # The parent is held open (reached without links) for the whole restore: every
    # rename, the staging directory and the tools go through it, never through a name
    # looked up again from /.  A link (or a FIFO...) at the datadir's name is refused.
    with LocalDir.open(datadir.parent, what=_WHAT, holds=True) as parent:
        exists = parent.check_entry(datadir.name, what=_WHAT)
        st = parent.lstat(datadir.name)
        if st is not None and st.st_dev != parent.stat().st_dev:
            raise misconfigured(
                server.ref,
                f"datadir {datadir} is a mount point and cannot be swapped by a rename; "
                "declare a directory inside the volume as the datadir",
            )
        _restore(ctx, server, params, deadline, datadir, parent, exists=exists)


def _restore(
    ctx: RestoreContext,
    server: Server,
    params: MariaDBParameters,
    deadline: Deadline,
    datadir: Path,
    parent: LocalDir,
    *,
    exists: bool,
) -> None:
    running = (exists and in_use(datadir)) or server.answers()
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
    uid, gid, mode = _ownership(server, parent, datadir.name)
    name = datadir.name
    with _file_errors(server, "make a staging directory beside the data directory"):
        stage_name = f".{name[:160]}.cozybackup-restore-{secrets.token_hex(6)}"
        os.mkdir(stage_name, 0o700, dir_fd=parent.fd)
    try:
        with parent.open_dir(stage_name, what=_WHAT) as held:
            # Tools reach the stage through its descriptor: renaming the entry in a
            # directory the server can write does not redirect them.
            stage = Path(held.fd_path)
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
                chown_tree(stage, uid, gid)
                os.chmod(held.fd, mode)  # noqa: PTH101 - by descriptor
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
            old = _swap_in(parent, name, stage_name)
        except OSError as exc:
            if running:
                with contextlib.suppress(DriverError):
                    _start(server, datadir, Deadline.after(server.service_timeout))
            raise DriverError(
                "the restored data could not be put in place; the server's data was not "
                "changed. Ask the platform operator",
                admin_detail=f"{server.ref}: swapping {stage_name} into {datadir}: {exc!r}",
            ) from None
        if server.start_command is not None:
            ctx.progress.stage("starting the server")
            try:
                _start(server, datadir, deadline)
            except DriverError as exc:
                _roll_back(ctx, server, datadir, parent, stage_name, old, exc, was_running=running)
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
            _remove(parent, old)
    finally:
        _remove(parent, stage_name)


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
    """Whether a server holds the datadir: InnoDB and Aria keep fcntl locks on their files.

    The directory and its lock files are opened without following links; a lock file that
    is not a regular file is skipped (a FIFO there must not block the worker)."""
    try:
        data = LocalDir.open(datadir, what=_WHAT)
    except UnsafeLocalPath:
        raise
    except DriverError:
        return False  # no data directory (yet)
    with data:
        for name in data.names():
            if not any(fnmatch.fnmatchcase(name, p) for p in _LOCK_FILES):
                continue
            st = data.lstat(name)
            if st is None or not stat.S_ISREG(st.st_mode):
                continue
            try:
                fd = os.open(
                    name,
                    os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY,
                    dir_fd=data.fd,
                )
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    return True
            else:
                fcntl.lockf(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
    return False


def _has_schema(data: LocalDir) -> bool:
    try:
        return data.check_entry("mysql", what=_WHAT)
    except UnsafeLocalPath:
        return False


def _refuse_outside_data(server: Server, data: LocalDir) -> None:
    """mariabackup opens what it finds in the data directory as the worker: a symlink
    (or an InnoDB ``.isl`` file naming a path) would make it read a file elsewhere, and
    a FIFO or device would block or worse.  Refuse them all before it starts."""
    for top, dirs, files, fd in os.fwalk(".", dir_fd=data.fd, follow_symlinks=False):
        for entry in (*dirs, *files):
            st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            bad = None
            if stat.S_ISLNK(st.st_mode):
                bad = "a symbolic link"
            elif entry.endswith(".isl") and stat.S_ISREG(st.st_mode):
                bad = "a table kept in another directory (DATA DIRECTORY)"
            elif not any(
                # the server's own socket may live there
                test(st.st_mode)
                for test in (stat.S_ISREG, stat.S_ISDIR, stat.S_ISSOCK)
            ):
                bad = "a FIFO or a device"
            if bad:
                where = os.path.normpath(Path(top) / entry)
                raise UnsafeLocalPath(
                    f"the application's {_WHAT} holds {bad}, which would make the backup "
                    "read data from outside the data directory; physical backups read only "
                    "the data directory. Use mode: logical, or ask the platform operator",
                    admin_detail=f"{server.ref}: {server.datadir}/{where} is {bad}",
                )


def _ownership(server: Server, parent: LocalDir, name: str) -> tuple[int, int, int]:
    """uid, gid and mode the restored datadir gets: declared, else the current one's."""
    st = parent.lstat(name)  # a directory or nothing: checked by the caller
    if server.datadir_owner:
        user, _, group = server.datadir_owner.partition(":")
        try:
            pw = pwd.getpwnam(user)
            gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
        except KeyError:
            raise misconfigured(
                server.ref, f"datadirOwner {server.datadir_owner!r}: no such user or group"
            ) from None
        mode = st.st_mode & 0o7777 if st is not None else 0o750
        return pw.pw_uid, gid, mode
    ref = st if st is not None else parent.stat()
    mode = st.st_mode & 0o7777 if st is not None else 0o750
    return ref.st_uid, ref.st_gid, mode


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


def _swap_in(parent: LocalDir, name: str, stage: str) -> str | None:
    """Rename the datadir aside and the stage into its place (both in the held parent);
    returns the name the old one has now."""
    old: str | None = None
    if parent.lstat(name) is not None:
        old = f".{name[:160]}.cozybackup-old-{secrets.token_hex(6)}"
        _rename(parent, name, old)
    try:
        _rename(parent, stage, name)
    except OSError:
        if old is not None:
            _rename(parent, old, name)
        raise
    return old


def _rename(parent: LocalDir, src: str, dst: str) -> None:
    os.rename(src, dst, src_dir_fd=parent.fd, dst_dir_fd=parent.fd)


def _remove(parent: LocalDir, name: str) -> None:
    """Delete a directory of ours in the held parent (rmtree never follows links)."""
    shutil.rmtree(f"{parent.fd_path}/{name}", ignore_errors=True)


def _roll_back(
    ctx: RestoreContext,
    server: Server,
    datadir: Path,
    parent: LocalDir,
    stage: str,
    old: str | None,
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
        _rename(parent, datadir.name, stage)  # removed by the caller's cleanup
        if old is not None:
            _rename(parent, old, datadir.name)
        if was_running:
            _start(server, datadir, grace)
    except (DriverError, OSError) as exc:
        raise DriverError(
            "the restored data did not start, and putting the previous data back failed "
            "too; the server needs the platform operator's attention",
            admin_detail=f"{server.ref}: start failed: {cause.admin_detail or cause}; "
            f"rollback failed: {getattr(exc, 'admin_detail', None) or exc!r}; "
            f"previous data at {datadir.parent / old if old else None}",
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
