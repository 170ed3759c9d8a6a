"""Physical mode's restore: a base backup unpacked into a data directory, WAL replayed
from the archive to ``recoveryTime`` (or to its end), then promoted.

The target is an application whose connection declares where its data directory is
(``dataDir``) and how the platform starts its server (``startCommand``; on a host where
the driver runs beside it: the embedded host).  Step by step; nothing of the target is
touched before step 4:

1.  Checks: the window the Backup and the archive reach (``_wal``): a ``recoveryTime``
    outside it is refused (``RecoveryTargetUnreachable``, naming the window).  A server
    running on the data directory, or any in-place restore, needs ``stopCommand`` and
    ``startCommand``; without them the restore is refused.
2.  The base backup is unpacked into a fresh 0700 directory beside the data directory
    (same filesystem, so the swap is a rename), reached through its parent held open.
3.  The unpacked directory gets ``recovery.signal``, ``recovery_target_time`` when
    asked, ``recovery_target_action = promote`` and a ``restore_command`` that asks this
    process for each WAL segment as the server needs it (``_walfeed``): fetched through
    the platform's storage and verified as it is read (a damaged one aborts the
    recovery, fails the restore naming it and puts the previous data back, step 5).
4.  A running server is stopped (``stopCommand``); the data directory is renamed aside
    and the unpacked one takes its name.
5.  The server is started (``startCommand``); the driver waits until it has replayed
    and promoted (it answers and is no longer in recovery), then resets the recovery
    settings.  If it stops or does not get there in time, it is stopped, the previous
    data directory is put back and started again if it ran: the target is left as it was.
6.  The previous data directory and the feed's directory are deleted.

The restored server is the source server as it was at that moment, roles and passwords
included: afterwards the target accepts the source's credentials.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import grp
import os
import pwd
import secrets
import shlex
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

from cozybackup_core import (
    AppLocation,
    ArtifactCorruptError,
    CozyError,
    Deadline,
    DriverError,
    LocalDir,
    RestoreContext,
    UnsupportedError,
    chown_tree,
    connection_argv,
    connection_str,
    misconfigured,
    run_admin_command,
)

from ._basebackup import BASE_STREAM
from ._drill import physical_login
from ._params import PostgresParameters
from ._pg import PHYSICAL_TOOLS, Server, find_tools
from ._wal import Replay, plan
from ._walfeed import SCRIPT, WalFeed

DEFAULT_SERVICE_TIMEOUT = 120.0
_WHAT = "data directory"
_POLL = 0.2
_SERVE_POLL = 0.01
#: Settings the restore adds to the unpacked directory and resets after the promotion.
_RECOVERY_SETTINGS = ("restore_command", "recovery_target_time", "recovery_target_action")


@attrs.frozen(kw_only=True)
class Target:
    """Where a physical restore goes: the admin's declaration (never the tenant's)."""

    data_dir: Path
    owner: str | None
    start: tuple[str, ...] | None
    stop: tuple[str, ...] | None
    timeout: float

    @classmethod
    def of(cls, loc: AppLocation) -> Target:
        conn = loc.connection
        data_dir = connection_str(loc.ref, conn, "dataDir")
        if (
            data_dir is None
            or not Path(data_dir).is_absolute()
            or Path(data_dir).parent == Path(data_dir)
        ):
            raise misconfigured(
                loc.ref,
                "a physical restore needs connection key 'dataDir': the absolute path of "
                f"the target's data directory (got {data_dir!r})",
            )
        timeout = conn.get("serviceTimeoutSeconds", DEFAULT_SERVICE_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise misconfigured(loc.ref, "'serviceTimeoutSeconds' must be a number > 0")
        return cls(
            data_dir=Path(data_dir),
            owner=connection_str(loc.ref, conn, "dataDirOwner"),
            start=connection_argv(loc.ref, conn, "startCommand"),
            stop=connection_argv(loc.ref, conn, "stopCommand"),
            timeout=float(timeout),
        )


def restore(ctx: RestoreContext[PostgresParameters], deadline: Deadline) -> None:
    meta = ctx.driver_metadata
    tools = find_tools(PHYSICAL_TOOLS)
    server = Server.from_location(ctx.target, tools)
    target = Target.of(ctx.target)
    ctx.progress.stage("checking the recovery window")
    replay = plan(ctx.archive, meta)
    replay.check(ctx.recovery_time)
    running = _postmaster(target.data_dir) is not None or _answers(server)
    if (running or ctx.in_place) and (target.stop is None or target.start is None):
        where = "in place" if ctx.in_place else "into this application while its server runs"
        raise UnsupportedError(
            f"a physical backup cannot be restored {where}: the platform cannot stop and "
            "start this PostgreSQL server here. Restore it into a new, stopped PostgreSQL "
            "application, or use a BackupClass with mode: logical",
            admin_detail=f"{ctx.target.ref}: no stopCommand/startCommand in its connection "
            f"(running: {running})",
        )
    if target.start is None:
        raise misconfigured(
            ctx.target.ref, "a physical restore needs 'startCommand' to start the restored server"
        )
    with LocalDir.open(target.data_dir.parent, what=_WHAT, holds=True) as parent:
        parent.check_entry(target.data_dir.name, what=_WHAT)
        _Restore(ctx, server, target, parent, replay, deadline, running=running).run()


def _answers(server: Server) -> bool:
    with contextlib.suppress(CozyError):
        server.psql("SELECT 1", deadline=Deadline.after(10), doing="checking the server")
        return True
    return False


def _postmaster(data_dir: Path) -> int | None:
    """The PID of a live postmaster on ``data_dir`` (from its ``postmaster.pid``), or None."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@attrs.define
