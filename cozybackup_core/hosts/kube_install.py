"""The install bundle of the Kubernetes host: every object ``cozybackup controller`` needs.

One source for ``cozybackup install`` and the kustomize base in ``deploy/`` (written by
``cozybackup install --write-kustomize deploy/``, checked against this module by the
tests).  Plain dicts, in the order and with the apiVersions the API server expects.

The platform namespace is baked in where Kubernetes cannot follow a kustomize
``namespace:`` override (the admission policy's exempt user, the controller's flag): a
bundle for another namespace is generated with ``-n``, not patched.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import attrs
import yaml

from .._api.crd import all_crds, plural_of
from .._api.errors import ValidationError
from .._api.fields import LABEL_PATTERN
from .._api.types import APPS_GROUP, GROUP, KINDS, Backup, has_status_subresource
from .._api.version import __version__
from .._engine.admission import TENANT_KINDS
from . import kube_admission

DEFAULT_NAMESPACE = "cozybackup-system"
IMAGE_REPOSITORY = "ghcr.io/cozystack/cozybackup"
#: The name of the controller's ServiceAccount, Role and Deployment.
CONTROLLER = "cozybackup-controller"
SERVICE_ACCOUNT = CONTROLLER
#: The ServiceAccount (and Role) of worker Jobs; ``hosts/kube_workers.py`` names it too.
WORKER = "cozybackup-worker"
#: ``$COZYBACKUP_HOME`` in the pod: an emptyDir (nothing is kept there on Kubernetes).
HOME = "/var/lib/cozybackup"
#: The image's user (numeric, so the kubelet can check ``runAsNonRoot``).
UID = 10001
#: Running jobs finish on SIGTERM before the process exits: give them an hour.
GRACE_SECONDS = 3600
#: /metrics, /healthz and /readyz of the controller (``--metrics-address``).
METRICS_PORT = 9090
#: Cozystack's tenant NetworkPolicies admit traffic from namespaces with this label.
SYSTEM_LABEL = "cozystack.io/system"
#: Cozystack aggregates ClusterRoles with these labels into every tenant's roles.
AGGREGATE_VIEW = "rbac.cozystack.io/aggregate-to-tenant-view"
AGGREGATE_ADMIN = "rbac.cozystack.io/aggregate-to-tenant-admin"
LABELS = {"app.kubernetes.io/name": "cozybackup"}

READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch", "delete"]


def default_image(version: str = __version__) -> str:
    # A local version ("0.1.0+g1a2b") is not a valid tag: "+" becomes "-".
    return f"{IMAGE_REPOSITORY}:{version.replace('+', '-')}"


@attrs.frozen
class Part:
    """One file of the kustomize base: its name, a header saying what it holds, its objects."""

    filename: str
    header: str
    objects: tuple[dict[str, Any], ...]


# ------------------------------------------------------------------------------ RBAC


plural = plural_of


#: Kinds the controller only reads: the admin's (the engine never writes them).
_ADMIN_KINDS = ("BackupClass", "StorageLocation")


def _rule(group: str, resources: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": [group], "resources": list(resources), "verbs": list(verbs)}


def controller_rules() -> list[dict[str, Any]]:
    """Cluster-wide: our kinds, Secrets one by one (a tenant's credentials, by the name
    its application's convention gives: never listed), events, and applications."""
    written = [k for k in KINDS if k not in _ADMIN_KINDS]
    # A Backup has no status subresource (Cozystack's CRD): its status is written whole.
    statuses = [f"{plural(k)}/status" for k in written if has_status_subresource(KINDS[k])]
    return [
        _rule(GROUP, [plural(k) for k in written], [*READ, *WRITE]),
        _rule(GROUP, statuses, ["get", "update", "patch"]),
        _rule(GROUP, [plural(k) for k in _ADMIN_KINDS], READ),
        _rule("", ["secrets"], ["get"]),
        # The Service a convention names, checked before connecting (no ExternalName).
        _rule("", ["services"], ["get"]),
        _rule("", ["events"], ["create", "patch"]),
        _rule(APPS_GROUP, ["*"], READ),
    ]


def controller_namespace_rules() -> list[dict[str, Any]]:
    """In the platform namespace only: the Lease that elects the one active controller
    (read, created, renewed by replacing it); worker Jobs, the per-job Secrets that carry
    an application's location to its worker (patched to be owned by the Job), and the
    workers' Pods and logs."""
    return [
        _rule("batch", ["jobs"], ["create", "get", "list", "watch", "delete"]),
        _rule("", ["secrets"], ["create", "get", "list", "delete", "update", "patch"]),
        _rule("coordination.k8s.io", ["leases"], ["get", "create", "update"]),
        _rule("", ["pods"], READ),
        _rule("", ["pods/log"], ["get"]),
    ]


def worker_rules() -> list[dict[str, Any]]:
    """Cluster-wide, for worker Jobs: read the job, its class, storage and Backup; write
    ArtifactRecords (the artifact's crash-safe record).  Nothing a tenant reads.  Then
    what the KubeVirt driver does in a tenant's namespace (its README's "On Kubernetes")."""
    read = ["BackupJob", "RestoreJob", "Backup", *_ADMIN_KINDS]
    return [
        _rule(GROUP, [plural(k) for k in read], ["get", "list"]),
        _rule(GROUP, [plural("ArtifactRecord")], ["get", "list", *WRITE]),
        _rule(GROUP, [f"{plural('ArtifactRecord')}/status"], ["get", "update", "patch"]),
        *kubevirt_worker_rules(),
    ]


def kubevirt_worker_rules() -> list[dict[str, Any]]:
    """The KubeVirt driver's, in tenants' namespaces: find the VM and its disks, stop and
    start it and point its volumes at restored disks (patch); snapshot and export it, or
    back it up through changed-block tracking (a pull-mode VirtualMachineBackup, its
    tracker, and the scratch PVC KubeVirt needs), or through CSI VolumeSnapshots of its
    disks' PVCs (or one VolumeGroupSnapshot of them: its members listed, the PVCs
    labelled for its selector while it is cut) and PVCs restored from them (read: the
    disk's PVC as their template; delete: the restored ones); the export's and the backup's token
    Secrets, which it makes itself (create only: it reads no tenant Secret);
    upload restored disks through CDI; CDI's upload CA in its ConfigMap."""
    return [
        _rule("kubevirt.io", ["virtualmachines"], ["get", "list", "patch"]),
        _rule("kubevirt.io", ["virtualmachineinstances"], ["get"]),
        _rule("snapshot.kubevirt.io", ["virtualmachinesnapshots"], ["get", "create", "delete"]),
        _rule("export.kubevirt.io", ["virtualmachineexports"], ["get", "create", "delete"]),
        _rule("backup.kubevirt.io", ["virtualmachinebackups"], ["get", "create", "delete"]),
        _rule("backup.kubevirt.io", ["virtualmachinebackuptrackers"], ["get", "create"]),
        _rule("snapshot.storage.k8s.io", ["volumesnapshots"], ["get", "list", "create", "delete"]),
        _rule(
            "groupsnapshot.storage.k8s.io", ["volumegroupsnapshots"], ["get", "create", "delete"]
        ),
        _rule("", ["persistentvolumeclaims"], ["get", "create", "patch", "delete"]),
        _rule("cdi.kubevirt.io", ["datavolumes"], ["get", "create", "delete"]),
        _rule("upload.cdi.kubevirt.io", ["uploadtokenrequests"], ["get", "create"]),
        _rule("", ["secrets"], ["create"]),
        _rule("", ["configmaps"], ["get"]),
    ]


def worker_namespace_rules() -> list[dict[str, Any]]:
    """In the platform namespace: the platform's Secrets (storage credentials, keys) one
    by one, and its own Job, where it reports progress and its outcome."""
    return [
        _rule("", ["secrets"], ["get"]),
        _rule("batch", ["jobs"], ["get", "patch"]),
    ]


def tenant_view_rules() -> list[dict[str, Any]]:
    kinds = [*(cls.kind for cls in TENANT_KINDS), Backup.kind]
    return [_rule(GROUP, [plural(k) for k in kinds], READ)]


def tenant_admin_rules() -> list[dict[str, Any]]:
    return [_rule(GROUP, [plural(cls.kind) for cls in TENANT_KINDS], WRITE)]


def _meta(name: str, namespace: str | None = None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = {**LABELS, **labels}
    return meta


def _role(kind: str, meta: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "rules": rules,
    }


def _binding(
    kind: str, meta: dict[str, Any], role_kind: str, ns: str, account: str = SERVICE_ACCOUNT
) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": meta["name"],
        },
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}],
    }


