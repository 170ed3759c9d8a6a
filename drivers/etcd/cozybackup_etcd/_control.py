"""Stopping, starting and checking a whole cluster through the admin's commands.

Whether a cluster runs is read from two signs: a member's bbolt database is
``flock``-ed by the etcd process that has it open, and a client endpoint answers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import time
from pathlib import Path

from cozybackup_core import Deadline, DriverError, LocalDir, UnsafeLocalPath, run_admin_command

from ._client import Client, rpc_error
from ._cluster import Cluster

_POLL = 0.2
_HEALTH_KEY = b"health"  # what ``etcdctl endpoint health`` reads
_WHAT = "data directory"  # "the application's data directory is a symbolic link"


def data_dir_in_use(data_dir: Path) -> bool:
    """Whether an etcd process holds this data dir (bbolt keeps an exclusive flock).

    ``member/snap/db`` is reached without following links and opened only if it is a
    regular file (``O_NOFOLLOW | O_NONBLOCK``): a FIFO there must not block the worker.
    A link at the data dir itself raises :class:`UnsafeLocalPath`."""
    try:
        data = LocalDir.open(data_dir, what=_WHAT)  # UnsafeLocalPath: a link, a FIFO...
    except UnsafeLocalPath:
        raise
    except DriverError:
        return False  # nothing there (yet)
    with data:
        try:
            with data.open_dir("member", what=_WHAT) as member:
                snap = member.open_dir("snap", what=_WHAT)
        except DriverError:  # missing, or a link or special file below: not etcd's
            return False
    with snap:
        st = snap.lstat("db")
        if st is None or not stat.S_ISREG(st.st_mode):
            return False
        try:
            fd = os.open(
                "db",
                os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY,
                dir_fd=snap.fd,
            )
        except OSError:
            return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EACCES)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def answering(cluster: Cluster, timeout: float = 0.5) -> int:
    """How many client endpoints accept a TCP connection."""
    count = 0
    for endpoint in cluster.endpoints:
        host, _, port = endpoint.target.rpartition(":")
        with (
            contextlib.suppress(OSError),
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout),
        ):
            count += 1
    return count


def running(cluster: Cluster) -> bool:
    return answering(cluster) > 0 or any(data_dir_in_use(m.data_dir) for m in cluster.members)


def health(cluster: Cluster, expected_members: int) -> tuple[str | None, int | None]:
    """``(problem, cluster id)``: problem is None when every endpoint answers for one
    cluster of ``expected_members`` voting members with a leader, and a linearizable
    read succeeds (what ``etcdctl endpoint health`` checks)."""
    ids: set[int] = set()
    for endpoint in cluster.endpoints:
        with Client(cluster, endpoint) as client:
            try:
                status = client.status(timeout=2.0)
                if status.leader == 0:
                    return f"{endpoint.url}: no leader yet", None
                ids.add(status.cluster_id)
                voters = [m for m in client.members(timeout=2.0) if not m.is_learner]
                if len(voters) != expected_members:
                    return f"{endpoint.url}: {len(voters)} members", None
                client.read_one(_HEALTH_KEY, timeout=2.0)
            except Exception as exc:
                if not rpc_error(exc):
                    raise
                return f"{endpoint.url}: {exc!r}"[:500], None
    if len(ids) != 1:
        return f"endpoints answer for different clusters {sorted(ids)}", None
    return None, ids.pop()


def stop(cluster: Cluster, deadline: Deadline) -> None:
    """Run ``stopCommand`` and wait until no member runs."""
    assert cluster.stop_command is not None
    limit = Deadline.after(min(cluster.service_timeout, deadline.remaining()))
    command(cluster.stop_command, limit, "stopping the cluster")
    while running(cluster):
        if limit.expired:
            raise DriverError(
                "the etcd cluster did not stop in time; nothing was changed",
                admin_detail=f"{cluster.ref}: still running {cluster.service_timeout:.0f}s "
                "after stopCommand",
            )
        time.sleep(_POLL)


def start(cluster: Cluster, deadline: Deadline) -> int:
    """Run ``startCommand`` and wait until the cluster is healthy; returns its id."""
    assert cluster.start_command is not None
    limit = Deadline.after(min(cluster.service_timeout, deadline.remaining()))
    command(cluster.start_command, limit, "starting the cluster")
    while True:
        problem, cluster_id = health(cluster, len(cluster.members))
        if cluster_id is not None:
            return cluster_id
        if limit.expired:
            raise DriverError(
                "the restored etcd cluster did not become healthy in time",
                admin_detail=f"{cluster.ref}: {problem}",
            )
        time.sleep(_POLL)


def command(argv: tuple[str, ...], limit: Deadline, doing: str) -> None:
    """Run an admin-declared control command (stop/start the cluster)."""
    run_admin_command(argv, deadline=limit, doing=doing)
