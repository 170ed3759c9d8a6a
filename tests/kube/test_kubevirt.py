"""KubeVirt VM disks on the real API server, through worker Jobs: the KubeVirt driver's
Kubernetes path (VirtualMachineSnapshot + VirtualMachineExport for a backup, CDI's upload
for a restore, the VM stopped and started around the swap) against the stand-in of
``kubevirt_standin.py``, whose objects are validated against KubeVirt's and CDI's
published OpenAPI documents (``../shared/kubevirt-openapi``; skipped without them).

The disks are real raw images with random data at scattered offsets; restores are
compared with the backed-up images byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]
from kubernetes.client.exceptions import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    ApiException,
)

from cozybackup_core import (
    ApplicationRef,
    Backup,
    BackupClass,
    BackupJob,
    ConflictError,
    NotFoundError,
    RestoreJob,
    load,
)
from cozybackup_core._api.types import ANNOTATION_STORED_BYTES
from cozybackup_core.hosts.kube import KubeHost
from cozybackup_core.testing import S3ServerInfo, shared_reference

from .cluster import KubeCluster
from .conftest import COZYSTACK_APPS
from .kubelet import Kubelet
from .kubevirt_standin import StandIn, load_kinds
from .servers import require_servers
from .test_controller import (
    ACME,
    GROUP,
    OTHER,
    PLATFORM,
    VERSION,
    Platform,
    _apply_bundle,
    _with_workers,
    _worker_of,
    status_of,
    until,
)

pytestmark = [pytest.mark.kube, pytest.mark.s3]
require_servers()

OPENAPI = shared_reference("kubevirt-openapi")
if OPENAPI is None:
    pytest.skip(
        "needs ../shared/kubevirt-openapi (KubeVirt's and CDI's OpenAPI)", allow_module_level=True
    )

MiB = 1 << 20
BLOCK = 64 << 10
#: Cozystack's VM kinds (served by conftest.py's ``cozystack_apps``).
VM_APPS = {kind: COZYSTACK_APPS[kind] for kind in ("VMDisk", "VMInstance")}


def _tolerate_conflict(call: Any, *args: Any) -> None:
    """Another module of the session may have made it already."""
    try:
        call(*args)
    except (ApiException, ConflictError) as exc:
        if getattr(exc, "status", 409) != 409:
            raise


@pytest.fixture(scope="module")
def vms(
    kube_cluster: KubeCluster,
    cozystack_apps: None,
    s3: S3ServerInfo,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Platform, StandIn]]:
    """The bundle and the tenants (as test_controller.py sets them up, kept if it did
    already), S3 storage of this module's own, Cozystack's VM kinds, the KubeVirt/CDI stand-in, a class
    ``vms`` for both kinds, and conventions pointing the driver at the stand-in's upload
    proxy."""
    assert OPENAPI is not None
    _apply_bundle(kube_cluster)
    admin = kube_cluster.admin
    core, rbac = client.CoreV1Api(admin), client.RbacAuthorizationV1Api(admin)
    for ns in (ACME, OTHER):
        _tolerate_conflict(kube_cluster.create_namespace, ns)
        for role in ("cozybackup:tenant-admin", "cozybackup:tenant-view"):
            binding = {
                "metadata": {"name": role.replace(":", "-")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": ns}],
            }  # fmt: skip
            _tolerate_conflict(rbac.create_namespaced_role_binding, ns, binding)
    plat = Platform(kube_cluster, s3, tmp_path_factory.mktemp("kubevirt"))
    until(
        "the CRDs to be served", lambda: status_of(lambda: plat.host.objects.list(BackupJob)) == 200
    )
    # This module's own S3 server, so its own StorageLocation and Secret (another module's
    # platform-s3 names that module's server, stopped by now).
    creds = {"metadata": {"name": "vms-s3-creds"}, "stringData": {"accessKeyId": s3.access_key, "secretAccessKey": s3.secret_key}}  # fmt: skip
    core.create_namespaced_secret(PLATFORM, creds)
    storage = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "StorageLocation",
        "metadata": {"name": "vms-s3"},
        "spec": {"provider": "S3", "endpoint": s3.endpoint_url, "bucket": "hidden-bucket-name", "prefix": "hidden/vms", "credentialsSecretRef": {"name": "vms-s3-creds"}},
    }  # fmt: skip
    plat.host.objects.create(load(storage))
    plat.host.objects.create(
        load(
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "BackupClass",
                "metadata": {"name": "vms"},
                "spec": {
                    "storageRef": {"name": "vms-s3"},
                    "strategies": [
                        {
                            "application": {"apiGroup": "apps.cozystack.io", "kind": kind},
                            "strategyRef": {"kind": "KubeVirt", "name": "vms"},
                        }
                        for kind in VM_APPS
                    ],
                },
            }
        )
    )
    with StandIn(admin, plat.root / "standin", OPENAPI, [ACME]) as standin:
        # The driver's own locators, with the stand-in's upload proxy and its CA (on a
        # cluster: CDI's service and its CA ConfigMap, the defaults).
        proxy = {"uploadProxyURL": standin.upload_url, "uploadProxyCA": standin.ca_pem}
        conventions = {
            "apps.cozystack.io/VMDisk": {
                "resource": "vmdisks",
                "connection": {"dataVolume": "vm-disk-{name}", "volume": "disk-{name}", **proxy},
            },
            "apps.cozystack.io/VMInstance": {
                "resource": "vminstances",
                "connection": {"virtualMachine": "vm-instance-{name}", **proxy},
            },
        }
        with plat.conventions.open("a") as f:
            f.write(yaml.safe_dump(conventions))
        try:
            yield plat, standin
        finally:
            plat.stop_controllers()
        assert not standin.errors, "\n".join(standin.errors)


@pytest.fixture(scope="module")
def kubelet(vms: tuple[Platform, StandIn]) -> Iterator[Kubelet]:
    platform, _ = vms
    k = Kubelet(platform.cluster.api_client(), platform.root / "kubelet", [PLATFORM])
    with k:
        yield k
    assert not k.errors, k.errors


# --------------------------------------------------------------------------- helpers


def _image(path: Path, size: int, seed: int) -> bytes:
    """A raw image of ``size`` bytes, sparse, with random data in scattered pieces (some
    not block-aligned, one across a 4 MiB read boundary); its whole content."""
    rnd = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(size)
        for offset in (
            0,
            4 * MiB - 3000,
            9 * MiB + 123,
            *(rnd.randrange(size - MiB) for _ in range(6)),
        ):
            f.seek(offset)
            f.write(rnd.randbytes(rnd.randrange(1, 300_000)))
    return path.read_bytes()


def _scribble(path: Path, seed: int) -> None:
    """Change an image after its backup (in place, as a guest would)."""
    rnd = random.Random(seed)
    with path.open("r+b") as f:
        for _ in range(5):
            f.seek(rnd.randrange(path.stat().st_size - 70_000))
            f.write(rnd.randbytes(70_000))


def _custom(platform: Platform) -> Any:
    return client.CustomObjectsApi(platform.cluster.admin)


def _create(
    platform: Platform, group: str, version: str, plural: str, body: dict[str, Any]
) -> None:
    _custom(platform).create_namespaced_custom_object(group, version, ACME, plural, body)


def _app(platform: Platform, kind: str, name: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": "apps.cozystack.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }
    _create(platform, "apps.cozystack.io", "v1alpha1", VM_APPS[kind], body)  # fmt: skip


def _disk(platform: Platform, standin: StandIn, name: str, size: int, seed: int) -> bytes:
    """Cozystack's vm-disk ``name``: the app, its DataVolume ``vm-disk-<name>`` and image."""
    content = _image(standin.disk(ACME, f"vm-disk-{name}"), size, seed)
    _app(platform, "VMDisk", name, {"storage": f"{size // MiB}Mi", "source": {}})
    dv = {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": f"vm-disk-{name}", "annotations": {"vm-disk.cozystack.io/optical": "false"}},
        "spec": {"contentType": "kubevirt", "source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": f"{size // MiB}Mi"}}}},
    }  # fmt: skip
    _create(platform, "cdi.kubevirt.io", "v1beta1", "datavolumes", dv)
    return content


