"""Every seed kind located on a real API server by the locator its installed driver
declares, from objects shaped as Cozystack's charts make them: the ``apps.cozystack.io``
application (a CRD of the same group, version and plural stands in for Cozystack's
aggregated API server), the chart's credentials Secret and its Service.

What this proves: the drivers' conventions (which Service, which Secret and key, which
case of the live object) resolve through the real API server and the controller's host,
and a missing piece is a clear reason.  What it cannot: these names resolve only in a
cluster's DNS, so no worker reaches a database through them here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]

from cozybackup_core import ApplicationRef, NotFoundError, PluginHost
from cozybackup_core.hosts.kube import KubeHost

from .cluster import KubeCluster
from .conftest import COZYSTACK_APPS

APPS = "apps.cozystack.io"


class Cozystack:
    """Creates what Cozystack's charts create for an application, in one namespace."""

    def __init__(self, cluster: KubeCluster, namespace: str) -> None:
        self.core = client.CoreV1Api(cluster.admin)
        self.custom = client.CustomObjectsApi(cluster.admin)
        self.ns = namespace

    def app(self, kind: str, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": f"{APPS}/v1alpha1", "kind": kind, "metadata": {"name": name}}
        self.custom.create_namespaced_custom_object(
            APPS, "v1alpha1", self.ns, COZYSTACK_APPS[kind], {**body, "spec": spec}
        )

    def secret(self, name: str, data: dict[str, str]) -> None:
        self.core.create_namespaced_secret(
            self.ns, {"metadata": {"name": name}, "stringData": data}
        )

    def service(self, name: str, port: int) -> None:
        self.core.create_namespaced_service(
            self.ns,
            {
                "metadata": {"name": name},
                "spec": {"selector": {"app": name}, "ports": [{"port": port}]},
            },
        )


@pytest.fixture
def host(kube_cluster: KubeCluster) -> Iterator[KubeHost]:
    drivers = PluginHost.load()  # the installed drivers' entry points, as the controller loads them
    kube = KubeHost(kube_cluster.admin, "default", conventions=drivers.registry.locators())
    yield kube


def ref(kind: str, name: str) -> ApplicationRef:
    return ApplicationRef(api_group=APPS, kind=kind, name=name)


def test_every_seed_database_kind_is_located_by_its_drivers_locator(
    kube_cluster: KubeCluster, namespace: str, cozystack_apps: None, host: KubeHost
) -> None:
    cozy = Cozystack(kube_cluster, namespace)
    # Postgres (CloudNativePG): service -rw, Secret -superuser.
    cozy.app("Postgres", "orders", {"replicas": 2})
    cozy.secret("postgres-orders-superuser", {"username": "postgres", "password": "pg-pw"})
    cozy.service("postgres-orders-rw", 5432)
    # MariaDB (mariadb-operator): one replica has no -primary service; two do.
    cozy.app("MariaDB", "single", {"replicas": 1})
    cozy.secret("mariadb-single-credentials", {"root": "root-pw", "app": "app-pw"})
    cozy.service("mariadb-single", 3306)
    cozy.app("MariaDB", "pair", {"replicas": 2})
    cozy.secret("mariadb-pair-credentials", {"root": "root-pw2"})
    cozy.service("mariadb-pair-primary", 3306)
    # ClickHouse (Altinity): the first replica's own service, the chart's backup user.
    cozy.app("ClickHouse", "events", {"shards": 1, "replicas": 2})
    cozy.secret("clickhouse-events-credentials", {"backup": "ch-pw", "analyst": "x"})
    cozy.service("chendpoint-clickhouse-events", 8123)
    cozy.service("chi-clickhouse-events-clickhouse-0-0", 8123)
    # Etcd (the tenant's, for its Kubernetes clusters): TLS client certificate.
    cozy.app("Etcd", "etcd", {"replicas": 3})
    cozy.secret("etcd-client-tls", {"ca.crt": "CA", "tls.crt": "CRT", "tls.key": "KEY"})
    cozy.service("etcd", 2379)

    ns = namespace
    pg = host.locate(ns, ref("Postgres", "orders"))
    assert pg.connection == {
        "host": f"postgres-orders-rw.{ns}.svc",
        "port": 5432,
        "sslmode": "require",
    }
    assert pg.credentials == {"username": "postgres", "password": "pg-pw"}
    single = host.locate(ns, ref("MariaDB", "single"))
    assert single.connection == {"host": f"mariadb-single.{ns}.svc", "port": 3306}
    assert single.credentials == {"username": "root", "password": "root-pw"}
    pair = host.locate(ns, ref("MariaDB", "pair"))
    assert pair.connection == {"host": f"mariadb-pair-primary.{ns}.svc", "port": 3306}
    ch = host.locate(ns, ref("ClickHouse", "events"))
    assert ch.connection == {"host": f"chi-clickhouse-events-clickhouse-0-0.{ns}.svc", "port": 8123}
    assert ch.credentials == {"username": "backup", "password": "ch-pw"}
    etcd = host.locate(ns, ref("Etcd", "etcd"))
    assert etcd.connection == {"endpoints": [f"https://etcd.{ns}.svc:2379"]}
    assert etcd.credentials == {"ca.crt": "CA", "tls.crt": "CRT", "tls.key": "KEY"}


def test_a_missing_application_secret_or_service_is_a_clear_reason(
    kube_cluster: KubeCluster, namespace: str, cozystack_apps: None, host: KubeHost
) -> None:
    cozy = Cozystack(kube_cluster, namespace)
    # The Secret and Service of an application that was deleted: it does not exist.
    cozy.secret("postgres-gone-superuser", {"username": "postgres", "password": "pw"})
    cozy.service("postgres-gone-rw", 5432)
    cozy.app("ClickHouse", "nosecret", {})
    cozy.service("chi-clickhouse-nosecret-clickhouse-0-0", 8123)
    cozy.app("MariaDB", "noservice", {"replicas": 1})
    cozy.secret("mariadb-noservice-credentials", {"root": "pw"})
    for kind, name in (("Postgres", "gone"), ("ClickHouse", "nosecret"), ("MariaDB", "noservice")):
        with pytest.raises(NotFoundError) as err:
            host.locate(namespace, ref(kind, name))
        assert (
            str(err.value) == f"application {kind} {name} does not exist in namespace {namespace}"
        )
        detail = err.value.admin_detail or ""
        assert detail, "the operator learns which piece is missing"
        for private in ("superuser", "credentials", "chi-", ".svc"):
            assert private not in str(err.value)
