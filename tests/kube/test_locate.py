"""Locating an application on a real API server from its live ``apps.cozystack.io``
object: it must exist, its spec chooses the case (replicas pick the service), its Secret
gives the credentials, its Service must lead to its own pods; a missing piece is a clear
reason that names none of the platform's details.

Cozystack serves ``apps.cozystack.io`` from its own aggregated API server; here a CRD of
the same group, version and plural stands in for it (only the object's shape matters to
the locator)."""

from __future__ import annotations

import pytest
from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]

from cozybackup_core import ApplicationRef, Locator, LocatorCase, NotFoundError
from cozybackup_core.hosts.kube import KubeHost

from .cluster import KubeCluster

APPS = "apps.cozystack.io"
PLURAL = "mariadbs"
LOCATOR = Locator(
    resource=PLURAL,
    connection={"host": "mariadb-{name}-primary.{namespace}.svc", "port": 3306},
    credentials_from="mariadb-{name}-credentials",
    keys={"password": "root"},
    fixed={"username": "root"},
    cases=(
        LocatorCase(
            when={"spec.replicas": 1}, connection={"host": "mariadb-{name}.{namespace}.svc"}
        ),
    ),
)


def make(kube_cluster: KubeCluster, namespace: str, name: str, replicas: int) -> None:
    core = client.CoreV1Api(kube_cluster.admin)
    client.CustomObjectsApi(kube_cluster.admin).create_namespaced_custom_object(
        APPS,
        "v1alpha1",
        namespace,
        PLURAL,
        {
            "apiVersion": f"{APPS}/v1alpha1",
            "kind": "MariaDB",
            "metadata": {"name": name},
            "spec": {"replicas": replicas},
        },
    )
    core.create_namespaced_secret(
        namespace,
        {"metadata": {"name": f"mariadb-{name}-credentials"}, "stringData": {"root": "s3cret"}},
    )
    service = f"mariadb-{name}" if replicas == 1 else f"mariadb-{name}-primary"
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": service},
            "spec": {"selector": {"app": name}, "ports": [{"port": 3306}]},
        },
    )


def host(kube_cluster: KubeCluster) -> KubeHost:
    return KubeHost(kube_cluster.admin, "default", conventions={(APPS, "MariaDB"): LOCATOR})


def ref(name: str) -> ApplicationRef:
    return ApplicationRef(api_group=APPS, kind="MariaDB", name=name)


def test_the_live_object_chooses_how_the_application_is_reached(
    kube_cluster: KubeCluster, namespace: str, cozystack_apps: None
) -> None:
    make(kube_cluster, namespace, "single", replicas=1)
    make(kube_cluster, namespace, "pair", replicas=2)
    h = host(kube_cluster)
    single = h.locate(namespace, ref("single"))
    assert single.connection == {"host": f"mariadb-single.{namespace}.svc", "port": 3306}
    assert single.credentials == {"username": "root", "password": "s3cret"}
    pair = h.locate(namespace, ref("pair"))
    assert pair.connection["host"] == f"mariadb-pair-primary.{namespace}.svc"


def test_a_missing_application_or_secret_is_a_clear_reason(
    kube_cluster: KubeCluster, namespace: str, cozystack_apps: None
) -> None:
    h = host(kube_cluster)
    with pytest.raises(NotFoundError) as gone:
        h.locate(namespace, ref("nosuch"))
    assert (
        gone.value.message == f"application MariaDB nosuch does not exist in namespace {namespace}"
    )
    assert "mariadbs nosuch not found" in (gone.value.admin_detail or "")
    make(kube_cluster, namespace, "nosecret", replicas=1)
    client.CoreV1Api(kube_cluster.admin).delete_namespaced_secret(
        "mariadb-nosecret-credentials", namespace
    )
    with pytest.raises(NotFoundError) as secretless:
        h.locate(namespace, ref("nosecret"))
    assert "does not exist" in secretless.value.message
    assert "credentials" not in secretless.value.message  # the Secret's name is the platform's
