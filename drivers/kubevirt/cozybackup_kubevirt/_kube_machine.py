"""A VMDisk or VMInstance on Kubernetes: its VirtualMachine and the DataVolumes (PVCs) of
its disks, found from the connection the driver's locator gives (Cozystack's chart names).

Connection keys (a tenant never sees them)::

    # VMDisk x (Cozystack's vm-disk chart: DataVolume vm-disk-x; a vm-instance VM that
    # uses it calls its volume disk-x)
    dataVolume: vm-disk-x
    volume: disk-x

    # VMInstance y (Cozystack's vm-instance chart: VirtualMachine vm-instance-y)
    virtualMachine: vm-instance-y

    # both, optional: where CDI's upload proxy is, and the CA that signed it (a PEM, or
    # a ConfigMap "namespace/name" with key ca-bundle.crt); defaults: Cozystack's CDI
    uploadProxyURL: https://cdi-uploadproxy.cozy-kubevirt-cdi.svc/v1beta1/upload
    uploadProxyCA: "-----BEGIN CERTIFICATE-----..."
    uploadProxyCAConfigMap: cozy-kubevirt-cdi/cdi-uploadproxy-signer-bundle
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from cozybackup_core import ApplicationRef, AppLocation, Deadline, DriverError

from ._kube import VM, Cluster
from ._machine import SINGLE_DISK, misconfigured

#: The keys that make a connection a Kubernetes one (the embedded host's has ``path``).
KUBE_KEYS = frozenset({"dataVolume", "virtualMachine"})
_KEYS = frozenset(
    {
        "dataVolume",
        "volume",
        "virtualMachine",
        "uploadProxyURL",
        "uploadProxyCA",
        "uploadProxyCAConfigMap",
    }
)
DEFAULT_UPLOAD_PROXY = "https://cdi-uploadproxy.cozy-kubevirt-cdi.svc/v1beta1/upload"
DEFAULT_UPLOAD_CA = "cozy-kubevirt-cdi/cdi-uploadproxy-signer-bundle"
#: Cozystack's vm-instance chart names a disk's volume ``disk-<VMDisk name>``.
VOLUME_PREFIX = "disk-"


def is_kube(loc: AppLocation) -> bool:
    return bool(KUBE_KEYS & set(loc.connection))


@attrs.frozen(kw_only=True)
class KubeDisk:
    """One disk: its stream's name, the VM's volume (None: no VM uses it) and the PVC."""

    name: str
    claim: str
    volume: str | None = None

    @property
    def stream(self) -> str:
        return f"{self.name}.vmdisk"


@attrs.frozen(kw_only=True)
class UploadProxy:
    """CDI's upload proxy: its URL and the CA that signed its certificate (PEM), else the
    ConfigMap ("namespace/name", key ``ca-bundle.crt``) that holds that CA."""

    url: str = DEFAULT_UPLOAD_PROXY
    ca: str | None = attrs.field(default=None, repr=False)
    ca_config_map: str = DEFAULT_UPLOAD_CA


@attrs.frozen(kw_only=True)
class KubeMachine:
    ref: ApplicationRef
    namespace: str
    #: The VirtualMachine (as read) whose volumes these disks are; None: a disk no VM uses.
    vm: Mapping[str, Any] | None
    disks: tuple[KubeDisk, ...]
    upload: UploadProxy

    @property
    def vm_name(self) -> str | None:
        return None if self.vm is None else str(self.vm["metadata"]["name"])

    @property
    def what(self) -> str:
        return "virtual machine" if self.ref.kind == "VMInstance" else "disk"


@contextlib.contextmanager
def located(
    loc: AppLocation, deadline: Deadline, log: logging.Logger
) -> Iterator[tuple[KubeMachine, Cluster]]:
    """The machine ``loc`` names and a client of its namespace, closed after the block."""
    cluster = Cluster(loc.namespace, deadline, log)
    try:
        yield locate(loc, cluster), cluster
    finally:
        cluster.close()


def locate(loc: AppLocation, cluster: Cluster) -> KubeMachine:
    ref, conn = loc.ref, loc.connection
    unknown = sorted(set(conn) - _KEYS)
    if unknown:
        raise misconfigured(ref, f"unknown connection keys {unknown} (known: {sorted(_KEYS)})")
    strings = {k: v for k, v in conn.items() if isinstance(v, str) and v}
    if set(strings) != set(conn):
        raise misconfigured(ref, "every connection value must be a non-empty string")
    upload = UploadProxy(
        url=strings.get("uploadProxyURL", DEFAULT_UPLOAD_PROXY),
        ca=strings.get("uploadProxyCA"),
        ca_config_map=strings.get("uploadProxyCAConfigMap", DEFAULT_UPLOAD_CA),
    )
    if ref.kind == "VMInstance":
        if "virtualMachine" not in strings:
            raise misconfigured(ref, "a VMInstance needs 'virtualMachine'")
        vm = cluster.get(VM, strings["virtualMachine"])
        if vm is None:
            raise _gone(ref, f"VirtualMachine {strings['virtualMachine']} not found")
        disks = tuple(
            KubeDisk(name=volume.removeprefix(VOLUME_PREFIX), claim=claim, volume=volume)
            for volume, claim in _volumes(vm).items()
        )
        if not disks:
            raise misconfigured(ref, "its VirtualMachine has no DataVolume or PVC volume")
        return KubeMachine(ref=ref, namespace=loc.namespace, vm=vm, disks=disks, upload=upload)
    if "dataVolume" not in strings:
        raise misconfigured(ref, "a VMDisk needs 'dataVolume'")
    volume = strings.get("volume", VOLUME_PREFIX + ref.name)
    users = [vm for vm in cluster.items(VM) if volume in _volumes(vm)]
    if len(users) > 1:
        names = [u["metadata"]["name"] for u in users]
        raise misconfigured(ref, f"volume {volume} is in several VirtualMachines: {names}")
    vm = users[0] if users else None
    # A VM's volume names the disk's current PVC (a restore may have swapped in another).
    claim = _volumes(vm)[volume] if vm is not None else strings["dataVolume"]
    disk = KubeDisk(name=SINGLE_DISK, claim=claim, volume=volume if vm is not None else None)
    return KubeMachine(ref=ref, namespace=loc.namespace, vm=vm, disks=(disk,), upload=upload)


def _volumes(vm: Mapping[str, Any]) -> dict[str, str]:
    """``volume name -> PVC name`` of a VM's DataVolume and PVC volumes, in order."""
    out: dict[str, str] = {}
    spec = ((vm.get("spec") or {}).get("template") or {}).get("spec") or {}
    for v in spec.get("volumes") or ():
        if "dataVolume" in v:
            out[v["name"]] = v["dataVolume"]["name"]
        elif "persistentVolumeClaim" in v:
            out[v["name"]] = v["persistentVolumeClaim"]["claimName"]
    return out


def _gone(ref: ApplicationRef, detail: str) -> DriverError:
    return DriverError(
        f"the {ref.kind} {ref.name} has no virtual machine on the cluster; ask the platform "
        "operator",
        admin_detail=detail,
    )


def unfrozen(m: KubeMachine, detail: str) -> DriverError:
    """The refusal of a backup KubeVirt could not freeze the guest for (no guest agent),
    unless the class accepts crash-consistent copies."""
    return DriverError(
        "the virtual machine runs without a guest agent, so KubeVirt could not freeze its "
        "filesystems for the backup, and a backup now would not be consistent; install "
        "the QEMU guest agent in the VM, stop it, or ask the platform operator to allow "
        "crash-consistent backups ('consistency: crash' in the BackupClass)",
        admin_detail=f"{m.ref}: {detail}",
    )


CRASH_CONSISTENT = (
    "the virtual machine has no guest agent, so its backup was taken without freezing its "
    "filesystems: the disks are crash-consistent (as after a power cut)"
)
