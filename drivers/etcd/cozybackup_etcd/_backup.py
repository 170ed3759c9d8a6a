"""Backup: stream one member's snapshot from the maintenance API into the artifact.

The snapshot is read with the ``Maintenance/Snapshot`` RPC and written straight into
``ctx.artifact``: no temp file (``etcdctl snapshot save`` can only write a file, which
would need scratch space as large as the database and a second read of it).  The
sha256 trailer is checked as the bytes pass; a mismatch or a short stream raises inside
the artifact stream, so the engine discards it and no Backup is created.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from cozybackup_core import BackupContext, CozyError, Deadline, DriverError, WriteBehind

from . import _proto
from ._client import (
    GRPC_VERSION,
    Client,
    EtcdUnavailable,
    MemberInfo,
    MemberStatus,
    rpc_error,
    translate,
)
from ._cluster import Cluster
from ._params import EtcdParameters, SnapshotFrom
from ._snapshot import SHA_SIZE, SnapshotCheck, check_sent

#: The artifact's one stream: byte for byte what ``etcdctl snapshot save`` writes.
SNAPSHOT_STREAM = "snapshot.db"
FORMAT = "etcd-v3-snapshot"


@contextlib.contextmanager
def etcd_errors(doing: str, deadline: Deadline) -> Iterator[None]:
    """gRPC failures and malformed replies as tenant-safe errors naming ``doing``."""
    try:
        yield
    except CozyError:
        raise
    except _proto.ProtoError as exc:
        raise DriverError(
            f"etcd sent a reply the driver cannot read while {doing}",
            admin_detail=repr(exc),
        ) from None
    except Exception as exc:
        if rpc_error(exc):
            raise translate(exc, doing=doing, deadline=deadline) from None
        raise


def probe(cluster: Cluster, deadline: Deadline) -> list[MemberStatus]:
    """``Status`` of every declared endpoint that answers; fails if none does."""
    found: list[MemberStatus] = []
    last: Exception | None = None
    for endpoint in cluster.endpoints:
        with Client(cluster, endpoint) as client:
            try:
                found.append(client.status(timeout=min(10.0, max(deadline.remaining(), 0.1))))
            except Exception as exc:
                if not rpc_error(exc):
                    raise
                last = exc
    if not found:
        assert last is not None
        raise translate(last, doing="connecting to the cluster", deadline=deadline)
    return found


def choose(statuses: list[MemberStatus], prefer: SnapshotFrom) -> MemberStatus:
    """The member to stream from: voters before learners, then by ``prefer``."""
    leaderless = [s for s in statuses if s.leader == 0]
    if len(leaderless) == len(statuses):
        raise _no_leader()
    voters = [s for s in statuses if not s.is_learner and s.leader != 0] or statuses
    leaders = [s for s in voters if s.member_id == s.leader]
    followers = [s for s in voters if s.member_id != s.leader]
    freshest = sorted(voters, key=lambda s: s.raft_index, reverse=True)
    if prefer is SnapshotFrom.LEADER:
        return (leaders or freshest)[0]
    if prefer is SnapshotFrom.FOLLOWER:
        return max(followers, key=lambda s: s.raft_index) if followers else freshest[0]
    return voters[0]


def _no_leader() -> CozyError:
    return EtcdUnavailable(
        "the etcd cluster has no leader (it lost its quorum); a snapshot now could miss "
        "committed writes. Bring the cluster back to health, then run the job again"
    )


def backup(
    ctx: BackupContext, cluster: Cluster, params: EtcdParameters, deadline: Deadline
) -> None:
    ctx.progress.stage("connecting")
    with etcd_errors("connecting to the cluster", deadline):
        source = choose(probe(cluster, deadline), params.snapshot_from)
    with Client(cluster, source.endpoint) as client:
        with etcd_errors("reading the cluster's members", deadline):
            members = client.members()
        check = SnapshotCheck()
        ctx.progress.stage("streaming the snapshot", bytes_total=source.db_size + SHA_SIZE)
        with (
            etcd_errors("streaming the snapshot; nothing was stored", deadline),
            ctx.artifact.open(SNAPSHOT_STREAM) as artifact,
            # Receiving overlaps with compression (depth: gRPC chunks are small).
            WriteBehind(artifact, depth=64) as out,
            client.snapshot(deadline) as messages,
        ):
            expected: int | None = None
            for remaining, chunk in messages:
                if expected is None:  # the first message says how big the database is
                    expected = len(chunk) + remaining
                check.feed(chunk)
                out.write(chunk)
            check_sent(check, expected)
        deadline.check()
    ctx.log.info(
        "%s: snapshot of %d bytes (sha256 %s) from member %x at revision >= %d",
        cluster.ref,
        check.size,
        check.digest,
        source.member_id,
        source.revision,
    )
    ctx.metadata.update(_metadata(source, members, check))
    # What a restore rebuilds: as many voting members as the cluster had, at this version.
    ctx.resources.update(
        {
            k: ctx.metadata[k]
            for k in ("etcdVersion", "clusterId", "revision", "members", "snapshotBytes")
        }
    )
    ctx.tool_versions["etcd"] = source.version
    ctx.tool_versions["grpcio"] = GRPC_VERSION


def _metadata(
    source: MemberStatus, members: list[MemberInfo], check: SnapshotCheck
) -> dict[str, Any]:
    """Tenant-visible: versions, ids, counts; no member names, URLs or paths."""
    learners = sum(1 for m in members if m.is_learner)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "etcdVersion": source.version,
        "clusterId": f"{source.cluster_id:016x}",
        # Status just before the stream: every write up to here is in the snapshot.
        "revision": source.revision,
        "members": len(members) - learners,
        "snapshotFrom": "leader" if source.member_id == source.leader else "follower",
        "snapshotBytes": check.size,
        "snapshotSha256": check.digest,
    }
    if learners:
        meta["learners"] = learners
    return meta
