"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager.

Test support code, not product code.  ``KubeCluster(bin_dir).start()`` runs the three
servers from ``tests/kube/build.sh``'s bin directory, each in its own process group, on
127.0.0.1 and ports picked free at start, with everything they write (data, certificates,
keys, kubeconfigs, one log file a server) in one temp dir that ``stop()`` removes.

* **Users** come from a static token file: ``admin`` (group ``system:masters``, token
  ``admin-token``), and two tenants without any permission until a test grants some:
  ``alice`` (group ``tenant-acme``, ``alice-token``) and ``bob`` (group ``tenant-other``,
  ``bob-token``).  Authorization is RBAC only; anonymous requests are refused.
* **ServiceAccounts** are real: tokens are signed with an openssl-generated key, the
  serviceaccount controller creates each namespace's ``default`` ServiceAccount, and
  :meth:`KubeCluster.service_account_kubeconfig` writes a kubeconfig holding a token from the
  TokenRequest API, so that a process can run as a ServiceAccount.
* **Controllers** running: job, garbage collector, TTL-after-finished, serviceaccount and its
  token controller, namespace, and the root-CA publisher (ConfigMap ``kube-root-ca.crt``,
  part of the ServiceAccount volume mounted into every Pod).  No scheduler and no kubelet:
  ``kubelet.Kubelet`` plays both.
* :meth:`KubeCluster.restart_apiserver` kills the apiserver and starts it again on the same
  etcd: what clients see after a real restart (broken watches, 410 Gone on resume).
* The servers die with the test process (``PR_SET_PDEATHSIG``) if it is killed before
  :meth:`KubeCluster.stop`; they are started from the thread that calls :meth:`start`
  (and :meth:`restart_apiserver`), which must outlive them.
* **TLS**: the apiserver generates a self-signed certificate for 127.0.0.1 in
  ``<dir>/pki/apiserver.crt`` (the server certificate followed by its CA).  Clients verify
  against that file rather than switching verification off: urllib3 warns on every
  unverified request, and the project's ``filterwarnings = error`` makes that a failure,
  even in a background thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]
from kubernetes.client.exceptions import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    ApiException,
)

#: user name -> (token, group) in the apiserver's ``--token-auth-file``.
USERS: dict[str, tuple[str, str]] = {
    "admin": ("admin-token", "system:masters"),
    "alice": ("alice-token", "tenant-acme"),
    "bob": ("bob-token", "tenant-other"),
}
ADMIN_TOKEN = USERS["admin"][0]
CONTROLLERS = (
    "job",
    "garbage-collector-controller",
    "ttl-after-finished-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "namespace-controller",
    # Publishes ConfigMap kube-root-ca.crt in every namespace: the ServiceAccount admission
    # plugin mounts it into every Pod (the kube-api-access-* projected volume).
    "root-ca-certificate-publisher-controller",
    # Removes the kubernetes.io/pvc-protection finalizer (which admission puts on every
    # PVC) once no Pod uses the claim: without it a deleted PVC stays Terminating.
    "persistentvolumeclaim-protection-controller",
)
SA_ISSUER = "https://kubernetes.default.svc"


class ClusterStartError(RuntimeError):
    """A server did not come up; the message ends with the tail of its log."""


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (held open together while picked)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"({path}: {e})"
    return "\n".join(text.splitlines()[-lines:])


# Looked up here, not in the child: between fork and exec only the call itself runs.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the test process dies without stopping
    # the cluster (kill -9, a crash), the kernel kills the server too.  PR_SET_PDEATHSIG = 1.
    _prctl(1, signal.SIGKILL, 0, 0, 0)


