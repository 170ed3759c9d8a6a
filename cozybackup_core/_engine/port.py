"""The host port: everything the engine needs from the world outside it.

The embedded local host (``hosts/local.py``) and a Kubernetes host implement it; a custom
controller can embed the engine with its own.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, TypeVar, cast

import attrs

from .._api.types import ApplicationRef, ObjectMeta
from .._drivers.contract import AppLocation


class Resource(Protocol):
    """What every kind is: a frozen attrs class with these class attributes and metadata
    (the API's seven kinds, and a host's own such as the local host's Application)."""

    api_version: ClassVar[str]
    kind: ClassVar[str]
    namespaced: ClassVar[bool]
    #: Whether tenants read objects of this kind (their text is redacted for them).
    tenant_visible: ClassVar[bool]

    @property
    def metadata(self) -> ObjectMeta: ...


T = TypeVar("T", bound=Resource)


def stamped(meta: ObjectMeta, now: dt.datetime) -> ObjectMeta:
    """Metadata of a newly stored object: what the API server assigns on create."""
    return attrs.evolve(
        meta,
        uid=meta.uid or str(uuid.uuid4()),
        resource_version="1",
        generation=1,
        creation_timestamp=meta.creation_timestamp or now,
    )


def bumped(meta: ObjectMeta) -> ObjectMeta:
    """Metadata after a write: the next resourceVersion."""
    return attrs.evolve(meta, resource_version=str(int(meta.resource_version or 0) + 1))


def with_metadata(obj: T, metadata: ObjectMeta) -> T:
    """``obj`` with other metadata (what a host stamps: uid, resourceVersion...)."""
    return cast(T, attrs.evolve(cast(Any, obj), metadata=metadata))


def with_status_of(current: T, source: T) -> T:
    """``current`` (spec and metadata as stored) with the status of ``source``."""
    return cast(T, attrs.evolve(cast(Any, current), status=cast(Any, source).status))


class ObjectStore(Protocol):
    """Typed objects by kind, namespace and name (``namespace=None`` for cluster scope)."""

    def get(self, cls: type[T], namespace: str | None, name: str) -> T | None: ...

    def list(self, cls: type[T], namespace: str | None = None) -> list[T]:
        """Objects of ``cls``; for namespaced kinds ``None`` means every namespace."""
        ...

    def create(self, obj: T) -> T:
        """Store a new object, assigning uid, creationTimestamp and resourceVersion.

        Raises :class:`ConflictError` if one of that name exists.
        """
        ...

    def update_status(self, obj: T) -> T:
        """Replace the status of an existing object (spec and metadata are kept)."""
        ...

    def set_metadata(self, obj: T) -> T:
        """Replace the labels and annotations of an existing object (the rest is kept)."""
        ...

    def delete(self, cls: type[Resource], namespace: str | None, name: str) -> None: ...


class Host(Protocol):
    """The port a host program implements to embed the engine (see docs/embedding.md)."""

    @property
    def objects(self) -> ObjectStore: ...

    def locate(self, namespace: str, ref: ApplicationRef) -> AppLocation:
        """How to reach an application and its credentials.

        Raises :class:`NotFoundError` (tenant-safe message) when it does not exist.
        """
        ...

    def secret(self, name: str) -> Mapping[str, str]:
        """A platform secret's data (never a tenant's)."""
        ...

    def local_bucket_path(self, bucket: str) -> str:
        """Where a ``provider: Local`` bucket without ``path`` lives."""
        ...

    def event(self, obj: Any, type_: str, reason: str, message: str) -> None:
        """Record an event about ``obj`` (tenant-visible for tenant objects)."""
        ...

    def now(self) -> dt.datetime: ...