def _vm(platform: Platform, name: str, disks: list[str], *, agent: bool = True) -> None:
    """Cozystack's vm-instance ``name``: VirtualMachine ``vm-instance-<name>`` as its chart
    renders it (volumes ``disk-<disk>`` on DataVolumes ``vm-disk-<disk>``, a cloud-init
    disk), running."""
    _app(platform, "VMInstance", name, {"disks": [{"name": d} for d in disks], "running": True})
    volumes = [{"name": f"disk-{d}", "dataVolume": {"name": f"vm-disk-{d}"}} for d in disks]
    volumes.append({"name": "cloudinitdisk", "cloudInitNoCloud": {"secretRef": {"name": f"vm-instance-{name}-cloud-init"}}})  # fmt: skip
    vm = {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": f"vm-instance-{name}", "annotations": {"standin/guest-agent": str(agent).lower()}},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/instance": f"vm-instance-{name}"}},
                "spec": {
                    "domain": {"devices": {"disks": [{"name": f"disk-{d}", "disk": {}} for d in disks]}},
                    "volumes": volumes,
                },
            },
        },
    }  # fmt: skip
    _create(platform, "kubevirt.io", "v1", "virtualmachines", vm)


def _get_vm(platform: Platform, name: str) -> dict[str, Any]:
    vm: dict[str, Any] = _custom(platform).get_namespaced_custom_object("kubevirt.io", "v1", ACME, "virtualmachines", f"vm-instance-{name}")  # fmt: skip
    return vm


def _claims(vm: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["dataVolume"]["name"] for v in vm["spec"]["template"]["spec"]["volumes"] if "dataVolume" in v}  # fmt: skip


def _left_over(platform: Platform, group: str, version: str, plural: str) -> list[str]:
    items = _custom(platform).list_namespaced_custom_object(group, version, ACME, plural)["items"]
    return [o["metadata"]["name"] for o in items]


