"""A Kubernetes API stand-in for the KubeHost tests: kmock's emulator, made strict.

kmock's ``KubernetesEmulator`` stores objects as plain dicts and merges updates; it
assigns no uid or resourceVersion, has no status subresource, does not serve PUT and
validates nothing.  ``StrictApiServer`` adds what the host relies on, the way a real
kube-apiserver does it:

* create: uid, resourceVersion, generation and creationTimestamp assigned by the server; a
  resourceVersion in the body is refused; with the status subresource ``status`` is dropped;
  Secrets' ``stringData`` becomes base64 ``data``;
* PUT (object or ``/status``) and merge PATCH: optimistic concurrency on
  ``metadata.resourceVersion`` (409 when stale), ``/status`` changes only the status, the
  object itself never the status; a new resourceVersion on every write;
* every object of ``backups.cozystack.io`` that is written — each request body, and the
  object that results — is validated against the project's own CRD schema
  (``_crd.object_schema``, with jsonschema) and its apiVersion, kind and metadata shape;
  a failure is answered with 422 and recorded in ``violations``.

``running_api_server()`` runs it on 127.0.0.1 in a background thread, for sync code.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime as dt
import itertools
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp.web
import attrs
import jsonschema
import kmock
from kmock._internal import dicts as kmock_dicts
from kmock._internal.k8s import KubernetesError, KubernetesObjectNotFoundError

from cozybackup_core._api.crd import all_crds, object_schema
from cozybackup_core._api.types import API_VERSION, GROUP

_PLURALS: dict[str, dict[str, Any]] = {
    c["spec"]["names"]["plural"]: {
        "kind": c["spec"]["names"]["kind"],
        "namespaced": c["spec"]["scope"] == "Namespaced",
        "status": "status" in c["spec"]["versions"][0].get("subresources", {}),
        "schema": object_schema(c["spec"]["names"]["kind"]),
        "validator": jsonschema.Draft7Validator(object_schema(c["spec"]["names"]["kind"])),
    }
    for c in all_crds()
}


_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_VALUE_MAX = 63


def _unknown_fields(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Keys the schema does not declare: a real server prunes them silently (or refuses them
    with fieldValidation=Strict); here they are errors, so nothing we send is lost."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out: list[str] = []
    if isinstance(obj, dict) and "properties" in schema:
        for key, value in obj.items():
            sub = schema["properties"].get(key)
            if sub is None:
                out.append(f"{path}{key}: unknown field")
            elif key != "metadata":
                out.extend(_unknown_fields(value, sub, f"{path}{key}."))
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            out.extend(_unknown_fields(item, schema["items"], f"{path}[{i}]."))
    return out


def _invalid(message: str) -> KubernetesError:
    return KubernetesError(status=422, reason="Invalid", message=message)


@attrs.define(kw_only=True)
class StrictApiServer(kmock.KubernetesEmulator):
    violations: list[str] = attrs.field(factory=list)
    #: (method, path, body) of every write, in order.
    writes: list[tuple[str, str, Any]] = attrs.field(factory=list)
    #: (method, path) -> HTTP status to answer once instead of serving the request.
    faults: dict[tuple[str, str], int] = attrs.field(factory=dict)
    _rv: Iterator[int] = attrs.field(factory=lambda: itertools.count(1))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for plural, info in _PLURALS.items():
            self.resources[f"{GROUP}/v1alpha1/{plural}"] = kmock.ResourceInfo(
                kind=info["kind"],
                namespaced=info["namespaced"],
                subresources={"status"} if info["status"] else set(),
            )
        for plural, kind in (("secrets", "Secret"), ("events", "Event"), ("services", "Service")):
            self.resources[f"v1/{plural}"] = kmock.ResourceInfo(kind=kind, namespaced=True)
        # Worker Jobs (their status is the Job controller's, written through /status).
        self.resources["batch/v1/jobs"] = kmock.ResourceInfo(
            kind="Job", namespaced=True, subresources={"status"}
        )

    # -- checks

    def _refuse(self, message: str) -> KubernetesError:
        self.violations.append(message)
        return _invalid(message)

    def _check(self, request: kmock.Request, obj: Any, what: str) -> None:
        """The shape and schema of one of our objects (a body or a resulting object)."""
        plural = request.resource.plural  # type: ignore[union-attr]
        info = _PLURALS.get(plural)
        if info is None:
            raise self._refuse(f"{what}: unknown resource {plural}")
        if not isinstance(obj, dict):
            raise self._refuse(f"{what}: body is not an object")
        problems = []
        if obj.get("apiVersion") != API_VERSION:
            problems.append(f"apiVersion {obj.get('apiVersion')!r}")
        if obj.get("kind") != info["kind"]:
            problems.append(f"kind {obj.get('kind')!r} for {plural}")
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
            problems.append("metadata.name missing")
        else:
            if request.name is not None and meta["name"] != request.name:
                problems.append(f"metadata.name {meta['name']!r} is not {request.name!r}")
            if info["namespaced"] and meta.get("namespace") != request.namespace:
                problems.append(f"metadata.namespace {meta.get('namespace')!r} is not the URL's")
            if not info["namespaced"] and (meta.get("namespace") or request.namespace):
                problems.append("a namespace on a cluster-scoped object")
            for key, value in (meta.get("labels") or {}).items():
                if len(value) > _LABEL_VALUE_MAX or not _LABEL_VALUE.match(
                    value
                ):  # kube-apiserver's rule, stricter than ours
                    problems.append(f"metadata.labels.{key}: {value!r} is not a valid label value")
        problems += _unknown_fields(obj, info["schema"])
        for err in info["validator"].iter_errors(obj):
            path = ".".join(str(p) for p in err.absolute_path)
            problems.append(f"{path}: {err.message}")
        if problems:
            raise self._refuse(
                f"{what} {request.method.value} {request.url.path}: {'; '.join(problems)}"
            )

    def _check_event(self, request: kmock.Request, obj: Any) -> None:
        inv = obj.get("involvedObject") if isinstance(obj, dict) else None
        meta = obj.get("metadata", {}) if isinstance(obj, dict) else {}
        if (
            not isinstance(inv, dict)
            or not inv.get("kind")
            or not inv.get("name")
            or meta.get("namespace") != request.namespace
            # kube-apiserver's rule for events without eventTime (legacyValidateEvent):
            or request.namespace != (inv.get("namespace") or "default")
            or not isinstance(obj.get("message"), str)
            or obj.get("type") not in ("Normal", "Warning")
            or not meta.get("name")
        ):
            raise self._refuse(f"malformed Event {obj!r}")

    # -- handling

    def _next_rv(self) -> str:
        return str(next(self._rv))

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or request.method in ("GET", None):
            return await super()._handle(request)
        ours = res.group == GROUP
        method = request.method.value if request.method is not None else ""
        if method in ("POST", "PUT", "PATCH"):
            self.writes.append((method, request.url.path, copy.deepcopy(request.data)))
        fault = self.faults.pop((method, request.url.path), None)
        if fault is not None:
            raise KubernetesError(status=fault, reason="InjectedFault", message="injected")
        if method == "POST" and request.name is None:
            return await self._create(request, ours)
        if method == "PUT" and request.name is not None:
            return await self._update(request, ours, request.data, replace=True)
        if method == "PATCH" and request.name is not None:
            ctype = request.headers.get("Content-Type", "")
            if not ctype.startswith("application/merge-patch+json"):
                raise KubernetesError(status=415, reason="UnsupportedMediaType", message=ctype)
            return await self._update(request, ours, request.data, replace=False)
        return await super()._handle(request)

    async def _create(self, request: kmock.Request, ours: bool) -> aiohttp.web.StreamResponse:
        data = request.data
        if not isinstance(data, dict):
            raise self._refuse("create: body is not an object")
        meta = data.setdefault("metadata", {})
        if meta.get("resourceVersion"):
            raise self._refuse("create: metadata.resourceVersion must not be set")
        if ours:
            self._check(request, data, "create")
            if _PLURALS[request.resource.plural]["status"]:  # type: ignore[union-attr]
                data.pop("status", None)
        if request.resource.plural == "events":  # type: ignore[union-attr]
            self._check_event(request, data)
        if request.resource.plural == "secrets":  # type: ignore[union-attr]
            plain = data.pop("stringData", None) or {}
            data.setdefault("data", {}).update(
                {k: base64.b64encode(v.encode()).decode() for k, v in plain.items()}
            )
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=self._next_rv(),
            generation=1,
            creationTimestamp=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        response = await super()._handle(request)
        if response.status == 200:
            response.set_status(201)  # what kube-apiserver answers (the client maps only 201)
        return response

    async def _update(
        self, request: kmock.Request, ours: bool, data: Any, *, replace: bool
    ) -> aiohttp.web.StreamResponse:
        if not isinstance(data, dict):
            raise self._refuse("update: body is not an object")
        sub = request.subresource
        if sub not in (None, "status"):
            raise KubernetesObjectNotFoundError()
        # A kind without the status subresource (Backup): /status does not exist, and the
        # main resource's writes carry the status like any field.
        whole = ours and not _PLURALS[request.resource.plural]["status"]  # type: ignore[union-attr]
        if whole and sub == "status":
            raise KubernetesObjectNotFoundError()
        if ours and replace:
            self._check(request, data, f"update{'/' + sub if sub else ''}")
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                raise KubernetesObjectNotFoundError()
            current = copy.deepcopy(self.objects[key].raw)
            cmeta = current.setdefault("metadata", {})
            rv = (data.get("metadata") or {}).get("resourceVersion")
            if replace and not rv:
                raise self._refuse("update: metadata.resourceVersion must be specified")
            if rv and rv != cmeta.get("resourceVersion"):
                raise KubernetesError(
                    status=409,
                    reason="Conflict",
                    message="the object has been modified; please apply your changes to the "
                    "latest version and try again",
                )
            if sub == "status":
                new = current
                status = data.get("status")
                if replace or status is None:
                    new.pop("status", None)
                if status is not None:
                    new["status"] = (
                        status
                        if replace
                        else dict(kmock_dicts.patch_dict(current.get("status", {}), status))
                    )
            else:
                if replace:
                    new = copy.deepcopy(data)
                else:
                    new = dict(kmock_dicts.patch_dict(copy.deepcopy(current), data))
                if not whole:
                    new.pop("status", None)
                    if "status" in current:
                        new["status"] = current["status"]
                meta = new.setdefault("metadata", {})
                for k in ("uid", "creationTimestamp", "generation", "namespace", "name"):
                    if k in cmeta:
                        meta[k] = cmeta[k]
                if new.get("spec") != current.get("spec"):
                    meta["generation"] = int(cmeta.get("generation", 1)) + 1
            new["metadata"]["resourceVersion"] = self._next_rv()
            if ours:
                self._check(request, new, "result of update")
            self.objects[key].create(new)
        return aiohttp.web.json_response(new)


@contextlib.contextmanager
def running_api_server(timeout: float = 10.0) -> Iterator[tuple[StrictApiServer, str]]:
    """``(server, url)``: the strict emulator on 127.0.0.1, served from a background thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="kmock", daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()

    async def start() -> tuple[StrictApiServer, str]:
        api = await stack.enter_async_context(StrictApiServer())
        server = await stack.enter_async_context(kmock.Server(api, host="127.0.0.1"))
        return api, str(server.url).rstrip("/")

    try:
        api, url = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout)
        yield api, url
    finally:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stack.aclose(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.close()
