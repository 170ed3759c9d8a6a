"""The stores of the locations in use: each opened once per pass, and a location that
could not be opened left alone by the controller's own work for a while.

Opening an unreachable S3 location costs 12-20 s (botocore's and s3fs's retries).  Without
a memory of the failure, every stage of a pass that reads storage (retention, garbage
collection, usage, drills, orphans, one call per location or per tenant) paid it again,
and a pass with one dead location took over a minute, delaying the jobs of every live one.
So a failure is remembered per location: the controller's own stages (inside
:meth:`StoreCache.background`) fail at once with the same error until the location's
backoff has passed (1 minute, doubling up to 10).  A job always tries: a tenant's backup
must not fail because of what an earlier pass saw, and its success clears the memory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import threading
from collections.abc import Callable, Iterator

import attrs

from .._api.errors import StorageError
from .._api.types import StorageLocation, StorageLocationSpec
from .._storage.store import ArtifactStore

#: After a location fails to open, the controller's own stages wait this long before
#: trying it again; each further failure doubles the wait, up to ``RETRY_MAX``.
RETRY_FIRST = dt.timedelta(minutes=1)
RETRY_MAX = dt.timedelta(minutes=10)

_Key = tuple[str, StorageLocationSpec]


@attrs.frozen
class _Failure:
    message: str
    admin_detail: str | None
    wait: dt.timedelta
    retry_at: dt.datetime


class StoreCache:
    """``open`` makes a location's store (the storage providers' ``open``); ``now`` is the
    host's clock."""

    def __init__(
        self,
        open_: Callable[[StorageLocation], ArtifactStore],
        now: Callable[[], dt.datetime],
    ) -> None:
        self._open = open_
        self._now = now
        self._stores: dict[_Key, ArtifactStore] = {}
        self._failures: dict[_Key, _Failure] = {}
        self._background = threading.local()

    @contextlib.contextmanager
    def background(self) -> Iterator[None]:
        """The controller's own work, in this thread: a location whose last opening failed
        is not tried again before its backoff has passed."""
        self._background.on = True
        try:
            yield
        finally:
            self._background.on = False

    def store_for(self, loc: StorageLocation) -> ArtifactStore:
        """The store of a location, opened once and kept until :meth:`clear` (or until the
        location's spec changes: the cache is keyed by the whole spec)."""
        key = (loc.metadata.name, loc.spec)
        store = self._stores.get(key)
        if store is not None:
            return store
        failed = self._failures.get(key)
        now = self._now()
        if failed is not None and getattr(self._background, "on", False) and now < failed.retry_at:
            seconds = math.ceil((failed.retry_at - now).total_seconds())
            raise StorageError(
                failed.message,
                admin_detail=f"{failed.admin_detail or 'it failed to open'}; "
                f"not tried again for {seconds} s",
            )
        try:
            store = self._open(loc)
        except StorageError as exc:
            wait = RETRY_FIRST if failed is None else min(failed.wait * 2, RETRY_MAX)
            self._failures[key] = _Failure(str(exc), exc.admin_detail, wait, now + wait)
            raise
        self._failures.pop(key, None)
        self._stores[key] = store
        return store

    def clear(self) -> None:
        """Forget every open store, so the next opening re-reads credentials and keys.
        Failures are kept: a pass starts by clearing, and a dead location would otherwise
        be tried by every pass."""
        self._stores.clear()

    def open_stores(self) -> list[tuple[str, ArtifactStore]]:
        """``(location name, store)`` of every store open now."""
        return [(name, store) for (name, _), store in self._stores.items()]
