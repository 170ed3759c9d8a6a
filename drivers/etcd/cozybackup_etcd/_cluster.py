"""One etcd cluster as the platform admin declared it: ``AppLocation`` → typed settings.

Connection keys (a tenant never sees them)::

    endpoints: [https://etcd.tenant-a.svc:2379]   # client URLs; a list or one string
    serverName: etcd                              # optional TLS name to verify
    # restores only:
    members:
    - {name: etcd-0, peerURL: https://etcd-0.etcd-headless:2380, dataDir: /var/lib/etcd-0}
    stopCommand: [systemctl, stop, etcd@shop]     # argv lists, run without a shell
    startCommand: [systemctl, start, etcd@shop]
    dataDirOwner: etcd                            # user[:group]; default: as found
    serviceTimeoutSeconds: 300
    binDir: /opt/etcd-v3.5/bin                    # etcdutl/etcdctl; default: PATH

Credentials keys: ``ca.crt``, ``tls.crt``, ``tls.key`` (PEM, the names of a Kubernetes
TLS secret such as Cozystack's ``etcd-client-tls``) and, for clusters with etcd's own
authentication on, ``username`` and ``password``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from cozybackup_core import (
    ApplicationMisconfigured,
    ApplicationRef,
    AppLocation,
    connection_argv,
    connection_str,
)
from cozybackup_core import misconfigured as kit_misconfigured

DEFAULT_SERVICE_TIMEOUT = 300.0
_CONNECTION_KEYS = frozenset(
    {
        "endpoints", "serverName", "members", "stopCommand", "startCommand",
        "dataDirOwner", "serviceTimeoutSeconds", "binDir",
    }
)  # fmt: skip
_MEMBER_KEYS = frozenset({"name", "peerURL", "dataDir"})
_CREDENTIAL_KEYS = frozenset({"ca.crt", "tls.crt", "tls.key", "username", "password"})
# etcd's own rule for --name is loose; these names also go into --initial-cluster.
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


#: Who the tenant's message about a misdeclared application names.
SUBJECT = "this etcd cluster"


def misconfigured(ref: ApplicationRef, detail: str) -> ApplicationMisconfigured:
    return kit_misconfigured(ref, detail, SUBJECT)


@attrs.frozen(kw_only=True)
class Member:
    """One member to (re)build on restore: its name, advertised peer URL and data dir."""

    name: str
    peer_url: str
    data_dir: Path


@attrs.frozen(kw_only=True)
class Endpoint:
    """A client URL: ``host:port`` for gRPC, and whether it speaks TLS."""

    url: str
    target: str
    tls: bool


@attrs.frozen(kw_only=True)
class Cluster:
    """Typed connection settings and credentials of one etcd application."""

    ref: ApplicationRef
    endpoints: tuple[Endpoint, ...]
    server_name: str | None = None
    ca: bytes | None = attrs.field(default=None, repr=False)
    cert: bytes | None = attrs.field(default=None, repr=False)
    key: bytes | None = attrs.field(default=None, repr=False)
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    members: tuple[Member, ...] = ()
    stop_command: tuple[str, ...] | None = None
    start_command: tuple[str, ...] | None = None
    data_dir_owner: str | None = None
    service_timeout: float = DEFAULT_SERVICE_TIMEOUT
    bin_dir: Path | None = None

    @property
    def can_stop_and_start(self) -> bool:
        return self.stop_command is not None and self.start_command is not None

    @classmethod
    def from_location(cls, loc: AppLocation) -> Cluster:
        ref, conn, creds = loc.ref, loc.connection, loc.credentials
        unknown = sorted(set(conn) - _CONNECTION_KEYS)
        if unknown:
            raise misconfigured(
                ref, f"unknown connection keys {unknown} (known: {sorted(_CONNECTION_KEYS)})"
            )
        unknown = sorted(set(creds) - _CREDENTIAL_KEYS)
        if unknown:
            raise misconfigured(
                ref, f"unknown credential keys {unknown} (known: {sorted(_CREDENTIAL_KEYS)})"
            )
        ca, cert, key = (_pem(ref, creds, k) for k in ("ca.crt", "tls.crt", "tls.key"))
        if (cert is None) != (key is None):
            raise misconfigured(ref, "a client certificate needs both 'tls.crt' and 'tls.key'")
        username, password = creds.get("username") or None, creds.get("password") or None
        if password is not None and username is None:
            raise misconfigured(ref, "credential 'password' without 'username'")
        has_tls = any(v is not None for v in (ca, cert))
        timeout = conn.get("serviceTimeoutSeconds", DEFAULT_SERVICE_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise misconfigured(ref, "'serviceTimeoutSeconds' must be a positive number")
        bin_dir = connection_str(ref, conn, "binDir", SUBJECT)
        if bin_dir is not None and not Path(bin_dir).is_absolute():
            raise misconfigured(ref, f"'binDir' must be an absolute path, got {bin_dir!r}")
        return cls(
            ref=ref,
            endpoints=_endpoints(ref, conn.get("endpoints"), default_tls=has_tls),
            server_name=connection_str(ref, conn, "serverName", SUBJECT),
            ca=ca,
            cert=cert,
            key=key,
            username=username,
            password=password,
            members=_members(ref, conn.get("members")),
            stop_command=connection_argv(ref, conn, "stopCommand", SUBJECT),
            start_command=connection_argv(ref, conn, "startCommand", SUBJECT),
            data_dir_owner=connection_str(ref, conn, "dataDirOwner", SUBJECT),
            service_timeout=float(timeout),
            bin_dir=Path(bin_dir) if bin_dir is not None else None,
        )


def _endpoints(ref: ApplicationRef, value: Any, *, default_tls: bool) -> tuple[Endpoint, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise misconfigured(ref, "connection needs 'endpoints': a list of client URLs")
    out: list[Endpoint] = []
    for item in value:
        if not isinstance(item, str) or not item or any(c in item for c in "\x00\n\r "):
            raise misconfigured(ref, f"endpoint {item!r} is not a URL")
        url = item if "://" in item else f"{'https' if default_tls else 'http'}://{item}"
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            raise misconfigured(ref, f"endpoint {item!r} must be http(s)://host:port or host:port")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        out.append(Endpoint(url=url, target=f"{host}:{port}", tls=parts.scheme == "https"))
    return tuple(out)


def _members(ref: ApplicationRef, value: Any) -> tuple[Member, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not value:
        raise misconfigured(ref, "'members' must be a non-empty list")
    out: list[Member] = []
    for i, item in enumerate(value):
        where = f"members[{i}]"
        if not isinstance(item, Mapping):
            raise misconfigured(ref, f"{where} must be a mapping with {sorted(_MEMBER_KEYS)}")
        if set(item) != _MEMBER_KEYS:
            raise misconfigured(ref, f"{where} must have exactly the keys {sorted(_MEMBER_KEYS)}")
        name, peer, data_dir = item["name"], item["peerURL"], item["dataDir"]
        if not isinstance(name, str) or not _MEMBER_NAME.match(name):
            raise misconfigured(ref, f"{where}.name {name!r} is not a valid member name")
        if not isinstance(peer, str) or urlsplit(peer).scheme not in ("http", "https"):
            raise misconfigured(ref, f"{where}.peerURL {peer!r} must be an http(s) URL")
        if any(c in peer for c in ",= \n"):
            raise misconfigured(ref, f"{where}.peerURL {peer!r} must be a single URL")
        if not isinstance(data_dir, str) or not Path(data_dir).is_absolute():
            raise misconfigured(ref, f"{where}.dataDir must be an absolute path")
        out.append(Member(name=name, peer_url=peer, data_dir=Path(data_dir)))
    for attr, label in (("name", "name"), ("peer_url", "peerURL"), ("data_dir", "dataDir")):
        values = [getattr(m, attr) for m in out]
        if len(set(values)) != len(values):
            raise misconfigured(ref, f"two members share the same {label}")
    return tuple(out)


def _pem(ref: ApplicationRef, creds: Mapping[str, str], key: str) -> bytes | None:
    value = creds.get(key)
    if not value:
        return None
    if "-----BEGIN " not in value:
        raise misconfigured(ref, f"credential {key!r} is not PEM text")
    return value.encode()
