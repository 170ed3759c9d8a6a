"""The Kubernetes host: the engine's port over the Kubernetes API (official ``kubernetes`` client).

What it is:

* **Objects** — every cozybackup kind is a custom object of ``backups.cozystack.io/v1alpha1``
  (the CRDs of ``cozybackup crds``; plural and scope from :func:`~cozybackup_core._crd.crd`).
  Objects go through the one converter (``_wire.dump``/``load``).  ``create`` is a POST
  (the server assigns uid, creationTimestamp and resourceVersion).  A Backup has no status
  subresource, as in Cozystack's CRD: it is created whole, status included, in one call.
  Other kinds' status goes through ``/status``; a POST drops it, so a non-empty one is
  written right after (an ArtifactRecord's: a crash between the two calls leaves one that
  reads as its default status, ``Writing``, which is what it is).  ``update_status`` is a PUT on the ``/status`` subresource carrying
  the object's ``resourceVersion``: an update of a stale object is refused by the server
  (409) and raises :class:`ConflictError`, as does a create of an existing name.
  ``set_metadata`` (labels, annotations) is a JSON merge patch carrying the resourceVersion.
* **Secrets** — ``secret(name)`` reads a core v1 Secret in the *platform* namespace.
* **Applications** — ``locate`` applies the locator of the application's kind, declared by
  the driver that serves it (``Driver.locators``: Cozystack's service address and the Secret
  that holds the credentials, read from the *tenant's* namespace by the controller's
  service account, used in memory and never copied anywhere.  Admins may add or override
  conventions with the ``conventions`` constructor argument.)
* **Local buckets** — a ``provider: Local`` bucket without ``path`` is a directory under
  ``local_bucket_root`` in the controller's pod: durable only on a mounted volume.  Use S3.
* **Events** — core v1 Events in the object's namespace; for cluster-scoped objects in
  ``default``, the only namespace the API server accepts for them (as for Nodes); best
  effort, like client-go's recorder: a failure is logged.
* **Lists** skip (and log) an object the CRD schema admitted but the types refuse (a
  cross-field rule), so one bad object cannot stop every pass; ``get`` raises for it.

* **One active controller** — :meth:`KubeHost.elector`: leader election on a Lease in the
  platform namespace (:mod:`.kube_lease`); the engine claims each job by a
  compare-and-swap on its status, so even two leaders could not run one job twice.

* **Worker Jobs** — with ``controller --data-mover jobs`` each backup and restore moves its
  data in a batch/v1 Job (:mod:`.kube_workers`); the controller writes every tenant-visible
  object.

* **Informers** — the controller keeps every kind in a cache by list + watch
  (:mod:`.kube_informer`, started by ``objects.inform``): a pass's lists read memory, the
  store's writes update the cache with the server's answer, a new job wakes the
  controller.  ``get`` still reads the server.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

from .._api.crd import plural_of
from .._api.errors import (
    ConflictError,
    CozyError,
    NotFoundError,
    PermanentError,
    TransientError,
    UnsupportedError,
    ValidationError,
)
from .._api.types import (
    API_VERSION,
    BACKUP_FINALIZER,
    GROUP,
    KINDS,
    VERSION,
    ApplicationRef,
    Backup,
    BackupJob,
    RestoreJob,
    has_status_subresource,
)
from .._api.units import secret_text
from .._api.wire import dump, load
from .._drivers.contract import AppLocation, Locator
from .._engine.port import T
from .kube_informer import Informer
from .kube_lease import DEFAULT_LEASE, DEFAULT_TIMING, LeaderElector, LeaseLock, LeaseTiming

log = logging.getLogger("cozybackup.kube")

#: Seconds for connect and read of every API call.
DEFAULT_TIMEOUT = (5.0, 30.0)
COMPONENT = "cozybackup-controller"
#: Where ``provider: Local`` buckets without a path live (mount a PersistentVolume here).
DEFAULT_LOCAL_BUCKETS = "/var/lib/cozybackup/buckets"


class KubeUnavailable(TransientError):
    """The API server did not answer, or answered 429/5xx: retried later."""

    reason = "KubernetesUnavailable"


class KubeRequestRefused(PermanentError):
    """The API server refused a request (4xx other than 404/409): a bug or missing RBAC."""

    reason = "KubernetesRequestRefused"


# --------------------------------------------------------------------------- conventions


def load_conventions(text: str, source: str = "<conventions>") -> dict[tuple[str, str], Locator]:
    """An admin's conventions file (YAML): ``{"<apiGroup>/<Kind>": {connection, credentialsFrom, keys,
    fixed, resource, version, cases}}`` (a :class:`Locator`, over the drivers' own), e.g.
    ``apps.example.com/Directory: {connection: {path: "/data/{name}"}}``."""
    import yaml

    from .._api.wire import structure

    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValidationError([("", f"{source}: not valid YAML: {exc}")]) from None
    if not isinstance(doc, Mapping):
        raise ValidationError([("", f"{source}: expected a mapping of apiGroup/Kind")])
    out: dict[tuple[str, str], Locator] = {}
    for key, body in doc.items():
        group, sep, kind = str(key).rpartition("/")
        if not sep or not group or not kind:
            raise ValidationError([(str(key), f"{source}: keys are apiGroup/Kind")])
        out[(group, kind)] = structure(body, Locator, path=str(key))
    return out


def _fill(value: Any, name: str, namespace: str) -> Any:
    if isinstance(value, str):
        return value.format(name=name, namespace=namespace)
    if isinstance(value, Mapping):
        return {k: _fill(v, name, namespace) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_fill(v, name, namespace) for v in value]
    return value


# --------------------------------------------------------------------------- helpers


def _plural(cls: type[Any]) -> str:
    return plural_of(cls.kind)


def _decode(data: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (data or {}).items():
        try:
            out[k] = secret_text(base64.b64decode(v, validate=True))
        except binascii.Error:
            raise KubeRequestRefused(
                "credentials for this application are unreadable; ask the platform operator",
                admin_detail=f"Secret key {k!r} is not base64 text",
            ) from None
    return out


#: ``<service>.<namespace>.svc[.cluster.local]`` in a host name or URL.
_SERVICE_HOST = re.compile(
    r"(?<![-a-z0-9.])([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)"
    r"\.svc(?:\.cluster\.local)?(?![-a-z0-9])"
)


def _services_in(value: Any) -> list[tuple[str, str]]:
    """``(service, namespace)`` of every in-cluster service name in a connection."""
    if isinstance(value, str):
        return [(m.group(1), m.group(2)) for m in _SERVICE_HOST.finditer(value.lower())]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _services_in(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _services_in(v)]
    return []


def event_name(name: str, suffix: str) -> str:
    """``<object name>.<suffix>`` as kubectl's events are named, cut so the whole stays a
    DNS subdomain of at most 253 characters (an object named with 253 would not)."""
    room = 253 - len(suffix) - 1
    return f"{name[:room].rstrip('.-')}.{suffix}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def in_cluster_namespace(default: str = "cozy-system") -> str:
    """The controller's own namespace: ``$COZYBACKUP_NAMESPACE``, the service account's, or
    ``default``."""
    env = os.environ.get("COZYBACKUP_NAMESPACE")
    if env:
        return env
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or default
    except OSError:
        return default


# --------------------------------------------------------------------------- objects


class KubeObjectStore:
    """The object store over custom objects (see the module docstring)."""

    def __init__(self, api_client: Any, timeout: tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]
        from kubernetes.client.exceptions import ApiException  # type: ignore[import-untyped, import-not-found, unused-ignore]

        self._custom = client.CustomObjectsApi(api_client)
        self._api_exception: type[Exception] = ApiException
        self._timeout = timeout
        #: Kind → its informer, once ``inform`` started them; lists are read from them.
        self.informers: dict[str, Informer] = {}

    def inform(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Keep every kind in an informer (:mod:`.kube_informer`) until ``stop``; a new
        BackupJob or RestoreJob sets ``wake`` (a pass starts at once, not at the next
        interval).  Lists are served from an informer once it has made its first list."""
        for kind, cls in KINDS.items():
            on_added = wake.set if wake is not None and kind in _WAKING_KINDS else None
            self.informers[kind] = Informer(
                self._custom, _plural(cls), stop, on_added, decode=_decoder(kind)
            ).start()

    def _cached(self, kind: str) -> Informer | None:
        informer = self.informers.get(kind)
        return informer if informer is not None and informer.synced.is_set() else None

    def _observe(self, kind: str, raw: dict[str, Any]) -> None:
        if (informer := self.informers.get(kind)) is not None:
            informer.observe(raw)

    # -- calls

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One API call; transport and server errors become the port's errors."""
        import urllib3  # type: ignore[import-not-found, unused-ignore]

        try:
            return fn(*args, _request_timeout=self._timeout, **kwargs)
        except self._api_exception as exc:
            status = getattr(exc, "status", 0) or 0
            detail = (
                f"{what}: HTTP {status} {getattr(exc, 'reason', '')}: {getattr(exc, 'body', '')}"
            )
            if status == 404:
                raise NotFoundError(f"{what}: not found", admin_detail=detail) from None
            if status == 409:
                raise ConflictError(
                    f"{what}: changed or created concurrently; retry", admin_detail=detail
                ) from None
            if status == 429 or status >= 500 or status == 0:
                raise KubeUnavailable(
                    "the platform's API server is unavailable; retry later", admin_detail=detail
                ) from None
            raise KubeRequestRefused(
                "the platform's API server refused a request; ask the platform operator",
                admin_detail=detail,
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeUnavailable(
                "the platform's API server is unavailable; retry later",
                admin_detail=f"{what}: {type(exc).__name__}: {exc}",
            ) from None

    def _get_raw(self, cls: type[Any], namespace: str | None, name: str) -> dict[str, Any]:
        what = f"get {cls.kind} {name}"
        if cls.namespaced:
            raw: dict[str, Any] = self.call(
                what,
                self._custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                _plural(cls),
                name,
            )
        else:
            raw = self.call(
                what, self._custom.get_cluster_custom_object, GROUP, VERSION, _plural(cls), name
            )
        return raw

    @staticmethod
    def _check_kind(cls: type[Any]) -> None:
        if KINDS.get(cls.kind) is not cls:
            raise UnsupportedError(f"{cls.kind} is not a kind the Kubernetes host stores")

    # -- the port

    def get(self, cls: type[T], namespace: str | None, name: str) -> T | None:
        self._check_kind(cls)
        try:
            raw = self._get_raw(cls, namespace if cls.namespaced else None, name)
        except NotFoundError:
            return None
        obj: T = load(raw)
        return obj

    def list(self, cls: type[T], namespace: str | None = None) -> list[T]:
        self._check_kind(cls)
        k: Any = cls
        what = f"list {k.kind}"
        informer = self._cached(k.kind)
        if informer is not None:
            cached: list[T] = informer.decoded(namespace if k.namespaced else None)
            return sorted(cached, key=lambda o: (o.metadata.namespace or "", o.metadata.name))
        if k.namespaced and namespace is not None:
            raw = self.call(
                what,
                self._custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                _plural(k),
            )
        elif k.namespaced:
            raw = self.call(
                what,
                self._custom.list_custom_object_for_all_namespaces,
                GROUP,
                VERSION,
                _plural(k),
            )
        else:
            raw = self.call(
                what, self._custom.list_cluster_custom_object, GROUP, VERSION, _plural(k)
            )
        out: list[T] = []
        for item in raw.get("items") or []:
            item = {"apiVersion": API_VERSION, "kind": k.kind, **item}
            try:
                out.append(load(item))
            except ValidationError as exc:
                # The CRD schema admitted what a cross-field rule refuses: one tenant's bad
                # object must not stop every pass.  It is left alone, in the operator's log.
                meta = item.get("metadata") or {}
                log.error(
                    "skipping %s %s/%s: %s",
                    k.kind,
                    meta.get("namespace", ""),
                    meta.get("name", "?"),
                    exc,
                )
        out.sort(key=lambda o: (o.metadata.namespace or "", o.metadata.name))
        return out

    def create(self, obj: T) -> T:
        o: Any = obj
        self._check_kind(type(o))
        body = dump(o)
        meta = dict(body.get("metadata", {}))
        # Server-owned fields: a real API server refuses a resourceVersion on create.
        for key in ("uid", "resourceVersion", "generation", "creationTimestamp"):
            meta.pop(key, None)
        meta.pop("deletionTimestamp", None)
        if isinstance(o, Backup) and BACKUP_FINALIZER not in meta.get("finalizers", ()):
            # A Backup deleted with kubectl keeps its data until the engine deletes it.
            meta["finalizers"] = [*meta.get("finalizers", ()), BACKUP_FINALIZER]
        body["metadata"] = meta
        what = f"create {o.kind} {o.metadata.name}"
        if o.namespaced:
            raw = self.call(
                what,
                self._custom.create_namespaced_custom_object,
                GROUP,
                VERSION,
                o.metadata.namespace,
                _plural(type(o)),
                body,
            )
        else:
            raw = self.call(
                what,
                self._custom.create_cluster_custom_object,
                GROUP,
                VERSION,
                _plural(type(o)),
                body,
            )
        self._observe(o.kind, raw)
        created: Any = load(raw)
        # With the status subresource, a POST's status is dropped: write it separately.  If
        # that fails the object is removed again, so no half-made record stays (a crash
        # between the two calls can still leave one; a Backup, the one kind created with a
        # status, has no subresource and is written whole in one call).
        if (
            has_status_subresource(type(o))
            and body.get("status")
            and dump(created).get("status") != body["status"]
        ):
            try:
                created = self._put_status(attrs.evolve(created, status=o.status))
            except BaseException:
                try:
                    self.delete(type(o), o.metadata.namespace, o.metadata.name)
                except CozyError:
                    log.error("could not remove %s %s without status", o.kind, o.metadata.name)
                raise
        result: T = created
        return result

    def _put_status(self, obj: Any) -> Any:
        body = dump(obj)
        what = f"update status of {obj.kind} {obj.metadata.name}"
        sub = has_status_subresource(type(obj))
        if obj.namespaced:
            raw = self.call(
                what,
                self._custom.replace_namespaced_custom_object_status
                if sub
                else self._custom.replace_namespaced_custom_object,
                GROUP,
                VERSION,
                obj.metadata.namespace,
                _plural(type(obj)),
                obj.metadata.name,
                body,
            )
        else:
            raw = self.call(
                what,
                self._custom.replace_cluster_custom_object_status
                if sub
                else self._custom.replace_cluster_custom_object,
                GROUP,
                VERSION,
                _plural(type(obj)),
                obj.metadata.name,
                body,
            )
        self._observe(obj.kind, raw)
        return load(raw)

    def update_status(self, obj: T) -> T:
        """PUT ``/status`` with the object's resourceVersion (409 → :class:`ConflictError`);
        for a Backup (no status subresource) a PUT of the whole object, likewise guarded.

        An object without a resourceVersion (built by hand, never read) is written over the
        current one, as the other hosts do.
        """
        o: Any = obj
        self._check_kind(type(o))
        if o.metadata.resource_version is None:
            current = self.get(type(o), o.metadata.namespace, o.metadata.name)
            if current is None:
                raise NotFoundError(f"{o.kind} {o.metadata.name} does not exist")
            o = attrs.evolve(
                o,
                metadata=attrs.evolve(
                    o.metadata,
                    resource_version=current.metadata.resource_version,
                ),
            )
        result: T = self._put_status(o)
        return result

    def set_metadata(self, obj: T) -> T:
        """Replace labels and annotations (spec and status kept): a merge patch with the
        resourceVersion, so a concurrent change is a :class:`ConflictError`."""
        o: Any = obj
        self._check_kind(type(o))
        current: Any = self.get(type(o), o.metadata.namespace, o.metadata.name)
        if current is None:
            raise NotFoundError(f"{o.kind} {o.metadata.name} does not exist")

        def diff(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, str | None]:
            patch: dict[str, str | None] = {k: None for k in old if k not in new}
            patch.update(new)
            return patch

        meta: dict[str, Any] = {
            "labels": diff(current.metadata.labels, o.metadata.labels),
            "annotations": diff(current.metadata.annotations, o.metadata.annotations),
            "resourceVersion": o.metadata.resource_version or current.metadata.resource_version,
        }
        body = {"metadata": meta}
        what = f"update metadata of {o.kind} {o.metadata.name}"
        if o.namespaced:
            raw = self.call(
                what,
                self._custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                o.metadata.namespace,
                _plural(type(o)),
                o.metadata.name,
                body,
                _content_type="application/merge-patch+json",
            )
        else:
            raw = self.call(
                what,
                self._custom.patch_cluster_custom_object,
                GROUP,
                VERSION,
                _plural(type(o)),
                o.metadata.name,
                body,
                _content_type="application/merge-patch+json",
            )
        self._observe(o.kind, raw)
        result: T = load(raw)
        return result

    def delete(self, cls: type[Any], namespace: str | None, name: str) -> None:
        self._check_kind(cls)
        what = f"delete {cls.kind} {name}"
        try:
            if cls.namespaced:
                self.call(
                    what,
                    self._custom.delete_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    namespace,
                    _plural(cls),
                    name,
                )
            else:
                self.call(
                    what,
                    self._custom.delete_cluster_custom_object,
                    GROUP,
                    VERSION,
                    _plural(cls),
                    name,
                )
        except NotFoundError:
            pass  # already gone: the other hosts ignore it too
        if (informer := self.informers.get(cls.kind)) is not None:
            informer.forget(namespace if cls.namespaced else None, name)


def _decoder(kind: str) -> Any:
    def decode(raw: dict[str, Any]) -> Any:
        return load({"apiVersion": API_VERSION, "kind": kind, **raw})

    return decode


#: Kinds whose creation starts a pass at once.
_WAKING_KINDS = (BackupJob.kind, RestoreJob.kind)


# --------------------------------------------------------------------------- the host


H = TypeVar("H", bound="KubeHost")


class KubeHost:
    """Implements the engine's host port on a Kubernetes cluster.

    ``api_client`` is a ``kubernetes.client.ApiClient`` (see :meth:`from_config`);
    ``platform_namespace`` holds the platform's Secrets (S3 credentials, encryption keys);
    ``conventions`` is how each application kind is reached, keyed by ``(apiGroup, kind)``:
    the installed drivers' ``DriverRegistry.locators()`` with an admin's file over them; ``local_bucket_root`` is
    where ``provider: Local`` buckets live (see :meth:`local_bucket_path`).
    """

    def __init__(
        self,
        api_client: Any,
        platform_namespace: str,
        *,
        conventions: Mapping[tuple[str, str], Locator] | None = None,
        clock: Any = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        local_bucket_root: str = DEFAULT_LOCAL_BUCKETS,
    ) -> None:
        from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]

        self.api_client = api_client
        self.platform_namespace = platform_namespace
        self.conventions: dict[tuple[str, str], Locator] = dict(conventions or {})
        self.clock = clock
        self.objects = KubeObjectStore(api_client, timeout)
        self._core = client.CoreV1Api(api_client)
        self._apps = client.CustomObjectsApi(api_client)  # applications (Locator.resource)
        self._instance = socket.gethostname()
        self.local_bucket_root = local_bucket_root
        self._warned_local = False

    @classmethod
    def from_config(
        cls: type[H],
        platform_namespace: str | None = None,
        kubeconfig: str | None = None,
        **kwargs: Any,
    ) -> H:
        """In-cluster configuration, else ``kubeconfig`` (or ``$KUBECONFIG``/~/.kube/config)."""
        from kubernetes import client, config  # type: ignore[import-untyped, import-not-found, unused-ignore]

        cfg = client.Configuration()
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        return cls(client.ApiClient(cfg), platform_namespace or in_cluster_namespace(), **kwargs)

    def close(self) -> None:
        self.api_client.close()

    def elector(
        self,
        name: str = DEFAULT_LEASE,
        identity: str | None = None,
        timing: LeaseTiming = DEFAULT_TIMING,
    ) -> LeaderElector:
        """Leader election on the Lease ``name`` in the platform namespace: one active
        controller per cluster (see :mod:`.kube_lease`).  ``identity`` defaults to the pod's
        hostname and a random suffix, so a restarted pod is a new candidate."""
        from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]

        lock = LeaseLock(
            self.objects.call,
            client.CoordinationV1Api(self.api_client),
            self.platform_namespace,
            name,
            identity or f"{self._instance}_{uuid.uuid4().hex[:8]}",
            timing,
        )
        return LeaderElector(lock)

    def now(self) -> dt.datetime:
        return self.clock() if self.clock else _now()

    # -- applications and secrets

    def locate(self, namespace: str, ref: ApplicationRef) -> AppLocation:
        gone = NotFoundError(
            f"application {ref.kind} {ref.name} does not exist in namespace {namespace}"
        )
        conv = self.conventions.get((ref.api_group, ref.kind))
        if conv is None:
            gone.admin_detail = (
                f"no convention for {ref.api_group}/{ref.kind} in the Kubernetes host"
            )
            raise gone
        if conv.resource is not None:
            conv = conv.for_object(self._application(namespace, ref, conv, gone))
        credentials: dict[str, str] = dict(conv.fixed)
        if conv.credentials_from is not None:
            secret_name = _fill(conv.credentials_from, ref.name, namespace)
            try:
                data = self._read_secret(namespace, secret_name)
            except NotFoundError:
                gone.admin_detail = f"Secret {secret_name} not found in {namespace}"
                raise gone from None
            if conv.keys is None:
                credentials.update(data)
            else:
                for want, have in conv.keys.items():
                    if have in data:
                        credentials[want] = data[have]
        connection = _fill(dict(conv.connection), ref.name, namespace)
        for service, where in sorted(set(_services_in(connection))):
            self._check_service(service, where, namespace, ref, gone)
        return AppLocation(
            ref=ref, namespace=namespace, connection=connection, credentials=credentials
        )

    def _application(
        self, namespace: str, ref: ApplicationRef, conv: Locator, gone: NotFoundError
    ) -> dict[str, Any]:
        """The live application object the Locator names (its ``resource``)."""
        assert conv.resource is not None
        try:
            obj: dict[str, Any] = self.objects.call(
                f"read {ref.kind} {ref.name} in {namespace}",
                self._apps.get_namespaced_custom_object,
                ref.api_group,
                conv.version,
                namespace,
                conv.resource,
                ref.name,
            )
        except NotFoundError:
            gone.admin_detail = f"{ref.api_group}/{conv.resource} {ref.name} not found"
            raise gone from None
        return obj

    def _check_service(
        self, name: str, where: str, tenant: str, ref: ApplicationRef, gone: NotFoundError
    ) -> None:
        """A tenant controls the Service a convention names: it must send traffic to pods
        in its namespace, not elsewhere (an ExternalName, or a Service without a selector
        whose endpoints the tenant writes, would point the platform at any address)."""
        try:
            svc = self.objects.call(
                f"read Service {name} in {where}",
                self._core.read_namespaced_service,
                name,
                where,
            )
        except NotFoundError:
            gone.admin_detail = f"Service {name} not found in {where}"
            raise gone from None
        spec = svc.spec
        if where != tenant or spec.type == "ExternalName" or not spec.selector:
            why = (
                "in another namespace"
                if where != tenant
                else "of type ExternalName"
                if spec.type == "ExternalName"
                else "without a selector"
            )
            raise KubeRequestRefused(
                f"the service of application {ref.kind} {ref.name} does not lead to pods of "
                "its namespace; the platform does not connect to it",
                admin_detail=f"Service {name} in {where} is {why}",
            )

    def _read_secret(self, namespace: str, name: str) -> dict[str, str]:
        s = self.objects.call(
            f"read Secret {name} in {namespace}", self._core.read_namespaced_secret, name, namespace
        )
        return _decode(s.data)

    def secret(self, name: str) -> Mapping[str, str]:
        try:
            return self._read_secret(self.platform_namespace, name)
        except NotFoundError:
            # Tenant-visible through job messages: do not name the secret.
            raise NotFoundError(
                "credentials for this application are not configured; ask the platform operator",
                admin_detail=f"Secret {name} not found in {self.platform_namespace}",
            ) from None

    def local_bucket_path(self, bucket: str) -> str:
        """A ``provider: Local`` bucket without ``path``: a directory under
        ``local_bucket_root`` on the controller's filesystem.

        Durable only if the admin mounts a PersistentVolume there; the intended setup is an
        S3 StorageLocation (override the built-in ``cozy-backups``).  This does not raise:
        the engine asks for this path whenever it builds a redactor (the built-in Local
        location is always in the catalog), so raising would stop every job.
        """
        if not self._warned_local:
            self._warned_local = True
            log.warning(
                "a Local StorageLocation is in use on Kubernetes: bucket %s lives under %s, "
                "which is durable only on a mounted PersistentVolume; prefer provider: S3",
                bucket,
                self.local_bucket_root,
            )
        return f"{self.local_bucket_root.rstrip('/')}/{bucket}"

    # -- events

    def event(self, obj: Any, type_: str, reason: str, message: str) -> None:
        meta = obj.metadata
        # The API server accepts a core/v1 Event about a cluster-scoped object only in the
        # "default" namespace (where Node events live), not in the platform's.
        ns = meta.namespace if obj.namespaced else "default"
        now = _rfc3339(self.now())
        involved: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": obj.kind,
            "name": meta.name,
        }
        if obj.namespaced:
            involved["namespace"] = ns
        if meta.uid:
            involved["uid"] = meta.uid
        if meta.resource_version:
            involved["resourceVersion"] = meta.resource_version
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event_name(meta.name, uuid.uuid4().hex[:16]), "namespace": ns},
            "involvedObject": involved,
            "type": type_,
            "reason": reason[:128],
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance[:128],
        }
        try:
            self.objects.call(
                f"create Event for {obj.kind} {meta.name}",
                self._core.create_namespaced_event,
                ns,
                body,
            )
        except CozyError as exc:
            log.warning(
                "could not record event %s on %s %s: %s",
                reason,
                obj.kind,
                meta.name,
                exc.admin_detail or exc,
            )
