"""A restore on Kubernetes: each disk of the backup uploaded through CDI into a new
DataVolume (``source.upload``, an ``UploadTokenRequest``, the image POSTed to the upload
proxy), read back through a VirtualMachineExport of it and compared with the backup's
content digest, and only then swapped into the VM: the VM is stopped, its volumes are
pointed at the new DataVolumes (all in one patch), and it is started again if it ran.

Before the swap any failure deletes the new DataVolumes and leaves the VM as it was.  The
DataVolumes the VM used before are kept (Cozystack's chart owns ``vm-disk-<name>``);
one an earlier restore made (our label) is deleted once nothing uses it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from typing import IO, Any

from cozybackup_core import DeadlineExceeded, DriverError, RestoreContext

from . import _https
from ._kube import DATA_VOLUME, LABELS, UPLOAD_TOKEN, VM, VMI, Cluster
from ._kube_export import exported
from ._kube_machine import KubeDisk, KubeMachine, located
from ._params import KubeVirtParameters
from ._stream import StreamInvalid, Summary, read_header, records, runs_digest

#: A restored DataVolume is ``<the disk's Cozystack name>-restore-<random>``.
_RESTORED = re.compile(r"-restore-[0-9a-f]{8}$")
#: Asks CDI to bind the PVC now: with WaitForFirstConsumer storage an upload's PVC would
#: wait for a pod that never comes (Cozystack's vm-disk chart sets it for uploads too).
_BIND_NOW = {"cdi.kubevirt.io/storage.bind.immediate.requested": ""}


def restore(ctx: RestoreContext[KubeVirtParameters]) -> None:
    with located(ctx.target, ctx.deadline, ctx.log) as (m, cluster):
        _restore(m, cluster, ctx)


def _restore(m: KubeMachine, cluster: Cluster, ctx: RestoreContext[KubeVirtParameters]) -> None:
    streams = sorted(ctx.artifact.names())
    by_stream = {d.stream: d for d in m.disks}
    missing = [s.removesuffix(".vmdisk") for s in streams if s not in by_stream]
    if missing:
        raise DriverError(
            f"the target {m.what} has no disk named {', '.join(missing)}; a restore needs "
            "a target with the same disks as the backup",
            admin_detail=f"{m.ref}: target disks {[d.name for d in m.disks]}",
        )
    if m.vm is None:
        raise DriverError(
            f"the {m.ref.kind} {m.ref.name} is attached to no virtual machine; a restore "
            "swaps the restored disk into the virtual machine that uses it",
            admin_detail=f"{m.ref}: no VirtualMachine has volume {m.disks[0].claim}",
        )
    upload_ca = m.upload.ca or _config_map_ca(cluster, m)
    made: list[str] = []
    swaps: dict[str, str] = {}  # volume -> new DataVolume
    try:
        for name in streams:
            d = by_stream[name]
            ctx.progress.stage(f"uploading disk {d.name}")
            new = _new_name(d.claim)
            made.append(new)
            with ctx.artifact.open(d.stream) as src:
                summary = _upload(m, cluster, d, new, src, upload_ca, ctx)
            if ctx.parameters.verify_restore:
                ctx.progress.stage(f"verifying disk {d.name}")
                _verify(cluster, d, new, summary)
            assert d.volume is not None
            swaps[d.volume] = new
        _swap(m, cluster, swaps, made, ctx)
        # Cozystack's vm-instance chart always renders DataVolume vm-disk-<name>.
        ctx.warn(
            "the virtual machine now runs on the restored disks, which are new volumes; its "
            "application's chart still names the disks it had, so changing the application's "
            "settings (which applies the chart again) would put the virtual machine back on "
            "the disks as they were before this restore; ask the platform operator first",
            reason="RestoredDisksOutsideChart",
        )
    finally:
        for new in made:
            cluster.delete(DATA_VOLUME, new)
    # The restore is done; a DataVolume of an earlier restore left behind is only logged.
    for d in m.disks:
        if d.volume in swaps and _RESTORED.search(d.claim):
            try:
                old = cluster.get(DATA_VOLUME, d.claim)
                if old is not None and _ours(old):
                    cluster.delete(DATA_VOLUME, d.claim)
            except (DriverError, DeadlineExceeded) as exc:
                ctx.log.warning("%s: DataVolume %s not deleted: %s", m.ref, d.claim, exc)


def _upload(
    m: KubeMachine,
    cluster: Cluster,
    d: KubeDisk,
    new: str,
    src: IO[bytes],
    upload_ca: str | None,
    ctx: RestoreContext[KubeVirtParameters],
) -> Summary:
    try:
        size = read_header(src)
    except StreamInvalid as exc:
        raise _invalid(m, d, exc) from None
    old = cluster.get(DATA_VOLUME, d.claim) or {}
    cluster.create(
        DATA_VOLUME,
        new,
        {"source": {"upload": {}}, "contentType": "kubevirt", "storage": _storage(old, size)},
        labels=LABELS,
        annotations=_BIND_NOW,
    )
    what = f"uploading disk {d.name}"
    cluster.wait(what, DATA_VOLUME, new, lambda o: _phase(o) == "UploadReady", _dv_failed)
    token = _upload_token(cluster, new)
    summary = Summary(virtual_size=size)
    body = _https.gzip_image(size, records(src, size, summary), ctx.deadline.check)
    try:
        _https.upload(m.upload.url, token, upload_ca, ctx.deadline, what, body)
    except StreamInvalid as exc:
        raise _invalid(m, d, exc) from None
    cluster.wait(what, DATA_VOLUME, new, lambda o: _phase(o) == "Succeeded", _dv_failed)
    return summary


def _upload_token(cluster: Cluster, dv: str) -> str:
    """CDI answers the create with the token in its status; a server that stores the
    request fills it in afterwards, so it is read until it is there."""
    made = cluster.create(UPLOAD_TOKEN, dv, {"pvcName": dv})
    token = (made.get("status") or {}).get("token")
    if not token:
        got = cluster.wait(
            "uploading the disks",
            UPLOAD_TOKEN,
            dv,
            lambda o: bool((o.get("status") or {}).get("token")),
        )
        assert got is not None
        token = got["status"]["token"]
    return str(token)


def _verify(cluster: Cluster, d: KubeDisk, new: str, expected: Summary) -> None:
    source = {"apiGroup": "", "kind": "PersistentVolumeClaim", "name": new}
    what = f"verifying disk {d.name}"
    with exported(cluster, source, what) as export:
        got: Summary = export.runs(cluster, new, what, runs_digest)
    if (got.digest, got.data_bytes, got.virtual_size) != (
        expected.digest,
        expected.data_bytes,
        expected.virtual_size,
    ):
        raise DriverError(
            f"the uploaded disk {d.name} does not read back as the backup's content; the "
            "virtual machine was not changed",
            admin_detail=f"DataVolume {new}: {got} != {expected}",
        )


def _swap(
    m: KubeMachine,
    cluster: Cluster,
    swaps: Mapping[str, str],
    made: list[str],
    ctx: RestoreContext[KubeVirtParameters],
) -> None:
    """Stop, point the volumes at ``swaps``, start; ``made`` (the DataVolumes a failure
    deletes) is emptied as soon as the VM names them."""
    name = m.vm_name
    assert name is not None and m.vm is not None
    vm = cluster.get(VM, name) or m.vm
    running = cluster.get(VMI, name) is not None
    stop, start = _run_patches(vm)
    try:
        if running:
            ctx.progress.stage("stopping the virtual machine")
            cluster.patch(VM, name, stop)
            cluster.wait("stopping the virtual machine", VMI, name, lambda _: False, gone_ok=True)
        ctx.progress.stage("swapping in the restored disks")
        cluster.patch(VM, name, _volume_patch(vm, swaps))
        made.clear()
    finally:
        if running:
            ctx.progress.stage("starting the virtual machine")
            cluster.patch(VM, name, start, cleanup=True)


def _run_patches(vm: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """JSON patches that halt the VM and bring back how it was asked to run."""
    spec = vm.get("spec") or {}
    if "running" in spec:
        return (
            [{"op": "replace", "path": "/spec/running", "value": False}],
            [{"op": "replace", "path": "/spec/running", "value": spec["running"]}],
        )
    was = spec.get("runStrategy", "Always")
    return (
        [{"op": "add", "path": "/spec/runStrategy", "value": "Halted"}],
        [{"op": "add", "path": "/spec/runStrategy", "value": was}],
    )


def _volume_patch(vm: Mapping[str, Any], swaps: Mapping[str, str]) -> list[dict[str, Any]]:
    """One patch for every volume, each guarded by a ``test`` of the volume's name (the
    VM changed meanwhile: the patch fails whole)."""
    ops: list[dict[str, Any]] = []
    for i, v in enumerate(vm["spec"]["template"]["spec"]["volumes"]):
        new = swaps.get(v["name"])
        if new is None:
            continue
        at = f"/spec/template/spec/volumes/{i}"
        ops.append({"op": "test", "path": f"{at}/name", "value": v["name"]})
        if "dataVolume" in v:
            ops.append({"op": "replace", "path": f"{at}/dataVolume/name", "value": new})
        else:
            ops.append({"op": "remove", "path": f"{at}/persistentVolumeClaim"})
            ops.append({"op": "add", "path": f"{at}/dataVolume", "value": {"name": new}})
    return ops


def _storage(old: Mapping[str, Any], size: int) -> dict[str, Any]:
    """The new DataVolume's storage: the old one's class, modes and size, else the image's."""
    spec = old.get("spec") or {}
    was = dict(spec.get("storage") or spec.get("pvc") or {})
    keep = {k: was[k] for k in ("accessModes", "storageClassName", "volumeMode") if k in was}
    requests = (was.get("resources") or {}).get("requests") or {}
    return {**keep, "resources": {"requests": {"storage": requests.get("storage", str(size))}}}


def _config_map_ca(cluster: Cluster, m: KubeMachine) -> str | None:
    namespace, _, name = m.upload.ca_config_map.partition("/")
    data = cluster.config_map(namespace, name)
    return None if data is None else data.get("ca-bundle.crt")


def _new_name(claim: str) -> str:
    base = _RESTORED.sub("", claim)[:40].rstrip("-")
    return f"{base}-restore-{secrets.token_hex(4)}"


def _ours(obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in LABELS.items())


def _phase(obj: Mapping[str, Any]) -> str | None:
    return (obj.get("status") or {}).get("phase")


def _dv_failed(obj: Mapping[str, Any]) -> str | None:
    phase = _phase(obj)
    return f"DataVolume phase {phase}" if phase == "Failed" else None


def _invalid(m: KubeMachine, d: KubeDisk, exc: StreamInvalid) -> DriverError:
    return DriverError(
        f"the backup's data for disk {d.name} is not a disk stream this driver version can "
        "restore; the virtual machine was not changed",
        admin_detail=f"{m.ref}: {exc}",
    )
