"""The harness is real: a kube-apiserver, its controllers, and the test kubelet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]
from kubernetes.client.exceptions import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    ApiException,
)

from .cluster import USERS, ClusterStartError, KubeCluster
from .kubelet import Kubelet
from .servers import require_servers

pytestmark = pytest.mark.kube
require_servers()

K8S_VERSION = os.environ.get("COZYBACKUP_K8S_VERSION", "v1.37.2")
#: generous: a loaded 2-CPU machine; every wait polls and returns as soon as it can
WAIT = 120.0
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = WAIT) -> T:
    """Poll ``probe`` until it returns something other than None/False."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def job(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    """A batch/v1 Job of one container running ``command``; ``spec`` adds to the Job spec."""
    pod_spec = spec.pop("pod_spec", {})
    container = {"name": "main", "image": "busybox", "command": command}
    container.update(spec.pop("container", {}))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {"restartPolicy": "Never", "containers": [container], **pod_spec}},
            **spec,
        },
    }


def conditions(batch: Any, ns: str, name: str) -> dict[str, Any]:
    """The Job's conditions that are True, by type."""
    status = batch.read_namespaced_job_status(name, ns).status
    return {c.type: c for c in (status.conditions or []) if c.status == "True"}


def finished(batch: Any, ns: str, name: str) -> dict[str, Any] | None:
    conds = conditions(batch, ns, name)
    return conds if {"Complete", "Failed"} & set(conds) else None


def gone(read: Callable[[], object]) -> bool:
    try:
        read()
    except ApiException as e:
        if e.status == 404:
            return True
        raise
    return False


def test_apiserver_is_the_real_version(kube_cluster: KubeCluster) -> None:
    info = client.VersionApi(kube_cluster.admin).get_code()
    assert info.git_version == K8S_VERSION
    assert (info.major, info.minor) == ("1", K8S_VERSION.split(".")[1])


def test_tenant_tokens_are_refused_secrets_of_kube_system(kube_cluster: KubeCluster) -> None:
    # The admin may (the token file and RBAC work) ...
    client.CoreV1Api(kube_cluster.admin).list_namespaced_secret("kube-system")
    # ... a tenant, with no RoleBinding, may not.
    for user in ("alice", "bob"):
        tenant = client.CoreV1Api(kube_cluster.api_client(USERS[user][0]))
        with pytest.raises(ApiException) as refused:
            tenant.list_namespaced_secret("kube-system")
        assert refused.value.status == 403
        message = json.loads(refused.value.body)["message"]
        assert f'User "{user}" cannot list resource "secrets"' in message
    # A token nobody issued is not even authenticated.
    with pytest.raises(ApiException) as unknown:
        client.CoreV1Api(kube_cluster.api_client("forged")).list_namespaced_secret("default")
    assert unknown.value.status == 401


def test_jobs_complete_and_fail_through_the_job_controller(
    kube_cluster: KubeCluster, kubelet: Kubelet, namespace: str
) -> None:
    batch = client.BatchV1Api(kube_cluster.admin)
    batch.create_namespaced_job(namespace, job("ok", ["true"]))
    batch.create_namespaced_job(namespace, job("bad", ["sh", "-c", "echo broken >&2; exit 3"]))

    ok = wait_for("Job ok to finish", lambda: finished(batch, namespace, "ok"))
    assert {"SuccessCriteriaMet", "Complete"} <= set(ok)
    assert "Failed" not in ok
    bad = wait_for("Job bad to finish", lambda: finished(batch, namespace, "bad"))
    assert {"FailureTarget", "Failed"} <= set(bad)
    assert bad["Failed"].reason == "BackoffLimitExceeded"
    assert "Complete" not in bad

    [ok_pod] = kubelet.pods(namespace, job="ok")
    [bad_pod] = kubelet.pods(namespace, job="bad")
    assert (ok_pod.phase, ok_pod.container().exit_code) == ("Succeeded", 0)
    assert (bad_pod.phase, bad_pod.container().exit_code) == ("Failed", 3)
    assert bad_pod.container().stderr == "broken\n"
    # What the Job controller read: the Pod's status as the kubelet reported it.
    pod = client.CoreV1Api(kube_cluster.admin).read_namespaced_pod(bad_pod.name, namespace)
    assert pod.spec.node_name == "runner"
    assert pod.status.phase == "Failed"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3