def controller_rbac(ns: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(SERVICE_ACCOUNT, ns)},
        _role("ClusterRole", _meta("cozybackup:controller"), controller_rules()),
        _binding("ClusterRoleBinding", _meta("cozybackup:controller"), "ClusterRole", ns),
        _role("Role", _meta(CONTROLLER, ns), controller_namespace_rules()),
        _binding("RoleBinding", _meta(CONTROLLER, ns), "Role", ns),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(WORKER, ns)},
        _role("ClusterRole", _meta("cozybackup:worker"), worker_rules()),
        _binding("ClusterRoleBinding", _meta("cozybackup:worker"), "ClusterRole", ns, WORKER),
        _role("Role", _meta(WORKER, ns), worker_namespace_rules()),
        _binding("RoleBinding", _meta(WORKER, ns), "Role", ns, WORKER),
    ]


def tenant_rbac() -> list[dict[str, Any]]:
    """Aggregated into Cozystack's tenant roles.  Never the storage kinds (BackupClass,
    StorageLocation, ArtifactRecord name buckets and paths), never ``/status``, no write
    on Backups (the platform makes them), no Secrets."""
    view = _meta("cozybackup:tenant-view", **{AGGREGATE_VIEW: "true"})
    admin = _meta("cozybackup:tenant-admin", **{AGGREGATE_ADMIN: "true"})
    return [
        _role("ClusterRole", view, tenant_view_rules()),
        _role("ClusterRole", admin, tenant_admin_rules()),
    ]


