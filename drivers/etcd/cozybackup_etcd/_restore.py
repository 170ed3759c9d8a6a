"""Restore: rebuild every member's data directory from one snapshot, then swap them in.

1. Refuse before any work when the cluster cannot be rebuilt here: no declared
   members (name, peer URL, data dir), or a running cluster with no stop/start
   commands, or no restore tool of a compatible release.
2. Copy the snapshot into a staging directory beside the first member's data dir,
   checking its sha256 trailer on the way (a bbolt file needs random access, so the
   tools only take a path).  A bad checksum stops here: nothing was touched.
3. ``etcdutl``/``etcdctl snapshot restore`` once per member into staging directories,
   with a fresh ``--initial-cluster-token``: the result is a new cluster (new cluster
   and member ids) with the target's peer URLs.
4. Stop the cluster if it runs, rename each data dir aside and the staged one in,
   start it and wait until it is healthy.  If it does not come up, put the previous
   data dirs back and start the old cluster again.

Every data dir's parent is reached without following links and held open for the
whole restore (the core's ``LocalDir``): a symlink, FIFO or other non-directory at a
declared ``dataDir`` (or a link on the way to it) refuses the restore before anything
is stopped or built.  Staging directories are 0700 and reached through their
descriptors; tools get ``/proc/<pid>/fd/<n>`` names; every rename happens inside the
held directories.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import attrs

from cozybackup_core import (
    Deadline,
    DriverError,
    LocalDir,
    RestoreContext,
    UnsafeLocalPath,
    UnsupportedError,
    chown_tree,
    iter_chunks,
    run_tool,
)

from . import _control
from ._backup import SNAPSHOT_STREAM
from ._cluster import Cluster, Member, misconfigured
from ._snapshot import SnapshotCheck, check_stored
from ._tools import RestoreTool, check_compatible, find_restore_tool

_WHAT = "data directory"  # "the application's data directory is a symbolic link"


@attrs.define
class _Staged:
    """One member's restored data dir, waiting beside the real one."""

    member: Member
    parent: LocalDir  # the data dir's parent, held open
    stage_name: str  # the private staging directory in it (removed at the end)
    stage: LocalDir  # ... held open
    old: str | None = None  # the name the previous data dir got, once swapped
    swapped: bool = False

    @property
    def name(self) -> str:
        return self.member.data_dir.name

    @property
    def data(self) -> Path:
        """The rebuilt data dir, for tools (through the held stage)."""
        return Path(self.stage.fd_path) / "data"


def restore(ctx: RestoreContext, cluster: Cluster, deadline: Deadline) -> None:
    _refuse_what_cannot_be_done(ctx, cluster)
    was_running = _control.running(cluster)
    if was_running and not cluster.can_stop_and_start:
        where = "in place" if ctx.in_place else "into this application"
        missing = [
            key
            for key, value in (("stopCommand", cluster.stop_command),
                               ("startCommand", cluster.start_command))
            if value is None
        ]  # fmt: skip
        raise UnsupportedError(
            f"an etcd snapshot cannot be restored {where}: the cluster is running and the "
            f"platform has declared no way to stop and start its members here (missing: "
            f"{' and '.join(missing)}). Restore into a new, stopped Etcd application, or ask "
            "the platform operator",
            admin_detail=f"{cluster.ref}: running; no {missing} in its connection settings",
        )
    tool = find_restore_tool(cluster.bin_dir)
    check_compatible(tool, str(ctx.driver_metadata.get("etcdVersion", "")))
    with contextlib.ExitStack() as held:
        parents = {m.name: held.enter_context(_parent(cluster, m)) for m in cluster.members}
        owners = {m.name: _ownership(cluster, m, parents[m.name]) for m in cluster.members}
        staged: list[_Staged] = []
        try:
            for member in cluster.members:
                parent = parents[member.name]
                with _file_errors(cluster, "make a staging directory beside a member's data"):
                    name = (
                        f".{member.data_dir.name[:160]}.cozybackup-restore-{secrets.token_hex(6)}"
                    )
                    os.mkdir(name, 0o700, dir_fd=parent.fd)
                stage = held.enter_context(parent.open_dir(name, what=_WHAT))
                staged.append(_Staged(member=member, parent=parent, stage_name=name, stage=stage))
            snapshot = _copy_snapshot(ctx, cluster, staged[0])
            ctx.progress.stage("rebuilding the members' data")
            _rebuild(cluster, tool, snapshot, staged, owners, deadline)
            os.unlink(snapshot.name, dir_fd=staged[0].stage.fd)
            deadline.check()
            if was_running:
                ctx.progress.stage("stopping the cluster")
                _stop_or_recover(cluster, deadline)
            ctx.progress.stage("putting the restored data in place")
            _swap_all(cluster, staged, restart_old=was_running)
            if cluster.start_command is None:
                ctx.log.warning(
                    "%s: data restored; the cluster was not running and has no startCommand, "
                    "so it was left stopped",
                    cluster.ref,
                )
            else:
                ctx.progress.stage("starting the cluster")
                try:
                    cluster_id = _control.start(cluster, deadline)
                except DriverError as exc:
                    _roll_back(ctx, cluster, staged, exc, was_running=was_running)
                ctx.log.info(
                    "%s: restored cluster %016x with %d members is healthy",
                    cluster.ref,
                    cluster_id,
                    len(cluster.members),
                )
            for s in staged:
                if s.old is not None:
                    _remove(s.parent, s.old)
        finally:
            for s in staged:
                _remove(s.parent, s.stage_name)


