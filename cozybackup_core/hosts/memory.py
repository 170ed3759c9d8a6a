"""An in-memory host: the engine's port with no I/O (embedding, benchmarks, tests).

Objects live in dicts; nothing survives the process.  Applications and secrets are
registered with :meth:`MemoryHost.add_application` / :meth:`add_secret`.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

import attrs

from .._api.errors import ConflictError, NotFoundError
from .._api.types import ApplicationRef
from .._drivers.contract import AppLocation
from .._engine.port import Resource, T, stamped, with_metadata, with_status_of


class MemoryObjectStore:
    def __init__(self, clock: Callable[[], dt.datetime]) -> None:
        self._objs: dict[str, dict[tuple[str | None, str], Resource]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def _current(self, obj: T) -> T:
        found = self._objs.get(obj.kind, {}).get((obj.metadata.namespace, obj.metadata.name))
        if found is None:
            raise NotFoundError(f"{obj.kind} {obj.metadata.name} does not exist")
        return cast(T, found)  # stored under its own kind

    def get(self, cls: type[T], namespace: str | None, name: str) -> T | None:
        return cast("T | None", self._objs.get(cls.kind, {}).get((namespace, name)))

    def list(self, cls: type[T], namespace: str | None = None) -> list[T]:
        objs = self._objs.get(cls.kind, {})
        return [
            cast(T, o)
            for (ns, _), o in sorted(objs.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))
            if namespace is None or ns == namespace
        ]

    def create(self, obj: T) -> T:
        meta = obj.metadata
        with self._lock:
            bucket = self._objs.setdefault(obj.kind, {})
            if (meta.namespace, meta.name) in bucket:
                raise ConflictError(f"{obj.kind} {meta.name} already exists")
            obj = with_metadata(obj, stamped(meta, self._clock()))
            bucket[(meta.namespace, meta.name)] = obj
            return obj

    def update_status(self, obj: T) -> T:
        meta = obj.metadata
        with self._lock:
            new = with_status_of(self._current(obj), obj)
            self._objs[obj.kind][(meta.namespace, meta.name)] = new
            return new

    def set_metadata(self, obj: T) -> T:
        meta = obj.metadata
        with self._lock:
            current = self._current(obj)
            new = with_metadata(
                current,
                attrs.evolve(current.metadata, labels=meta.labels, annotations=meta.annotations),
            )
            self._objs[obj.kind][(meta.namespace, meta.name)] = new
            return new

    def delete(self, cls: type[Resource], namespace: str | None, name: str) -> None:
        with self._lock:
            self._objs.get(cls.kind, {}).pop((namespace, name), None)


@attrs.define
class MemoryHost:
    bucket_root: str
    clock: Callable[[], dt.datetime] = attrs.field(
        factory=lambda: lambda: dt.datetime.now(dt.timezone.utc)
    )
    objects: MemoryObjectStore = attrs.field(init=False)
    apps: dict[tuple[str, str, str, str], AppLocation] = attrs.field(factory=dict)
    secrets: dict[str, Mapping[str, str]] = attrs.field(factory=dict)
    events: list[tuple[Any, str, str, str]] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        self.objects = MemoryObjectStore(self.now)

    def now(self) -> dt.datetime:
        return self.clock()

    def add_application(self, loc: AppLocation) -> None:
        r = loc.ref
        self.apps[(loc.namespace, r.api_group, r.kind, r.name)] = loc

    def locate(self, namespace: str, ref: ApplicationRef) -> AppLocation:
        try:
            return self.apps[(namespace, ref.api_group, ref.kind, ref.name)]
        except KeyError:
            raise NotFoundError(
                f"application {ref.kind} {ref.name} does not exist in namespace {namespace}"
            ) from None

    def secret(self, name: str) -> Mapping[str, str]:
        try:
            return self.secrets[name]
        except KeyError:
            raise NotFoundError(
                "credentials for this application are not configured; ask the platform operator"
            ) from None

    def local_bucket_path(self, bucket: str) -> str:
        return f"{self.bucket_root.rstrip('/')}/{bucket}"

    def event(self, obj: Any, type_: str, reason: str, message: str) -> None:
        self.events.append((obj, type_, reason, message))
