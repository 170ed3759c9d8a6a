"""Throwaway etcd clusters for tests, demos and benchmarks, and a small KV helper.

Nothing here is used by backups or restores.  A :class:`LocalEtcd` is N members on
127.0.0.1 (client, peer and metrics), each in its own directory under ``base``, with
its settings in ``base/cluster.json`` so that this module is also the cluster's control
program, which an application can declare as its ``stopCommand``/``startCommand``::

    python -m cozybackup_etcd.testing start BASE   # spawn every member, return at once
    python -m cozybackup_etcd.testing stop BASE    # SIGTERM each member by its PID, wait

Members are stopped by the PIDs in their pid files, after checking that the process's
command line names the member's data dir; never by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from . import _proto as pb

__all__ = [
    "KV",
    "LocalEtcd",
    "TLSFiles",
    "free_ports",
    "make_certificates",
    "pid_alive",
]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1 (held together while picked)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# ---------------------------------------------------------------------- certificates


@attrs.frozen(kw_only=True)
class TLSFiles:
    """PEM files of a throwaway CA, a server certificate for 127.0.0.1 and a client one."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def credentials(self) -> dict[str, str]:
        """The client's credentials secret, with Kubernetes TLS secret key names."""
        return {
            "ca.crt": self.ca.read_text(),
            "tls.crt": self.client_cert.read_text(),
            "tls.key": self.client_key.read_text(),
        }


def make_certificates(directory: Path, *, client_cn: str = "root") -> TLSFiles:
    """A CA, a server certificate (IP 127.0.0.1, DNS localhost) and a client
    certificate (CN ``client_cn``), made with the ``openssl`` command-line tool."""
    directory.mkdir(parents=True, exist_ok=True)
    d = directory

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    def key(name: str) -> Path:
        path = d / f"{name}.key"
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path))
        path.chmod(0o600)
        return path

    ca_key = key("ca")
    openssl(
        "req", "-x509", "-new", "-key", str(ca_key), "-days", "2", "-subj", "/CN=cozy-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
        "keyUsage=critical,keyCertSign,cRLSign", "-out", str(d / "ca.crt"),
    )  # fmt: skip
    for name, cn, ext in (
        ("server", "etcd-server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
         "extendedKeyUsage=serverAuth,clientAuth"),
        ("client", client_cn, "extendedKeyUsage=clientAuth"),
    ):  # fmt: skip
        k = key(name)
        csr = d / f"{name}.csr"
        openssl("req", "-new", "-key", str(k), "-subj", f"/CN={cn}", "-out", str(csr))
        extfile = d / f"{name}.ext"
        extfile.write_text(ext + "\n")
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(d / "ca.crt"), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(extfile),
            "-out", str(d / f"{name}.crt"),
        )  # fmt: skip
    return TLSFiles(
        ca=d / "ca.crt",
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        client_cert=d / "client.crt",
        client_key=d / "client.key",
    )


# ---------------------------------------------------------------------- the cluster


