"""KubeVirt's and CDI's objects in one tenant namespace, through the Kubernetes API as the
worker's ServiceAccount (in a Pod: its mounted token; elsewhere ``$KUBECONFIG``).

Every refusal of the API server becomes a :class:`DriverError` whose tenant message names
no object, and whose admin detail says which call failed and why (a 403 is a missing rule
of the worker's ClusterRole: see the README's "On Kubernetes" table).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs

from cozybackup_core import Deadline, DriverError

#: Objects the driver makes carry this label, so an operator can find any left behind.
LABELS = {"app.kubernetes.io/managed-by": "cozybackup"}
#: How an operator finds what a failed cleanup left.
_LEFT = (
    "delete it by hand; what the driver makes is labelled app.kubernetes.io/managed-by=cozybackup"
)
#: Seconds between two reads of an object a step waits on.
POLL_SECONDS = 0.5
#: Seconds for connect and read of every API call.
_TIMEOUT = (5.0, 30.0)


@attrs.frozen
class Kind:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


VM = Kind("kubevirt.io", "v1", "virtualmachines", "VirtualMachine")
VMI = Kind("kubevirt.io", "v1", "virtualmachineinstances", "VirtualMachineInstance")
SNAPSHOT = Kind(
    "snapshot.kubevirt.io", "v1beta1", "virtualmachinesnapshots", "VirtualMachineSnapshot"
)
EXPORT = Kind("export.kubevirt.io", "v1", "virtualmachineexports", "VirtualMachineExport")
#: Versions of export.kubevirt.io this driver speaks (v1beta1: KubeVirt before v1 was
#: served; the fields it uses are the same), the newest first.
EXPORT_VERSIONS = ("v1", "v1beta1")
#: KubeVirt's changed-block-tracking backups (1.8 and later, alpha): a pull-mode backup
#: of a running VM, and the tracker that keeps the checkpoint the next one starts from.
VM_BACKUP = Kind("backup.kubevirt.io", "v1alpha1", "virtualmachinebackups", "VirtualMachineBackup")
TRACKER = Kind(
    "backup.kubevirt.io", "v1alpha1", "virtualmachinebackuptrackers", "VirtualMachineBackupTracker"
)
#: A CSI snapshot of a PVC (the external-snapshotter's API), where KubeVirt's are not used.
VOLUME_SNAPSHOT = Kind("snapshot.storage.k8s.io", "v1", "volumesnapshots", "VolumeSnapshot")
#: CSI snapshots of several PVCs cut at one moment; the snapshot controller makes one
#: VolumeSnapshot per PVC, owned by the group.
VOLUME_GROUP_SNAPSHOT = Kind(
    "groupsnapshot.storage.k8s.io", "v1", "volumegroupsnapshots", "VolumeGroupSnapshot"
)
#: Versions of groupsnapshot.storage.k8s.io this driver speaks, the newest first: the
#: fields it uses are the same in each (members found by their owner, since v1beta1).
GROUP_SNAPSHOT_VERSIONS = ("v1", "v1beta2", "v1beta1")
#: CDI's annotation saying what a PVC holds (``kubevirt``: a disk image).
CONTENT_TYPE = "cdi.kubevirt.io/storage.contentType"
DATA_VOLUME = Kind("cdi.kubevirt.io", "v1beta1", "datavolumes", "DataVolume")
UPLOAD_TOKEN = Kind(
    "upload.cdi.kubevirt.io", "v1beta1", "uploadtokenrequests", "UploadTokenRequest"
)


class Cluster:
    """The objects of ``namespace``; every call bounded by ``deadline``.  Deletions are
    cleanup: they never raise (a failure goes to ``log`` for the operator, with the
    object's name and the label it carries), so they cannot hide what happened before."""

    def __init__(
        self, namespace: str, deadline: Deadline, log: logging.Logger | None = None
    ) -> None:
        from kubernetes import client, config  # type: ignore[import-untyped, import-not-found, unused-ignore]

        cfg = client.Configuration()
        with _refused("load the worker's Kubernetes credentials"):
            if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
                config.load_incluster_config(client_configuration=cfg)
            else:
                config.load_kube_config(client_configuration=cfg)
        self.namespace = namespace
        self.deadline = deadline
        self.log = log or logging.getLogger(__name__)
        self._api = client.ApiClient(cfg)
        self._custom = client.CustomObjectsApi(self._api)
        self._core = client.CoreV1Api(self._api)

    def close(self) -> None:
        self._api.close()

    def get(self, kind: Kind, name: str) -> dict[str, Any] | None:
        with _refused(f"read {kind.kind} {name}", missing_ok=True) as found:
            found.append(
                self._custom.get_namespaced_custom_object(
                    kind.group, kind.version, self.namespace, kind.plural, name, **self._timeout()
                )
            )
        return found[0] if found else None

    def items(self, kind: Kind) -> list[dict[str, Any]]:
        with _refused(f"list {kind.plural}"):
            items = self._custom.list_namespaced_custom_object(
                kind.group, kind.version, self.namespace, kind.plural, **self._timeout()
            )["items"]
        return list(items)

    def create(self, kind: Kind, name: str, spec: Mapping[str, Any], **meta: Any) -> dict[str, Any]:
        body = {
            "apiVersion": kind.api_version,
            "kind": kind.kind,
            "metadata": {"name": name, "namespace": self.namespace, **meta},
            "spec": dict(spec),
        }
        with _refused(f"create {kind.kind} {name}"):
            made: dict[str, Any] = self._custom.create_namespaced_custom_object(
                kind.group, kind.version, self.namespace, kind.plural, body, **self._timeout()
            )
        return made

    def delete(self, kind: Kind, name: str) -> bool:
        """Cleanup: runs past the job's deadline too; whether it was deleted (or gone)."""
        try:
            with _refused(f"delete {kind.kind} {name}", missing_ok=True):
                self._custom.delete_namespaced_custom_object(
                    kind.group,
                    kind.version,
                    self.namespace,
                    kind.plural,
                    name,
                    propagation_policy="Background",
                    **self._timeout(cleanup=True),
                )
        except DriverError as exc:
            self.log.error("left behind: %s (%s)", exc.admin_detail, _LEFT)
            return False
        return True

    def patch(
        self, kind: Kind, name: str, ops: list[dict[str, Any]], *, cleanup: bool = False
    ) -> None:
        """A JSON patch (``test`` operations make it conditional); ``cleanup`` (a VM
        started again) runs past the job's deadline too."""
        with _refused(f"patch {kind.kind} {name}"):
            self._custom.patch_namespaced_custom_object(
                kind.group,
                kind.version,
                self.namespace,
                kind.plural,
                name,
                ops,
                _content_type="application/json-patch+json",
                **self._timeout(cleanup=cleanup),
            )

    def create_secret(self, name: str, data: Mapping[str, str], owner: Mapping[str, Any]) -> None:
        """A Secret owned by ``owner`` (the garbage collector deletes it with that object)."""
        body = {"metadata": _owned(name, owner), "stringData": dict(data)}
        with _refused(f"create Secret {name}"):
            self._core.create_namespaced_secret(self.namespace, body, **self._timeout())

    def create_scratch_claim(
        self, name: str, size: int, storage_class: str | None, owner: Mapping[str, Any]
    ) -> None:
        """A filesystem PVC of ``size`` bytes owned by ``owner`` (deleted with it)."""
        spec: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": str(size)}},
        }
        if storage_class:
            spec["storageClassName"] = storage_class
        body = {"metadata": _owned(name, owner), "spec": spec}
        with _refused(f"create PersistentVolumeClaim {name}"):
            self._core.create_namespaced_persistent_volume_claim(
                self.namespace, body, **self._timeout()
            )

    def config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        with _refused(f"read ConfigMap {namespace}/{name}", missing_ok=True) as found:
            found.append(self._core.read_namespaced_config_map(name, namespace, **self._timeout()))
        return dict(found[0].data or {}) if found else None

    def claim(self, name: str) -> dict[str, Any] | None:
        """PVC ``name`` as a plain mapping (camelCase), or None when there is none."""
        with _refused(f"read PersistentVolumeClaim {name}", missing_ok=True) as found:
            found.append(
                self._core.read_namespaced_persistent_volume_claim(
                    name, self.namespace, **self._timeout()
                )
            )
        claim: dict[str, Any] | None = (
            self._api.sanitize_for_serialization(found[0]) if found else None
        )
        return claim

    def create_claim_from_snapshot(
        self, name: str, snapshot: str, size: str, template: Mapping[str, Any]
    ) -> None:
        """A PVC restored from VolumeSnapshot ``snapshot``: ``size``, and the storage
        class, access modes and volume mode of ``template`` (the disk's own PVC).  Marked
        as a disk image (CDI's content type annotation), which KubeVirt's export wants
        before it serves a filesystem PVC's ``disk.img`` as ``raw``."""
        spec = template.get("spec") or {}
        body = {
            "metadata": {"name": name, "labels": dict(LABELS), "annotations": {CONTENT_TYPE: "kubevirt"}},
            "spec": {
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "volumeMode": spec.get("volumeMode") or "Filesystem",
                "resources": {"requests": {"storage": size}},
                "dataSource": {"apiGroup": VOLUME_SNAPSHOT.group, "kind": VOLUME_SNAPSHOT.kind, "name": snapshot},
                **({"storageClassName": spec["storageClassName"]} if spec.get("storageClassName") else {}),
            },
        }  # fmt: skip
        with _refused(f"create PersistentVolumeClaim {name}"):
            self._core.create_namespaced_persistent_volume_claim(
                self.namespace, body, **self._timeout()
            )

    def label_claim(self, name: str, key: str, value: str | None) -> None:
        """Set label ``key`` of PVC ``name`` (None: take it away)."""
        with _refused(f"label PersistentVolumeClaim {name}"):
            self._core.patch_namespaced_persistent_volume_claim(
                name,
                self.namespace,
                {"metadata": {"labels": {key: value}}},
                _content_type="application/merge-patch+json",
                **self._timeout(cleanup=value is None),
            )

    def unlabel_claim(self, name: str, key: str) -> bool:
        """Cleanup, as :meth:`delete`: label ``key`` taken off PVC ``name``."""
        try:
            self.label_claim(name, key, None)
        except DriverError as exc:
            self.log.error("left behind: %s (remove label %s by hand)", exc.admin_detail, key)
            return False
        return True

    def delete_claim(self, name: str) -> bool:
        """Cleanup, as :meth:`delete`."""
        try:
            with _refused(f"delete PersistentVolumeClaim {name}", missing_ok=True):
                self._core.delete_namespaced_persistent_volume_claim(
                    name, self.namespace, **self._timeout(cleanup=True)
                )
        except DriverError as exc:
            self.log.error("left behind: %s (%s)", exc.admin_detail, _LEFT)
            return False
        return True

    def versions(self, group: str) -> set[str]:
        """The versions of API ``group`` the cluster serves (API discovery, which every
        authenticated user may read)."""
        from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]

        with _refused("discover the API groups"):
            groups = client.ApisApi(self._api).get_api_versions(**self._timeout()).groups
        return {v.version for g in groups or () if g.name == group for v in g.versions}

    def served(
        self,
        kind: Kind,
        versions: tuple[str, ...],
        hint: str = "KubeVirt's VMExport feature gate?",
    ) -> Kind:
        """``kind`` in the first of ``versions`` the cluster serves (``hint``: what the
        operator may be missing, if none)."""
        served = self.versions(kind.group)
        for version in versions:
            if version in served:
                return attrs.evolve(kind, version=version)
        raise DriverError(
            "this cluster does not offer what backing up virtual machines needs; ask the "
            "platform operator",
            admin_detail=f"{kind.group} serves {sorted(served)}, not any of {list(versions)} "
            f"({hint})",
        )

    def wait(
        self,
        what: str,
        kind: Kind,
        name: str,
        ready: Callable[[dict[str, Any]], bool],
        failed: Callable[[dict[str, Any]], str | None] = lambda _: None,
        *,
        gone_ok: bool = False,
    ) -> dict[str, Any] | None:
        """Read ``kind`` ``name`` until ``ready`` says so (None: it is gone and ``gone_ok``);
        ``failed`` returns why it never will be (admin text)."""
        while True:
            obj = self.get(kind, name)
            if obj is None:
                if gone_ok:
                    return None
                raise DriverError(
                    f"{what} failed: an object the platform made for it disappeared",
                    admin_detail=f"{kind.kind} {self.namespace}/{name} is gone",
                )
            if ready(obj):
                return obj
            why = failed(obj)
            if why is not None:
                raise DriverError(
                    f"{what} failed; ask the platform operator",
                    admin_detail=f"{kind.kind} {self.namespace}/{name}: {why}",
                )
            if self.deadline.remaining() < POLL_SECONDS:
                self.deadline.check()
                raise DriverError(
                    f"{what} did not finish before the job's deadline",
                    admin_detail=f"{kind.kind} {self.namespace}/{name}: {obj.get('status')}",
                )
            time.sleep(POLL_SECONDS)

    def _timeout(self, *, cleanup: bool = False) -> dict[str, Any]:
        if not cleanup:
            self.deadline.check()
        return {"_request_timeout": _TIMEOUT}