def _run(
    platform: Platform, kind: str, name: str, body: dict[str, Any], seconds: float = 180
) -> Any:
    platform.tenant_creates({"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name, "namespace": ACME}, "spec": body})  # fmt: skip
    return platform.finished(BackupJob if kind == "BackupJob" else RestoreJob, name, seconds)


def _backup(platform: Platform, name: str, kind: str, app: str) -> Any:
    ref = {"apiGroup": "apps.cozystack.io", "kind": kind, "name": app}
    return _run(platform, "BackupJob", name, {"applicationRef": ref, "backupClassName": "vms"})


def _restore(platform: Platform, name: str, backup: str) -> Any:
    return _run(platform, "RestoreJob", name, {"backupRef": {"name": backup}})


def _taken(
    platform: Platform, name: str, ref: dict[str, str], backup_class: str, via: str
) -> dict[str, Any]:
    """BackupJob ``name`` of ``ref`` by ``backup_class`` succeeds, taken ``via`` (its
    Backup's ``driverMetadata``); the Backup's underlying resources."""
    job = _run(platform, "BackupJob", name, {"applicationRef": ref, "backupClassName": backup_class})  # fmt: skip
    assert job.status.phase == "Succeeded", job.status.message
    backup = platform.host.objects.get(Backup, ACME, name)
    assert backup is not None and backup.status.underlying_resources is not None
    assert backup.spec.driver_metadata["via"] == via
    return dict(backup.status.underlying_resources)


def _restored_exactly(
    vms: tuple[Platform, StandIn], name: str, backup: str, vm: str, disks: dict[str, bytes]
) -> dict[str, str]:
    """RestoreJob ``name`` of ``backup`` succeeds and VMInstance ``vm``'s volumes hold
    ``disks`` (volume name: image) bit for bit; the claims it now names, by volume."""
    platform, standin = vms
    restored = _restore(platform, name, backup)
    assert restored.status.phase == "Succeeded", restored.status.message
    claims = _claims(_get_vm(platform, vm))
    for volume, image in disks.items():
        assert standin.disk(ACME, claims[volume]).read_bytes() == image, volume
    return claims


def _no_storage_seen_by_tenant(platform: Platform) -> None:
    seen = json.dumps([platform.alice.list_namespaced_custom_object(GROUP, VERSION, ACME, p) for p in ("backupjobs", "restorejobs", "backups")])  # fmt: skip
    for secret in (platform.s3.endpoint_url, platform.s3.secret_key, "hidden-bucket-name", "hidden/vms", "vms-s3", "127.0.0.1"):  # fmt: skip
        assert secret not in seen, secret


# --------------------------------------------------------------------------- the tests


@pytest.mark.timeout(600)
def test_a_vmdisk_backed_up_by_snapshot_and_export_restored_by_upload(
    vms: tuple[Platform, StandIn], kubelet: Kubelet
) -> None:
    platform, standin = vms
    size = 48 * MiB
    before = _disk(platform, standin, "root", size, seed=1)
    _vm(platform, "web", ["root"])
    until("the VM to run", lambda: standin.boots and standin.boots[-1][0] == "vm-instance-web")
    with platform.leading("vmdisk", *_with_workers(platform)):
        job = _backup(platform, "vmb1", "VMDisk", "root")
        assert job.status.phase == "Succeeded", job.status.message
        assert (
            "backup tenant-acme/vmb1: Completed"
            in _worker_of(platform, kubelet, "vmb1").container().stdout
        )
        # KubeVirt froze the guest for the snapshot (it has an agent), then thawed it.
        assert standin.freezes == [("vm-instance-web", "freeze"), ("vm-instance-web", "thaw")]
        assert standin.seen["VirtualMachineSnapshot"] and standin.seen["VirtualMachineExport"]
        for plural, group, version in (("virtualmachinesnapshots", "snapshot.kubevirt.io", "v1beta1"), ("virtualmachineexports", "export.kubevirt.io", "v1")):  # fmt: skip
            until(f"{plural} to be deleted", lambda p=plural, g=group, v=version: not _left_over(platform, g, v, p))  # fmt: skip
        backup = platform.host.objects.get(Backup, ACME, "vmb1")
        assert backup is not None
        made = backup.status.underlying_resources
        assert made is not None and made["consistency"] == "frozen"
        nonzero = sum(1 for i in range(0, size, 65536) if before[i : i + 65536].strip(b"\0"))
        [disk] = made["disks"]
        assert disk["virtualSize"] == size and disk["dataBytes"] == nonzero * 65536

        # The guest writes on; the restore brings the backed-up image back.
        _scribble(standin.disk(ACME, "vm-disk-root"), seed=2)
        boots = len(standin.boots)
        restored = _restore(platform, "vmr1", "vmb1")
        assert restored.status.phase == "Succeeded", restored.status.message
        # Cozystack's chart still names vm-disk-root: the tenant is told what that means.
        assert "(1 warning: see the events)" in (restored.status.message or "")
        claim = _claims(_get_vm(platform, "web"))["disk-root"]
        assert claim.startswith("vm-disk-root-restore-")
        assert standin.disk(ACME, claim).read_bytes() == before
        # Stopped for the swap and started again, on the restored disk.
        until("the VM to run again", lambda: len(standin.boots) == boots + 1)
        assert standin.boots[-1] == ("vm-instance-web", (claim,))
        # The chart's DataVolume is kept (Helm owns it); the verify export is gone.
        assert "vm-disk-root" in _left_over(platform, "cdi.kubevirt.io", "v1beta1", "datavolumes")
        until("exports to be deleted", lambda: not _left_over(platform, "export.kubevirt.io", "v1", "virtualmachineexports"))  # fmt: skip
        _no_storage_seen_by_tenant(platform)
        # The exports' token Secrets went with them (owned by them: the garbage collector).
        core = client.CoreV1Api(platform.cluster.admin)
        until("the token Secrets to be collected", lambda: not [s for s in core.list_namespaced_secret(ACME).items if s.metadata.name.startswith("cozybackup-export-")])  # fmt: skip


@pytest.mark.timeout(600)
def test_a_vminstance_with_two_disks_backed_up_and_restored(
    vms: tuple[Platform, StandIn], kubelet: Kubelet
) -> None:
    platform, standin = vms
    sys_before = _disk(platform, standin, "sys", 40 * MiB, seed=3)
    data_before = _disk(platform, standin, "data", 24 * MiB, seed=4)
    _vm(platform, "db", ["sys", "data"])
    until("the VM to run", lambda: any(b[0] == "vm-instance-db" for b in standin.boots))
    with platform.leading("vminstance", *_with_workers(platform)):
        job = _backup(platform, "vmb2", "VMInstance", "db")
        assert job.status.phase == "Succeeded", job.status.message
        backup = platform.host.objects.get(Backup, ACME, "vmb2")
        assert backup is not None
        assert backup.status.underlying_resources is not None
        disks = {d["name"]: d for d in backup.status.underlying_resources["disks"]}
        # The cloud-init volume is no disk of the backup.
        assert set(disks) == {"sys", "data"}
        assert disks["sys"]["virtualSize"] == 40 * MiB and disks["data"]["virtualSize"] == 24 * MiB

        _scribble(standin.disk(ACME, "vm-disk-sys"), seed=5)
        _scribble(standin.disk(ACME, "vm-disk-data"), seed=6)
        boots = len(standin.boots)
        claims = _restored_exactly(vms, "vmr2", "vmb2", "db", {"disk-sys": sys_before, "disk-data": data_before})  # fmt: skip
        # One stop and one start for both disks, the VM on both restored disks.
        until("the VM to run again", lambda: len(standin.boots) == boots + 1)
        assert standin.boots[-1] == ("vm-instance-db", (claims["disk-sys"], claims["disk-data"]))

        # A second restore replaces the first's DataVolumes, which it deletes.
        first = set(claims.values())
        claims = _restored_exactly(vms, "vmr3", "vmb2", "db", {"disk-sys": sys_before})
        assert not first & set(claims.values())
        left = _left_over(platform, "cdi.kubevirt.io", "v1beta1", "datavolumes")
        assert not first & set(left) and {"vm-disk-sys", "vm-disk-data"} <= set(left)


def _class(platform: Platform, name: str, parameters: dict[str, Any]) -> None:
    """BackupClass ``name``: the KubeVirt strategy for VMInstances with ``parameters``."""
    cls = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BackupClass",
        "metadata": {"name": name},
        "spec": {
            "storageRef": {"name": "vms-s3"},
            "strategies": [{"application": {"apiGroup": "apps.cozystack.io", "kind": "VMInstance"}, "strategyRef": {"kind": "KubeVirt", "name": "vms"}, "parameters": parameters}],
        },
    }  # fmt: skip
    platform.host.objects.create(load(cls))


def _made_for_volume_snapshots(platform: Platform) -> list[str]:
    """The VolumeSnapshots and the PVCs restored from them still in the namespace."""
    core = client.CoreV1Api(platform.cluster.admin)
    claims = [c.metadata.name for c in core.list_namespaced_persistent_volume_claim(ACME).items]
    snaps = _left_over(platform, "snapshot.storage.k8s.io", "v1", "volumesnapshots")
    return snaps + [c for c in claims if c.startswith("cozybackup-volsnap-claim-")]


def _disk_claim(platform: Platform, name: str, size: int) -> None:
    """The PVC CDI makes for DataVolume ``vm-disk-<name>`` (the stand-in keeps its image
    as a file): what a PVC restored from a snapshot of it must look like."""
    pvc = {
        "metadata": {"name": f"vm-disk-{name}"},
        "spec": {"accessModes": ["ReadWriteMany"], "volumeMode": "Filesystem", "storageClassName": "standin-replicated", "resources": {"requests": {"storage": f"{size // MiB}Mi"}}},
    }  # fmt: skip
    client.CoreV1Api(platform.cluster.admin).create_namespaced_persistent_volume_claim(ACME, pvc)


def _running_vm_with_claims(
    vms: tuple[Platform, StandIn], vm: str, disks: dict[str, tuple[int, int]]
) -> dict[str, bytes]:
    """VMInstance ``vm`` running on ``disks`` (name: size, seed), each with the PVC CDI
    makes for it (what volume snapshots are taken of); their images by volume name."""
    platform, standin = vms
    images = {}
    for name, (size, seed) in disks.items():
        images[f"disk-{name}"] = _disk(platform, standin, name, size, seed=seed)
        _disk_claim(platform, name, size)
    _vm(platform, vm, list(disks))
    until("the VM to run", lambda: any(b[0] == f"vm-instance-{vm}" for b in standin.boots))
    return images


@contextlib.contextmanager
def _snapshot_gate_off(platform: Platform) -> Iterator[None]:
    """KubeVirt with its Snapshot feature gate off: the snapshot API is served (virt-
    operator installs it regardless) and admission refuses every VirtualMachineSnapshot
    with KubeVirt's message (here a ValidatingAdmissionPolicy, there its webhook)."""
    adm = client.AdmissionregistrationV1Api(platform.cluster.admin)
    rule = {"apiGroups": ["snapshot.kubevirt.io"], "apiVersions": ["*"], "operations": ["CREATE"], "resources": ["virtualmachinesnapshots"]}  # fmt: skip
    policy = {
        "metadata": {"name": "gate-off"},
        "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [rule]}, "validations": [{"expression": "false", "message": "snapshot feature gate not enabled"}]},
    }  # fmt: skip
    binding = {"metadata": {"name": "gate-off"}, "spec": {"policyName": "gate-off", "validationActions": ["Deny"]}}  # fmt: skip
    probe = {"apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot", "metadata": {"name": "probe"}, "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "none"}}}  # fmt: skip

    def refused() -> bool:
        try:
            _custom(platform).create_namespaced_custom_object("snapshot.kubevirt.io", "v1beta1", ACME, "virtualmachinesnapshots", probe, dry_run="All")  # fmt: skip
        except ApiException as exc:
            return "snapshot feature gate not enabled" in str(exc.body)
        return False

    adm.create_validating_admission_policy(policy)
    adm.create_validating_admission_policy_binding(binding)
    try:
        until("the snapshot API to refuse snapshots", refused)
        yield
    finally:
        adm.delete_validating_admission_policy_binding("gate-off")
        adm.delete_validating_admission_policy("gate-off")
        until("the snapshot API to take snapshots again", lambda: not refused())


@pytest.mark.timeout(600)
def test_volume_snapshots_where_kubevirt_snapshots_are_not_used(
    vms: tuple[Platform, StandIn], kubelet: Kubelet
) -> None:
    """``snapshots: volume``, and ``auto`` where KubeVirt refuses snapshots (its feature
    gate off): a CSI VolumeSnapshot of each disk's PVC, then a PVC restored from each
    (sized, classed and moded as the disk's, marked as a disk image), exported and read;
    no guest is frozen, so a running VM is refused unless the class accepts
    crash-consistent copies.  Everything made is deleted after, and the restores bring
    every disk back bit for bit."""
    platform, standin = vms
    before = _running_vm_with_claims(vms, "csi", {"csisys": (24 * MiB, 11), "csidata": (16 * MiB, 12)})  # fmt: skip
    _class(platform, "vms-volume", {"snapshots": "volume"})
    _class(platform, "vms-volume-crash", {"snapshots": "volume", "consistency": "crash"})
    ref = {"apiGroup": "apps.cozystack.io", "kind": "VMInstance", "name": "csi"}
    kubevirt_snapshots = set(standin.seen["VirtualMachineSnapshot"])
    freezes = list(standin.freezes)
    with platform.leading("volsnap", *_with_workers(platform)):
        # Running, and the class wants the guest frozen: refused before anything is made.
        job = _run(platform, "BackupJob", "vsb1", {"applicationRef": ref, "backupClassName": "vms-volume"})  # fmt: skip
        assert job.status.phase == "Failed"
        assert "storage snapshots, which cannot pause the guest's writes" in job.status.message
        assert not standin.seen["VolumeSnapshot"]

        # Running, crash-consistent copies accepted: taken, and the Backup says so.
        made = _taken(platform, "vsb2", ref, "vms-volume-crash", "VolumeSnapshot, VirtualMachineExport")  # fmt: skip
        assert made["consistency"] == "crash"
        assert [w["reason"] for w in made["warnings"]] == ["CrashConsistent"]
        assert {d["name"]: d["virtualSize"] for d in made["disks"]} == {"csisys": 24 * MiB, "csidata": 16 * MiB}  # fmt: skip
        assert len(standin.seen["VolumeSnapshot"]) == 2
        assert standin.seen["VirtualMachineSnapshot"] == kubevirt_snapshots
        assert standin.freezes == freezes
        until("the volume snapshots and their PVCs to be deleted", lambda: not _made_for_volume_snapshots(platform))  # fmt: skip
        until("the exports to be deleted", lambda: not _left_over(platform, "export.kubevirt.io", "v1", "virtualmachineexports"))  # fmt: skip

        # Stopped, and the default class ("auto") on a KubeVirt that refuses snapshots:
        # volume snapshots, an offline copy.
        _custom(platform).patch_namespaced_custom_object("kubevirt.io", "v1", ACME, "virtualmachines", "vm-instance-csi", {"spec": {"runStrategy": "Halted"}})  # fmt: skip
        until("the VM to stop", lambda: "vm-instance-csi" not in _left_over(platform, "kubevirt.io", "v1", "virtualmachineinstances"))  # fmt: skip
        _scribble(standin.disk(ACME, "vm-disk-csidata"), seed=13)
        data_later = standin.disk(ACME, "vm-disk-csidata").read_bytes()
        with _snapshot_gate_off(platform):
            job = _backup(platform, "vsb3", "VMInstance", "csi")
        assert job.status.phase == "Succeeded", job.status.message
        backup = platform.host.objects.get(Backup, ACME, "vsb3")
        assert backup is not None and backup.status.underlying_resources is not None
        assert backup.status.underlying_resources["consistency"] == "offline"
        assert backup.spec.driver_metadata["via"] == "VolumeSnapshot, VirtualMachineExport"
        assert len(standin.seen["VolumeSnapshot"]) == 4
        assert standin.seen["VirtualMachineSnapshot"] == kubevirt_snapshots
        until("the volume snapshots and their PVCs to be deleted", lambda: not _made_for_volume_snapshots(platform))  # fmt: skip

        # Each Backup restores exactly what its snapshots held.
        _scribble(standin.disk(ACME, "vm-disk-csisys"), seed=14)
        for backup_name, data in (("vsb2", before["disk-csidata"]), ("vsb3", data_later)):
            _restored_exactly(vms, f"{backup_name}-r", backup_name, "csi", {**before, "disk-csidata": data})  # fmt: skip
        _no_storage_seen_by_tenant(platform)


@pytest.mark.timeout(600)
def test_a_volume_group_snapshot_cuts_every_disk_of_a_running_vm_at_once(
    vms: tuple[Platform, StandIn], kubelet: Kubelet
) -> None:
    """``volumeGroupSnapshots``: one VolumeGroupSnapshot of the running VM's two disks
    (selected by a label the driver puts on their PVCs for the cut and takes off after),
    its members read through PVCs restored from them; the Backup says the disks are
    crash-consistent together; everything made is deleted; the restore is bit for bit."""
    platform, standin = vms
    before = _running_vm_with_claims(vms, "grp", {"grpsys": (20 * MiB, 21), "grpdata": (12 * MiB, 22)})  # fmt: skip
    params = {"snapshots": "volume", "consistency": "crash", "volumeGroupSnapshots": True}
    _class(platform, "vms-group", params)
    ref = {"apiGroup": "apps.cozystack.io", "kind": "VMInstance", "name": "grp"}
    snapshots_before = set(standin.seen["VolumeSnapshot"])
    with platform.leading("volgroup", *_with_workers(platform)):
        made = _taken(platform, "vgb1", ref, "vms-group", "VolumeGroupSnapshot, VirtualMachineExport")  # fmt: skip
        assert made["consistency"] == "crash"
        [warning] = made["warnings"]
        assert warning["reason"] == "CrashConsistent"
        assert "cut together (one group snapshot of the storage)" in warning["message"]
        # One cut of exactly the VM's PVCs; the only VolumeSnapshots are its members.
        [(group, cut)] = standin.group_cuts
        assert standin.seen["VolumeGroupSnapshot"] == {group}
        assert cut == ("vm-disk-grpdata", "vm-disk-grpsys")
        members = standin.seen["VolumeSnapshot"] - snapshots_before
        assert len(members) == 2 and all(m.startswith("snapshot-") for m in members)
        core = client.CoreV1Api(platform.cluster.admin)
        for claim in cut:
            labels = core.read_namespaced_persistent_volume_claim(claim, ACME).metadata.labels or {}
            assert "backups.cozystack.io/volume-group" not in labels
        until("the group snapshot to be deleted", lambda: not _left_over(platform, "groupsnapshot.storage.k8s.io", "v1", "volumegroupsnapshots"))  # fmt: skip
        until("its snapshots and their PVCs to be deleted", lambda: not _made_for_volume_snapshots(platform))  # fmt: skip

        _scribble(standin.disk(ACME, "vm-disk-grpsys"), seed=23)
        _scribble(standin.disk(ACME, "vm-disk-grpdata"), seed=24)
        _restored_exactly(vms, "vgb1-r", "vgb1", "grp", before)
        _no_storage_seen_by_tenant(platform)


@pytest.mark.timeout(300)
def test_a_running_vm_without_guest_agent_is_refused_and_nothing_is_left(
    vms: tuple[Platform, StandIn], kubelet: Kubelet
) -> None:
    """``consistency: auto`` (the default) refuses a crash-consistent snapshot; ``crash``
    takes it, with a warning on the Backup.  A VMDisk
    no VM mounts is exported as its PVC (no snapshot); its restore is refused before
    anything is made (there is no VM to swap it into)."""
    platform, standin = vms
    _disk(platform, standin, "bare", 8 * MiB, seed=7)
    _vm(platform, "noagent", ["bare"], agent=False)
    until("the VM to run", lambda: any(b[0] == "vm-instance-noagent" for b in standin.boots))
    with platform.leading("noagent", *_with_workers(platform)):
        job = _backup(platform, "vmb4", "VMInstance", "noagent")
        assert job.status.phase == "Failed"
        assert "runs without a guest agent" in job.status.message
        assert platform.host.objects.get(Backup, ACME, "vmb4") is None
        until("the snapshot to be deleted", lambda: not _left_over(platform, "snapshot.kubevirt.io", "v1beta1", "virtualmachinesnapshots"))  # fmt: skip
        assert not _left_over(platform, "export.kubevirt.io", "v1", "virtualmachineexports")

        # A class that accepts crash-consistent copies backs it up, and says so.
        crash = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "BackupClass",
            "metadata": {"name": "vms-crash"},
            "spec": {
                "storageRef": {"name": "vms-s3"},
                "strategies": [{"application": {"apiGroup": "apps.cozystack.io", "kind": "VMInstance"}, "strategyRef": {"kind": "KubeVirt", "name": "vms"}, "parameters": {"consistency": "crash"}}],
            },
        }  # fmt: skip
        platform.host.objects.create(load(crash))
        ref = {"apiGroup": "apps.cozystack.io", "kind": "VMInstance", "name": "noagent"}
        job = _run(platform, "BackupJob", "vmb7", {"applicationRef": ref, "backupClassName": "vms-crash"})  # fmt: skip
        assert job.status.phase == "Succeeded", job.status.message
        backup = platform.host.objects.get(Backup, ACME, "vmb7")
        assert backup is not None and backup.status.underlying_resources is not None
        assert backup.status.underlying_resources["consistency"] == "crash"
        [warning] = backup.status.underlying_resources["warnings"]
        assert warning["reason"] == "CrashConsistent" and "no guest agent" in warning["message"]

        snapshots = set(standin.seen["VirtualMachineSnapshot"])
        spare = _disk(platform, standin, "spare", 8 * MiB, seed=8)
        job = _backup(platform, "vmb5", "VMDisk", "spare")
        assert job.status.phase == "Succeeded", job.status.message
        assert standin.seen["VirtualMachineSnapshot"] == snapshots
        backup = platform.host.objects.get(Backup, ACME, "vmb5")
        assert backup is not None and backup.status.underlying_resources is not None
        assert backup.status.underlying_resources["consistency"] == "offline"
        volumes = set(_left_over(platform, "cdi.kubevirt.io", "v1beta1", "datavolumes"))
        restored = _restore(platform, "vmr5", "vmb5")
        assert restored.status.phase == "Failed"
        assert "attached to no virtual machine" in restored.status.message
        assert set(_left_over(platform, "cdi.kubevirt.io", "v1beta1", "datavolumes")) == volumes
        assert standin.disk(ACME, "vm-disk-spare").read_bytes() == spare


@pytest.mark.timeout(300)
def test_an_upload_that_reads_back_otherwise_changes_nothing(
    vms: tuple[Platform, StandIn], kubelet: Kubelet
) -> None:
    """Storage that flips a byte of the uploaded image: the restore's read-back catches it,
    the new DataVolume is deleted, the VM keeps running on its disk, untouched."""
    platform, standin = vms
    _disk(platform, standin, "cache", 8 * MiB, seed=9)
    _vm(platform, "cache", ["cache"])
    until("the VM to run", lambda: any(b[0] == "vm-instance-cache" for b in standin.boots))
    with platform.leading("corrupt", *_with_workers(platform)):
        job = _backup(platform, "vmb6", "VMInstance", "cache")
        assert job.status.phase == "Succeeded", job.status.message
        _scribble(standin.disk(ACME, "vm-disk-cache"), seed=10)
        now = standin.disk(ACME, "vm-disk-cache").read_bytes()
        boots, volumes = len(standin.boots), set(_left_over(platform, "cdi.kubevirt.io", "v1beta1", "datavolumes"))  # fmt: skip
        standin.corrupt_uploads = True
        try:
            restored = _restore(platform, "vmr6", "vmb6")
        finally:
            standin.corrupt_uploads = False
        assert restored.status.phase == "Failed"
        assert "does not read back as the backup's content" in restored.status.message
        assert _claims(_get_vm(platform, "cache")) == {"disk-cache": "vm-disk-cache"}
        assert standin.disk(ACME, "vm-disk-cache").read_bytes() == now
        assert len(standin.boots) == boots
        until("the new DataVolume to be deleted", lambda: set(_left_over(platform, "cdi.kubevirt.io", "v1beta1", "datavolumes")) == volumes)  # fmt: skip


@pytest.mark.timeout(300)
def test_a_vm_that_does_not_stop_is_started_again_and_nothing_is_swapped(
    vms: tuple[Platform, StandIn], kubelet: Kubelet
) -> None:
    """The restore's deadline passes while it waits for the VM to stop: the VM is asked to
    run again (its run strategy put back, past the deadline), its volumes are untouched
    and the new DataVolume is deleted."""
    platform, standin = vms
    _disk(platform, standin, "stuck", 8 * MiB, seed=11)
    _vm(platform, "stuck", ["stuck"])
    until("the VM to run", lambda: any(b[0] == "vm-instance-stuck" for b in standin.boots))
    proc = platform.controller("stuck", *_with_workers(platform))
    try:
        platform.says("stuck", "leading")
        job = _backup(platform, "vmb8", "VMInstance", "stuck")
        assert job.status.phase == "Succeeded", job.status.message
        volumes = set(_left_over(platform, "cdi.kubevirt.io", "v1beta1", "datavolumes"))
        standin.stuck.add("vm-instance-stuck")
        body = {"backupRef": {"name": "vmb8"}, "options": {"restoreTimeoutSeconds": 20}}
        restored = _run(platform, "RestoreJob", "vmr8", body)
        assert restored.status.phase == "Failed"
        vm = _get_vm(platform, "stuck")
        assert vm["spec"]["runStrategy"] == "Always"
        assert _claims(vm) == {"disk-stuck": "vm-disk-stuck"}
        until("the new DataVolume to be deleted", lambda: set(_left_over(platform, "cdi.kubevirt.io", "v1beta1", "datavolumes")) == volumes)  # fmt: skip
    finally:
        standin.stuck.discard("vm-instance-stuck")
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, platform.output("stuck")


def _changed_blocks_class(platform: Platform) -> None:
    """Class ``vms-cbt``: changed-block tracking, on a deduplicating location of the same
    S3 server (what an incremental adds is measured there)."""
    if platform.host.objects.get(BackupClass, None, "vms-cbt") is not None:
        return
    storage = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "StorageLocation",
        "metadata": {"name": "vms-dedup"},
        "spec": {"provider": "S3", "endpoint": platform.s3.endpoint_url, "bucket": "hidden-bucket-name", "prefix": "hidden/vms-dedup", "credentialsSecretRef": {"name": "vms-s3-creds"}, "deduplication": True},
    }  # fmt: skip
    platform.host.objects.create(load(storage))
    cls = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BackupClass",
        "metadata": {"name": "vms-cbt"},
        "spec": {
            "storageRef": {"name": "vms-dedup"},
            "strategies": [{"application": {"apiGroup": "apps.cozystack.io", "kind": "VMInstance"}, "strategyRef": {"kind": "KubeVirt", "name": "vms"}, "parameters": {"changedBlocks": True}}],
        },
    }  # fmt: skip
    platform.host.objects.create(load(cls))