def test_a_pod_reads_a_secret_from_env_and_from_a_volume(
    kube_cluster: KubeCluster, kubelet: Kubelet, namespace: str
) -> None:
    core = client.CoreV1Api(kube_cluster.admin)
    batch = client.BatchV1Api(kube_cluster.admin)
    password = "p@ss w0rd; $(not expanded) 'quoted' é\n"
    config = '{"endpoint": "http://127.0.0.1:9", "bucket": "b"}\n'
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "creds"},
            "stringData": {"password": password, "config.json": config},
        },
    )
    script = 'printf "%s|%s|" "$PASSWORD" "$MY_NAMESPACE"; cat /etc/creds/config.json'
    manifest = job(
        "reader",
        ["sh", "-c", script],
        container={
            "env": [
                {
                    "name": "PASSWORD",
                    "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}},
                },
                {
                    "name": "MY_NAMESPACE",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                },
            ],
            "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds", "readOnly": True}],
        },
        pod_spec={"volumes": [{"name": "creds", "secret": {"secretName": "creds"}}]},
    )
    batch.create_namespaced_job(namespace, manifest)

    done = wait_for("Job reader to finish", lambda: finished(batch, namespace, "reader"))
    [pod] = kubelet.pods(namespace, job="reader")
    assert "Complete" in done, pod.container().stderr
    assert pod.container().stdout == f"{password}|{namespace}|{config}"


def test_active_deadline_kills_the_process(
    kube_cluster: KubeCluster, kubelet: Kubelet, namespace: str
) -> None:
    batch = client.BatchV1Api(kube_cluster.admin)
    batch.create_namespaced_job(namespace, job("slow", ["sleep", "60"], activeDeadlineSeconds=2))

    [pod] = wait_for("the Pod of Job slow", lambda: kubelet.pods(namespace, job="slow") or None)
    done = wait_for("Job slow to finish", lambda: finished(batch, namespace, "slow"))
    assert done["Failed"].reason == "DeadlineExceeded"
    wait_for("the process to be gone", lambda: not pod.alive)
    assert pod.container().exit_code in (137, 143)  # SIGKILL or SIGTERM
    core = client.CoreV1Api(kube_cluster.admin)
    wait_for(
        "the Pod to be deleted", lambda: gone(lambda: core.read_namespaced_pod(pod.name, namespace))
    )


def test_ttl_deletes_the_job_and_the_garbage_collector_its_secret(
    kube_cluster: KubeCluster, kubelet: Kubelet, namespace: str
) -> None:
    core = client.CoreV1Api(kube_cluster.admin)
    batch = client.BatchV1Api(kube_cluster.admin)
    created = batch.create_namespaced_job(
        namespace, job("brief", ["true"], ttlSecondsAfterFinished=1)
    )
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": "brief",
        "uid": created.metadata.uid,
        "blockOwnerDeletion": True,
    }
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": "brief-creds", "ownerReferences": [owner]}, "stringData": {"k": "v"}},
    )
    wait_for(
        "Job brief to be deleted",
        lambda: gone(lambda: batch.read_namespaced_job("brief", namespace)),
    )
    wait_for(
        "its Secret to be garbage-collected",
        lambda: gone(lambda: core.read_namespaced_secret("brief-creds", namespace)),
    )
    [pod] = kubelet.pods(namespace, job="brief")
    assert pod.phase == "Succeeded"
    wait_for(
        "its Pod to be deleted", lambda: gone(lambda: core.read_namespaced_pod(pod.name, namespace))
    )


