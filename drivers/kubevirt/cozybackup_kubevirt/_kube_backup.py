"""A backup on Kubernetes: a VirtualMachineSnapshot of the VM (KubeVirt freezes the guest
through its agent for the snapshot, and thaws it), a VirtualMachineExport of that
snapshot, each disk's raw image streamed from the export server into the artifact with
its zero blocks dropped (the same stream as on the embedded host), then export and
snapshot deleted.  A VMDisk no VM uses is exported as its PVC, without a snapshot.

Where KubeVirt's snapshots are not served (or the class says ``snapshots: volume``),
each disk's PVC gets a CSI VolumeSnapshot (or, with ``volumeGroupSnapshots``, all of
them one VolumeGroupSnapshot, cut at one moment), a PVC is restored from it, and that PVC
is exported and read the same way; all three are deleted after.  No guest is frozen that
way, so a running VM is refused unless the class accepts ``consistency: crash``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from cozybackup_core import BackupContext, DriverError, parse_bytes

from . import _kube_cbt
from ._kube import (
    DATA_VOLUME,
    EXPORT,
    GROUP_SNAPSHOT_VERSIONS,
    LABELS,
    SNAPSHOT,
    VMI,
    VOLUME_GROUP_SNAPSHOT,
    VOLUME_SNAPSHOT,
    Cluster,
    Kind,
)
from ._kube_export import exported, object_name
from ._kube_machine import CRASH_CONSISTENT, KubeDisk, KubeMachine, located, unfrozen
from ._params import Consistency, KubeVirtParameters, Snapshots
from ._stream import Summary, write_runs

#: What KubeVirt's admission says to a VirtualMachineSnapshot while its Snapshot feature
#: gate is off (pkg/storage/admitters/vmsnapshot.go).
_GATE_OFF = "snapshot feature gate not enabled"
#: How long a VolumeSnapshot may report an error before the backup gives up on it (the
#: external-snapshotter retries, and clears the error once it succeeds).
SNAPSHOT_ERROR_SECONDS = 300.0
#: How long a VolumeGroupSnapshot may stay unbound (no VolumeGroupSnapshotContent) before
#: the backup gives up: a snapshot controller without its CSIVolumeGroupSnapshot feature
#: gate, or a CSI driver without group snapshots, never writes its status at all.
GROUP_UNBOUND_SECONDS = 300.0
#: What the operator may be missing when group snapshots do not happen.
_GROUP_HINT = (
    "the external-snapshotter's group snapshot CRDs, its CSIVolumeGroupSnapshot feature gate, "
    "a CSI driver with group snapshots and a VolumeGroupSnapshotClass for it?"
)
#: What to export, and which disks it holds under which PVC name (made as it is iterated).
Sources = Iterable[tuple[Mapping[str, str], list[tuple[KubeDisk, str]]]]
#: The label that puts a VM's PVCs in its group snapshot's selector while it is cut (its
#: value is the group's name, so no other PVC is selected).
GROUP_LABEL = "backups.cozystack.io/volume-group"
#: What a crash-consistent Backup of a running VM through storage snapshots tells.
_UNFROZEN = (
    "the virtual machine was running, and its disks were copied through storage snapshots "
    "without freezing its filesystems: "
)
CRASH_TOGETHER = _UNFROZEN + (
    "they were cut together (one group snapshot of the storage) and are crash-consistent "
    "with each other (as after a power cut)"
)
CRASH_EACH = _UNFROZEN + (
    "each disk is crash-consistent on its own (as after a power cut), not with the others "
    "(their snapshots were cut one after the other)"
)
CRASH_ONE = _UNFROZEN + "the disk is crash-consistent (as after a power cut)"


def backup(ctx: BackupContext[KubeVirtParameters]) -> None:
    with located(ctx.application, ctx.deadline, ctx.log) as (m, cluster):
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
    with _sources(m, cluster, ctx) as (sources, mode, via, crash_note):
        ctx.progress.stage("exporting the disks")
        for source, held in sources:
            with exported(cluster, source, "exporting the virtual machine's disks") as export:
                for d, claim in held:
                    ctx.progress.stage(f"reading disk {d.name}")
                    with ctx.artifact.open(d.stream) as out:
                        summaries[d.name] = export.runs(
                            cluster,
                            claim,
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
    ctx.metadata.update({"consistency": mode, "disks": disks, "via": via})
    ctx.resources.update({"consistency": mode, "disks": disks})
    if mode == "crash":
        ctx.warn(crash_note, reason="CrashConsistent")
    if m.ref.kind == "VMDisk":
        ctx.metadata.update({k: v for k, v in disks[0].items() if k != "name"})


def snapshots(cluster: Cluster, params: KubeVirtParameters) -> Snapshots:
    """How a backup captures a VM's disks: KubeVirt's snapshot or CSI volume snapshots
    (``auto``: KubeVirt's where the cluster serves them)."""
    if params.snapshots is not Snapshots.AUTO:
        return params.snapshots
    served = SNAPSHOT.version in cluster.versions(SNAPSHOT.group)
    return Snapshots.KUBEVIRT if served else Snapshots.VOLUME


@contextlib.contextmanager
def _sources(
    m: KubeMachine, cluster: Cluster, ctx: BackupContext[KubeVirtParameters]
) -> Iterator[tuple[Sources, str, str, str]]:
    """What to export, the consistency it gives, how it was taken (the Backup's ``via``)
    and what a crash-consistent copy warns: a snapshot of the VM (deleted after), volume
    snapshots of its disks, or the PVC of a disk no VM uses."""
    if m.vm_name is None:
        claim = m.disks[0].claim
        if cluster.get(DATA_VOLUME, claim) is None:
            raise DriverError(
                f"the {m.ref.kind} {m.ref.name} has no disk on the cluster; ask the platform "
                "operator",
                admin_detail=f"DataVolume {claim} not found",
            )
        pvc = {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": claim}
        yield [(pvc, [(m.disks[0], claim)])], "offline", EXPORT.kind, CRASH_CONSISTENT
        return
    kind = snapshots(cluster, ctx.parameters)
    name = object_name("snapshot")
    if kind is Snapshots.KUBEVIRT:
        ctx.progress.stage("taking a snapshot of the virtual machine")
        try:
            cluster.create(
                SNAPSHOT,
                name,
                {
                    "source": {
                        "apiGroup": "kubevirt.io",
                        "kind": "VirtualMachine",
                        "name": m.vm_name,
                    }
                },
                labels=LABELS,
            )
        except DriverError as exc:
            # KubeVirt installs its snapshot API whatever its Snapshot feature gate says,
            # and its admission refuses every snapshot while the gate is off.
            if ctx.parameters.snapshots is not Snapshots.AUTO or _GATE_OFF not in str(
                exc.admin_detail
            ):
                raise
            ctx.log.info("KubeVirt refuses snapshots (%s): volume snapshots", exc.admin_detail)
            kind = Snapshots.VOLUME
    if kind is Snapshots.VOLUME:
        with _volume_snapshots(m, cluster, ctx) as taken:
            yield taken
        return
    try:
        snap = cluster.wait(
            "taking a snapshot of the virtual machine",
            SNAPSHOT,
            name,
            _ready_to_use,
            _snapshot_failed,
        )
        assert snap is not None
        mode = _consistency(snap, m, ctx.parameters.consistency)
        source = {"apiGroup": SNAPSHOT.group, "kind": SNAPSHOT.kind, "name": name}
        yield [(source, [(d, d.claim) for d in m.disks])], mode, EXPORT.kind, CRASH_CONSISTENT
    finally:
        cluster.delete(SNAPSHOT, name)


@contextlib.contextmanager
def _volume_snapshots(
    m: KubeMachine, cluster: Cluster, ctx: BackupContext[KubeVirtParameters]
) -> Iterator[tuple[Sources, str, str, str]]:
    """A CSI VolumeSnapshot of each disk, taken one right after the other (a running VM's
    disks are then each crash-consistent, not consistent with each other), or with
    ``volumeGroupSnapshots`` one VolumeGroupSnapshot of them all (cut at one moment);
    then, one disk at a time, a PVC restored from its snapshot: what to export (one extra
    PVC at a time, each deleted once read), as :func:`_sources` says it.  Everything
    made is deleted after, also on failure."""
    params = ctx.parameters
    before = _instance(m, cluster)
    if before:
        _crash_accepted(m, params)
    templates = {d.name: _claim_template(m, cluster, d) for d in m.disks}
    grouped = params.volume_group_snapshots and len(m.disks) > 1
    claims: list[str] = []
    group: tuple[Kind, str] | None = None
    snaps: dict[str, str] = {}

    def restored() -> Iterator[tuple[Mapping[str, str], list[tuple[KubeDisk, str]]]]:
        for d in m.disks:
            claim = object_name("volsnap-claim")
            claims.append(claim)
            cluster.create_claim_from_snapshot(
                claim, snaps[d.name], sizes[d.name], templates[d.name]
            )
            try:
                yield {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": claim}, [(d, claim)]
            finally:
                cluster.delete_claim(claim)

    try:
        if grouped:
            ctx.progress.stage("taking a group snapshot of the disks")
            kind = cluster.served(
                VOLUME_GROUP_SNAPSHOT,
                GROUP_SNAPSHOT_VERSIONS,
                hint=f"the class asks for volumeGroupSnapshots: {_GROUP_HINT}",
            )
            group = (kind, object_name("volgroup"))
            snaps = _group_snapshot(m, cluster, params, *group)
        else:
            ctx.progress.stage("taking snapshots of the disks")
            snaps = {d.name: object_name("volsnap") for d in m.disks}
            spec_class = (
                {"volumeSnapshotClassName": params.volume_snapshot_class}
                if params.volume_snapshot_class
                else {}
            )
            for d in m.disks:
                cluster.create(
                    VOLUME_SNAPSHOT,
                    snaps[d.name],
                    {"source": {"persistentVolumeClaimName": d.claim}, **spec_class},
                    labels=LABELS,
                )
        sizes = {d.name: _restore_size(cluster, snaps[d.name], templates[d.name]) for d in m.disks}
        # Every snapshot is cut: a VM started meanwhile was written to while they were.
        after = _instance(m, cluster)
        if after:
            _crash_accepted(m, params)
        mode = "crash" if before or after else "offline"
        if grouped:
            yield restored(), mode, f"{VOLUME_GROUP_SNAPSHOT.kind}, {EXPORT.kind}", CRASH_TOGETHER
        else:
            note = CRASH_EACH if len(m.disks) > 1 else CRASH_ONE
            yield restored(), mode, f"{VOLUME_SNAPSHOT.kind}, {EXPORT.kind}", note
    finally:
        for claim in claims:
            cluster.delete_claim(claim)
        if group is not None:
            cluster.delete(*group)  # the snapshot controller deletes its members with it
        else:
            for name in snaps.values():
                cluster.delete(VOLUME_SNAPSHOT, name)


def _group_snapshot(
    m: KubeMachine, cluster: Cluster, params: KubeVirtParameters, kind: Kind, name: str
) -> dict[str, str]:
    """VolumeGroupSnapshot ``name`` of every disk's PVC, selected by a label the driver
    puts on them until it is cut; the VolumeSnapshot the snapshot controller made for
    each disk (owned by the group), by disk name."""
    spec: dict[str, Any] = {"source": {"selector": {"matchLabels": {GROUP_LABEL: name}}}}
    if params.volume_group_snapshot_class:
        spec["volumeGroupSnapshotClassName"] = params.volume_group_snapshot_class
    labelled: list[str] = []
    try:
        for d in m.disks:
            cluster.label_claim(d.claim, GROUP_LABEL, name)
            labelled.append(d.claim)
        made = cluster.create(kind, name, spec, labels=LABELS)
        cluster.wait(
            "taking a group snapshot of the disks",
            kind,
            name,
            _ready_to_use,
            group_failed(time.monotonic()),
        )
    finally:
        for claim in labelled:
            cluster.unlabel_claim(claim, GROUP_LABEL)
    uid = made["metadata"]["uid"]
    members: dict[str, str] = {}
    for snap in cluster.items(VOLUME_SNAPSHOT):
        if any(o.get("uid") == uid for o in snap["metadata"].get("ownerReferences") or ()):
            # "" where the snapshot controller found no PV for a volume of the group
            source = (snap["spec"].get("source") or {}).get("persistentVolumeClaimName")
            members[str(source or "")] = snap["metadata"]["name"]
    wanted = {d.claim for d in m.disks}
    if set(members) != wanted:
        raise DriverError(
            "taking a group snapshot of the disks failed; ask the platform operator",
            admin_detail=f"{kind.kind} {cluster.namespace}/{name} holds snapshots of PVCs "
            f"{sorted(members)}, not of the VM's {sorted(wanted)}"
            + (" ('': a volume the snapshot controller found no PV for)" if "" in members else ""),
        )
    return {d.name: members[d.claim] for d in m.disks}


def _claim_template(m: KubeMachine, cluster: Cluster, d: KubeDisk) -> dict[str, Any]:
    """The disk's own PVC: what a PVC restored from its snapshot must look like (a wrong
    volume mode would leave that PVC pending, so it is never guessed)."""
    claim = cluster.claim(d.claim)
    if claim is None:
        raise DriverError(
            f"the {m.ref.kind} {m.ref.name} has no disk on the cluster; ask the platform operator",
            admin_detail=f"PersistentVolumeClaim {d.claim} of disk {d.name} not found",
        )
    return claim


def _restore_size(cluster: Cluster, snapshot: str, template: Mapping[str, Any]) -> str:
    """Wait for VolumeSnapshot ``snapshot``; the size a PVC restored from it asks for:
    the larger of its ``restoreSize`` (a minimum, and optional) and the disk's PVC's
    request (as KubeVirt sizes the PVCs it restores from snapshots)."""
    ready = cluster.wait(
        "taking snapshots of the disks",
        VOLUME_SNAPSHOT,
        snapshot,
        _ready_to_use,
        _errors_tolerated("volume snapshot"),
    )
    assert ready is not None
    requested = ((template.get("spec") or {}).get("resources") or {}).get("requests") or {}
    sizes = [str(q) for q in (ready["status"].get("restoreSize"), requested.get("storage")) if q]
    if not sizes:
        raise DriverError(
            "taking snapshots of the disks failed; ask the platform operator",
            admin_detail=f"VolumeSnapshot {snapshot}: no restoreSize, and the disk's PVC "
            "requests no size",
        )
    known = [(n, q) for q in sizes if (n := _quantity(q)) is not None]
    return str(max(known)[0]) if known else sizes[0]


def _errors_tolerated(what: str) -> Callable[[Mapping[str, Any]], str | None]:
    """A ``failed`` test for :meth:`Cluster.wait` on a CSI snapshot: its ``status.error``
    fails the wait only once it has lasted ``SNAPSHOT_ERROR_SECONDS`` (the
    external-snapshotter retries, and clears the error once it succeeds)."""
    first_error: list[float] = []

    def failed(obj: Mapping[str, Any]) -> str | None:
        error = (obj.get("status") or {}).get("error") or {}
        if not error.get("message"):
            first_error.clear()
            return None
        first_error[:] = first_error or [time.monotonic()]
        if time.monotonic() - first_error[0] < SNAPSHOT_ERROR_SECONDS:
            return None
        return f"{what} failed: {error['message']}"

    return failed


def group_failed(started: float) -> Callable[[Mapping[str, Any]], str | None]:
    """A ``failed`` test for a VolumeGroupSnapshot made at ``started`` (monotonic): its
    errors as any CSI snapshot's, and no content bound after ``GROUP_UNBOUND_SECONDS``."""
    errors = _errors_tolerated("group snapshot")

    def failed(obj: Mapping[str, Any]) -> str | None:
        status = obj.get("status") or {}
        bound = status.get("boundVolumeGroupSnapshotContentName")
        if bound or time.monotonic() - started < GROUP_UNBOUND_SECONDS:
            return errors(obj)
        said = (status.get("error") or {}).get("message")
        return (
            f"no VolumeGroupSnapshotContent after {GROUP_UNBOUND_SECONDS:.0f} s"
            + (f" ({said})" if said else "")
            + f": {_GROUP_HINT}"
        )

    return failed


def _quantity(text: str) -> int | None:
    try:
        return parse_bytes(text)
    except (KeyError, ValueError):
        return None  # a form parse_bytes does not read ("1.5Gi"): the API server will


def _instance(m: KubeMachine, cluster: Cluster) -> str | None:
    """The uid of the VM's instance while it runs (one that has finished, as with run
    strategy ``Manual``, does not write)."""
    vmi = cluster.get(VMI, m.vm_name) if m.vm_name else None
    if vmi is None or (vmi.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return None
    return str(vmi["metadata"].get("uid") or "running")


def _crash_accepted(m: KubeMachine, params: KubeVirtParameters) -> None:
    """Volume snapshots of a running VM's disks are crash-consistent: refused unless the
    class says ``consistency: crash``."""
    if params.consistency is Consistency.CRASH:
        return
    raise DriverError(
        "the virtual machine is running, and on this platform its disks are copied through "
        "storage snapshots, which cannot pause the guest's writes; stop the virtual machine "
        "for the backup, or ask the platform operator for a backup class that accepts "
        "crash-consistent copies",
        admin_detail=f"{m.ref}: VolumeSnapshots of a running VM need consistency crash "
        f"(snapshots: {params.snapshots.value}; KubeVirt's VirtualMachineSnapshot freezes the "
        "guest where it is served)",
    )


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


def _ready_to_use(obj: Mapping[str, Any]) -> bool:
    """A VirtualMachineSnapshot's or a VolumeSnapshot's: its content can be read."""
    return bool((obj.get("status") or {}).get("readyToUse"))


def _snapshot_failed(obj: Mapping[str, Any]) -> str | None:
    status = obj.get("status") or {}
    if status.get("phase") == "Failed":
        return f"snapshot failed: {status.get('error')}"
    return None
