"""A backup on Kubernetes: a VirtualMachineSnapshot of the VM (KubeVirt freezes the guest
through its agent for the snapshot, and thaws it), a VirtualMachineExport of that
snapshot, each disk's raw image streamed from the export server into the artifact with
its zero blocks dropped (the same stream as on the embedded host), then export and
snapshot deleted.  A VMDisk no VM uses is exported as its PVC, without a snapshot.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from typing import Any

from cozybackup_core import BackupContext, DriverError

from . import _kube_cbt
from ._kube import DATA_VOLUME, SNAPSHOT, VMI, Cluster
from ._kube_export import LABELS, exported, object_name
from ._kube_machine import CRASH_CONSISTENT, KubeMachine, located, unfrozen
from ._params import Consistency, KubeVirtParameters
from ._stream import Summary, write_runs


def backup(ctx: BackupContext[KubeVirtParameters]) -> None:
    with located(ctx.application, ctx.deadline) as (m, cluster):
        _backup(m, cluster, ctx)


def _backup(m: KubeMachine, cluster: Cluster, ctx: BackupContext[KubeVirtParameters]) -> None:
    if ctx.parameters.consistency is Consistency.STOP:
        raise DriverError(
            "the BackupClass asks for 'stop' consistency, which this platform does not offer "
            "on Kubernetes: KubeVirt's snapshot freezes the guest instead ('freeze' or 'auto')",
            admin_detail=f"{m.ref}: consistency stop on Kubernetes",
        )
    if ctx.parameters.changed_blocks and m.vm_name and cluster.get(VMI, m.vm_name):
        # Changed-block tracking needs the running guest; a stopped VM's disks are read
        # whole through a snapshot, and the next backup of it is full again.
        _kube_cbt.backup(m, cluster, ctx)
        return
    summaries: dict[str, Summary] = {}
    with _source(m, cluster, ctx) as (source, mode):
        ctx.progress.stage("exporting the disks")
        with exported(cluster, source, "exporting the virtual machine's disks") as export:
            for d in m.disks:
                ctx.progress.stage(f"reading disk {d.name}")
                with ctx.artifact.open(d.stream) as out:
                    summaries[d.name] = export.runs(
                        cluster,
                        d.claim,
                        f"reading disk {d.name}",
                        functools.partial(write_runs, out),
                    )
    disks = [
        {
            "name": d.name,
            "format": "raw",
            "virtualSize": summaries[d.name].virtual_size,
            "dataBytes": summaries[d.name].data_bytes,
        }
        for d in m.disks
    ]
    ctx.metadata.update({"consistency": mode, "disks": disks, "via": "VirtualMachineExport"})
    ctx.resources.update({"consistency": mode, "disks": disks})
    if mode == "crash":
        ctx.warn(CRASH_CONSISTENT, reason="CrashConsistent")
    if m.ref.kind == "VMDisk":
        ctx.metadata.update({k: v for k, v in disks[0].items() if k != "name"})


@contextlib.contextmanager
def _source(
    m: KubeMachine, cluster: Cluster, ctx: BackupContext[KubeVirtParameters]
) -> Iterator[tuple[Mapping[str, str], str]]:
    """What to export, and the consistency it gives: a snapshot of the VM (deleted after),
    or the PVC of a disk no VM uses."""
    if m.vm_name is None:
        claim = m.disks[0].claim
        if cluster.get(DATA_VOLUME, claim) is None:
            raise DriverError(
                f"the {m.ref.kind} {m.ref.name} has no disk on the cluster; ask the platform "
                "operator",
                admin_detail=f"DataVolume {claim} not found",
            )
        yield {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": claim}, "offline"
        return
    name = object_name("snapshot")
    ctx.progress.stage("taking a snapshot of the virtual machine")
    cluster.create(
        SNAPSHOT,
        name,
        {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": m.vm_name}},
        labels=LABELS,
    )
    try:
        snap = cluster.wait(
            "taking a snapshot of the virtual machine",
            SNAPSHOT,
            name,
            lambda o: bool((o.get("status") or {}).get("readyToUse")),
            _snapshot_failed,
        )
        assert snap is not None
        mode = _consistency(snap, m, ctx.parameters.consistency)
        yield {"apiGroup": SNAPSHOT.group, "kind": SNAPSHOT.kind, "name": name}, mode
    finally:
        cluster.delete(SNAPSHOT, name)


def _consistency(snap: Mapping[str, Any], m: KubeMachine, wanted: Consistency) -> str:
    """``offline`` (the VM was off), ``frozen`` (KubeVirt froze it through its guest agent)
    or ``crash``; ``auto`` and ``freeze`` refuse a crash-consistent snapshot."""
    status = snap.get("status") or {}
    # sourceIndications ({indication, message}) replaced the older indications (strings).
    said = {i.get("indication") for i in status.get("sourceIndications") or ()}
    said |= set(status.get("indications") or ())
    if "Online" not in said:
        return "offline"
    if "GuestAgent" in said:
        return "frozen"
    if wanted is not Consistency.CRASH:
        raise unfrozen(m, f"snapshot indications {sorted(said)}")
    return "crash"


def _snapshot_failed(obj: Mapping[str, Any]) -> str | None:
    status = obj.get("status") or {}
    if status.get("phase") == "Failed":
        return f"snapshot failed: {status.get('error')}"
    return None