def test_containers_run_concurrently_and_share_an_empty_dir(
    kube_cluster: KubeCluster, kubelet: Kubelet, namespace: str
) -> None:
    # "reader" waits for what "writer" puts in the emptyDir, so they must run side by side;
    # one container failing fails the Pod (and so the Job).
    manifest = job("pair", ["unused"])
    manifest["spec"]["template"]["spec"].update(
        containers=[
            {
                "name": "writer",
                "image": "busybox",
                "command": ["sh", "-c", "sleep 0.5; echo hello > /shared/msg"],
                "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
            },
            {
                "name": "reader",
                "image": "busybox",
                "command": [
                    "sh",
                    "-c",
                    "until [ -s /shared/msg ]; do sleep 0.1; done; cat /shared/msg; exit 4",
                ],
                "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
            },
        ],
        volumes=[{"name": "shared", "emptyDir": {}}],
    )
    batch = client.BatchV1Api(kube_cluster.admin)
    batch.create_namespaced_job(namespace, manifest)
    done = wait_for("Job pair to finish", lambda: finished(batch, namespace, "pair"))
    assert "Failed" in done
    [pod] = kubelet.pods(namespace, job="pair")
    assert pod.container("writer").exit_code == 0
    assert (pod.container("reader").exit_code, pod.container("reader").stdout) == (4, "hello\n")


def test_the_kubelet_relists_after_410_gone_across_an_apiserver_restart(
    kube_cluster: KubeCluster, kubelet: Kubelet, namespace: str
) -> None:
    core = client.CoreV1Api(kube_cluster.admin)

    def run_pod(name: str) -> None:
        pod = {
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": "busybox", "command": ["true"]}],
            },
        }
        core.create_namespaced_pod(namespace, pod)
        wait_for(
            f"Pod {name} to succeed",
            lambda: core.read_namespaced_pod_status(name, namespace).status.phase == "Succeeded",
        )

    run_pod("before")
    # The new apiserver's watch cache starts after the kubelet's last resourceVersion: its
    # resumed watch is answered 410 Gone, and it must list again to go on.
    kube_cluster.restart_apiserver()
    wait_for("the kubelet to relist", lambda: kubelet.relists >= 1)
    run_pod("after")
    assert [p.name for p in kubelet.pods(namespace)] == ["before", "after"]


def test_a_process_runs_as_a_service_account(
    kube_cluster: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube_cluster.admin)
    rbac = client.RbacAuthorizationV1Api(kube_cluster.admin)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "controller"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "read-secrets"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "controller"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "read-secrets",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "controller", "namespace": namespace}],
        },
    )
    kubeconfig = kube_cluster.service_account_kubeconfig(
        namespace, "controller", tmp_path / "sa.kubeconfig"
    )
    probe = """
import json, sys
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
api = config.new_client_from_config(sys.argv[1])
who = client.AuthenticationV1Api(api).create_self_subject_review({}).status.user_info.username
client.CoreV1Api(api).list_namespaced_secret(sys.argv[2])
try:
    client.CoreV1Api(api).list_namespaced_secret("kube-system")
    other = 200
except ApiException as e:
    other = e.status
print(json.dumps({"user": who, "kube-system": other}))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe, str(kubeconfig), namespace],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    ).stdout
    assert json.loads(out) == {
        "user": f"system:serviceaccount:{namespace}:controller",
        "kube-system": 403,
    }


def test_a_server_that_fails_to_start_is_reported_with_its_log(
    kube_bin: Path, tmp_path: Path
) -> None:
    real = kube_bin
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("etcd", "kube-controller-manager"):
        (fake / name).symlink_to(real / name)
    (fake / "kube-apiserver").write_text(
        "#!/bin/sh\necho 'Error: unknown flag: --nonsense' >&2\nexit 1\n"
    )
    (fake / "kube-apiserver").chmod(0o755)
    cluster = KubeCluster(fake, parent_dir=tmp_path)

    with pytest.raises(ClusterStartError, match=r"(?s)kube-apiserver exited with 1.*unknown flag"):
        cluster.start()

    # etcd, which had started, was stopped with it, and the temp dir removed.
    assert not cluster.dir.exists()
    running = [
        p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_mentions(p, cluster.dir)
    ]
    assert running == []


def _cmdline_mentions(proc: Path, text: Path) -> bool:
    try:
        return str(text).encode() in (proc / "cmdline").read_bytes()
    except OSError:
        return False