def _owned(name: str, owner: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata of an object named ``name`` that ``owner`` owns."""
    ref = {k: owner[k] for k in ("apiVersion", "kind")}
    ref.update(name=owner["metadata"]["name"], uid=owner["metadata"]["uid"])
    return {"name": name, "ownerReferences": [ref]}


@contextmanager
def _refused(call: str, *, missing_ok: bool = False) -> Iterator[list[Any]]:
    from kubernetes.client.exceptions import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
        ApiException,
    )
    from kubernetes.config.config_exception import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
        ConfigException,
    )
    from urllib3.exceptions import HTTPError

    found: list[Any] = []
    try:
        yield found
    except ApiException as exc:
        if exc.status == 404 and missing_ok:
            return
        said = f"{call}: HTTP {exc.status} {_message(exc.body)}"
        if exc.status == 403 and "exceeded quota" in said:
            raise DriverError(
                "the namespace's resource quota leaves no room for what this job must create "
                "for a while (a temporary copy of a disk); free some or ask the platform "
                "operator to raise the quota",
                admin_detail=said,
            ) from None
        if exc.status == 403 and "is forbidden: User" in said:
            said += " (a rule missing from the worker's ClusterRole?)"
        raise DriverError(
            "the platform could not reach KubeVirt's API for this virtual machine; ask the "
            "platform operator",
            admin_detail=said,
        ) from None
    except (ConfigException, OSError, HTTPError) as exc:
        raise DriverError(
            "the platform could not reach the Kubernetes API; ask the platform operator",
            admin_detail=f"{call}: {exc!r}",
        ) from None


def _message(body: object) -> str:
    """What the API server said: its Status's message whole (an admission webhook's or
    policy's reason is at its end), else the start of the body."""
    try:
        message = json.loads(str(body)).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message)[:2000] if message else str(body)[:300]


def condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") == kind:
            return c  # type: ignore[no-any-return]
    return None