@contextlib.contextmanager
def _parent(cluster: Cluster, m: Member) -> Iterator[LocalDir]:
    """The data dir's parent, reached without links; the data dir must be a directory
    (or missing), not a link or a special file, and not a mount point."""
    try:
        held = LocalDir.open(m.data_dir.parent, what=_WHAT, holds=True)
    except UnsafeLocalPath:
        raise
    except DriverError as exc:
        raise misconfigured(
            cluster.ref, f"the parent of dataDir {m.data_dir} cannot be opened: {exc.admin_detail}"
        ) from None
    with held as parent:
        parent.check_entry(m.data_dir.name, what=_WHAT)
        st = parent.lstat(m.data_dir.name)
        if st is not None and st.st_dev != parent.stat().st_dev:
            raise misconfigured(
                cluster.ref,
                f"dataDir {m.data_dir} is a mount point and cannot be swapped by a rename; "
                "declare a directory inside the volume",
            )
        yield parent


def _refuse_what_cannot_be_done(ctx: RestoreContext, cluster: Cluster) -> None:
    if not cluster.members:
        raise UnsupportedError(
            "restoring an etcd snapshot rebuilds the data directory of every member, and the "
            "platform has not declared this cluster's members (name, peer URL and data "
            "directory) to the backup worker. Ask the platform operator, or restore into an "
            "Etcd application the platform can rebuild",
            admin_detail=f"{ctx.target.ref}: no 'members' in its connection settings",
        )
    for m in cluster.members:
        # Before anything else (the running check reads the data dirs): no links, no
        # special files, no mount points at the declared paths.
        with _parent(cluster, m):
            pass


def _copy_snapshot(ctx: RestoreContext, cluster: Cluster, into: _Staged) -> Path:
    """The backed-up snapshot as a private file in a staging directory; its sha256 is
    checked on the way."""
    path = Path(into.stage.fd_path) / "snapshot.db"
    check = SnapshotCheck()
    names = ctx.artifact.names()
    if SNAPSHOT_STREAM not in names:
        raise DriverError(
            "the backup was not written by a compatible version of the etcd driver",
            admin_detail=f"streams {names}",
        )
    with _file_errors(cluster, "stage the snapshot beside the members' data"):
        fd = os.open(
            path.name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
            0o600,
            dir_fd=into.stage.fd,
        )
        with os.fdopen(fd, "wb") as out, ctx.artifact.open(SNAPSHOT_STREAM) as stream:
            for chunk in iter_chunks(stream):
                check.feed(chunk)
                out.write(chunk)
    check_stored(check)
    ctx.log.info(
        "%s: snapshot of %d bytes verified (sha256 %s)", cluster.ref, check.size, check.digest
    )
    return path


def _rebuild(
    cluster: Cluster,
    tool: RestoreTool,
    snapshot: Path,
    staged: list[_Staged],
    owners: dict[str, tuple[int, int]],
    deadline: Deadline,
) -> None:
    """One ``snapshot restore`` per member, all with one fresh cluster token."""
    token = f"cozybackup-{secrets.token_hex(8)}"
    initial = ",".join(f"{m.name}={m.peer_url}" for m in cluster.members)
    for s in staged:
        argv = [
            *tool.argv,
            str(snapshot),
            f"--name={s.member.name}",
            f"--data-dir={s.data}",
            f"--initial-cluster={initial}",
            f"--initial-cluster-token={token}",
            f"--initial-advertise-peer-urls={s.member.peer_url}",
        ]
        try:
            run_tool(argv, deadline=deadline, env=tool.env, what=tool.name)
        except DriverError as exc:
            raise DriverError(
                f"{tool.name} could not rebuild a member's data from the snapshot; the cluster "
                "was not touched. Ask the platform operator",
                admin_detail=f"{cluster.ref}: {exc.admin_detail or exc}",
            ) from None
        uid, gid = owners[s.member.name]
        with _file_errors(cluster, "hand the restored data to etcd's user"):
            chown_tree(s.data, uid, gid)
            os.chmod("data", 0o700, dir_fd=s.stage.fd, follow_symlinks=False)


