"""The Kubernetes host against a Kubernetes API stand-in (kmock, made strict).

No kube-apiserver can run here.  ``support.kubeapi.StrictApiServer`` is kmock's emulator
with what the host relies on added (server-assigned uid/resourceVersion, the status
subresource, optimistic concurrency, PUT) and every object of ours that is written checked
against the project's own CRD schemas; ``violations`` must stay empty.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

if sys.version_info < (3, 11):  # kmock, the only Kubernetes API stand-in here, needs 3.11
    pytest.skip("kmock needs Python 3.11 or newer", allow_module_level=True)

from kmock import KubernetesError
from kubernetes import client as kclient

from cozybackup_core import ApplicationRef, Locator
from cozybackup_core._api.errors import (
    ConflictError,
    NotFoundError,
    TransientError,
    ValidationError,
)
from cozybackup_core._api.types import (
    BACKUP_FINALIZER,
    KINDS,
    ArtifactRecord,
    Backup,
    BackupClass,
    BackupJob,
    RestoreJob,
    StorageLocation,
    has_status_subresource,
)
from cozybackup_core._api.wire import dump, load
from cozybackup_core._engine.engine import Engine
from cozybackup_core._plugins.host import PluginHost
from cozybackup_core.hosts.kube import (
    KubeHost,
    KubeRequestRefused,
    KubeUnavailable,
    load_conventions,
)
from cozybackup_core.testing import S3ServerInfo

from support import drivers as test_drivers
from support.drivers import FILES
from support.kubeapi import StrictApiServer
from support.manifests import FILES_CLASS, hidden_s3_platform

PLATFORM = "cozy-backup"
NS = "tenant-a"
TENANT_KINDS = [c for c in KINDS.values() if c.tenant_visible]

SAMPLES: dict[str, str] = {
    "BackupJob": """
kind: BackupJob
metadata: {name: job1, namespace: tenant-a, labels: {team: a}}
spec:
  applicationRef: {kind: Postgres, name: db1}
  backupClassName: cozy-default
""",
    "Plan": """
kind: Plan
metadata: {name: nightly, namespace: tenant-a}
spec:
  applicationRef: {apiGroup: apps.cozystack.io, kind: Postgres, name: db1}
  backupClassName: cozy-default
  schedule: {cron: "0 3 * * *"}
""",
    "Backup": """
kind: Backup
metadata: {name: job1, namespace: tenant-a, labels: {team: a}}
spec:
  applicationRef: {kind: Postgres, name: db1}
  strategyRef: {apiGroup: strategy.backups.cozystack.io, kind: Postgres, name: pg}
  takenAt: "2026-01-02T03:04:05Z"
  driverMetadata: {databases: [app], rows: 3}
status:
  phase: Ready
  artifact: {uri: "cozy://backups/0b6f7b0e", sizeBytes: 123, checksum: "sha256:ab"}
""",
    "RestoreJob": """
kind: RestoreJob
metadata: {name: restore1, namespace: tenant-a}
spec:
  backupRef: {name: job1}
""",
    "BackupClass": """
kind: BackupClass
metadata: {name: gold}
spec:
  strategies:
  - application: {kind: Postgres}
    strategyRef: {apiGroup: strategy.backups.cozystack.io, kind: Postgres, name: pg}
    parameters: {jobs: 2}
    retention: {keepLast: 3}
""",
    "StorageLocation": """
kind: StorageLocation
metadata: {name: s3-main}
spec:
  provider: S3
  bucket: backups
  endpoint: "https://s3.example.net"
  credentialsSecretRef: {name: s3-creds}
""",
    "ArtifactRecord": """
kind: ArtifactRecord
metadata: {name: 0b6f7b0e}
spec:
  storageRef: {name: s3-main}
  namespace: tenant-a
  applicationKind: Postgres
  applicationName: db1
  jobRef: {kind: BackupJob, namespace: tenant-a, name: job1}
  backupName: job1