@attrs.define
class LocalEtcd:
    """N members on 127.0.0.1 under ``base``.  :meth:`create` writes the settings;
    :meth:`start`/:meth:`stop` run the members; :meth:`destroy` also removes ``base``."""

    base: Path
    bin_dir: Path
    names: tuple[str, ...]
    client_ports: tuple[int, ...]
    peer_ports: tuple[int, ...]
    tls: TLSFiles | None = None

    @classmethod
    def create(
        cls, base: Path, bin_dir: Path, *, members: int = 1, tls: TLSFiles | None = None
    ) -> LocalEtcd:
        ports = free_ports(2 * members)
        cluster = cls(
            base=base,
            bin_dir=bin_dir,
            names=tuple(f"m{i}" for i in range(members)),
            client_ports=tuple(ports[:members]),
            peer_ports=tuple(ports[members:]),
            tls=tls,
        )
        base.mkdir(parents=True, exist_ok=True)
        for name in cluster.names:
            (base / name).mkdir(exist_ok=True)
        (base / "cluster.json").write_text(json.dumps(cluster._settings(), indent=1))
        return cluster

    @classmethod
    def load(cls, base: Path) -> LocalEtcd:
        doc = json.loads((base / "cluster.json").read_text())
        tls = TLSFiles(**{k: Path(v) for k, v in doc["tls"].items()}) if doc["tls"] else None
        return cls(
            base=base,
            bin_dir=Path(doc["binDir"]),
            names=tuple(doc["names"]),
            client_ports=tuple(doc["clientPorts"]),
            peer_ports=tuple(doc["peerPorts"]),
            tls=tls,
        )

    def _settings(self) -> dict[str, Any]:
        return {
            "binDir": str(self.bin_dir),
            "names": list(self.names),
            "clientPorts": list(self.client_ports),
            "peerPorts": list(self.peer_ports),
            "tls": {k: str(v) for k, v in attrs.asdict(self.tls).items()} if self.tls else None,
        }

    # -- addresses

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def endpoints(self) -> list[str]:
        return [f"{self.scheme}://127.0.0.1:{p}" for p in self.client_ports]

    def peer_url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.peer_ports[i]}"

    def data_dir(self, i: int) -> Path:
        return self.base / self.names[i] / "data"

    def connection(self, *, control: bool = True, **extra: Any) -> dict[str, Any]:
        """The application's connection keys (members and commands for restores)."""
        conn: dict[str, Any] = {
            "endpoints": self.endpoints,
            "members": [
                {"name": n, "peerURL": self.peer_url(i), "dataDir": str(self.data_dir(i))}
                for i, n in enumerate(self.names)
            ],
            "binDir": str(self.bin_dir),
        }
        if control:
            conn["stopCommand"] = self.control("stop")
            conn["startCommand"] = self.control("start")
        conn.update(extra)
        return conn

    def credentials(self) -> dict[str, str]:
        return self.tls.credentials() if self.tls else {}

    def control(self, command: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "cozybackup_etcd.testing", command, str(self.base), *extra]

    # -- processes

    def argv(self, i: int) -> list[str]:
        name, client = self.names[i], f"{self.scheme}://127.0.0.1:{self.client_ports[i]}"
        initial = ",".join(f"{n}={self.peer_url(j)}" for j, n in enumerate(self.names))
        argv = [
            str(self.bin_dir / "etcd"),
            f"--name={name}",
            f"--data-dir={self.data_dir(i)}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={self.peer_url(i)}",
            f"--initial-advertise-peer-urls={self.peer_url(i)}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=cozy-test",
            "--listen-metrics-urls=",
            "--logger=zap",
        ]
        if self.tls:
            argv += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}",
                "--client-cert-auth",
            ]
        return argv

    def pid_file(self, i: int) -> Path:
        return self.base / self.names[i] / "etcd.pid"

    def pid(self, i: int) -> int | None:
        """The member's PID, if that process still runs etcd on its data dir."""
        try:
            pid = int(self.pid_file(i).read_text())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) and str(self.data_dir(i)) in _cmdline(pid) else None

    def spawn(self) -> None:
        """Start every member that is not running, detached; return at once."""
        for i in range(len(self.names)):
            if self.pid(i) is not None:
                continue
            with (self.base / self.names[i] / "etcd.log").open("ab") as log:
                proc = subprocess.Popen(
                    self.argv(i),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.pid_file(i).write_text(str(proc.pid))
            proc.returncode = 0  # detached on purpose: no ResourceWarning for it

    def start(self, timeout: float = 60.0) -> None:
        """Start through the control program (as an admin's command would) and wait."""
        subprocess.run(self.control("start"), check=True, timeout=60, capture_output=True)
        self.wait_healthy(timeout)

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> None:
        for i in range(len(self.names)):
            self.stop_member(i, timeout, sig)

    def stop_member(self, i: int, timeout: float = 30.0, sig: int = signal.SIGTERM) -> None:
        pid = self.pid(i)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        end = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < end:
            time.sleep(0.02)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.02)

    def running(self) -> list[int]:
        return [i for i in range(len(self.names)) if self.pid(i) is not None]

    def log(self, i: int = 0) -> str:
        path = self.base / self.names[i] / "etcd.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # -- talking to it

    def kv(self, i: int = 0) -> KV:
        return KV(self.endpoints[i], self.credentials())

    def wait_healthy(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        problem: str | None = "not checked"
        while time.monotonic() < end:
            problem = self.health()
            if problem is None:
                return
            time.sleep(0.1)
        raise RuntimeError(f"etcd not healthy after {timeout}s: {problem}\n{self.log()}")

    def health(self) -> str | None:
        """None when every member answers, agrees on one cluster and a leader exists."""
        ids = set()
        for i in range(len(self.names)):
            with self.kv(i) as kv:
                try:
                    status = kv.status()
                    if status["leader"] == 0:
                        return f"{self.names[i]}: no leader"
                    ids.add(status["clusterId"])
                    kv.get(b"health")
                except Exception as exc:  # noqa: BLE001 - reported as the problem
                    return f"{self.names[i]}: {exc!r}"
        return None if len(ids) == 1 else f"cluster ids {ids}"


# ---------------------------------------------------------------------- KV helper


class KV:
    """A minimal etcd KV/lease client for tests (over the driver's gRPC client)."""

    def __init__(self, endpoint: str, credentials: dict[str, str] | None = None) -> None:
        from cozybackup_core import ApplicationRef, AppLocation

        from ._client import Client
        from ._cluster import Cluster

        loc = AppLocation(
            ref=ApplicationRef(kind="Etcd", name="test"),
            namespace="test",
            connection={"endpoints": [endpoint]},
            credentials=credentials or {},
        )
        cluster = Cluster.from_location(loc)
        self._client = Client(cluster, cluster.endpoints[0])

    def __enter__(self) -> KV:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.__exit__()

    def _call(self, method: str, request: bytes, timeout: float = 30.0) -> bytes:
        return self._client.call(method, request, timeout=timeout)

    def status(self) -> dict[str, Any]:
        s = self._client.status()
        return {
            "clusterId": s.cluster_id,
            "memberId": s.member_id,
            "revision": s.revision,
            "version": s.version,
            "leader": s.leader,
            "dbSize": s.db_size,
        }

    def members(self) -> list[dict[str, Any]]:
        return [attrs.asdict(m) for m in self._client.members()]

    def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Put one key; returns the new revision."""
        reply = self._call("/etcdserverpb.KV/Put", _put(key, value, lease))
        return pb.ints(pb.blob(reply, 1), 3)

    def put_many(self, items: Sequence[tuple[bytes, bytes, int]], batch: int = 100) -> None:
        """Puts in transactions of ``batch`` operations (etcd allows 128 by default)."""
        for start in range(0, len(items), batch):
            ops = b"".join(
                pb.field_message(2, pb.field_message(2, _put(k, v, lease)))
                for k, v, lease in items[start : start + batch]
            )
            self._call("/etcdserverpb.KV/Txn", ops)

    def delete(self, key: bytes) -> None:
        self._call("/etcdserverpb.KV/DeleteRange", pb.field_bytes(1, key))

    def delete_all(self) -> None:
        self._call(
            "/etcdserverpb.KV/DeleteRange", pb.field_bytes(1, b"\0") + pb.field_bytes(2, b"\0")
        )

    def get(self, key: bytes, *, revision: int = 0) -> dict[str, Any] | None:
        reply = self._call(
            "/etcdserverpb.KV/Range", pb.field_bytes(1, key) + pb.field_int(4, revision)
        )
        kvs = pb.repeated(reply, 2)
        return _kv(kvs[0]) if kvs else None

    def items(self, page: int = 1000) -> Iterator[dict[str, Any]]:
        """Every key at the current revision, in key order, read page by page at one
        revision."""
        key, revision = b"\0", 0
        while True:
            request = (
                pb.field_bytes(1, key)
                + pb.field_bytes(2, b"\0")
                + pb.field_int(3, page)
                + pb.field_int(4, revision)
            )
            reply = self._call("/etcdserverpb.KV/Range", request)
            revision = revision or pb.ints(pb.blob(reply, 1), 3)
            kvs = [_kv(m) for m in pb.repeated(reply, 2)]
            yield from kvs
            if not pb.ints(reply, 3) or not kvs:
                return
            key = kvs[-1]["key"] + b"\0"

    def lease_grant(self, ttl: int) -> int:
        reply = self._call("/etcdserverpb.Lease/LeaseGrant", pb.field_int(1, ttl))
        return pb.as_int64(pb.ints(reply, 2))

    def leases(self) -> list[int]:
        reply = self._call("/etcdserverpb.Lease/LeaseLeases", b"")
        return sorted(pb.as_int64(pb.ints(m, 1)) for m in pb.repeated(reply, 2))

    def lease_revoke(self, lease: int) -> None:
        self._call("/etcdserverpb.Lease/LeaseRevoke", pb.field_int(1, lease))


def _put(key: bytes, value: bytes, lease: int) -> bytes:
    return pb.field_bytes(1, key) + pb.field_bytes(2, value) + pb.field_int(3, lease)


def _kv(message: bytes) -> dict[str, Any]:
    return {
        "key": pb.blob(message, 1),
        "createRevision": pb.ints(message, 2),
        "modRevision": pb.ints(message, 3),
        "version": pb.ints(message, 4),
        "value": pb.blob(message, 5),
        "lease": pb.as_int64(pb.ints(message, 6)),
    }


# ---------------------------------------------------------------------- control program


def main(argv: Sequence[str]) -> int:
    """``start BASE [--fail-once FLAG]`` or ``stop BASE``.  With ``--fail-once``, a start
    while the file FLAG exists removes it and fails (tests of a restore's rollback)."""
    if len(argv) not in (2, 4) or argv[0] not in ("start", "stop"):
        print("usage: python -m cozybackup_etcd.testing start|stop BASE", file=sys.stderr)
        return 2
    cluster = LocalEtcd.load(Path(argv[1]))
    if argv[0] == "stop":
        cluster.stop()
        return 0
    if len(argv) == 4 and argv[2] == "--fail-once" and Path(argv[3]).exists():
        Path(argv[3]).unlink()
        print("refusing to start (test: --fail-once)", file=sys.stderr)
        return 3
    cluster.spawn()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