# ------------------------------------------------------------------------------ workload


def deployment(ns: str, image: str) -> dict[str, Any]:
    """One replica, replaced with Recreate: the old pod finishes its running jobs and
    releases the Lease before the new one starts (the Lease alone would keep two pods from
    both working, with a second one idling for up to the grace period).

    Probes (``docs/metrics.md``): liveness is ``/healthz`` (a leader whose passes stopped
    for five minutes is restarted; a standby is alive), readiness is ``/readyz``
    (recovered and leading).  Prometheus scrapes the ``metrics`` port
    (``deploy/monitoring``'s PodMonitor).
    """
    pod_labels = {**LABELS, "app.kubernetes.io/component": "controller"}
    container = {
        "name": "controller",
        "image": image,
        # Data moves in worker Jobs of the same image.
        "command": [
            "cozybackup",
            "controller",
            "--platform-namespace",
            ns,
            "--data-mover",
            "jobs",
            "--metrics-address",
            f":{METRICS_PORT}",
        ],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": 30,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "metrics"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
        },
        "env": [
            {"name": "COZYBACKUP_HOME", "value": HOME},
            {"name": "COZYBACKUP_WORKER_IMAGE", "value": image},
            {
                "name": "COZYBACKUP_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        # The root filesystem is read-only: the home and the dump tools' temp files
        # live on emptyDirs.
        "volumeMounts": [
            {"name": "home", "mountPath": HOME},
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - a volume of its own
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": CONTROLLER, "namespace": ns, "labels": pod_labels},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": dict(pod_labels)},
            "template": {
                "metadata": {"labels": dict(pod_labels)},
                "spec": {
                    "serviceAccountName": SERVICE_ACCOUNT,
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": UID,
                        "runAsGroup": UID,
                        "fsGroup": UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [{"name": "home", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


# ------------------------------------------------------------------------------ bundle


def check(ns: str, image: str) -> None:
    """Refuse what would make an invalid object, naming the field."""
    problems = []
    if len(ns) > 63 or not re.fullmatch(LABEL_PATTERN, ns):
        rule = "lower case letters, digits and '-', at most 63 characters"
        problems.append(("namespace", f"{ns[:80]!r} is not a namespace name ({rule})"))
    if not image or image.startswith("-") or re.search(r"[\s\x00-\x1f\x7f]", image):
        problems.append(("image", f"{image[:80]!r} is not an image reference"))
    if problems:
        raise ValidationError(problems)


def bundle(ns: str = DEFAULT_NAMESPACE, image: str | None = None) -> list[Part]:
    """The parts of the install, in the order they can be applied."""
    image = default_image() if image is None else image
    check(ns, image)
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": ns, "labels": {**LABELS, SYSTEM_LABEL: "true"}},
    }
    controller_user = f"system:serviceaccount:{ns}:{SERVICE_ACCOUNT}"
    worker_user = f"system:serviceaccount:{ns}:{WORKER}"
    return [
        Part(
            "namespace.yaml",
            f"The platform namespace; {SYSTEM_LABEL}=true lets the controller through "
            "Cozystack's tenant NetworkPolicies.",
            (namespace,),
        ),
        Part("crds.yaml", "The CustomResourceDefinitions (cozybackup crds).", tuple(all_crds())),
        Part(
            "rbac-controller.yaml",
            "The controller's and the worker Jobs' ServiceAccounts, their cluster-wide "
            "rights and those in the platform namespace.",
            tuple(controller_rbac(ns)),
        ),
        Part(
            "rbac-tenant.yaml",
            "What tenants may do, aggregated into Cozystack's tenant roles.",
            tuple(tenant_rbac()),
        ),
        Part(
            "admission.yaml",
            "Reserved backups.cozystack.io/ labels and annotations, and job specs, are the "
            f"platform's (everyone but {controller_user}, {worker_user} and "
            f"{', '.join(kube_admission.EXEMPT_GROUPS)}).",
            (kube_admission.policy([controller_user, worker_user]), kube_admission.binding()),
        ),
        Part(
            "deployment.yaml",
            f"The controller: one replica, Recreate; metrics and probes on port {METRICS_PORT}.",
            (deployment(ns, image),),
        ),
    ]


def objects(parts: list[Part]) -> list[dict[str, Any]]:
    return [obj for part in parts for obj in part.objects]


class _Dumper(yaml.SafeDumper):
    """No anchors (``&id001``: kubectl reads them, people stumble on them); strings of
    several lines (the CEL expressions) as literal blocks, as they were written."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objs: list[dict[str, Any]]) -> str:
    """Multi-document YAML, keys in the order they were built (apiVersion, kind, ...)."""
    return yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False, width=100)


def _comment(text: str) -> str:
    return "".join(f"# {line}\n" for line in textwrap.wrap(text, 88))


def kustomize_files(parts: list[Part]) -> dict[str, str]:
    """``{filename: text}`` of a kustomize base: one file per part and its kustomization."""
    generated = "# Generated by `cozybackup install --write-kustomize`: do not edit.\n"
    files = {p.filename: generated + _comment(p.header) + to_yaml(list(p.objects)) for p in parts}
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [p.filename for p in parts],
    }
    files["kustomization.yaml"] = generated + to_yaml([kustomization])
    return files