""",
}

NEW_STATUS: dict[str, dict[str, Any]] = {
    "BackupJob": {"phase": "Running", "message": "started", "startedAt": "2026-01-02T03:04:05Z"},
    "Plan": {"missedRuns": 2, "lastScheduleTime": "2026-01-02T03:00:00Z"},
    "Backup": {"phase": "Deleting"},
    "RestoreJob": {"phase": "Failed", "message": "no such backup"},
    "ArtifactRecord": {"phase": "Committed", "checksum": "sha256:ff", "sizeBytes": 9},
}


def sample(kind: str) -> Any:
    doc = yaml.safe_load(SAMPLES[kind])
    return load({"apiVersion": "backups.cozystack.io/v1alpha1", **doc})


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def host(kube: tuple[StrictApiServer, Any], tmp_path: Path) -> KubeHost:
    return KubeHost(
        kube[1],
        PLATFORM,
        conventions={
            (FILES.api_group, FILES.kind): Locator(
                connection={"path": str(tmp_path / "apps" / "{namespace}" / "{name}")},
                credentials_from="{name}-creds",
            )
        },
        local_bucket_root=str(tmp_path / "buckets"),
    )


def make_secret(api_client: Any, namespace: str, name: str, values: dict[str, str]) -> None:
    kclient.CoreV1Api(api_client).create_namespaced_secret(
        namespace,
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": values},
    )


def events(api_client: Any, namespace: str) -> list[dict[str, Any]]:
    resp = kclient.CoreV1Api(api_client).list_namespaced_event(namespace, _preload_content=False)
    items: list[dict[str, Any]] = json.loads(resp.data)["items"]
    return items


# --------------------------------------------------------------------------- objects


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_round_trip_of_every_kind(
    kube: tuple[StrictApiServer, Any], host: KubeHost, kind: str
) -> None:
    api, _ = kube
    cls = KINDS[kind]
    obj = sample(kind)
    ns = obj.metadata.namespace

    created = host.objects.create(obj)
    meta = created.metadata
    assert meta.uid and meta.resource_version and meta.creation_timestamp  # server-assigned
    assert created.spec == obj.spec and meta.labels == obj.metadata.labels
    if hasattr(obj, "status"):
        assert created.status == obj.status  # written through /status when not empty
    got = host.objects.get(cls, ns, meta.name)
    assert got == created
    assert host.objects.list(cls, ns) == [created]
    assert host.objects.list(cls) == [created]

    with pytest.raises(ConflictError):
        host.objects.create(obj)

    if kind in NEW_STATUS:
        status = load(
            {
                "apiVersion": "backups.cozystack.io/v1alpha1",
                **dump(created),
                "status": NEW_STATUS[kind],
            }
        ).status
        updated = host.objects.update_status(attrs.evolve(created, status=status))
        assert updated.status == status
        assert updated.spec == created.spec and updated.metadata.uid == meta.uid
        assert updated.metadata.resource_version != meta.resource_version
        assert host.objects.get(cls, ns, meta.name) == updated
        with pytest.raises(ConflictError):  # `created` is stale now
            host.objects.update_status(created)
        status_puts = [w for w in api.writes if w[0] == "PUT" and w[1].endswith("/status")]
        if has_status_subresource(cls):
            assert status_puts, "update_status goes through the status subresource"
        else:  # a Backup, as in Cozystack's CRD: written whole
            assert not status_puts
            assert any(w[0] == "PUT" and w[2].get("status") for w in api.writes)

    if kind == "Backup":
        # Created with our finalizer: it goes only once the engine, its data deleted,
        # removes it (engine/deletion.py).
        current = host.objects.get(cls, ns, meta.name)
        assert current is not None and current.metadata.finalizers == (BACKUP_FINALIZER,)
        host.objects.update_status(
            attrs.evolve(current, metadata=attrs.evolve(current.metadata, finalizers=()))
        )
    host.objects.delete(cls, ns, meta.name)
    assert host.objects.get(cls, ns, meta.name) is None
    assert host.objects.list(cls) == []
    host.objects.delete(cls, ns, meta.name)  # already gone: no error
    # Every body sent was one of our objects, in full (the server checked the schemas).
    assert {w[0] for w in api.writes} <= {"POST", "PUT"}


def test_create_sends_no_server_fields_and_a_backup_is_written_whole(
    kube: tuple[StrictApiServer, Any], host: KubeHost
) -> None:
    """One call: no crash can leave a Backup without its status (as in Cozystack)."""
    api, _ = kube
    obj = sample("Backup")
    obj = attrs.evolve(
        obj, metadata=attrs.evolve(obj.metadata, uid="forged", resource_version="77")
    )
    created = host.objects.create(obj)
    assert created.metadata.uid != "forged"
    (post,) = api.writes
    assert post[0] == "POST" and "resourceVersion" not in post[2]["metadata"]
    assert post[2]["status"]["phase"] == "Ready"
    assert created.status.phase == "Ready"


def test_a_status_write_after_create_goes_to_the_subresource(
    kube: tuple[StrictApiServer, Any], host: KubeHost
) -> None:
    api, _ = kube
    record = sample("ArtifactRecord")
    committed = attrs.evolve(record, status=attrs.evolve(record.status, phase="Committed"))
    created = host.objects.create(committed)
    (post, put) = api.writes
    assert post[0] == "POST" and put[0] == "PUT" and put[1].endswith("/status")
    assert put[2]["metadata"]["resourceVersion"] == "1"
    assert created.status.phase == "Committed"


def test_lists_span_namespaces_and_sort(host: KubeHost) -> None:
    base = sample("BackupJob")
    for ns, name in (("tenant-b", "x"), ("tenant-a", "y"), ("tenant-a", "b")):
        host.objects.create(
            attrs.evolve(base, metadata=attrs.evolve(base.metadata, name=name, namespace=ns))
        )
    keys = [(j.metadata.namespace, j.metadata.name) for j in host.objects.list(BackupJob)]
    assert keys == [("tenant-a", "b"), ("tenant-a", "y"), ("tenant-b", "x")]
    assert [j.metadata.name for j in host.objects.list(BackupJob, "tenant-b")] == ["x"]
    assert host.objects.list(BackupJob, "tenant-c") == []


def test_missing_objects(host: KubeHost) -> None:
    assert host.objects.get(BackupJob, NS, "nope") is None
    assert host.objects.get(BackupClass, None, "nope") is None
    assert host.objects.list(RestoreJob) == []
    with pytest.raises(NotFoundError):
        host.objects.update_status(sample("BackupJob"))


def test_update_without_resource_version_overwrites_the_current_status(host: KubeHost) -> None:
    created = host.objects.create(sample("BackupJob"))
    handmade = attrs.evolve(
        sample("BackupJob"), status=attrs.evolve(created.status, phase="Pending")
    )
    assert handmade.metadata.resource_version is None
    assert host.objects.update_status(handmade).status.phase == "Pending"


def test_set_metadata_merges_labels_and_annotations(host: KubeHost) -> None:
    created = host.objects.create(sample("Backup"))
    meta = attrs.evolve(
        created.metadata, labels={"x": "1"}, annotations={"backups.cozystack.io/pinned": "true"}
    )
    pinned = host.objects.set_metadata(attrs.evolve(created, metadata=meta))
    assert pinned.metadata.labels == {"x": "1"}  # "team" removed, "x" added
    assert pinned.metadata.annotations == {"backups.cozystack.io/pinned": "true"}
    assert pinned.status == created.status and pinned.spec == created.spec
    with pytest.raises(ConflictError):
        host.objects.set_metadata(created)  # stale
    unpinned = host.objects.set_metadata(
        attrs.evolve(pinned, metadata=attrs.evolve(pinned.metadata, annotations={}))
    )
    assert unpinned.metadata.annotations == {}


def test_the_server_checks_our_schemas(kube: tuple[StrictApiServer, Any], host: KubeHost) -> None:
    """The checks behind ``violations`` can fail: a typo and a wrong namespace are refused."""
    api, api_client = kube
    url = (
        api_client.configuration.host
        + "/apis/backups.cozystack.io/v1alpha1/namespaces/tenant-a/backupjobs"
    )
    bad = dump(sample("BackupJob"))
    bad["spec"]["backupClassname"] = bad["spec"].pop("backupClassName")
    wrong_ns = dump(sample("BackupJob"))
    wrong_ns["metadata"]["namespace"] = "tenant-b"
    for body in (bad, wrong_ns):
        req = urllib.request.Request(
            url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 422
        err.value.close()
    assert len(api.violations) == 2
    assert "backupClassname" in api.violations[0] and "namespace" in api.violations[1]
    api.violations.clear()


# --------------------------------------------------------------------------- secrets, apps


def test_platform_secret(kube: tuple[StrictApiServer, Any], host: KubeHost) -> None:
    make_secret(kube[1], PLATFORM, "s3-creds", {"accessKeyId": "AK", "secretAccessKey": "SK/+="})
    make_secret(kube[1], NS, "tenant-secret", {"x": "y"})
    assert host.secret("s3-creds") == {"accessKeyId": "AK", "secretAccessKey": "SK/+="}
    with pytest.raises(NotFoundError) as err:
        host.secret("tenant-secret")  # only the platform namespace is read
    assert "tenant-secret" not in str(err.value) and "tenant-secret" in (
        err.value.admin_detail or ""
    )


#: Locators of the shapes the Postgres, MariaDB and etcd drivers declare for Cozystack
#: (templates, a key map, fixed credentials, a list of endpoints).
COZYSTACK_LIKE = {
    ("apps.cozystack.io", "Postgres"): Locator(
        connection={
            "host": "postgres-{name}-rw.{namespace}.svc",
            "port": 5432,
            "sslmode": "require",
        },
        credentials_from="postgres-{name}-superuser",
        keys={"username": "username", "password": "password"},
    ),
    ("apps.cozystack.io", "MariaDB"): Locator(
        connection={"host": "mariadb-{name}-primary.{namespace}.svc", "port": 3306},
        credentials_from="mariadb-{name}-credentials",
        keys={"password": "root"},
        fixed={"username": "root"},
    ),
    ("apps.cozystack.io", "Etcd"): Locator(
        connection={"endpoints": ["https://etcd.{namespace}.svc:2379"]},
        credentials_from="etcd-client-tls",
        keys={"ca.crt": "ca.crt", "tls.crt": "tls.crt", "tls.key": "tls.key"},
    ),
}


def test_locate_applies_the_drivers_locators(kube: tuple[StrictApiServer, Any]) -> None:
    api_client = kube[1]
    host = KubeHost(api_client, PLATFORM, conventions=COZYSTACK_LIKE)
    make_secret(
        api_client,
        "tenant-x",
        "postgres-db1-superuser",
        {"username": "postgres", "password": "pw1"},
    )
    make_secret(api_client, "tenant-x", "mariadb-shop-credentials", {"root": "pw2", "app": "pw3"})
    make_secret(
        api_client, "tenant-x", "etcd-client-tls", {"ca.crt": "CA", "tls.crt": "C", "tls.key": "K"}
    )
    for name in ("postgres-db1-rw", "mariadb-shop-primary", "etcd"):
        make_service(api_client, "tenant-x", name, {"selector": {"app": name}})

    pg = host.locate("tenant-x", ApplicationRef(kind="Postgres", name="db1"))
    assert pg.connection == {
        "host": "postgres-db1-rw.tenant-x.svc",
        "port": 5432,
        "sslmode": "require",
    }
    assert pg.credentials == {"username": "postgres", "password": "pw1"}
    maria = host.locate("tenant-x", ApplicationRef(kind="MariaDB", name="shop"))
    assert maria.connection == {"host": "mariadb-shop-primary.tenant-x.svc", "port": 3306}
    assert maria.credentials == {"username": "root", "password": "pw2"}
    etcd = host.locate("tenant-x", ApplicationRef(kind="Etcd", name="etcd"))
    assert etcd.connection == {"endpoints": ["https://etcd.tenant-x.svc:2379"]}
    assert etcd.credentials == {"ca.crt": "CA", "tls.crt": "C", "tls.key": "K"}

    for ns, ref in (
        ("tenant-y", ApplicationRef(kind="Postgres", name="db1")),  # another tenant's
        ("tenant-x", ApplicationRef(kind="Postgres", name="db2")),  # no such app
        ("tenant-x", ApplicationRef(kind="Redis", name="cache")),  # no convention
    ):
        with pytest.raises(NotFoundError) as err:
            host.locate(ns, ref)
        msg = str(err.value)
        assert msg == f"application {ref.kind} {ref.name} does not exist in namespace {ns}"
        assert err.value.admin_detail  # the operator learns why


def make_service(api_client: Any, namespace: str, name: str, spec: dict[str, Any]) -> None:
    kclient.CoreV1Api(api_client).create_namespaced_service(
        namespace, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}
    )


def test_a_service_that_leads_out_of_the_tenants_pods_is_refused(
    kube: tuple[StrictApiServer, Any],
) -> None:
    """K5: the tenant controls the Service a convention names.  An ExternalName, or a
    Service without a selector (its endpoints written by hand), could point the platform at
    any address: refused before any connection, the reason for the operator only."""
    api_client = kube[1]
    host = KubeHost(api_client, PLATFORM, conventions=COZYSTACK_LIKE)
    for name in ("db1", "db2", "db3"):
        make_secret(
            api_client, "tenant-x", f"postgres-{name}-superuser", {"username": "u", "password": "p"}
        )
    make_service(
        api_client,
        "tenant-x",
        "postgres-db1-rw",
        {"type": "ExternalName", "externalName": "metadata.internal"},
    )
    make_service(api_client, "tenant-x", "postgres-db2-rw", {"ports": [{"port": 5432}]})
    for name, why in (("db1", "of type ExternalName"), ("db2", "without a selector")):
        with pytest.raises(KubeRequestRefused) as err:
            host.locate("tenant-x", ApplicationRef(kind="Postgres", name=name))
        assert str(err.value) == (
            f"the service of application Postgres {name} does not lead to pods of its "
            "namespace; the platform does not connect to it"
        )
        assert err.value.admin_detail == f"Service postgres-{name}-rw in tenant-x is {why}"
    with pytest.raises(NotFoundError) as gone:  # no Service at all: no such application
        host.locate("tenant-x", ApplicationRef(kind="Postgres", name="db3"))
    assert gone.value.admin_detail == "Service postgres-db3-rw not found in tenant-x"


def test_conventions_file() -> None:
    convs = load_conventions(
        """
