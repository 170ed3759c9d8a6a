"""Fixtures for the tests against a real kube-apiserver (see README.md here).

``kube_bin`` (session): the bin directory of the servers ``build.sh`` built (servers.py).
``kube_cluster`` (session): those servers, started once and stopped at the end.
``namespace``: a fresh namespace a test.  ``kubelet``: the test kubelet, running the Pods of
that namespace.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import servers
from .cluster import KubeCluster
from .kubelet import Kubelet


def pytest_configure(config: pytest.Config) -> None:
    def echo(line: str) -> None:
        # Looked up now: at configure time the terminal reporter may not exist yet.
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        capture = config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"tests/kube/build.sh: {line}")

    servers.echo = echo


@pytest.fixture(scope="session")
def kube_bin() -> Path:
    """The bin directory of the built servers (skip without Go; fail on a failed build)."""
    outcome = servers.servers()
    if outcome.skip:
        pytest.skip(outcome.skip)
    if outcome.failure:
        pytest.fail(outcome.failure, pytrace=False)
    assert outcome.bin_dir is not None
    return outcome.bin_dir


@pytest.fixture(scope="session")
def kube_cluster(kube_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    """etcd, kube-apiserver and kube-controller-manager on 127.0.0.1 (cluster.py)."""
    keep = bool(os.environ.get("COZYBACKUP_KUBE_KEEP"))
    with KubeCluster(
        kube_bin, parent_dir=tmp_path_factory.mktemp("kube"), keep_dir=keep
    ) as cluster:
        yield cluster


@pytest.fixture
def namespace(kube_cluster: KubeCluster) -> Iterator[str]:
    """A new namespace (with its default ServiceAccount), deleted after the test."""
    name = kube_cluster.create_namespace(f"t-{uuid.uuid4().hex[:10]}")
    yield name
    kube_cluster.delete_namespace(name)


@pytest.fixture
def kubelet(kube_cluster: KubeCluster, namespace: str, tmp_path: Path) -> Iterator[Kubelet]:
    """The test kubelet, running the Pods of ``namespace`` (``kubelet.watch(ns)`` adds more).

    It is stopped after the test, every process it started killed; anything unexpected in
    its threads fails the test.
    """
    k = Kubelet(kube_cluster.api_client(), tmp_path / "kubelet", [namespace])
    with k:
        yield k
    if k.errors:
        pytest.fail("the test kubelet reported errors:\n" + "\n\n".join(k.errors), pytrace=False)


#: Cozystack's application kinds the locators read, by plural (its ApplicationDefinitions').
COZYSTACK_APPS = {
    "Postgres": "postgreses",
    "MariaDB": "mariadbs",
    "ClickHouse": "clickhouses",
    "Etcd": "etcds",
    "VMDisk": "vmdisks",
    "VMInstance": "vminstances",
}


@pytest.fixture(scope="session")
def cozystack_apps(kube_cluster: KubeCluster) -> None:
    """``apps.cozystack.io/v1alpha1`` served for the seed kinds: Cozystack serves them from
    its own aggregated API server; CRDs of the same group, version and plurals stand in
    (only the objects' shape matters to a locator).  They stay until the cluster stops."""
    from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]

    ext = client.ApiextensionsV1Api(kube_cluster.admin)
    for kind, plural in COZYSTACK_APPS.items():
        schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        version = {"name": "v1alpha1", "served": True, "storage": True}
        ext.create_custom_resource_definition(
            {
                "metadata": {"name": f"{plural}.apps.cozystack.io"},
                "spec": {
                    "group": "apps.cozystack.io",
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "scope": "Namespaced",
                    "versions": [{**version, "schema": {"openAPIV3Schema": schema}}],
                },
            }
        )
    custom = client.CustomObjectsApi(kube_cluster.admin)
    for plural in COZYSTACK_APPS.values():
        for _ in range(100):  # served a moment after it is created
            try:
                custom.list_cluster_custom_object("apps.cozystack.io", "v1alpha1", plural)
                break
            except client.ApiException:
                time.sleep(0.1)
