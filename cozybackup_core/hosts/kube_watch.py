"""Wake the controller when a tenant creates a job, instead of at the next ``--interval``.

A thread per kind (BackupJob, RestoreJob) lists it across namespaces for a
resourceVersion, then watches from there (bookmarks on, so an idle watch keeps its place;
a ``410 Gone`` starts again from a fresh list); every ADDED event sets the controller's
*wake* event.  The passes themselves still list what they need: this only makes them
start at once.  Our own status writes (MODIFIED) do not wake anything.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .._api.crd import plural_of
from .._api.types import GROUP, VERSION, BackupJob, RestoreJob

log = logging.getLogger("cozybackup.kube.watch")

#: Seconds a watch request lasts on the server before it is renewed (from its place).
WATCH_SECONDS = 300
#: Seconds before a failed list or watch is tried again.
RETRY_SECONDS = 5.0


class JobWatch:
    """Sets ``wake`` when a BackupJob or RestoreJob is created; stops with ``stop``."""

    def __init__(self, api_client: Any, stop: threading.Event, wake: threading.Event) -> None:
        from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]

        self._custom = client.CustomObjectsApi(api_client)
        self.stop = stop
        self.wake = wake
        #: ADDED events seen, and lists made (the first, and one after each 410), per kind.
        self.added = 0
        self.lists = 0
        self._threads = [
            threading.Thread(
                target=self._run, args=(plural,), name=f"cozy-watch-{plural}", daemon=True
            )
            for plural in (plural_of(BackupJob.kind), plural_of(RestoreJob.kind))
        ]

    def start(self) -> JobWatch:
        for t in self._threads:
            t.start()
        return self

    def _run(self, plural: str) -> None:
        version: str | None = None
        while not self.stop.is_set():
            try:
                if version is None:
                    listed = self._custom.list_cluster_custom_object(
                        GROUP, VERSION, plural, limit=1
                    )
                    version = listed["metadata"]["resourceVersion"]
                    self.lists += 1
                version = self._watch(plural, version)
            except Exception as exc:  # noqa: BLE001 - a watch never stops the controller
                if getattr(exc, "status", None) == 410:
                    version = None  # too old: list again
                    continue
                log.warning("watching %s: %s; retrying in %.0fs", plural, exc, RETRY_SECONDS)
                version = None
                self.stop.wait(RETRY_SECONDS)

    def _watch(self, plural: str, version: str) -> str | None:
        """One watch request from ``version``; the version to go on from (None: list again)."""
        from kubernetes import watch  # type: ignore[import-untyped, import-not-found, unused-ignore]

        w = watch.Watch()
        try:
            for event in w.stream(
                self._custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                plural,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=WATCH_SECONDS,
            ):
                kind = event.get("type")
                obj = event.get("raw_object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise RuntimeError(obj.get("message") or "watch error")
                version = (obj.get("metadata") or {}).get("resourceVersion") or version
                if kind == "ADDED":
                    self.added += 1
                    self.wake.set()
                if self.stop.is_set():
                    break
        finally:
            w.stop()
        return version