apps.example.com/Directory:
  connection: {path: "/data/{namespace}/{name}", mode: 7}
  credentialsFrom: "{name}-creds"
  keys: {password: pass}
"""
    )
    conv = convs[("apps.example.com", "Directory")]
    assert conv.credentials_from == "{name}-creds" and conv.keys == {"password": "pass"}
    with pytest.raises(ValidationError) as err:
        load_conventions("apps.example.com/Directory: {credentialsFrum: x}")
    assert "credentialsFrum" in str(err.value.problems)
    with pytest.raises(ValidationError):
        load_conventions("Directory: {}")


def test_events_and_local_buckets(
    kube: tuple[StrictApiServer, Any], host: KubeHost, tmp_path: Path
) -> None:
    job = host.objects.create(sample("BackupJob"))
    cls = host.objects.create(sample("BackupClass"))
    host.event(job, "Warning", "Failed", "the application is gone")
    host.event(cls, "Normal", "Pruned", "deleted by the retention policy")
    (ev,) = events(kube[1], NS)
    assert ev["message"] == "the application is gone" and ev["type"] == "Warning"
    assert ev["involvedObject"] == {
        "apiVersion": "backups.cozystack.io/v1alpha1",
        "kind": "BackupJob",
        "name": "job1",
        "namespace": NS,
        "uid": job.metadata.uid,
        "resourceVersion": job.metadata.resource_version,
    }
    assert events(kube[1], PLATFORM) == []
    (cev,) = events(kube[1], "default")  # the API server allows no other namespace
    assert (
        cev["involvedObject"]["kind"] == "BackupClass" and "namespace" not in cev["involvedObject"]
    )
    assert host.local_bucket_path("cozy-backups") == str(tmp_path / "buckets" / "cozy-backups")
    assert host.now().tzinfo is not None and host.now().utcoffset().total_seconds() == 0  # type: ignore[union-attr]


# --------------------------------------------------------------------------- the engine


APP_PASSWORD = "app-password-Kq37"


def admin_setup(host: KubeHost, api_client: Any, s3: S3ServerInfo) -> None:
    make_secret(
        api_client,
        PLATFORM,
        "s3-creds",
        {"accessKeyId": s3.access_key, "secretAccessKey": s3.secret_key},
    )
    for doc in yaml.safe_load_all(hidden_s3_platform(s3)):
        host.objects.create(load(doc))


def tenant_view(host: KubeHost, api_client: Any, namespace: str) -> str:
    docs = [dump(o) for cls in TENANT_KINDS for o in host.objects.list(cls, namespace)]
    return yaml.safe_dump_all(docs) + "\n" + json.dumps(events(api_client, namespace))


@pytest.mark.s3
@pytest.mark.timeout(120)
def test_backup_and_restore_through_the_engine(
    kube: tuple[StrictApiServer, Any], host: KubeHost, s3: S3ServerInfo, tmp_path: Path
) -> None:
    api, api_client = kube
    admin_setup(host, api_client, s3)
    app_dir = tmp_path / "apps" / NS / "app1"
    app_dir.mkdir(parents=True)
    payload = os.urandom(200_000)
    (app_dir / "data.bin").write_bytes(payload)
    make_secret(api_client, NS, "app1-creds", {"password": APP_PASSWORD})

    engine = Engine(host, PluginHost.load(entry_points=False, plugins=[test_drivers]))
    assert engine.recover() == []
    for name, app in (("bj1", "app1"), ("ghost", "nosuchapp")):
        host.objects.create(
            load(
                {
                    "apiVersion": "backups.cozystack.io/v1alpha1",
                    "kind": "BackupJob",
                    "metadata": {"name": name, "namespace": NS},
                    "spec": {
                        "applicationRef": {
                            "apiGroup": FILES.api_group,
                            "kind": "Directory",
                            "name": app,
                        },
                        "backupClassName": "files",
                    },
                }
            )
        )
    done = {j.metadata.name: j for j in engine.run_once()}
    assert done["bj1"].status.phase == "Succeeded", done["bj1"].status.message
    assert done["ghost"].status.phase == "Failed"
    assert "does not exist" in (done["ghost"].status.message or "")
    backup = host.objects.get(Backup, NS, "bj1")
    assert backup is not None and backup.status.phase == "Ready"
    assert backup.status.artifact is not None and backup.status.artifact.uri.startswith("cozy://")

    (app_dir / "data.bin").write_bytes(b"damaged")
    host.objects.create(
        load(
            {
                "apiVersion": "backups.cozystack.io/v1alpha1",
                "kind": "RestoreJob",
                "metadata": {"name": "r1", "namespace": NS},
                "spec": {"backupRef": {"name": "bj1"}},
            }
        )
    )
    (restored,) = engine.run_once()
    assert restored.status.phase == "Succeeded", restored.status.message
    assert (app_dir / "data.bin").read_bytes() == payload
    assert engine.prune() == []  # no retention policy: nothing to do, every list works
    assert engine.run_due_drills() == []

    # What the tenant can read: objects and events of its namespace.
    view = tenant_view(host, api_client, NS)
    reasons = {e["reason"] for e in events(api_client, NS)}
    assert {"Started", "Completed"} <= reasons
    forbidden = [
        s3.endpoint_url,
        "127.0.0.1",
        s3.access_key,
        s3.secret_key,
        "hidden-bucket-name",
        "prefix-q",
        "s3-creds",
        "platform-s3",
        "app1-creds",
        str(tmp_path),
        APP_PASSWORD,
        "Traceback",
    ]
    leaks = [s for s in forbidden if s in view]
    assert not leaks, f"tenant-visible objects contain {leaks}:\n{view}"
    assert "bj1" in view and "Succeeded" in view and "Failed" in view
    # The credentials stayed where they were: no Secret was written by the host.
    assert not [
        w
        for w in api.writes
        if "/secrets" in w[1] and w[2]["metadata"]["name"] not in ("s3-creds", "app1-creds")
    ]


# --------------------------------------------------------------------------- the controller


def _kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emu", "cluster": {"server": url}}],
                "users": [{"name": "ctl", "user": {"token": "not-checked"}}],
                "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "ctl"}}],
                "current-context": "emu",
            }
        )
    )
    return path


def _directory_job(name: str, app: str = "app1") -> Any:
    return load(
        {
            "apiVersion": "backups.cozystack.io/v1alpha1",
            "kind": "BackupJob",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "applicationRef": {
                    "apiGroup": "apps.example.com",
                    "kind": "Directory",
                    "name": app,
                },
                "backupClassName": "files",
            },
        }
    )


def _controller_setup(host: KubeHost, tmp_path: Path) -> Path:
    """A Directory app and its class on a Local bucket; returns the conventions file."""
    app_dir = tmp_path / "apps" / NS / "app1"
    app_dir.mkdir(parents=True)
    (app_dir / "f").write_bytes(b"hello")
    conventions = tmp_path / "conventions.yaml"
    conventions.write_text(
        yaml.safe_dump(
            {
                "apps.example.com/Directory": {
                    "connection": {"path": str(tmp_path / "apps" / "{namespace}" / "{name}")}
                }
            }
        )
    )
    host.objects.create(
        load(
            yaml.safe_load(f"""
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {{name: cozy-backups}}
spec: {{provider: Local, bucket: cozy-backups, path: "{tmp_path / "bucket"}"}}
""")
        )
    )
    host.objects.create(load(yaml.safe_load(FILES_CLASS)))
    return conventions


def _controller(api_client: Any, tmp_path: Path, conventions: Path, home: str) -> Any:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parent),
        "COZYBACKUP_PLUGINS": "support.drivers",
    }
    env.pop("KUBERNETES_SERVICE_HOST", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cozybackup_core.cli",
            "--home",
            str(tmp_path / home),
            "controller",
            "--kubeconfig",
            str(_kubeconfig(tmp_path / "kubeconfig", api_client.configuration.host)),
            "--platform-namespace",
            PLATFORM,
            "--conventions",
            str(conventions),
            "--interval",
            "1",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_finished(host: KubeHost, name: str, proc: Any, seconds: float = 30) -> BackupJob:
    deadline = time.monotonic() + seconds
    job = None
    while time.monotonic() < deadline and proc.poll() is None:
        job = host.objects.get(BackupJob, NS, name)
        if job is not None and job.status.phase in ("Succeeded", "Failed"):
            return job
        time.sleep(0.2)
    raise AssertionError((job, proc.poll(), proc.stderr.read() if proc.poll() is not None else ""))


def _stop(proc: Any) -> tuple[bytes, bytes]:
    try:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return out, err


@pytest.mark.timeout(60)
def test_controller_runs_passes_until_sigterm(
    kube: tuple[StrictApiServer, Any], host: KubeHost, tmp_path: Path
) -> None:
    _, api_client = kube
    conventions = _controller_setup(host, tmp_path)
    proc = _controller(api_client, tmp_path, conventions, "home")
    try:
        host.objects.create(_directory_job("by-controller"))
        job = _wait_finished(host, "by-controller", proc)
        assert job.status.phase == "Succeeded", job.status
        assert host.objects.get(Backup, NS, "by-controller") is not None
    finally:
        out, err = _stop(proc)
    assert proc.returncode == 0, err.decode()
    assert b"backupjob/by-controller (tenant-a) Succeeded" in out
    assert b"signal 15" in err
    assert host.objects.list(StorageLocation)  # the admin's objects were left alone


@pytest.mark.timeout(120)
def test_two_controllers_one_leads_and_hands_over_on_sigterm(
    kube: tuple[StrictApiServer, Any], host: KubeHost, tmp_path: Path
) -> None:
    """A rolling update's surge pod: the second controller waits for the Lease, runs
    nothing meanwhile, and takes over at once when the first one stops."""
    _, api_client = kube
    conventions = _controller_setup(host, tmp_path)
    first = _controller(api_client, tmp_path, conventions, "home1")
    second = None
    try:
        host.objects.create(_directory_job("before"))
        assert _wait_finished(host, "before", first).status.phase == "Succeeded"
        second = _controller(api_client, tmp_path, conventions, "home2")
        # Stop the first only once the second is waiting for the Lease.
        waited = second.stderr.readline()
        assert b"waiting for the controller Lease" in waited, waited
        out1, err1 = _stop(first)
        host.objects.create(_directory_job("after"))
        assert _wait_finished(host, "after", second).status.phase == "Succeeded"
    finally:
        out2, err2 = _stop(second) if second is not None else (b"", b"")
        if first.poll() is None:
            _stop(first)
    assert first.returncode == 0 and second.returncode == 0, (err1, err2)
    assert b"leading" in err1 and b"backupjob/before" in out1 and b"backupjob/after" not in out1
    assert b"backupjob/after (tenant-a) Succeeded" in out2 and b"backupjob/before" not in out2
    held = (
        kclient.CoordinationV1Api(api_client)
        .read_namespaced_lease("cozybackup-controller", PLATFORM)
        .spec
    )
    assert held.holder_identity is None  # released on a clean stop
    assert held.lease_transitions == 1


def test_an_object_the_schema_admits_but_the_types_refuse_is_skipped_by_lists(
    kube: tuple[StrictApiServer, Any], host: KubeHost
) -> None:
    """Someone's kubectl-made object must not stop every pass of the controller."""
    _, api_client = kube
    host.objects.create(sample("StorageLocation"))
    bad = dump(sample("StorageLocation"))
    bad["metadata"]["name"] = "dup-keys"
    bad["spec"]["encryption"] = {
        "keys": [{"id": "k1", "secretRef": {"name": "a"}}, {"id": "k1", "secretRef": {"name": "b"}}]
    }
    kclient.CustomObjectsApi(api_client).create_cluster_custom_object(
        "backups.cozystack.io", "v1alpha1", "storagelocations", bad
    )
    assert [s.metadata.name for s in host.objects.list(StorageLocation)] == ["s3-main"]
    with pytest.raises(ValidationError):
        host.objects.get(StorageLocation, None, "dup-keys")


