"""One active controller: the Lease lock, the elector, and the claim of each job by a
compare-and-swap on its status (against the strict API stand-in; the real API server
suite in ``tests/kube`` runs the same against kube-apiserver)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

if sys.version_info < (3, 11):  # kmock, the only Kubernetes API stand-in here, needs 3.11
    pytest.skip("kmock needs Python 3.11 or newer", allow_module_level=True)

from kubernetes import client as kclient

from cozybackup_core._api.types import BackupJob
from cozybackup_core._api.wire import load
from cozybackup_core._engine.engine import Engine
from cozybackup_core._plugins.host import PluginHost
from cozybackup_core.hosts.kube import KubeHost
from cozybackup_core.hosts.kube_lease import LeaderElector, LeaseLock, LeaseTiming

from support import drivers as test_drivers
from support.kubeapi import StrictApiServer

PLATFORM = "cozy-backup"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{PLATFORM}/leases"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def lock(api_client: Any, identity: str, clock: Clock | None = None, **timing: float) -> LeaseLock:
    host = KubeHost(api_client, PLATFORM)
    base = host.elector("ctl", identity, LeaseTiming(**timing)).lock
    if clock is not None:
        base._monotonic = clock
    return base


def holder(api_client: Any) -> Any:
    return kclient.CoordinationV1Api(api_client).read_namespaced_lease("ctl", PLATFORM).spec


def test_one_holder_and_a_release_hands_over_at_once(kube: tuple[StrictApiServer, Any]) -> None:
    _, api_client = kube
    a, b = lock(api_client, "a"), lock(api_client, "b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert b.holder == "a"
    assert a.try_acquire_or_renew()  # renewing
    first = holder(api_client)
    assert (first.holder_identity, first.lease_transitions) == ("a", 0)
    a.release()
    assert b.try_acquire_or_renew()
    now = holder(api_client)
    assert (now.holder_identity, now.lease_transitions) == ("b", 1)
    assert not a.try_acquire_or_renew()


def test_a_silent_holder_is_taken_over_only_after_the_lease_duration_observed_here(
    kube: tuple[StrictApiServer, Any],
) -> None:
    _, api_client = kube
    clock = Clock()
    a, b = lock(api_client, "a"), lock(api_client, "b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # first seen now: B starts counting here
    clock.t += 14.0
    assert not b.try_acquire_or_renew()
    assert a.try_acquire_or_renew()  # A renews: B's count starts again
    clock.t += 14.0
    assert not b.try_acquire_or_renew()
    clock.t += 15.0  # A silent for a whole lease duration as B saw it
    assert b.try_acquire_or_renew()
    assert holder(api_client).holder_identity == "b"


def test_of_two_candidates_writing_at_once_one_wins(kube: tuple[StrictApiServer, Any]) -> None:
    api, api_client = kube
    a, b = lock(api_client, "a"), lock(api_client, "b")
    assert a.try_acquire_or_renew()
    a.release()
    # B read the released Lease, but A's write landed first: B's write is refused (409).
    api.faults[("PUT", f"{LEASES}/ctl")] = 409
    assert not b.try_acquire_or_renew()
    assert a.try_acquire_or_renew()
    assert holder(api_client).holder_identity == "a"


def test_timing_must_let_a_holder_stop_before_a_successor_starts() -> None:
    with pytest.raises(ValueError):
        LeaseTiming(duration=10, renew_deadline=10)


def test_a_leader_that_cannot_renew_is_told_it_lost_and_keeps_its_hands_off(
    kube: tuple[StrictApiServer, Any],
) -> None:
    _, api_client = kube
    timing = {"duration": 3.0, "renew_deadline": 1.0, "retry_period": 0.2}
    elector = LeaderElector(lock(api_client, "a", **timing))
    lost = threading.Event()
    stop = threading.Event()
    with elector.leading(stop, lost.set) as leading:
        assert leading
        # Someone else writes the Lease (an admin, or a successor after a partition).
        api = kclient.CoordinationV1Api(api_client)
        lease = api.read_namespaced_lease("ctl", PLATFORM)
        lease.spec.holder_identity = "intruder"
        api.replace_namespaced_lease("ctl", PLATFORM, lease)
        assert lost.wait(10)
        assert elector.lost
    # Lost leaders do not release what is no longer theirs.
    assert holder(api_client).holder_identity == "intruder"


def test_waiting_ends_when_stopped(kube: tuple[StrictApiServer, Any]) -> None:
    _, api_client = kube
    assert lock(api_client, "a").try_acquire_or_renew()
    elector = LeaderElector(lock(api_client, "b", retry_period=0.1, renew_deadline=0.5, duration=1))
    stop = threading.Event()
    seen: list[str | None] = []
    threading.Timer(0.5, stop.set).start()
    with elector.leading(stop, lambda: None, seen.append) as leading:
        assert not leading
    assert seen == ["a"]  # told once who holds it, not on every retry


def test_a_job_changed_since_it_was_listed_is_not_run(
    kube: tuple[StrictApiServer, Any], tmp_path: Path
) -> None:
    """Two runners listed the same Pending job: the second one's claim is refused."""
    _, api_client = kube
    host = KubeHost(api_client, PLATFORM, local_bucket_root=str(tmp_path))
    plugins = PluginHost.load(entry_points=False, plugins=[test_drivers])
    engine = Engine(host, plugins)
    job = host.objects.create(
        load(
            {
                "apiVersion": "backups.cozystack.io/v1alpha1",
                "kind": "BackupJob",
                "metadata": {"name": "j", "namespace": "tenant-a"},
                "spec": {
                    "applicationRef": {
                        "apiGroup": "apps.example.com",
                        "kind": "Directory",
                        "name": "x",
                    },
                    "backupClassName": "files",
                },
            }
        )
    )
    listed = host.objects.list(BackupJob)[0]
    first = engine.claim(listed)
    assert first is not None and first.status.phase == "Running"
    assert engine.claim(listed) is None  # stale: the other runner took it
    untouched = engine.run_job(listed)
    assert untouched is listed
    current = host.objects.get(BackupJob, "tenant-a", "j")
    assert current is not None
    assert current.metadata.resource_version == first.metadata.resource_version
    # A job deleted before it is claimed is skipped, not failed.
    gone = attrs.evolve(job, metadata=attrs.evolve(job.metadata, name="never-was"))
    assert engine.claim(gone) is None
    time.sleep(0)  # nothing else runs in the background