def _stop_or_recover(cluster: Cluster, deadline: Deadline) -> None:
    try:
        _control.stop(cluster, deadline)
    except DriverError:
        # It may have gone half-way down: bring it back before reporting.
        with contextlib.suppress(DriverError):
            _control.start(cluster, Deadline.after(cluster.service_timeout))
        raise


def _swap_all(cluster: Cluster, staged: list[_Staged], *, restart_old: bool) -> None:
    """Rename every data dir aside and its staged one in; all or none."""
    try:
        for s in staged:
            if s.parent.lstat(s.name) is not None:
                s.old = f".{s.name[:160]}.cozybackup-old-{secrets.token_hex(6)}"
                os.rename(s.name, s.old, src_dir_fd=s.parent.fd, dst_dir_fd=s.parent.fd)
            os.rename("data", s.name, src_dir_fd=s.stage.fd, dst_dir_fd=s.parent.fd)
            s.swapped = True
    except OSError as exc:
        _unswap(staged)
        if restart_old:
            with contextlib.suppress(DriverError):
                _control.start(cluster, Deadline.after(cluster.service_timeout))
        raise DriverError(
            "the restored data could not be put in place; the cluster's data was not "
            "changed. Ask the platform operator",
            admin_detail=f"{cluster.ref}: {exc!r}",
        ) from None


def _unswap(staged: list[_Staged]) -> None:
    """Put each previous data dir back (the restored one returns to its stage)."""
    for s in staged:
        if s.swapped:
            os.rename(s.name, "data", src_dir_fd=s.parent.fd, dst_dir_fd=s.stage.fd)
            s.swapped = False
        if s.old is not None and s.parent.lstat(s.name) is None:
            os.rename(s.old, s.name, src_dir_fd=s.parent.fd, dst_dir_fd=s.parent.fd)
            s.old = None


def _remove(parent: LocalDir, name: str) -> None:
    """Delete a directory in the held parent (rmtree never follows links)."""
    shutil.rmtree(f"{parent.fd_path}/{name}", ignore_errors=True)


def _roll_back(
    ctx: RestoreContext,
    cluster: Cluster,
    staged: list[_Staged],
    cause: DriverError,
    *,
    was_running: bool,
) -> NoReturn:
    """The restored cluster did not come up: the previous data goes back."""
    ctx.log.warning("%s: restored cluster unhealthy (%s); rolling back", cluster.ref, cause)
    grace = Deadline.after(cluster.service_timeout * 2 + 30)
    try:
        if cluster.stop_command is not None:
            with contextlib.suppress(DriverError):
                _control.stop(cluster, grace)
        if any(_control.data_dir_in_use(s.member.data_dir) for s in staged):
            raise DriverError("a member still holds the restored data")
        _unswap(staged)
        if was_running:
            _control.start(cluster, grace)
    except (DriverError, OSError) as exc:
        raise DriverError(
            "the restored etcd cluster did not become healthy, and putting the previous "
            "data back failed too; the cluster needs the platform operator's attention",
            admin_detail=f"{cluster.ref}: start: {cause.admin_detail or cause}; rollback: "
            f"{getattr(exc, 'admin_detail', None) or exc!r}; previous data at "
            f"{[str(s.member.data_dir.parent / s.old) for s in staged if s.old]}",
        ) from None
    raise DriverError(
        "the restored etcd cluster did not become healthy, so the previous data was put "
        "back" + (" and the cluster started again" if was_running else "") + "; nothing was "
        "changed. Ask the platform operator to check the members' logs",
        admin_detail=f"{cluster.ref}: {cause.admin_detail or cause}",
    )


# ---------------------------------------------------------------------- files


def _ownership(cluster: Cluster, member: Member, parent: LocalDir) -> tuple[int, int]:
    """uid and gid the restored data dir gets: declared, else the current one's."""
    if cluster.data_dir_owner:
        user, _, group = cluster.data_dir_owner.partition(":")
        try:
            pw = pwd.getpwnam(user)
            gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
        except KeyError:
            raise misconfigured(
                cluster.ref, f"dataDirOwner {cluster.data_dir_owner!r}: no such user or group"
            ) from None
        return pw.pw_uid, gid
    st = parent.lstat(member.data_dir.name) or parent.stat()  # a directory: checked
    return st.st_uid, st.st_gid


@contextlib.contextmanager
def _file_errors(cluster: Cluster, doing: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise DriverError(
            f"the backup worker could not {doing}; the cluster was not touched. Ask the "
            "platform operator",
            admin_detail=f"{cluster.ref}: {exc!r}",
        ) from None