def test_api_failures_become_the_ports_errors(
    kube: tuple[StrictApiServer, Any], host: KubeHost
) -> None:
    api, _ = kube
    api[f"get /api/v1/namespaces/{PLATFORM}/secrets/locked"] << KubernetesError(
        status=403, reason="Forbidden", message="secrets is forbidden: User cannot get"
    )
    api["get /apis/backups.cozystack.io/v1alpha1/namespaces/tenant-a/backupjobs/flaky"] << (
        KubernetesError(status=503, reason="ServiceUnavailable", message="etcd leader changed")
    )
    with pytest.raises(KubeRequestRefused) as refused:
        host.secret("locked")
    assert "locked" not in str(refused.value) and "403" in (refused.value.admin_detail or "")
    with pytest.raises(KubeUnavailable):
        host.objects.get(BackupJob, NS, "flaky")
    assert isinstance(KubeUnavailable("x"), TransientError)  # the engine retries these

    closed = kclient.ApiClient(kclient.Configuration(host="http://127.0.0.1:9"))
    closed.configuration.retries = 0
    try:
        with pytest.raises(KubeUnavailable):
            KubeHost(closed, PLATFORM).objects.list(BackupJob)
    finally:
        closed.close()


def test_label_values_over_63_characters_are_refused_not_shortened(
    kube: tuple[StrictApiServer, Any], host: KubeHost
) -> None:
    """A known limit (docs/architecture.md): a Plan with a long name makes job labels that a
    real API server refuses; the host does not shorten them yet."""
    api, _ = kube
    job = sample("BackupJob")
    job = attrs.evolve(
        job,
        metadata=attrs.evolve(job.metadata, labels={"backups.cozystack.io/plan": "p" * 64}),
    )
    with pytest.raises(KubeRequestRefused):
        host.objects.create(job)
    assert len(api.violations) == 1 and "label value" in api.violations[0]
    api.violations.clear()


def test_a_failed_status_write_on_create_removes_the_object(
    kube: tuple[StrictApiServer, Any], host: KubeHost
) -> None:
    api, _ = kube
    record = sample("ArtifactRecord")
    committed = attrs.evolve(record, status=attrs.evolve(record.status, phase="Committed"))
    name = record.metadata.name
    api.faults[("PUT", f"/apis/backups.cozystack.io/v1alpha1/artifactrecords/{name}/status")] = 503
    with pytest.raises(KubeUnavailable):
        host.objects.create(committed)
    assert host.objects.get(ArtifactRecord, None, name) is None  # none without its status
    assert host.objects.create(committed).status.phase == "Committed"