def _blocks(image: bytes, before: bytes | None = None) -> int:
    """64 KiB blocks of ``image`` that are not zero, or (with ``before``) that changed."""
    if before is None:
        return sum(1 for i in range(0, len(image), BLOCK) if image[i : i + BLOCK].strip(b"\0"))
    return sum(1 for i in range(0, len(image), BLOCK) if image[i : i + BLOCK] != before[i : i + BLOCK])  # fmt: skip


@pytest.mark.timeout(900)
def test_changed_blocks_incrementals_read_only_what_changed_and_restore_exactly(
    vms: tuple[Platform, StandIn], kubelet: Kubelet
) -> None:
    """A full backup through KubeVirt's VirtualMachineBackup, three incrementals that read
    only the changed blocks and store little, the second restored bit for bit; after the
    restore replaced the disk, and after KubeVirt lost its checkpoint, full again."""
    platform, standin = vms
    _changed_blocks_class(platform)
    _disk(platform, standin, "cbt", 48 * MiB, seed=11)
    with standin.disk(ACME, "vm-disk-cbt").open("r+b") as f:  # mostly data, as a used disk
        f.write(random.Random(12).randbytes(32 * MiB))
    _vm(platform, "cbt", ["cbt"])
    until("the VM to run", lambda: any(b[0] == "vm-instance-cbt" for b in standin.boots))
    proc = platform.controller("cbt", *_with_workers(platform))

    def backup(name: str) -> tuple[Backup, int]:
        reads = len(standin.backup_reads)
        body = {"applicationRef": {"apiGroup": "apps.cozystack.io", "kind": "VMInstance", "name": "cbt"}, "backupClassName": "vms-cbt"}  # fmt: skip
        job = _run(platform, "BackupJob", name, body)
        assert job.status.phase == "Succeeded", job.status.message
        made = platform.host.objects.get(Backup, ACME, name)
        assert made is not None
        return made, sum(n for *_, n in standin.backup_reads[reads:])

    try:
        platform.says("cbt", "leading")
        images: list[bytes] = []
        stored: list[int] = []
        for i in range(4):
            if i:
                _scribble(standin.disk(ACME, "vm-disk-cbt"), seed=20 + i)
            images.append(standin.disk(ACME, "vm-disk-cbt").read_bytes())
            made, read = backup(f"cbt{i}")
            meta = made.spec.driver_metadata
            assert meta["via"] == "VirtualMachineBackup"
            assert meta["backupType"] == ("Full" if i == 0 else "Incremental"), meta
            assert meta["consistency"] == "frozen"
            if i == 0:
                assert read == _blocks(images[0]) * BLOCK  # the data, never the zeros
            else:
                assert meta["builtOn"] == f"cbt{i - 1}"
                assert 0 < read == _blocks(images[i], images[i - 1]) * BLOCK
            # Every Backup holds the whole disk, whatever was read for it.
            [disk] = (made.status.underlying_resources or {})["disks"]
            assert disk["dataBytes"] == _blocks(images[i]) * BLOCK
            stored.append(int(made.metadata.annotations[ANNOTATION_STORED_BYTES]))
        # Deduplicated, an incremental adds a fraction of what the full one stored.
        assert all(n < stored[0] // 2 for n in stored[1:]), stored
        until("the backups to end", lambda: not _left_over(platform, "backup.kubevirt.io", "v1alpha1", "virtualmachinebackups"))  # fmt: skip
        core = client.CoreV1Api(platform.cluster.admin)
        # Owned by their backups, the scratch PVCs are deleted with them (their protection
        # finalizer is storage's: no controller here removes it).
        until("the scratch PVCs to be collected", lambda: not [c for c in core.list_namespaced_persistent_volume_claim(ACME).items if c.metadata.name.endswith("-scratch") and not c.metadata.deletion_timestamp])  # fmt: skip

        restored = _restore(platform, "cbtr", "cbt1")
        assert restored.status.phase == "Succeeded", restored.status.message
        claim = _claims(_get_vm(platform, "cbt"))["disk-cbt"]
        assert standin.disk(ACME, claim).read_bytes() == images[1]
        until("the VM to run again", lambda: standin.boots[-1] == ("vm-instance-cbt", (claim,)))

        # The restore replaced the disk: KubeVirt's checkpoint is of the old one.
        made, read = backup("cbt4")
        assert made.spec.driver_metadata["backupType"] == "Full"
        assert "replaced" in made.spec.driver_metadata["fullBecause"]
        assert read == _blocks(images[1]) * BLOCK
        # KubeVirt lost its changed-block bitmaps (it clears the tracker): full again.
        standin.forget_checkpoints(ACME)
        made, _ = backup("cbt5")
        assert made.spec.driver_metadata["backupType"] == "Full"
        assert "checkpoint" in made.spec.driver_metadata["fullBecause"]
        _no_storage_seen_by_tenant(platform)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, platform.output("cbt")


def test_the_standin_refuses_what_the_published_schemas_refuse() -> None:
    """The validation every object goes through is live: a misspelled field, a wrong type
    and a missing required field of the driver's kinds are each refused."""
    assert OPENAPI is not None
    kinds = load_kinds(OPENAPI)

    def errors(kind: str, obj: dict[str, Any]) -> list[str]:
        return [e.message for e in kinds[kind].validator.iter_errors(obj)]

    export = {"apiVersion": "export.kubevirt.io/v1", "kind": "VirtualMachineExport", "metadata": {"name": "e"}}  # fmt: skip
    source = {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": "p"}
    assert errors("VirtualMachineExport", {**export, "spec": {"source": source, "tokenSecretRef": "t"}}) == []  # fmt: skip
    assert errors("VirtualMachineExport", {**export, "spec": {"source": source, "tokenSecretRefs": "t"}})  # fmt: skip
    assert errors("VirtualMachineExport", {**export, "spec": {"tokenSecretRef": "t"}})
    assert errors("DataVolume", {"metadata": {"name": "d"}, "spec": {"source": {"upload": {}}, "contentType": 3}})  # fmt: skip


def test_the_drivers_locators_find_cozystacks_vm_objects(
    kube_cluster: KubeCluster, cozystack_apps: None, namespace: str
) -> None:
    """The installed driver's own locators (no conventions file): Cozystack's chart
    names, the live application read first; a missing one "does not exist"."""
    from cozybackup_kubevirt import KubeVirtDriver

    locators = {("apps.cozystack.io", kind): loc for kind, loc in KubeVirtDriver.locators.items()}
    host = KubeHost(kube_cluster.admin, PLATFORM, conventions=locators)
    custom = client.CustomObjectsApi(kube_cluster.admin)
    for kind, name in (("VMDisk", "root"), ("VMInstance", "web")):
        ref = ApplicationRef(api_group="apps.cozystack.io", kind=kind, name=name)
        with pytest.raises(NotFoundError, match=f"application {kind} {name} does not exist"):
            host.locate(namespace, ref)
        body = {"apiVersion": "apps.cozystack.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": {}}  # fmt: skip
        custom.create_namespaced_custom_object("apps.cozystack.io", "v1alpha1", namespace, COZYSTACK_APPS[kind], body)  # fmt: skip
    disk = host.locate(namespace, ApplicationRef(api_group="apps.cozystack.io", kind="VMDisk", name="root"))  # fmt: skip
    assert dict(disk.connection) == {"dataVolume": "vm-disk-root", "volume": "disk-root"}
    vm = host.locate(namespace, ApplicationRef(api_group="apps.cozystack.io", kind="VMInstance", name="web"))  # fmt: skip
    assert dict(vm.connection) == {"virtualMachine": "vm-instance-web"}
