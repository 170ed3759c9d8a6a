"""A small etcd v3 client over gRPC: status, members, snapshot, and a few KV calls.

Certificates and keys go to gRPC as bytes (``ssl_channel_credentials``): no file ever
holds them, so nothing is left behind if the worker dies.  gRPC's own error text
(addresses, certificate subjects) goes to ``admin_detail`` only; tenants read what
:func:`translate` writes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

# grpcio ships no type information; the nox typecheck session does not install stubs.
import grpc  # type: ignore[import-untyped,unused-ignore]

from cozybackup_core import (
    CozyError,
    CredentialsRejected,
    Deadline,
    DeadlineExceeded,
    DriverError,
    TransientError,
)

from . import _proto as pb
from ._cluster import Cluster, Endpoint

GRPC_VERSION = str(getattr(grpc, "__version__", "unknown"))
#: How long one small RPC (status, member list, a read) may take.
RPC_TIMEOUT = 10.0
_CHANNEL_OPTIONS: list[tuple[str, str | int]] = [
    ("grpc.max_receive_message_length", 256 << 20),
    # Notice a silently dead peer mid-snapshot (etcd allows pings every 5 s).
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]
# TSI is gRPC's transport security layer: "Unwrap failed (TSI_DATA_CORRUPTED)" is how a
# TLS 1.3 alert about the client certificate shows up after the handshake.
_TLS_WORDS = ("ssl", "tls", "tsi_", "handshake", "certificate", "x509")


class EtcdUnavailable(TransientError):
    """No member answered, or the one streaming went away: worth retrying later."""

    reason = "EtcdUnavailable"


class MissingPermission(DriverError):
    reason = "MissingPermission"


@attrs.frozen(kw_only=True)
class MemberStatus:
    """``Maintenance/Status`` of one endpoint."""

    endpoint: Endpoint
    cluster_id: int
    member_id: int
    revision: int
    version: str
    db_size: int
    leader: int
    raft_index: int
    is_learner: bool


@attrs.frozen(kw_only=True)
class MemberInfo:
    """One entry of ``Cluster/MemberList``."""

    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool


def _identity(data: bytes) -> bytes:
    return data


class Client:
    """One gRPC channel to one endpoint.  Use as a context manager (closes the channel)."""

    def __init__(self, cluster: Cluster, endpoint: Endpoint) -> None:
        self.cluster = cluster
        self.endpoint = endpoint
        options = list(_CHANNEL_OPTIONS)
        if cluster.server_name:
            options.append(("grpc.ssl_target_name_override", cluster.server_name))
        if endpoint.tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=cluster.ca,
                private_key=cluster.key,
                certificate_chain=cluster.cert,
            )
            self._channel = grpc.secure_channel(endpoint.target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(endpoint.target, options=options)
        self._token: str | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()

    # ------------------------------------------------------------------ plumbing

    def _metadata(self, timeout: float) -> list[tuple[str, str]]:
        if self.cluster.username is None:
            return []
        if self._token is None:
            request = pb.field_bytes(1, self.cluster.username) + pb.field_bytes(
                2, self.cluster.password or ""
            )
            reply = self._unary("/etcdserverpb.Auth/Authenticate", request, timeout, [])
            self._token = pb.text(reply, 2)
        return [("token", self._token)]

    def _unary(
        self, method: str, request: bytes, timeout: float, metadata: Sequence[tuple[str, str]]
    ) -> bytes:
        stub = self._channel.unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        reply: bytes = stub(request, timeout=timeout, metadata=list(metadata))
        return reply

    def call(self, method: str, request: bytes = b"", *, timeout: float = RPC_TIMEOUT) -> bytes:
        """One unary RPC (``/etcdserverpb.KV/Range``, …) with raw protobuf bytes."""
        return self._unary(method, request, timeout, self._metadata(timeout))

    # ------------------------------------------------------------------ calls

    def status(self, timeout: float = RPC_TIMEOUT) -> MemberStatus:
        reply = self.call("/etcdserverpb.Maintenance/Status", timeout=timeout)
        header = pb.blob(reply, 1)
        return MemberStatus(
            endpoint=self.endpoint,
            cluster_id=pb.ints(header, 1),
            member_id=pb.ints(header, 2),
            revision=pb.ints(header, 3),
            version=pb.text(reply, 2),
            db_size=pb.ints(reply, 3),
            leader=pb.ints(reply, 4),
            raft_index=pb.ints(reply, 5),
            is_learner=bool(pb.ints(reply, 10)),
        )

    def members(self, timeout: float = RPC_TIMEOUT) -> list[MemberInfo]:
        reply = self.call("/etcdserverpb.Cluster/MemberList", timeout=timeout)
        return [
            MemberInfo(
                id=pb.ints(m, 1),
                name=pb.text(m, 2),
                peer_urls=tuple(u.decode() for u in pb.repeated(m, 3)),
                client_urls=tuple(u.decode() for u in pb.repeated(m, 4)),
                is_learner=bool(pb.ints(m, 5)),
            )
            for m in pb.repeated(reply, 2)
        ]

    def read_one(self, key: bytes, timeout: float = RPC_TIMEOUT) -> None:
        """A linearizable read (what ``etcdctl endpoint health`` does): the cluster has
        a leader and a quorum.  etcd answers a permission error only after the quorum
        read, so that counts as healthy too."""
        try:
            self.call("/etcdserverpb.KV/Range", pb.field_bytes(1, key), timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
                raise

    @contextlib.contextmanager
    def snapshot(self, deadline: Deadline) -> Iterator[Iterator[tuple[int, bytes]]]:
        """``Maintenance/Snapshot``: ``(remaining_bytes, blob)`` per message.

        The stream is the member's whole bbolt database followed by one last message
        holding the sha256 of it; the call is cancelled if the block is left early.
        """
        timeout = max(deadline.remaining(), 0.1)
        stub = self._channel.unary_stream(
            "/etcdserverpb.Maintenance/Snapshot",
            request_serializer=_identity,
            response_deserializer=_identity,
        )
        call = stub(b"", timeout=timeout, metadata=self._metadata(min(timeout, RPC_TIMEOUT)))
        try:
            yield ((pb.ints(m, 2), pb.blob(m, 3)) for m in call)
        finally:
            call.cancel()


def rpc_error(exc: BaseException) -> bool:
    return isinstance(exc, grpc.RpcError)


def translate(exc: Any, *, doing: str, deadline: Deadline | None = None) -> CozyError:
    """A gRPC failure as a tenant-safe, typed error; gRPC's text goes to the admin only."""
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    details = str(exc.details() if callable(getattr(exc, "details", None)) else exc)
    detail = f"{code}: {details}"
    low = details.lower()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        if deadline is not None and deadline.expired:
            return DeadlineExceeded(f"the job ran past its deadline while {doing}")
        return EtcdUnavailable(
            f"the etcd cluster did not answer in time while {doing}; check that it is "
            "healthy, then run the job again",
            admin_detail=detail,
        )
    if code == grpc.StatusCode.UNAVAILABLE and any(w in low for w in _TLS_WORDS):
        return CredentialsRejected(
            f"the TLS connection to the etcd cluster failed while {doing}: its certificate "
            "is not trusted or it refused the platform's client certificate; ask the "
            "platform operator to check the application's certificates",
            admin_detail=detail,
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return EtcdUnavailable(
            f"the etcd cluster could not be reached or went away while {doing}; check that "
            "it is running, then run the job again",
            admin_detail=detail,
        )
    if code == grpc.StatusCode.UNAUTHENTICATED or "authentication failed" in low:
        return CredentialsRejected(
            f"etcd rejected the credentials the platform uses for this cluster while "
            f"{doing}; ask the platform operator to check the application's credentials",
            admin_detail=detail,
        )
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return MissingPermission(
            f"the account the platform uses lacks a permission needed while {doing} (a "
            "snapshot needs etcd's root role); ask the platform operator",
            admin_detail=detail,
        )
    return DriverError(f"etcd failed while {doing}", admin_detail=detail)