class KubeCluster:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1; see the module doc.

    Use as a context manager, or call :meth:`start` and (always) :meth:`stop`.
    """

    def __init__(
        self, bin_dir: Path | str, *, parent_dir: Path | None = None, keep_dir: bool = False
    ) -> None:
        self.bin_dir = Path(bin_dir)
        self.dir = Path(tempfile.mkdtemp(prefix="kube-", dir=parent_dir))
        self.keep_dir = keep_dir
        self.url = ""
        self.etcd_url = ""
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._argv: dict[str, list[str]] = {}
        self._clients: list[Any] = []
        self._kcm_port = 0
        self._admin: Any = None

    # -- paths ---------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        """The apiserver's self-signed certificate chain: what clients verify against."""
        return self.dir / "pki" / "apiserver.crt"

    def log(self, server: str) -> Path:
        """The log file of ``etcd``, ``kube-apiserver`` or ``kube-controller-manager``."""
        return self.dir / f"{server}.log"

    def kubeconfig(self, user: str = "admin") -> Path:
        """The kubeconfig of a token user (:data:`USERS`), written at start."""
        return self.dir / "kubeconfigs" / f"{user}.kubeconfig"

    # -- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> KubeCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> KubeCluster:
        """Start the three servers and wait until each answers; stops them all on failure."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
            if not os.access(self.bin_dir / name, os.X_OK):
                raise ClusterStartError(
                    f"{self.bin_dir / name} is missing: run tests/kube/build.sh"
                )
        deadline = time.monotonic() + timeout
        d = self.dir
        (d / "pki").mkdir()
        etcd_client, etcd_peer, api_port, kcm_port = free_ports(4)
        self._kcm_port = kcm_port
        self.etcd_url = f"http://127.0.0.1:{etcd_client}"
        self.url = f"https://127.0.0.1:{api_port}"

        for args in (
            ["genrsa", "-out", str(d / "pki" / "sa.key"), "2048"],
            ["rsa", "-in", str(d / "pki" / "sa.key"), "-pubout", "-out", str(d / "pki" / "sa.pub")],
        ):
            subprocess.run(["openssl", *args], check=True, capture_output=True)
        (d / "tokens.csv").write_text(
            "".join(f'{tok},{user},{user}-uid,"{group}"\n' for user, (tok, group) in USERS.items())
        )

        peer = f"http://127.0.0.1:{etcd_peer}"
        self._spawn(
            "etcd",
            ["--name=n1", f"--data-dir={d / 'etcd'}"],
            [f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}"],
            [f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}"],
            [f"--initial-cluster=n1={peer}", "--initial-cluster-state=new"],
            ["--listen-metrics-urls=", "--unsafe-no-fsync"],
        )
        self._wait("etcd", deadline, self._etcd_healthy)

        pki = d / "pki"
        self._spawn(
            "kube-apiserver",
            [f"--etcd-servers={self.etcd_url}", "--bind-address=127.0.0.1"],
            [f"--secure-port={api_port}", f"--cert-dir={pki}", "--advertise-address=127.0.0.1"],
            # A loopback advertise address is refused unless no endpoint reconciler runs.
            ["--endpoint-reconciler-type=none", "--service-cluster-ip-range=10.0.0.0/24"],
            ["--authorization-mode=RBAC", f"--token-auth-file={d / 'tokens.csv'}"],
            ["--anonymous-auth=false", f"--service-account-issuer={SA_ISSUER}"],
            [f"--service-account-key-file={pki / 'sa.pub'}"],
            [f"--service-account-signing-key-file={pki / 'sa.key'}"],
        )
        self._wait("kube-apiserver", deadline, self._apiserver_ready)

        (d / "kubeconfigs").mkdir()
        for user, (token, _) in USERS.items():
            self.write_kubeconfig(self.kubeconfig(user), token, user=user)
        admin = self.kubeconfig("admin")
        self._spawn(
            "kube-controller-manager",
            [f"--kubeconfig={admin}", f"--authentication-kubeconfig={admin}"],
            [f"--authorization-kubeconfig={admin}", "--bind-address=127.0.0.1"],
            [f"--secure-port={kcm_port}", "--leader-elect=false"],
            [f"--controllers={','.join(CONTROLLERS)}"],
            [f"--service-account-private-key-file={pki / 'sa.key'}"],
            [f"--root-ca-file={self.ca_file}"],
        )
        self._wait("kube-controller-manager", deadline, self._kcm_healthy)
        # The serviceaccount controller at work: Pods are refused in a namespace until its
        # "default" ServiceAccount exists.
        self._wait("kube-controller-manager", deadline, lambda: self._has_default_sa("default"))

    def _spawn(self, name: str, *flag_groups: list[str]) -> None:
        argv = [str(self.bin_dir / name), *(f for group in flag_groups for f in group)]
        self._argv[name] = argv
        self._run(name)

    def _run(self, name: str) -> None:
        argv = self._argv[name]
        with self.log(name).open("ab") as log:
            self._procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,  # its own process group, killed as one
                preexec_fn=_die_with_parent,
            )

    def _wait(self, name: str, deadline: float, ready: Callable[[], bool]) -> None:
        proc = self._procs[name]
        while True:
            if proc.poll() is not None:
                raise ClusterStartError(
                    f"{name} exited with {proc.returncode} during start-up; "
                    f"the end of {self.log(name)}:\n{tail(self.log(name))}"
                )
            try:
                if ready():
                    return
            except (OSError, ApiException, ssl.SSLError):
                pass
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"{name} was not ready in time; the end of {self.log(name)}:\n"
                    f"{tail(self.log(name))}"
                )
            time.sleep(0.2)

    def _etcd_healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=5) as r:
            return bool(json.loads(r.read()).get("health") == "true")

    def _get(self, url: str, token: str | None = None) -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        req = urllib.request.Request(url)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _apiserver_ready(self) -> bool:
        if not self.ca_file.exists():
            return False
        status, body = self._get(f"{self.url}/readyz", ADMIN_TOKEN)
        return status == 200 and body.strip() == b"ok"

    def _kcm_healthy(self) -> bool:
        # Its serving certificate is its own self-signed one: only liveness is asked here.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        url = f"https://127.0.0.1:{self._kcm_port}/healthz"
        with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
            return bool(r.status == 200)

    def _has_default_sa(self, namespace: str) -> bool:
        try:
            client.CoreV1Api(self.admin).read_namespaced_service_account("default", namespace)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def restart_apiserver(self, timeout: float = 120.0) -> None:
        """Kill the apiserver (SIGKILL) and start it again, same flags and port, on the same etcd.

        The new apiserver's watch cache starts at etcd's current revision, so a watch resumed
        from an older resourceVersion gets 410 Gone, as clients see after a real restart.
        While it is down, etcd's revision is moved on (a key outside ``/registry``), so that
        this holds even when nothing else was written meanwhile.
        """
        proc = self._procs.pop("kube-apiserver")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        req = urllib.request.Request(
            f"{self.etcd_url}/v3/kv/put",  # etcd's JSON gateway; keys and values are base64
            data=json.dumps({"key": "L2NvenliYWNrdXAtdGVzdC9idW1w", "value": "MQ=="}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
        self._run("kube-apiserver")
        self._wait("kube-apiserver", time.monotonic() + timeout, self._apiserver_ready)

    def stop(self) -> None:
        """Kill the apiserver, then the controller manager, then etcd; remove the temp dir.

        Each server is killed with its whole process group, by PID.  SIGKILL: the apiserver
        would otherwise drain for up to 20 s, and nothing here needs a graceful shutdown.
        """
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.close()
        self._clients.clear()
        self._admin = None
        for name in ("kube-apiserver", "kube-controller-manager", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- clients -------------------------------------------------------------------------

    def api_client(self, token: str = ADMIN_TOKEN) -> Any:
        """A ``kubernetes.client.ApiClient`` (client 36.x) sending ``token``; closed by stop()."""
        cfg = client.Configuration()
        cfg.host = self.url
        cfg.ssl_ca_cert = str(self.ca_file)
        cfg.api_key = {"authorization": f"Bearer {token}"}
        cfg.connection_pool_maxsize = 16
        api = client.ApiClient(cfg)
        self._clients.append(api)
        return api

    @property
    def admin(self) -> Any:
        """The admin's ApiClient (one, shared)."""
        if self._admin is None:
            self._admin = self.api_client(ADMIN_TOKEN)
        return self._admin

    def write_kubeconfig(self, path: Path, token: str, *, user: str = "user") -> Path:
        """A kubeconfig for this cluster that authenticates with ``token``."""
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "test", "user": user}}],
            "current-context": user,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        path.chmod(0o600)
        return path

    def service_account_token(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600
    ) -> str:
        """A token for ServiceAccount ``namespace/name`` from the TokenRequest API."""
        body = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
        )
        req = client.CoreV1Api(self.admin).create_namespaced_service_account_token(
            name, namespace, body
        )
        return str(req.status.token)

    def service_account_kubeconfig(
        self,
        namespace: str,
        name: str,
        path: Path | None = None,
        *,
        expiration_seconds: int = 3600,
    ) -> Path:
        """A kubeconfig that acts as ServiceAccount ``namespace/name`` (a TokenRequest token)."""
        token = self.service_account_token(namespace, name, expiration_seconds=expiration_seconds)
        path = path or self.dir / "kubeconfigs" / f"sa-{namespace}-{name}.kubeconfig"
        return self.write_kubeconfig(path, token, user=f"system:serviceaccount:{namespace}:{name}")

    # -- helpers for tests ---------------------------------------------------------------

    def create_namespace(self, name: str, *, timeout: float = 60.0) -> str:
        """Create namespace ``name`` and wait for its ``default`` ServiceAccount."""
        client.CoreV1Api(self.admin).create_namespace({"metadata": {"name": name}})
        deadline = time.monotonic() + timeout
        while not self._has_default_sa(name):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"namespace {name}: no default ServiceAccount after {timeout:.0f} s; the end "
                    f"of the controller manager's log:\n{tail(self.log('kube-controller-manager'))}"
                )
            time.sleep(0.1)
        return name

    def delete_namespace(self, name: str) -> None:
        """Delete namespace ``name`` (the namespace controller empties it; not waited for)."""
        with contextlib.suppress(ApiException):
            client.CoreV1Api(self.admin).delete_namespace(name)
