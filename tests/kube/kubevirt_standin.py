"""A stand-in for KubeVirt and CDI on the real API server: their kinds as CRDs, and a
controller thread that plays their controllers, an export server and CDI's upload proxy.

KubeVirt and CDI cannot run here (they need nodes that run VMs).  What the KubeVirt
driver meets on a cluster is their API: objects it creates and reads, and two HTTPS
endpoints.  This module gives those, with the shapes of KubeVirt's and CDI's published
OpenAPI documents (``../shared/kubevirt-openapi/``, read at test time, never copied):

* **CRDs** for every kind the driver touches, named from the documents' paths (group,
  version, plural) and definitions (kind), with a ``status`` subresource.  Their schemas
  are open (``x-kubernetes-preserve-unknown-fields``): the API server stores the objects;
  **every object is validated against its definition** in the documents instead, with
  unknown fields refused at every level (``validate``), the stand-in's own status writes
  included.  A violation is recorded in ``errors``, which the tests assert empty.
* **PVC contents** are files: ``disk(namespace, claim)``, a raw image.
* **VirtualMachine** → a VirtualMachineInstance exists while its run strategy asks for
  one (``Always``, or ``running: true``); ``boots`` records the claims each start used.
* **VirtualMachineSnapshot** → the images of the VM's volumes copied aside (the guest
  "frozen" meanwhile if it has an agent: ``freezes``), then ``readyToUse`` with KubeVirt's
  source indications.
* **VirtualMachineExport** of a PVC (refused while a running VM uses it, as KubeVirt waits)
  or of a snapshot (volumes ``<export>-<claim>``, as the PVCs KubeVirt restores for it) →
  served over HTTPS on 127.0.0.1 once its token Secret exists: ``GET .../disk.img`` with
  header ``x-kubevirt-export-token``; the CA in ``status.links.internal.cert``.
* **VirtualMachineBackup** in pull mode (KubeVirt 1.8+, changed-block tracking), from a
  **VirtualMachineBackupTracker** (not in the published documents: its shape is checked
  against ``TRACKER_SCHEMA``, written from KubeVirt's Go API types) → once its scratch PVC
  and token Secret exist and the VM runs: the VM's images copied aside as the backup's
  checkpoint (the guest frozen meanwhile if it has an agent), ``Full`` unless the tracker
  names a checkpoint still kept and ``forceFullBackup`` is not set, then ``Incremental``;
  each volume's ``map`` (pages of coalesced 64 KiB extents described as KubeVirt's export
  server does: data/zero, or clean/dirty/zero/dirty,zero) and ``data``
  (``?offset=&length=`` of the checkpoint's copy) served with the token; deleting it ends
  it as KubeVirt does: ``Complete``, the tracker moved to its checkpoint.
  ``backup_reads`` records every data read; ``forget_checkpoints`` plays a VM whose
  changed-block bitmaps were lost (KubeVirt then clears the tracker's checkpoint).
* **VolumeSnapshot** (CSI's, from ``VOLUME_SNAPSHOT_SCHEMA``) of a PVC → its image
  copied aside, then ``readyToUse`` with its ``restoreSize``; a **PersistentVolumeClaim**
  whose ``dataSource`` is one → that copy as its image (an export of it waits for that).
* **VolumeGroupSnapshot** (from ``VOLUME_GROUP_SNAPSHOT_SCHEMA``) → the images of the PVCs
  its ``matchLabels`` select copied aside in one step (``group_cuts``), and per PVC a
  VolumeSnapshot owned by the group, named, finalized and described as the
  external-snapshotter's controller makes them; then ``readyToUse``.  A member being
  deleted loses its in-group finalizer once its group is gone (the controller's part).
* **DataVolume** ``source.upload`` → ``UploadReady``; **UploadTokenRequest** → a token in
  its status; ``POST /v1beta1/upload`` with ``Authorization: Bearer <token>`` (chunked or
  not, raw or gzip) writes the image, sparse, and the DataVolume becomes ``Succeeded``
  (``corrupt_uploads`` flips a byte of it first, as failing storage would).
  Any other DataVolume is ``Succeeded`` at once (its image is the test's file).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.server
import json
import secrets
import shutil
import ssl
import subprocess
import threading
import time
import traceback
import urllib.parse
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]
from kubernetes.client.exceptions import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    ApiException,
)

from cozybackup_core import parse_bytes

#: (document, definition) of every kind the stand-in serves.
KINDS = {
    "VirtualMachine": ("kubevirt-swagger.json", "v1.VirtualMachine"),
    "VirtualMachineInstance": ("kubevirt-swagger.json", "v1.VirtualMachineInstance"),
    "VirtualMachineSnapshot": ("kubevirt-swagger.json", "v1beta1.VirtualMachineSnapshot"),
    "VirtualMachineExport": ("kubevirt-swagger.json", "v1.VirtualMachineExport"),
    "DataVolume": ("cdi-swagger.json", "v1beta1.DataVolume"),
    "UploadTokenRequest": ("cdi-swagger.json", "v1beta1.UploadTokenRequest"),
    "VirtualMachineBackup": ("kubevirt-swagger.json", "v1alpha1.VirtualMachineBackup"),
}
_REF = {
    "type": "object",
    "required": ["kind", "name"],
    "additionalProperties": False,
    "properties": {"apiGroup": {"type": "string"}, "kind": {"type": "string"}, "name": {"type": "string"}},
}  # fmt: skip


def _object_schema(spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    """A namespaced kind's schema with unknown fields refused: ``spec`` (whose ``source``
    is required) and ``status`` properties."""
    closed = {"type": "object", "additionalProperties": False}
    return {
        **closed,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {**closed, "required": ["source"], "properties": spec},
            "status": {**closed, "properties": status},
        },
    }


#: VirtualMachineBackupTracker as KubeVirt's Go API types declare it
#: (staging/src/kubevirt.io/api/backup/v1alpha1/types.go): the published OpenAPI
#: document lacks it.  Unknown fields are refused, as for the documents' kinds.
TRACKER_SCHEMA = _object_schema(
    {"source": _REF},
    {
        "checkpointRedefinitionRequired": {"type": "boolean"},
        "latestCheckpoint": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "creationTime": {"type": "string"},
                "volumes": {"type": "array", "items": {"type": "object", "additionalProperties": False, "required": ["volumeName"], "properties": {"volumeName": {"type": "string"}, "dataEndpoint": {"type": "string"}, "mapEndpoint": {"type": "string"}}}},
            },
        },
    },
)  # fmt: skip
#: VolumeSnapshot as the CSI external-snapshotter's Go API types declare it
#: (client/apis/volumesnapshot/v1/types.go; not KubeVirt's, so not in its documents).
VOLUME_SNAPSHOT_SCHEMA = _object_schema(
    {
        "source": {"type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1, "properties": {"persistentVolumeClaimName": {"type": "string"}, "volumeSnapshotContentName": {"type": "string"}}},
        "volumeSnapshotClassName": {"type": "string"},
    },
    {
        "boundVolumeSnapshotContentName": {"type": "string"},
        "creationTime": {"type": "string"},
        "readyToUse": {"type": "boolean"},
        "restoreSize": {"type": ["string", "integer"]},
        "error": {"type": "object", "additionalProperties": False, "properties": {"time": {"type": "string"}, "message": {"type": "string"}}},
        "volumeGroupSnapshotName": {"type": "string"},
    },
)  # fmt: skip
#: VolumeGroupSnapshot as the external-snapshotter's Go API types declare it
#: (client/apis/volumegroupsnapshot/v1/types.go).
VOLUME_GROUP_SNAPSHOT_SCHEMA = _object_schema(
    {
        "source": {"type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1, "properties": {"selector": {"type": "object", "additionalProperties": False, "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}, "matchExpressions": {"type": "array"}}}, "volumeGroupSnapshotContentName": {"type": "string"}}},
        "volumeGroupSnapshotClassName": {"type": "string"},
    },
    {
        "boundVolumeGroupSnapshotContentName": {"type": "string"},
        "creationTime": {"type": "string"},
        "readyToUse": {"type": "boolean"},
        "error": {"type": "object", "additionalProperties": False, "properties": {"time": {"type": "string"}, "message": {"type": "string"}}},
    },
)  # fmt: skip
#: The snapshot controller's finalizer on a group's member until the group goes.
IN_GROUP_FINALIZER = "snapshot.storage.kubernetes.io/volumesnapshot-in-group-protection"
#: KubeVirt's finalizer on a VirtualMachineBackup until it has ended.
BACKUP_FINALIZER = "backup.kubevirt.io/vmbackup-protection"
BLOCK = 64 << 10
_ZERO = bytes(BLOCK)


class Kind:
    """One kind as its document's paths name it."""

    def __init__(self, kind: str, group: str, version: str, plural: str, schema: Any) -> None:
        self.kind, self.group, self.version, self.plural = kind, group, version, plural
        self.validator = schema

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def _strict(node: Any) -> Any:
    """The schema with unknown properties refused wherever properties are listed."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def load_kinds(openapi: Path) -> dict[str, Kind]:
    """Each kind of ``KINDS``: group, version and plural from the namespaced collection
    path whose operations answer with its definition (or its List), and a validator."""
    docs = {
        name: json.loads((openapi / name).read_text()) for name in {d for d, _ in KINDS.values()}
    }
    out: dict[str, Kind] = {}
    for kind, (doc_name, definition) in KINDS.items():
        doc = docs[doc_name]
        found = None
        for path, ops in doc["paths"].items():
            parts = path.strip("/").split("/")
            if len(parts) != 6 or parts[0] != "apis" or parts[3] != "namespaces":
                continue
            refs = {
                str(r.get("schema", {}).get("$ref", ""))
                for op in ops.values()
                if isinstance(op, dict)
                for r in (op.get("responses") or {}).values()
            }
            if f"#/definitions/{definition}" in refs or f"#/definitions/{definition}List" in refs:
                found = (parts[1], parts[2], parts[5])
                break
        assert found is not None, f"{kind}: no namespaced collection path in {doc_name}"
        root = {"$ref": f"#/definitions/{definition}", "definitions": _strict(doc["definitions"])}
        validator = jsonschema.Draft4Validator(root, format_checker=None)
        out[kind] = Kind(kind, *found, validator)
    out["VirtualMachineBackupTracker"] = Kind(
        "VirtualMachineBackupTracker",
        "backup.kubevirt.io",
        "v1alpha1",
        "virtualmachinebackuptrackers",
        jsonschema.Draft4Validator(TRACKER_SCHEMA),
    )
    out["VolumeSnapshot"] = Kind(
        "VolumeSnapshot",
        "snapshot.storage.k8s.io",
        "v1",
        "volumesnapshots",
        jsonschema.Draft4Validator(VOLUME_SNAPSHOT_SCHEMA),
    )
    out["VolumeGroupSnapshot"] = Kind(
        "VolumeGroupSnapshot",
        "groupsnapshot.storage.k8s.io",
        "v1",
        "volumegroupsnapshots",
        jsonschema.Draft4Validator(VOLUME_GROUP_SNAPSHOT_SCHEMA),
    )
    return out


def _crd(k: Kind) -> dict[str, Any]:
    open_object = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    meta: dict[str, Any] = {"name": f"{k.plural}.{k.group}"}
    if k.group.endswith(".k8s.io"):
        # A protected group: the API server wants the approval (as the external-
        # snapshotter's own CRDs carry it).
        meta["annotations"] = {
            "api-approved.kubernetes.io": "https://github.com/kubernetes-csi/external-snapshotter"
        }
    return {
        "metadata": meta,
        "spec": {
            "group": k.group,
            "names": {"kind": k.kind, "plural": k.plural, "singular": k.kind.lower()},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": k.version,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": open_object},
                    "subresources": {"status": {}},
                }
            ],
        },
    }


def _certificates(d: Path) -> tuple[Path, Path, str]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "2", "-subj", "/CN=standin-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return d / "srv.crt", d / "srv.key", (d / "ca.crt").read_text()


class StandIn:
    """KubeVirt and CDI for the objects of ``namespaces`` (see the module's docstring)."""

    def __init__(self, api: Any, root: Path, openapi: Path, namespaces: list[str]) -> None:
        self.root = root
        self.kinds = load_kinds(openapi)
        self.namespaces = namespaces
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)
        self._ext = client.ApiextensionsV1Api(api)
        self.errors: list[str] = []
        #: (vm, claims its volumes name) at each start of a VirtualMachineInstance
        self.boots: list[tuple[str, tuple[str, ...]]] = []
        #: (vm, "freeze" | "thaw") as snapshots of running VMs with an agent go
        self.freezes: list[tuple[str, str]] = []
        #: (group snapshot, the PVCs it copied in one step)
        self.group_cuts: list[tuple[str, tuple[str, ...]]] = []
        #: every object name the stand-in saw, by kind (a test checks what was cleaned up)
        self.seen: dict[str, set[str]] = {k: set() for k in self.kinds}
        self._exports: dict[str, tuple[str, dict[str, Path]]] = {}  # path prefix -> token, files
        self._uploads: dict[str, tuple[str, str]] = {}  # token -> namespace, claim
        self._validated: set[tuple[str, str, str]] = set()
        #: Flip one byte of every image uploaded from now on (storage that corrupts data).
        self.corrupt_uploads = False
        #: VMs that do not stop when asked (a guest that ignores the shutdown).
        self.stuck: set[str] = set()
        #: (backup, volume, offset, length) of every read of a backup's data endpoint
        self.backup_reads: list[tuple[str, str, int, int]] = []
        #: path prefix -> (token, {volume: (checkpoint image, base image or None)})
        self._backups: dict[str, tuple[str, dict[str, tuple[Path, Path | None]]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        (root / "pki").mkdir(parents=True)
        cert, key, self.ca_pem = _certificates(root / "pki")
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        self._threads = [
            threading.Thread(target=self._server.serve_forever, daemon=True),
            threading.Thread(target=self._run, daemon=True),
        ]

    @property
    def upload_url(self) -> str:
        return f"{self.url}/v1beta1/upload"

    def disk(self, namespace: str, claim: str) -> Path:
        """The file that holds PVC ``claim``'s image."""
        d = self.root / "pvc" / namespace
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{claim}.img"

    # -- lifecycle

    def __enter__(self) -> StandIn:
        for k in self.kinds.values():
            try:
                self._ext.create_custom_resource_definition(_crd(k))
            except ApiException as exc:
                if exc.status != 409:  # another module's stand-in made it
                    raise
        for k in self.kinds.values():
            for _ in range(100):  # served a moment after it is created
                try:
                    self._custom.list_cluster_custom_object(k.group, k.version, k.plural)
                    break
                except ApiException:
                    time.sleep(0.1)
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        for t in self._threads:
            t.join(timeout=10)

    # -- the controller

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for ns in self.namespaces:
                try:
                    self._pass(ns)
                except Exception as exc:  # the test reports it
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    body = str(getattr(exc, "body", ""))[:300]
                    self.errors.append(f"stand-in pass in {ns}: {exc!r} {body} at {where.lineno}")

    def _list(self, kind: str, ns: str) -> list[dict[str, Any]]:
        k = self.kinds[kind]
        items = self._custom.list_namespaced_custom_object(k.group, k.version, ns, k.plural)
        for obj in items["items"]:
            self._validate(kind, obj)
        return list(items["items"])

    def _validate(self, kind: str, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        key = (kind, meta["name"], meta["resourceVersion"])
        if key in self._validated:
            return
        self._validated.add(key)
        self.seen[kind].add(meta["name"])
        # A status is the server's to fill (UploadTokenRequest's definition requires one,
        # which CDI's API answers the create with): a client's object comes without.
        for e in self.kinds[kind].validator.iter_errors({"status": {}, **obj}):
            where = "/".join(str(p) for p in e.absolute_path)
            self.errors.append(f"{kind} {meta['name']}: {where}: {e.message}")

    def _status(self, kind: str, obj: dict[str, Any], status: dict[str, Any]) -> None:
        k = self.kinds[kind]
        body = {**obj, "status": status}
        self._custom.replace_namespaced_custom_object_status(
            k.group,
            k.version,
            obj["metadata"]["namespace"],
            k.plural,
            obj["metadata"]["name"],
            body,
        )

    def _pass(self, ns: str) -> None:
        vms = {vm["metadata"]["name"]: vm for vm in self._list("VirtualMachine", ns)}
        vmis = {v["metadata"]["name"]: v for v in self._list("VirtualMachineInstance", ns)}
        for name, vm in vms.items():
            spec = vm["spec"]
            run = spec.get("running", spec.get("runStrategy", "Always") == "Always")
            if run and name not in vmis:
                self._start(ns, vm)
            elif not run and name in vmis and name not in self.stuck:
                self._delete("VirtualMachineInstance", ns, name)
        for dv in self._list("DataVolume", ns):
            if not dv.get("status"):
                upload = "upload" in (dv["spec"].get("source") or {})
                if upload:
                    self.disk(ns, dv["metadata"]["name"]).write_bytes(b"")
                phase = "UploadReady" if upload else "Succeeded"
                claim = dv["metadata"]["name"]
                self._status("DataVolume", dv, {"phase": phase, "claimName": claim})
        for req in self._list("UploadTokenRequest", ns):
            if not req.get("status"):
                token = secrets.token_urlsafe(24)
                with self._lock:
                    self._uploads[token] = (ns, req["spec"]["pvcName"])
                self._status("UploadTokenRequest", req, {"token": token})
        for snap in self._list("VirtualMachineSnapshot", ns):
            if not snap.get("status"):
                self._snapshot(ns, snap, vms, vmis)
        groups = {g["metadata"]["name"]: g for g in self._list("VolumeGroupSnapshot", ns)}
        for group in groups.values():
            if not group.get("status"):
                self._group_snapshot(ns, group)
        for snap in self._list("VolumeSnapshot", ns):
            meta = snap["metadata"]
            # A member goes only once its group is gone (the controller refuses before).
            in_group = (snap.get("status") or {}).get("volumeGroupSnapshotName") in groups
            if meta.get("deletionTimestamp") and IN_GROUP_FINALIZER in meta.get("finalizers", ()):
                if in_group:
                    continue
                finalizers = [f for f in meta["finalizers"] if f != IN_GROUP_FINALIZER]
                k = self.kinds["VolumeSnapshot"]
                patch = {"metadata": {"finalizers": finalizers}}
                self._custom.patch_namespaced_custom_object(k.group, k.version, ns, k.plural, meta["name"], patch)  # fmt: skip
            elif not snap.get("status"):
                self._volume_snapshot(ns, snap)
        for pvc in self._core.list_namespaced_persistent_volume_claim(ns).items:
            source = pvc.spec.data_source
            if source is not None and source.kind == "VolumeSnapshot":
                self._restore_claim(ns, pvc.metadata.name, source.name)
        exports = self._list("VirtualMachineExport", ns)
        live = {f"/{ns}/{e['metadata']['name']}/" for e in exports}
        with self._lock:
            for prefix in [p for p in self._exports if p.startswith(f"/{ns}/")]:
                if prefix not in live:
                    del self._exports[prefix]
        for export in exports:
            if (export.get("status") or {}).get("phase") != "Ready":
                self._export(ns, export, vmis)
        trackers = {t["metadata"]["name"]: t for t in self._list("VirtualMachineBackupTracker", ns)}
        for backup in self._list("VirtualMachineBackup", ns):
            if backup["metadata"].get("deletionTimestamp"):
                self._end_backup(ns, backup, trackers)
            elif not backup.get("status"):
                self._start_backup(ns, backup, vms, vmis, trackers)

    def _start(self, ns: str, vm: dict[str, Any]) -> None:
        name = vm["metadata"]["name"]
        claims = tuple(_claims(vm).values())
        self.boots.append((name, claims))
        k = self.kinds["VirtualMachineInstance"]
        body = {
            "apiVersion": k.api_version,
            "kind": k.kind,
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "domain": {"devices": {}},
                "volumes": vm["spec"]["template"]["spec"]["volumes"],
            },
        }
        made = self._custom.create_namespaced_custom_object(k.group, k.version, ns, k.plural, body)
        self._status("VirtualMachineInstance", made, {"phase": "Running"})

    def _delete(self, kind: str, ns: str, name: str) -> None:
        k = self.kinds[kind]
        self._custom.delete_namespaced_custom_object(k.group, k.version, ns, k.plural, name)

    def _snapshot(
        self, ns: str, snap: dict[str, Any], vms: Mapping[str, Any], vmis: Mapping[str, Any]
    ) -> None:
        source = snap["spec"]["source"]
        vm = vms.get(source["name"])
        if source.get("kind") != "VirtualMachine" or vm is None:
            return  # KubeVirt waits for the VM too
        online = source["name"] in vmis
        agent = vm["metadata"].get("annotations", {}).get("standin/guest-agent") != "false"
        said = ["Online", "GuestAgent" if agent else "NoGuestAgent"] if online else []
        frozen = online and agent
        if frozen:
            self.freezes.append((source["name"], "freeze"))
        folder = self.root / "snapshots" / ns / snap["metadata"]["name"]
        folder.mkdir(parents=True)
        try:
            for claim in _claims(vm).values():
                subprocess.run(
                    ["cp", "--sparse=always", str(self.disk(ns, claim)), str(folder / claim)],
                    check=True,
                )
        finally:
            if frozen:
                self.freezes.append((source["name"], "thaw"))
        now = _now()
        self._status(
            "VirtualMachineSnapshot",
            snap,
            {
                "phase": "Succeeded",
                "readyToUse": True,
                "creationTime": now,
                "sourceUID": vm["metadata"]["uid"],
                "sourceIndications": [{"indication": i, "message": f"stand-in: {i}"} for i in said],
                "indications": said,
            },
        )

    def _volume_snapshot(self, ns: str, snap: dict[str, Any]) -> None:
        claim = snap["spec"]["source"].get("persistentVolumeClaimName")
        image = self.disk(ns, claim) if claim else None
        if image is None or not image.exists():
            return  # the snapshot controller waits for the PVC too
        folder = self.root / "volume-snapshots" / ns
        folder.mkdir(parents=True, exist_ok=True)
        copy = folder / snap["metadata"]["name"]
        subprocess.run(["cp", "--sparse=always", str(image), str(copy)], check=True)
        status = _snapshot_ready(copy, f"snapcontent-{snap['metadata']['uid']}")
        self._status("VolumeSnapshot", snap, status)

    def _group_snapshot(self, ns: str, group: dict[str, Any]) -> None:
        """The PVCs ``matchLabels`` selects copied in one step, then a member VolumeSnapshot
        per PVC as the external-snapshotter's controller makes it (its name from the
        group's uid and the volume, the group its owner, the in-group finalizer)."""
        selector = group["spec"]["source"].get("selector") or {}
        if selector.get("matchExpressions"):
            self.errors.append("VolumeGroupSnapshot: matchExpressions are not played")
        labels = ",".join(f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items())
        pvcs = self._core.list_namespaced_persistent_volume_claim(ns, label_selector=labels).items
        claims = sorted(p.metadata.name for p in pvcs)
        if not claims or not all(self.disk(ns, c).exists() for c in claims):
            return  # the controller waits for the PVCs too
        name, uid = group["metadata"]["name"], group["metadata"]["uid"]
        folder = self.root / "volume-snapshots" / ns
        folder.mkdir(parents=True, exist_ok=True)
        members = {c: "snapshot-" + hashlib.sha256((uid + c).encode()).hexdigest() for c in claims}
        with self._lock:  # every disk in one step, as one cut
            for claim, member in members.items():
                subprocess.run(["cp", "--sparse=always", str(self.disk(ns, claim)), str(folder / member)], check=True)  # fmt: skip
        self.group_cuts.append((name, tuple(claims)))
        k = self.kinds["VolumeSnapshot"]
        owner = {"apiVersion": group["apiVersion"], "kind": "VolumeGroupSnapshot", "name": name, "uid": uid}  # fmt: skip
        for claim, member in members.items():
            body = {
                "apiVersion": k.api_version,
                "kind": k.kind,
                "metadata": {"name": member, "namespace": ns, "ownerReferences": [owner], "finalizers": [IN_GROUP_FINALIZER]},
                "spec": {"source": {"persistentVolumeClaimName": claim}},
            }  # fmt: skip
            made = self._custom.create_namespaced_custom_object(k.group, k.version, ns, k.plural, body)  # fmt: skip
            content = "snapcontent-" + member.removeprefix("snapshot-")
            status = _snapshot_ready(folder / member, content, volumeGroupSnapshotName=name)
            self._status("VolumeSnapshot", made, status)
        status = {"boundVolumeGroupSnapshotContentName": f"groupsnapcontent-{uid}", "creationTime": _now(), "readyToUse": True}  # fmt: skip
        self._status("VolumeGroupSnapshot", group, status)

    def _disk_image(self, ns: str, claim: str) -> bool:
        """Whether KubeVirt's export takes PVC ``claim`` for a disk image (its
        ``isKubevirtContentType``): Block mode, CDI's content type ``kubevirt`` (or empty),
        or a DataVolume's.  The stand-in's DataVolumes have no PVC objects: theirs are."""
        try:
            pvc = self._core.read_namespaced_persistent_volume_claim(claim, ns)
        except ApiException:
            return True  # a DataVolume's disk
        annotations = pvc.metadata.annotations or {}
        owners = [o for o in pvc.metadata.owner_references or () if o.controller]
        return (
            pvc.spec.volume_mode == "Block"
            or annotations.get("cdi.kubevirt.io/storage.contentType") in ("kubevirt", "")
            or any(o.kind == "DataVolume" for o in owners)
        )

    def _restore_claim(self, ns: str, claim: str, snapshot: str) -> None:
        """A PVC restored from a VolumeSnapshot gets the snapshot's copy, once; its spec
        must be what a CSI driver restores: the snapshot's size at least, and the source
        PVC's storage class and volume mode."""
        image = self.disk(ns, claim)
        copy = self.root / "volume-snapshots" / ns / snapshot
        if image.exists() or not copy.exists():
            return
        self._check_restored(ns, claim, snapshot)
        part = image.with_suffix(".part")
        subprocess.run(["cp", "--sparse=always", str(copy), str(part)], check=True)
        part.rename(image)

    def _check_restored(self, ns: str, claim: str, snapshot: str) -> None:
        pvc = self._core.read_namespaced_persistent_volume_claim(claim, ns)
        k = self.kinds["VolumeSnapshot"]
        snap = self._custom.get_namespaced_custom_object(k.group, k.version, ns, k.plural, snapshot)
        source = self._core.read_namespaced_persistent_volume_claim(
            snap["spec"]["source"]["persistentVolumeClaimName"], ns
        )
        asked = parse_bytes(pvc.spec.resources.requests["storage"])
        if asked < int(snap["status"]["restoreSize"]):
            self.errors.append(f"PVC {claim}: {asked} bytes, less than its snapshot's restoreSize")
        if asked < parse_bytes(source.spec.resources.requests["storage"]):
            self.errors.append(f"PVC {claim}: {asked} bytes, less than the PVC it was taken of")
        for field in ("storage_class_name", "volume_mode", "access_modes"):
            if getattr(pvc.spec, field) != getattr(source.spec, field):
                self.errors.append(f"PVC {claim}: {field} differs from the PVC it was taken of")

    def _export(self, ns: str, export: dict[str, Any], vmis: Mapping[str, Any]) -> None:
        name = export["metadata"]["name"]
        spec = export["spec"]
        try:
            secret = self._core.read_namespaced_secret(spec["tokenSecretRef"], ns)
        except ApiException:
            return  # KubeVirt waits for the token Secret too
        token = _b64(secret.data["token"])
        source = spec["source"]
        files: dict[str, Path] = {}
        if source["kind"] == "PersistentVolumeClaim":
            in_use = {c for v in vmis.values() for c in _claims_of(v["spec"]).values()}
            if source["name"] in in_use:
                self._status("VirtualMachineExport", export, {"phase": "Pending"})
                return
            files[source["name"]] = self.disk(ns, source["name"])
            if not files[source["name"]].exists():
                return  # a PVC still being restored from a snapshot: KubeVirt waits
            if not self._disk_image(ns, source["name"]):
                # KubeVirt serves such a PVC as a directory (dir, tar.gz), never raw.
                self._status("VirtualMachineExport", export, {"phase": "Ready", "serviceName": f"virt-export-{name}", "tokenSecretRef": spec["tokenSecretRef"], "links": {"internal": {"cert": self.ca_pem, "volumes": [{"name": source["name"], "formats": [{"format": "dir", "url": f"{self.url}/{ns}/{name}/dir/"}]}]}}})  # fmt: skip
                return
        elif source["kind"] == "VirtualMachineSnapshot":
            folder = self.root / "snapshots" / ns / source["name"]
            if not folder.is_dir():
                return
            files = {f"{name}-{p.name}": p for p in sorted(folder.iterdir())}
        else:
            self.errors.append(f"VirtualMachineExport {name}: source {source} not played")
            return
        prefix = f"/{ns}/{name}/"
        with self._lock:
            self._exports[prefix] = (token, files)
        volumes = [
            {
                "name": vol,
                "formats": [{"format": "raw", "url": f"{self.url}{prefix}volumes/{vol}/disk.img"}],
            }
            for vol in files
        ]
        self._status(
            "VirtualMachineExport",
            export,
            {
                "phase": "Ready",
                "serviceName": f"virt-export-{name}",
                "tokenSecretRef": spec["tokenSecretRef"],
                "links": {"internal": {"cert": self.ca_pem, "volumes": volumes}},
            },
        )

    def forget_checkpoints(self, ns: str) -> None:
        """The VMs' changed-block bitmaps are lost (a crash): every kept checkpoint goes."""
        shutil.rmtree(self.root / "checkpoints" / ns, ignore_errors=True)

    def _start_backup(
        self,
        ns: str,
        backup: dict[str, Any],
        vms: Mapping[str, Any],
        vmis: Mapping[str, Any],
        trackers: Mapping[str, Any],
    ) -> None:
        name, spec = backup["metadata"]["name"], backup["spec"]
        source = spec["source"]
        if source.get("kind") != "VirtualMachineBackupTracker" or spec.get("mode") != "Pull":
            self.errors.append(
                f"VirtualMachineBackup {name}: {source} / {spec.get('mode')} not played"
            )
            return
        tracker = trackers.get(source["name"])
        if tracker is None:
            return  # KubeVirt waits for the tracker (Initializing)
        vm_name = tracker["spec"]["source"]["name"]
        try:  # as KubeVirt, it waits for its scratch PVC and token Secret
            self._core.read_namespaced_persistent_volume_claim(spec["pvcName"], ns)
            secret = self._core.read_namespaced_secret(spec["tokenSecretRef"], ns)
        except ApiException:
            return
        if vm_name not in vmis:
            return  # only a running VM is backed up; KubeVirt waits for it
        vm = vms[vm_name]
        # KubeVirt's finalizer: the backup ends (and the tracker moves) before it is gone.
        k = self.kinds["VirtualMachineBackup"]
        backup = self._custom.patch_namespaced_custom_object(
            k.group, k.version, ns, k.plural, name, {"metadata": {"finalizers": [BACKUP_FINALIZER]}}
        )
        latest = ((tracker.get("status") or {}).get("latestCheckpoint") or {}).get("name")
        kept = self.root / "checkpoints" / ns
        if latest and not (kept / latest).is_dir():
            # Bitmaps lost: KubeVirt drops the tracker's checkpoint, the backup is full.
            self._status("VirtualMachineBackupTracker", tracker, {})
            latest = None
        incremental = bool(latest) and not spec.get("forceFullBackup")
        checkpoint = f"{name}-checkpoint"
        agent = vm["metadata"].get("annotations", {}).get("standin/guest-agent") != "false"
        if agent:
            self.freezes.append((vm_name, "freeze"))
        (kept / checkpoint).mkdir(parents=True)
        try:
            for claim in _claims(vm).values():
                subprocess.run(
                    ["cp", "--sparse=always", str(self.disk(ns, claim)), str(kept / checkpoint / claim)],
                    check=True,
                )  # fmt: skip
        finally:
            if agent:
                self.freezes.append((vm_name, "thaw"))
        prefix = f"/{ns}/{name}/backup/"
        files = {
            vol: (kept / checkpoint / claim, kept / str(latest) / claim if incremental else None)
            for vol, claim in _claims(vm).items()
        }
        with self._lock:
            self._backups[prefix] = (_b64(secret.data["token"]), files)
        now = _now()
        quiesced = {"type": "Quiesced", "status": "True" if agent else "False", "reason": "QuiesceSucceeded" if agent else "QuiesceFailed", "message": "stand-in", "lastTransitionTime": now}  # fmt: skip
        ready = {"type": "Progressing", "status": "True", "reason": "ExportReady", "message": "stand-in: export ready", "lastTransitionTime": now}  # fmt: skip
        self._status(
            "VirtualMachineBackup",
            backup,
            {
                "type": "Incremental" if incremental else "Full",
                "checkpointName": checkpoint,
                "endpointCert": self.ca_pem,
                "conditions": [ready, quiesced],
                "includedVolumes": [
                    {
                        "volumeName": vol,
                        "mapEndpoint": f"{self.url}{prefix}{vol}/map",
                        "dataEndpoint": f"{self.url}{prefix}{vol}/data",
                    }
                    for vol in files
                ],
            },
        )

    def _end_backup(self, ns: str, backup: dict[str, Any], trackers: Mapping[str, Any]) -> None:
        """A pull-mode backup ends when its object is deleted: Complete, the tracker on its
        checkpoint, the finalizer removed."""
        name = backup["metadata"]["name"]
        if BACKUP_FINALIZER not in (backup["metadata"].get("finalizers") or ()):
            return
        status = backup.get("status") or {}
        with self._lock:
            self._backups.pop(f"/{ns}/{name}/backup/", None)
        tracker = trackers.get(backup["spec"]["source"]["name"])
        if tracker is not None and status.get("checkpointName"):
            now = _now()
            latest = {"name": status["checkpointName"], "creationTime": now, "volumes": [{"volumeName": v["volumeName"]} for v in status.get("includedVolumes") or ()]}  # fmt: skip
            self._status("VirtualMachineBackupTracker", tracker, {"latestCheckpoint": latest})
        done = {"type": "Progressing", "status": "False", "reason": "Completed", "message": "stand-in", "lastTransitionTime": status.get("conditions", [{}])[0].get("lastTransitionTime", "")}  # fmt: skip
        self._status("VirtualMachineBackup", backup, {**status, "conditions": [done]})
        k = self.kinds["VirtualMachineBackup"]
        self._custom.patch_namespaced_custom_object(
            k.group,
            k.version,
            ns,
            k.plural,
            name,
            {"metadata": {"finalizers": None}},
        )

    def backup_answer(
        self, path: str, query: Mapping[str, str], token: str | None
    ) -> tuple[int, bytes]:
        """A backup's ``map`` or ``data`` endpoint (KubeVirt's export server's)."""
        with self._lock:
            found = [(p, t, f) for p, (t, f) in self._backups.items() if path.startswith(p)]
        if not found:
            return 404, b""
        prefix, want, files = found[0]
        vol, _, endpoint = path[len(prefix) :].partition("/")
        if token != want:
            return 401, b""
        if vol not in files:
            return 404, b""
        image, base = files[vol]
        offset = int(query.get("offset", "0"))
        size = image.stat().st_size
        if endpoint == "data":
            length = int(query.get("length", "0")) or size - offset
            self.backup_reads.append((prefix, vol, offset, length))
            with image.open("rb") as f:
                f.seek(offset)
                return 200, f.read(length)
        if endpoint != "map":
            return 404, b""
        page = int(query.get("page_size", "64"))
        extents = [e for e in _map(image, base) if e["offset"] >= offset]
        body = {
            "extents": extents[:page],
            "next_offset": extents[page]["offset"] if len(extents) > page else None,
        }
        return 200, json.dumps(body).encode()

    # -- HTTP

    def export_file(self, path: str, token: str | None) -> tuple[int, Path | None]:
        with self._lock:
            for prefix, (want, files) in self._exports.items():
                if path.startswith(prefix):
                    vol = path[len(prefix) :].removeprefix("volumes/").removesuffix("/disk.img")
                    if token != want:
                        return 401, None
                    return (200, files[vol]) if vol in files else (404, None)
        return 404, None

    def upload(self, token: str, body: Iterator[bytes]) -> int:
        with self._lock:
            target = self._uploads.pop(token, None)
        if target is None:
            return 401
        ns, claim = target
        k = self.kinds["DataVolume"]
        dv = self._custom.get_namespaced_custom_object(k.group, k.version, ns, k.plural, claim)
        if (dv.get("status") or {}).get("phase") != "UploadReady":
            return 400
        _write_sparse(self.disk(ns, claim), _gunzipped(body))
        if self.corrupt_uploads:
            with self.disk(ns, claim).open("r+b") as f:
                f.seek(12345)
                flipped = f.read(1)[0] ^ 0xFF
                f.seek(12345)
                f.write(bytes([flipped]))
        self._status(
            "DataVolume", dv, {"phase": "Succeeded", "claimName": claim, "progress": "100.0%"}
        )
        return 200


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _snapshot_ready(copy: Path, content: str, **more: str) -> dict[str, Any]:
    """A VolumeSnapshot's status once its ``copy`` is made: bound to ``content``, ready
    to use, as large as the copy."""
    return {
        "boundVolumeSnapshotContentName": content,
        "creationTime": _now(),
        "readyToUse": True,
        "restoreSize": str(copy.stat().st_size),
        **more,
    }


def _claims(vm: Mapping[str, Any]) -> dict[str, str]:
    """``volume -> PVC`` of a VM's DataVolume and PVC volumes."""
    return _claims_of(vm["spec"]["template"]["spec"])


def _claims_of(spec: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in spec.get("volumes") or ():
        if "dataVolume" in v:
            out[v["name"]] = v["dataVolume"]["name"]
        elif "persistentVolumeClaim" in v:
            out[v["name"]] = v["persistentVolumeClaim"]["claimName"]
    return out


def _map(image: Path, base: Path | None) -> list[dict[str, Any]]:
    """Coalesced 64 KiB extents as KubeVirt's export server describes them: for a full
    backup data (0) or zero (2); for an incremental clean (0), dirty (1), zero (2) or
    dirty,zero (3), dirty where the block differs from the base checkpoint's."""
    names = {0: "clean", 1: "dirty", 2: "zero", 3: "dirty,zero"} if base else {0: "data", 2: "zero"}
    data, before = image.read_bytes(), base.read_bytes() if base else b""
    out: list[dict[str, Any]] = []
    for offset in range(0, len(data), BLOCK):
        block = data[offset : offset + BLOCK]
        flags = 2 if block == _ZERO[: len(block)] else 0
        if base is not None and before[offset : offset + BLOCK].ljust(len(block), b"\0") != block:
            flags |= 1
        if out and out[-1]["type"] == flags:
            out[-1]["length"] += len(block)
        else:
            out.append(
                {"offset": offset, "length": len(block), "type": flags, "description": names[flags]}
            )
    return out


def _b64(text: str) -> str:
    return base64.b64decode(text).decode()


def _gunzipped(body: Iterator[bytes]) -> Iterator[bytes]:
    """The body as sent, or decompressed if it starts as gzip (CDI detects it so too)."""
    first = b""
    for chunk in body:
        first += chunk
        if len(first) >= 2:
            break
    if not first.startswith(b"\x1f\x8b"):
        yield first
        yield from body
        return
    d = zlib.decompressobj(31)
    yield d.decompress(first)
    for chunk in body:
        while chunk:
            yield d.decompress(chunk, 4 << 20)
            chunk = d.unconsumed_tail
    yield d.flush()
    assert d.eof, "truncated gzip upload"


def _write_sparse(path: Path, data: Iterator[bytes]) -> None:
    """Write ``data`` to ``path``, seeking over all-zero blocks (as CDI writes sparse)."""
    pos = 0
    pending = b""
    with path.open("wb") as f:

        def put(buf: bytes) -> None:
            nonlocal pos
            for i in range(0, len(buf), BLOCK):
                block = buf[i : i + BLOCK]
                if block != _ZERO[: len(block)]:
                    f.seek(pos)
                    f.write(block)
                pos += len(block)

        for chunk in data:
            pending += chunk
            whole = len(pending) // BLOCK * BLOCK
            put(pending[:whole])
            pending = pending[whole:]
        put(pending)
        f.truncate(pos)


def _handler(standin: StandIn) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            if "/backup/" in path:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                status, body = standin.backup_answer(
                    path, query, self.headers.get("x-kubevirt-export-token")
                )
                self._answer(status, body)
                return
            status, file = standin.export_file(path, self.headers.get("x-kubevirt-export-token"))
            if file is None:
                self._answer(status, b"")
                return
            size = file.stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with file.open("rb") as f:
                shutil.copyfileobj(f, self.wfile, 1 << 20)

        def do_POST(self) -> None:
            if urllib.parse.urlsplit(self.path).path != "/v1beta1/upload":
                self._answer(404, b"")
                return
            auth = self.headers.get("Authorization", "")
            token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
            try:
                status = standin.upload(token, self._body())
            except Exception as exc:  # reported as CDI would, and to the test
                standin.errors.append(f"upload: {exc!r}")
                status = 500
            self._answer(status, b"")

        def _body(self) -> Iterator[bytes]:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return
                    yield self.rfile.read(size)
                    self.rfile.readline()
            else:
                left = int(self.headers.get("Content-Length", "0"))
                while left:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        return
                    left -= len(chunk)
                    yield chunk

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
