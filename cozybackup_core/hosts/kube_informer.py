"""Informers: the controller's cache of our kinds, kept by list + watch, so that a pass
reads memory instead of listing every object of the cluster.

One thread per kind lists it across namespaces (in pages), then watches from the list's
resourceVersion with bookmarks (an idle watch keeps its place) and renews the watch
from where it got; a ``410 Gone`` (the place was compacted away) lists again and
replaces the cache.  The store's own writes update the cache with the server's answer at
once (``observe``/``forget``), so a pass never reads something older than what it just
wrote; a watch event older than what is cached (by resourceVersion, compared as the
integers etcd makes them) is ignored, and a deleted object leaves a tombstone so a late
event cannot bring it back.  Each object is decoded once per version (``decoded``):
a pass at rest costs neither requests nor decoding.  Reads of one object (``get``)
still go to the server.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from .._api.errors import ValidationError
from .._api.types import GROUP, VERSION

log = logging.getLogger("cozybackup.kube.informer")

#: Seconds a watch request lasts on the server before it is renewed (from its place).
WATCH_SECONDS = 300
#: Seconds before a failed list or watch is tried again.
RETRY_SECONDS = 5.0
#: Objects per page of a list.
PAGE = 500

Key = tuple[str, str]  # (namespace or "", name)


def _key(raw: dict[str, Any]) -> Key:
    meta = raw.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def _version(raw: dict[str, Any]) -> str:
    return str((raw.get("metadata") or {}).get("resourceVersion") or "")


def _older(new: str, old: str, *, or_same: bool = False) -> bool:
    """Whether ``new`` is older than ``old`` (or the same, with ``or_same``); both from
    etcd, so integers.  Versions that are not integers are not compared: the one that
    arrives last wins."""
    if not (new.isdigit() and old.isdigit()):
        return False
    return int(new) <= int(old) if or_same else int(new) < int(old)


class Informer:
    """The cache of one kind (``plural``); ``on_added`` is called for each object created
    after the first list (a new job wakes the controller)."""

    def __init__(
        self,
        custom_api: Any,
        plural: str,
        stop: threading.Event,
        on_added: Callable[[], None] | None = None,
        decode: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self._custom = custom_api
        self.plural = plural
        self.stop = stop
        self.on_added = on_added
        self.decode = decode
        #: Key → (resourceVersion, the decoded object, or None where decoding failed).
        self._decoded: dict[Key, tuple[str, Any]] = {}
        self.synced = threading.Event()
        self._lock = threading.Lock()
        self._items: dict[Key, dict[str, Any]] = {}
        self._gone: dict[Key, str] = {}
        #: Lists made (the first, and one after each 410 or error), and events applied.
        self.lists = 0
        self.events = 0
        self._thread = threading.Thread(target=self._run, name=f"cozy-inform-{plural}", daemon=True)

    def start(self) -> Informer:
        self._thread.start()
        return self

    # -- reads and the store's own writes

    def items(self, namespace: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                raw for (ns, _), raw in self._items.items() if namespace is None or ns == namespace
            ]

    def decoded(self, namespace: str | None = None) -> list[Any]:
        """The cached objects decoded by ``decode``, each once per version; one that does
        not decode (the CRD admitted what a cross-field rule refuses) is logged once and
        left out, so one tenant's bad object cannot stop a pass."""
        assert self.decode is not None
        out = []
        for raw in self.items(namespace):
            key, version = _key(raw), _version(raw)
            known = self._decoded.get(key)
            if known is None or known[0] != version or not version:
                try:
                    known = (version, self.decode(raw))
                except ValidationError as exc:
                    log.error("skipping %s %s/%s: %s", self.plural, key[0], key[1], exc)
                    known = (version, None)
                self._decoded[key] = known
            if known[1] is not None:
                out.append(known[1])
        return out

    def observe(self, raw: dict[str, Any]) -> None:
        """An object as the server returned it (a write's answer, or a watch event)."""
        key, version = _key(raw), _version(raw)
        with self._lock:
            cached = self._items.get(key)
            if cached is not None and _older(version, _version(cached)):
                return
            if key in self._gone and _older(version, self._gone[key], or_same=True):
                return  # a late event about the object we saw deleted
            self._gone.pop(key, None)
            self._items[key] = raw

    def forget(self, namespace: str | None, name: str, version: str = "") -> None:
        """An object deleted (by us, or a watch's DELETED at ``version``)."""
        key = (namespace or "", name)
        with self._lock:
            cached = self._items.pop(key, None)
            self._decoded.pop(key, None)
            self._gone[key] = version or (_version(cached) if cached else "")

    # -- the thread

    def _run(self) -> None:
        version: str | None = None
        while not self.stop.is_set():
            try:
                if version is None:
                    version = self._list()
                version = self._watch(version)
            except Exception as exc:  # noqa: BLE001 - an informer never stops the controller
                version = None
                if getattr(exc, "status", None) == 410:
                    continue  # too old: list again
                log.warning("watching %s: %s; retrying in %.0fs", self.plural, exc, RETRY_SECONDS)
                self.stop.wait(RETRY_SECONDS)

    def _list(self) -> str:
        items: dict[Key, dict[str, Any]] = {}
        token: str | None = None
        while True:
            page = self._custom.list_cluster_custom_object(
                GROUP, VERSION, self.plural, limit=PAGE, _continue=token
            )
            for raw in page.get("items") or []:
                raw.setdefault("kind", page.get("kind", "").removesuffix("List"))
                raw.setdefault("apiVersion", f"{GROUP}/{VERSION}")
                items[_key(raw)] = raw
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
        with self._lock:
            self._items, self._gone = items, {}
            self._decoded = {k: v for k, v in self._decoded.items() if k in items}
        self.lists += 1
        self.synced.set()
        version: str = page["metadata"]["resourceVersion"]
        return version

    def _watch(self, version: str) -> str | None:
        """One watch request from ``version``; the version to go on from (None: list again)."""
        from kubernetes import watch  # type: ignore[import-untyped, import-not-found, unused-ignore]

        w = watch.Watch()
        try:
            for event in w.stream(
                self._custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                self.plural,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS,
            ):
                kind = event.get("type")
                raw = event.get("raw_object") or {}
                if kind == "ERROR":
                    if raw.get("code") == 410:
                        return None
                    raise RuntimeError(raw.get("message") or "watch error")
                version = _version(raw) or version
                if kind in ("ADDED", "MODIFIED"):
                    self.events += 1
                    self.observe(raw)
                    if kind == "ADDED" and self.on_added is not None:
                        self.on_added()
                elif kind == "DELETED":
                    self.events += 1
                    meta = raw.get("metadata") or {}
                    self.forget(meta.get("namespace"), meta.get("name") or "", _version(raw))
                if self.stop.is_set():
                    break
        finally:
            w.stop()
        return version
