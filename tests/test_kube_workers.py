"""Worker Jobs against the strict API stand-in: what is created, idempotence, reading a
worker's state and reports, and no credentials left behind (the real API server suite in
tests/kube runs them end to end)."""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import pytest

if sys.version_info < (3, 11):  # kmock, the only Kubernetes API stand-in here, needs 3.11
    pytest.skip("kmock needs Python 3.11 or newer", allow_module_level=True)

from kubernetes import client as kclient

from cozybackup_core import ApplicationRef, BackupJob, load
from cozybackup_core._api.errors import CozyError
from cozybackup_core._drivers.contract import AppLocation
from cozybackup_core.hosts.kube import KubeHost
from cozybackup_core.hosts.kube_workers import (
    ANNOTATION_OUTCOME,
    KubeWorkers,
    WorkerSettings,
    read_location,
    worker_name,
)

PLATFORM = "cozy-backup"
JOB = load(
    {
        "apiVersion": "backups.cozystack.io/v1alpha1",
        "kind": "BackupJob",
        "metadata": {"name": "j1", "namespace": "tenant-a", "uid": "u-1"},
        "spec": {
            "applicationRef": {"apiGroup": "apps.example.com", "kind": "Directory", "name": "d"},
            "backupClassName": "files",
        },
    }
)
APP = AppLocation(
    ref=ApplicationRef(api_group="apps.example.com", kind="Directory", name="d"),
    namespace="tenant-a",
    connection={"path": "/data"},
    credentials={"password": "s3cret"},
)


def workers(api_client: Any) -> KubeWorkers:
    return KubeWorkers(KubeHost(api_client, PLATFORM), WorkerSettings(image="img:1"))


def test_launch_makes_a_job_and_a_secret_it_owns_once(kube: tuple[Any, Any]) -> None:
    _, api_client = kube
    w = workers(api_client)
    w.launch(JOB, APP, 3600)
    w.launch(JOB, APP, 3600)  # a retry after a crash: the same worker
    name = worker_name(JOB)
    assert isinstance(JOB, BackupJob) and name.startswith("cozy-backup-")
    job = kclient.BatchV1Api(api_client).read_namespaced_job(name, PLATFORM)
    spec = job.spec
    assert (spec.backoff_limit, spec.active_deadline_seconds) == (0, 3900)
    assert spec.ttl_seconds_after_finished == 3600
    pod = spec.template.spec
    assert pod.service_account_name == "cozybackup-worker" and pod.restart_policy == "Never"
    assert pod.containers[0].command[-4:-1] == ["backup", "tenant-a/j1", "--location"]
    # Requests so the scheduler places it; no limit unless the admin sets one.
    assert pod.containers[0].resources.requests == {"cpu": "250m", "memory": "256Mi"}
    assert pod.containers[0].resources.limits is None
    # A read-only root filesystem: temporary files go to the home emptyDir.
    worker = pod.containers[0]
    assert worker.security_context.read_only_root_filesystem is True
    (home,) = [m.mount_path for m in worker.volume_mounts if m.name == "home"]
    assert {e.name: e.value for e in worker.env}["TMPDIR"] == home
    secret = kclient.CoreV1Api(api_client).read_namespaced_secret(name, PLATFORM)
    (owner,) = secret.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("Job", name, job.metadata.uid)
    raw = secret.data["location.json"]
    assert read_location(base64.b64decode(raw).decode()) == APP
    state = w.state(JOB)
    assert state is not None and state.active and state.outcome is None


def test_state_reads_the_outcome_and_release_removes_the_credentials(kube: tuple[Any, Any]) -> None:
    _, api_client = kube
    w = workers(api_client)
    w.launch(JOB, APP, 60)
    name = worker_name(JOB)
    batch = kclient.BatchV1Api(api_client)
    outcome = {"ok": True, "reason": "Completed", "message": "Backup j1 is ready"}
    batch.patch_namespaced_job(
        name,
        PLATFORM,
        {"metadata": {"annotations": {ANNOTATION_OUTCOME: json.dumps(outcome)}}},
        _content_type="application/merge-patch+json",
    )
    job = batch.read_namespaced_job(name, PLATFORM)
    job.status = kclient.V1JobStatus(
        conditions=[kclient.V1JobCondition(type="Complete", status="True")]
    )
    batch.replace_namespaced_job_status(name, PLATFORM, job)  # the Job controller's write
    state = w.state(JOB)
    assert state is not None and not state.active
    assert state.outcome is not None and state.outcome.message == "Backup j1 is ready"
    w.release(JOB)
    secrets = kclient.CoreV1Api(api_client).list_namespaced_secret(PLATFORM).items
    assert [s.metadata.name for s in secrets] == []


def test_a_refused_job_leaves_no_credentials_behind(kube: tuple[Any, Any]) -> None:
    api, api_client = kube
    api.faults[("POST", f"/apis/batch/v1/namespaces/{PLATFORM}/jobs")] = 403
    with pytest.raises(CozyError):
        workers(api_client).launch(JOB, APP, 60)
    assert kclient.CoreV1Api(api_client).list_namespaced_secret(PLATFORM).items == []
    assert workers(api_client).state(JOB) is None