class _Restore:
    ctx: RestoreContext[PostgresParameters]
    server: Server
    target: Target
    parent: LocalDir
    replay: Replay
    deadline: Deadline
    running: bool
    name: str = attrs.field(init=False)
    feed: WalFeed | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.name = self.target.data_dir.name

    def run(self) -> None:
        uid, gid = self._owner()
        stage = self._mkdir("restore")
        wal = self._mkdir("wal")
        try:
            self._unpack(stage)
            # A drill's scratch target: the restored server is logged in to as its own
            # bootstrap superuser (the scratch's credentials are not in it).
            login = physical_login(self.ctx.target, Path(self.parent.fd_path, stage))
            self.server = Server.from_location(login, self.server.tools)
            self._configure(stage, wal)
            with self._errors("hand the restored files to the database's user"):
                for name in (stage, wal):
                    chown_tree(Path(self.parent.fd_path, name), uid, gid)
                self.feed = self._feed(wal, (uid, gid))
            self.deadline.check()
            if self.running:
                self.ctx.progress.stage("stopping the server")
                self._command(self.target.stop, "stopping the server")
                self._wait_stopped()
            self.ctx.progress.stage("putting the restored data in place")
            old = self._swap_in(stage)
            self.ctx.progress.stage("replaying WAL and starting the server")
            try:
                self._start_and_promote()
            except (DriverError, ArtifactCorruptError) as exc:
                self._roll_back(stage, old, exc)
            if old is not None:
                self._remove(old)
        finally:
            if self.feed is not None:
                self.feed.close()
            self._remove(stage)
            self._remove(wal)

    # -- staging

    def _owner(self) -> tuple[int, int]:
        if self.target.owner:
            user, _, group = self.target.owner.partition(":")
            try:
                pw = pwd.getpwnam(user)
                gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
            except KeyError:
                raise misconfigured(
                    self.ctx.target.ref,
                    f"dataDirOwner {self.target.owner!r}: no such user or group",
                ) from None
            return pw.pw_uid, gid
        st = self.parent.lstat(self.name) or self.parent.stat()
        return st.st_uid, st.st_gid

    def _mkdir(self, tag: str) -> str:
        name = f".{self.name[:160]}.cozybackup-{tag}-{secrets.token_hex(6)}"
        with self._errors("make a staging directory beside the data directory"):
            os.mkdir(name, 0o700, dir_fd=self.parent.fd)
        return name

    def _unpack(self, stage: str) -> None:
        self.ctx.progress.stage("unpacking the base backup")
        with (
            self.parent.open_dir(stage, what=_WHAT) as held,
            self.ctx.artifact.open(BASE_STREAM) as stream,
        ):
            try:
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    # "data": no links out, no devices, no absolute names or "..".
                    tar.extractall(held.fd_path, filter="data")
            except (tarfile.TarError, OSError) as exc:
                raise DriverError(
                    "the base backup could not be unpacked; the target was not touched",
                    admin_detail=repr(exc),
                ) from None

    def _feed(self, wal: str, owner: tuple[int, int]) -> WalFeed:
        """What answers the server's ``restore_command`` (``_walfeed``): the archived
        segments this restore replays, fetched when the server asks."""
        archive = self.ctx.archive
        wanted: dict[str, str] = {}
        if self.replay.segments and archive is not None:
            chosen = self.replay.to_replay(archive, self.ctx.recovery_time)
            wanted = {segment: name for name, segment in chosen.items()}
        feed = WalFeed(
            archive=archive,
            wanted=wanted,
            directory=Path(self.parent.fd_path, wal),
            segment_size=self.replay.segment_size,
            owner=owner,
        )
        feed.prepare()
        return feed

    def _configure(self, stage: str, wal: str) -> None:
        # The server runs it through the shell, as its own user (the staged directory is
        # its own); "%" would be one of its placeholders.
        where = shlex.quote(self.parent.join(wal)).replace("%", "%%")
        settings = {
            "restore_command": f"/bin/sh {where}/{SCRIPT} %f %p",
            "recovery_target_action": "promote",
        }
        if self.ctx.recovery_time is not None:
            settings["recovery_target_time"] = _pg_time(self.ctx.recovery_time)
        lines = "".join(f"{k} = '{_conf_quote(v)}'\n" for k, v in settings.items())
        with self._errors("write the recovery settings"):
            data = Path(self.parent.fd_path, stage)
            with open(data / "postgresql.auto.conf", "a") as conf:
                conf.write("# added by cozybackup for the restore; reset after it\n" + lines)
            (data / "recovery.signal").touch()

    # -- swapping and starting

    def _swap_in(self, stage: str) -> str | None:
        old: str | None = None
        with self._errors("put the restored data in place"):
            if self.parent.lstat(self.name) is not None:
                old = f".{self.name[:160]}.cozybackup-old-{secrets.token_hex(6)}"
                self._rename(self.name, old)
            try:
                self._rename(stage, self.name)
            except OSError:
                if old is not None:
                    self._rename(old, self.name)
                raise
        return old

    def _start_and_promote(self) -> None:
        self._command(self.target.start, "starting the restored server")
        limit = self.deadline
        seen = False
        started = time.monotonic()
        while True:
            pid = _postmaster(self.target.data_dir)
            seen = seen or pid is not None
            if seen and pid is None:
                raise DriverError(
                    "the restored server stopped while replaying WAL; ask the platform "
                    "operator to read its log",
                    admin_detail=f"{self.target.data_dir}: postmaster exited during recovery",
                )
            if not seen and time.monotonic() - started > self.target.timeout:
                raise DriverError(
                    "the restored server did not start; ask the platform operator",
                    admin_detail=f"{self.target.data_dir}: no postmaster "
                    f"{self.target.timeout:.0f}s after startCommand",
                )
            if pid is not None and self._serve_until_checked() and self._promoted():
                break
            if limit.expired:
                raise DriverError(
                    "the restored server did not finish replaying WAL before the job's deadline",
                    admin_detail=f"{self.target.data_dir}: still in recovery",
                )
            if pid is None:
                time.sleep(_POLL)
        resets = "".join(f"ALTER SYSTEM RESET {s};\n" for s in _RECOVERY_SETTINGS)
        self.server.psql(
            resets + "SELECT pg_reload_conf();",
            deadline=self.deadline,
            doing="resetting the recovery settings",
        )

    def _serve_until_checked(self) -> bool:
        """Answer the server's requests for WAL for one poll interval; True (a
        request is answered within about 10 ms, at most two segments are fetched)."""
        until = time.monotonic() + _POLL
        while time.monotonic() < until:
            if self.feed is not None:
                self.feed.serve()
            time.sleep(_SERVE_POLL)
        return True

    def _promoted(self) -> bool:
        with contextlib.suppress(CozyError):
            out = self.server.psql(
                "SELECT pg_is_in_recovery()", deadline=Deadline.after(10), doing="waiting"
            )
            return out.strip() == "f"
        return False

    def _wait_stopped(self) -> None:
        limit = Deadline.after(min(self.target.timeout, self.deadline.remaining()))
        while _postmaster(self.target.data_dir) is not None:
            if limit.expired:
                raise DriverError(
                    "the PostgreSQL server did not stop in time; nothing was changed",
                    admin_detail=f"{self.target.data_dir}: running {self.target.timeout:.0f}s "
                    "after stopCommand",
                )
            time.sleep(_POLL)

    def _roll_back(
        self, stage: str, old: str | None, cause: DriverError | ArtifactCorruptError
    ) -> None:
        self.ctx.log.warning("restored server did not come up (%s); rolling back", cause)
        with contextlib.suppress(DriverError):
            if _postmaster(self.target.data_dir) is not None and self.target.stop:
                self._command(self.target.stop, "stopping the restored server")
                self._wait_stopped()
        try:
            self._rename(self.name, stage)  # removed by run()'s cleanup
            if old is not None:
                self._rename(old, self.name)
            if self.running:
                self._command(self.target.start, "starting the server again")
        except (OSError, DriverError) as exc:
            raise DriverError(
                f"{cause.message}; putting the previous data back failed too, so the server "
                "needs the platform operator's attention",
                admin_detail=f"{cause.admin_detail}; rollback: {exc!r}",
            ) from None
        raise type(cause)(
            f"{cause.message}; the previous data was put back", admin_detail=cause.admin_detail
        )

    # -- small things

    def _command(self, argv: tuple[str, ...] | None, doing: str) -> None:
        assert argv is not None
        limit = Deadline.after(min(self.target.timeout, max(self.deadline.remaining(), 1)))
        run_admin_command(argv, deadline=limit, doing=doing)

    def _rename(self, src: str, dst: str) -> None:
        os.rename(src, dst, src_dir_fd=self.parent.fd, dst_dir_fd=self.parent.fd)

    def _remove(self, name: str) -> None:
        if self.parent.lstat(name) is not None:
            shutil.rmtree(f"{self.parent.fd_path}/{name}", ignore_errors=True)

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise DriverError(
                f"the backup worker could not {doing}; ask the platform operator",
                admin_detail=f"{self.ctx.target.ref}: {exc!r}",
            ) from None


def _pg_time(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def _conf_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "''")
