"""The host port: everything the engine needs from the world outside it.

The embedded local host (``hosts/local.py``) and a Kubernetes host implement it; a custom
controller can embed the engine with its own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Protocol, TypeVar

from .._api.types import ApplicationRef
from .._drivers.contract import AppLocation

T = TypeVar("T")


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

    def delete(self, cls: type[Any], namespace: str | None, name: str) -> None: ...


class Host(Protocol):
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
