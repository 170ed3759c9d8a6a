"""A running VM's backup through KubeVirt's changed-block tracking (``backup.kubevirt.io``,
KubeVirt 1.8 and later): a pull-mode ``VirtualMachineBackup`` from the driver's
``VirtualMachineBackupTracker`` of the VM, its ``map`` and ``data`` endpoints read with a
token the driver chose, then the backup deleted, which is how a pull-mode backup ends
(KubeVirt then moves the tracker to the backup's checkpoint).

The first backup is full: the blocks the map calls ``data``.  The next ones are
incremental: only the ``dirty`` blocks are read from the cluster and laid over the disk
streams of the previous Backup of the class (``BackupContext.prior``), so each Backup still
holds whole disks: a restore needs no other Backup, retention may delete any of them, and a
deduplicating location stores only the changed chunks.  An incremental is built only on
the Backup that recorded the tracker's current checkpoint; anything else (no such Backup,
a checkpoint KubeVirt lost, ``fullEvery`` reached) forces a full one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import time
from collections.abc import Iterator, Mapping
from typing import Any

from cozybackup_core import BackupContext, DriverError, PriorBackup, parse_bytes

from ._https import BackupEndpoint
from ._kube import DATA_VOLUME, LABELS, POLL_SECONDS, TRACKER, VM_BACKUP, Cluster, condition
from ._kube_export import object_name
from ._kube_machine import CRASH_CONSISTENT, KubeDisk, KubeMachine, unfrozen
from ._params import Consistency, KubeVirtParameters
from ._stream import Change, Summary, aligned, overlay, read_header, records, write_runs

_WHAT = "reading the virtual machine's changed blocks"
#: What the driver records on a Backup made this way (``driverMetadata``).
VIA = "VirtualMachineBackup"
#: Seconds KubeVirt is given to record the checkpoint on the tracker after the backup.
_RECORD_SECONDS = 60.0


def backup(m: KubeMachine, cluster: Cluster, ctx: BackupContext[KubeVirtParameters]) -> None:
    assert m.vm_name is not None
    tracker = _tracker(cluster, m)
    latest = ((tracker.get("status") or {}).get("latestCheckpoint") or {}).get("name")
    volumes_id = _volumes_id(m)
    base, why_full = _base(ctx.prior(), latest, volumes_id, ctx.parameters.full_every)
    name = object_name("backup")
    token = secrets.token_urlsafe(32)
    spec = {
        "source": {"apiGroup": TRACKER.group, "kind": TRACKER.kind, "name": tracker_name(m)},
        "mode": "Pull",
        "pvcName": f"{name}-scratch",
        "tokenSecretRef": f"{name}-token",
        "forceFullBackup": base is None,
        "ttlDuration": f"{max(60, int(cluster.deadline.remaining()) + 60)}s",
    }
    ctx.progress.stage("starting the virtual machine's backup")
    made = cluster.create(VM_BACKUP, name, spec, labels=LABELS)
    summaries: dict[str, Summary] = {}
    try:
        cluster.create_secret(f"{name}-token", {"token": token}, owner=made)
        cluster.create_scratch_claim(
            f"{name}-scratch", _scratch_size(cluster, m), ctx.parameters.scratch_storage_class, made
        )
        ready = cluster.wait(_WHAT, VM_BACKUP, name, _export_ready, _failed)
        assert ready is not None
        status = ready["status"]
        mode = _consistency(status, m, ctx.parameters.consistency)
        incremental = status.get("type") == "Incremental"
        if incremental and base is None:
            raise DriverError(
                f"{_WHAT} failed; ask the platform operator",
                admin_detail=f"VirtualMachineBackup {name}: incremental though forceFullBackup",
            )
        if base is not None and not incremental:
            why_full = f"KubeVirt no longer had the checkpoint Backup {base.name} recorded"
        volumes = {v.get("volumeName"): v for v in status.get("includedVolumes") or ()}
        for d in m.disks:
            ctx.progress.stage(f"reading disk {d.name}")
            vol = volumes.get(d.volume)
            if vol is None or not vol.get("mapEndpoint") or not vol.get("dataEndpoint"):
                raise DriverError(
                    f"{_WHAT} failed: KubeVirt's backup lacks a disk; ask the platform operator",
                    admin_detail=f"VirtualMachineBackup {name}: no endpoints for volume "
                    f"{d.volume} (has {sorted(str(v) for v in volumes)})",
                )
            endpoint = BackupEndpoint(
                vol["mapEndpoint"],
                vol["dataEndpoint"],
                token,
                status.get("endpointCert"),
                cluster.deadline,
            )
            try:
                summaries[d.name] = _disk(ctx, d, endpoint, base if incremental else None)
            finally:
                endpoint.close()
        checkpoint = status.get("checkpointName")
    finally:
        cluster.delete(VM_BACKUP, name)  # ends the pull backup (and its Secret, scratch PVC)
    recorded = _recorded(cluster, tracker_name(m), checkpoint)
    disks = [
        {
            "name": d.name,
            "format": "raw",
            "virtualSize": summaries[d.name].virtual_size,
            "dataBytes": summaries[d.name].data_bytes,
        }
        for d in m.disks
    ]
    chain = int(base.driver_metadata.get("chain", 0)) + 1 if base and incremental else 0
    ctx.metadata.update(
        {
            "consistency": mode,
            "disks": disks,
            "via": VIA,
            "backupType": "Incremental" if incremental else "Full",
            # Only a checkpoint KubeVirt recorded on the tracker can be built on.
            "checkpoint": checkpoint if recorded else None,
            "chain": chain,
            "volumes": volumes_id,
            "readBytes": sum(s.read_bytes for s in summaries.values()),
        }
    )
    if base is not None and incremental:
        ctx.metadata["builtOn"] = base.name
    if why_full:
        ctx.metadata["fullBecause"] = why_full
    ctx.resources.update({"consistency": mode, "disks": disks})
    if not recorded:
        ctx.warn(
            "KubeVirt did not record this backup's checkpoint, so the next backup of this "
            "virtual machine reads every block again",
            reason="ChangedBlocksLost",
        )
    if mode == "crash":
        ctx.warn(CRASH_CONSISTENT, reason="CrashConsistent")
    if m.ref.kind == "VMDisk":
        ctx.metadata.update({k: v for k, v in disks[0].items() if k != "name"})


def tracker_name(m: KubeMachine) -> str:
    """The driver's tracker of the VM: one per VM, so another backup product's tracker
    (with its own checkpoints) is never moved by ours."""
    return f"cozybackup-{m.vm_name}"


def _tracker(cluster: Cluster, m: KubeMachine) -> dict[str, Any]:
    found = cluster.get(TRACKER, tracker_name(m))
    if found is not None:
        return found
    source = {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": m.vm_name}
    return cluster.create(TRACKER, tracker_name(m), {"source": source}, labels=LABELS)


def _base(
    prior: PriorBackup | None, latest: str | None, volumes_id: str, full_every: int
) -> tuple[PriorBackup | None, str | None]:
    """The Backup an incremental may be laid over, or None and why every block is read."""
    if prior is None:
        return None, "no previous Backup of this class to build on"
    meta = prior.driver_metadata
    if meta.get("via") != VIA or not meta.get("checkpoint"):
        return None, f"Backup {prior.name} has no changed-block checkpoint"
    if meta.get("volumes") != volumes_id:
        # A restore swapped other volumes in: KubeVirt's bitmaps are of the old ones.
        return None, f"the disks were replaced since Backup {prior.name}"
    if meta.get("checkpoint") != latest:
        return None, f"KubeVirt's checkpoint is not the one Backup {prior.name} recorded"
    if full_every and int(meta.get("chain", 0)) + 1 >= full_every:
        return None, f"every {full_every}th backup reads every block (fullEvery)"
    return prior, None


def _volumes_id(m: KubeMachine) -> str:
    """Which PVCs the disks are, as a digest (the names are not the tenant's to read)."""
    claims = json.dumps(sorted((d.name, d.claim) for d in m.disks)).encode()
    return hashlib.sha256(claims).hexdigest()[:16]


def _disk(
    ctx: BackupContext[KubeVirtParameters],
    d: KubeDisk,
    endpoint: BackupEndpoint,
    base: PriorBackup | None,
) -> Summary:
    what = f"reading disk {d.name}"
    extents = _extents(endpoint, what)
    size = extents[-1][0] + extents[-1][1] if extents else 0
    read = functools.partial(_counted, endpoint, what, counter := [0])
    with ctx.artifact.open(d.stream) as out:
        if base is None:
            # A full backup's map: data, or a hole / zeros (never read).
            wanted = [Change(o, n) for o, n, desc in extents if desc == "data"]
            summary = write_runs(
                out, size, overlay((), aligned(wanted, size), read, ctx.deadline.check)
            )
        else:
            with base.artifact.open(d.stream) as src:
                summary = write_runs(out, size, _over_base(src, size, extents, read, ctx, base, d))
    summary.read_bytes = counter[0]
    return summary


def _over_base(
    src: Any,
    size: int,
    extents: list[tuple[int, int, str]],
    read: Any,
    ctx: BackupContext[KubeVirtParameters],
    base: PriorBackup,
    d: KubeDisk,
) -> Iterator[tuple[int, bytes]]:
    """The disk: ``dirty`` blocks read, the others from ``base``'s stream of it."""
    base_size = read_header(src)
    if base_size != size:
        # The disk was resized: every block that may hold data is read (the map of an
        # incremental backup still covers the whole disk).
        ctx.log.info("disk %s resized since Backup %s: read whole", d.name, base.name)
        whole = [Change(o, n) for o, n, desc in extents if "zero" not in desc.split(",")]
        yield from overlay((), aligned(whole, size), read, ctx.deadline.check)
        return
    dirty = [
        Change(o, n, zero="zero" in desc.split(","))
        for o, n, desc in extents
        if "dirty" in desc.split(",")
    ]
    yield from overlay(
        records(src, size, Summary(size)), aligned(dirty, size), read, ctx.deadline.check
    )


def _extents(endpoint: BackupEndpoint, what: str) -> list[tuple[int, int, str]]:
    """The map, checked to cover the disk from 0 without gaps or overlaps."""
    out: list[tuple[int, int, str]] = []
    end = 0
    for e in endpoint.extents(what):
        try:
            offset, length, desc = int(e["offset"]), int(e["length"]), str(e["description"])
        except (KeyError, TypeError, ValueError):
            offset, length, desc = -1, 0, ""
        if offset != end or length <= 0:
            raise DriverError(
                f"{what} failed: KubeVirt's map of the disk is not one this driver reads; "
                "ask the platform operator",
                admin_detail=f"{endpoint.map_url}: extent {e!r} after offset {end}",
            )
        out.append((offset, length, desc))
        end = offset + length
    return out


def _counted(endpoint: BackupEndpoint, what: str, counter: list[int], offset: int, n: int) -> bytes:
    data = endpoint.read(offset, n, what)
    counter[0] += len(data)
    return data


def _scratch_size(cluster: Cluster, m: KubeMachine) -> int:
    """Room for every block of the VM's disks: what the guest may overwrite while the
    backup runs is kept there (the disks' requested sizes, from their DataVolumes)."""
    total = 0
    for d in m.disks:
        dv = cluster.get(DATA_VOLUME, d.claim) or {}
        spec = dv.get("spec") or {}
        storage = (spec.get("storage") or spec.get("pvc") or {}).get("resources") or {}
        requested = str((storage.get("requests") or {}).get("storage", ""))
        try:
            total += parse_bytes(requested)
        except (KeyError, ValueError):
            raise DriverError(
                f"{_WHAT} failed: the size of disk {d.name} is unknown; ask the platform operator",
                admin_detail=f"DataVolume {d.claim}: storage request {requested!r}",
            ) from None
    return total


def _export_ready(obj: Mapping[str, Any]) -> bool:
    c = condition(obj, "Progressing")
    vols = (obj.get("status") or {}).get("includedVolumes") or ()
    return bool(c and c.get("reason") == "ExportReady" and vols)


def _failed(obj: Mapping[str, Any]) -> str | None:
    c = condition(obj, "Failed")
    if c and c.get("status") == "True":
        return f"backup failed: {c.get('reason')}: {c.get('message')}"
    p = condition(obj, "Progressing")
    if p and p.get("status") == "False":
        return f"backup ended before it was read: {p.get('reason')}: {p.get('message')}"
    return None


def _consistency(status: Mapping[str, Any], m: KubeMachine, wanted: Consistency) -> str:
    """``frozen`` (KubeVirt quiesced the guest through its agent) or ``crash``, which only
    ``consistency: crash`` accepts."""
    quiesced = condition({"status": status}, "Quiesced")
    if quiesced is not None and quiesced.get("status") == "True":
        return "frozen"
    if wanted is not Consistency.CRASH:
        raise unfrozen(m, f"Quiesced condition {quiesced}")
    return "crash"


def _recorded(cluster: Cluster, tracker: str, checkpoint: str | None) -> bool:
    """Whether KubeVirt moved the tracker to ``checkpoint`` once the backup ended (it does
    so as it completes the backup: a minute at most is waited, within the deadline)."""
    if not checkpoint:
        return False
    until = time.monotonic() + min(_RECORD_SECONDS, cluster.deadline.remaining())
    while True:
        t = cluster.get(TRACKER, tracker) or {}
        if ((t.get("status") or {}).get("latestCheckpoint") or {}).get("name") == checkpoint:
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(POLL_SECONDS)
