"""Streamers beside jobs: the runner keeps one per application that a Plan protects with a
class whose driver streams (``Driver.streams``: continuous WAL archiving).

Each pass reconciles: a streamer is started (in a thread of its own) for every Plan that
asks for one and has none running; one whose thread ended with an error is reported on its
Plan (condition ``Archiving`` False, with the error's reason, and a Warning event) and
started again after a pause; one no Plan asks for any more is stopped and told to release
what it holds on the server.  While it runs, the condition is True and its message says
the lag.  The Kubernetes host will run streamers in a worker of their own instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .._api.errors import CozyError
from .._api.types import Condition, Plan
from .._drivers.contract import AppLocation, Streamer
from .._storage.archive import SegmentArchive

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("cozybackup.streaming")
CONDITION = "Archiving"
#: Seconds before a failed streamer is started again.
RESTART_AFTER = 10.0

_Key = tuple[str, str, str]  # namespace, kind, application


@attrs.frozen(kw_only=True)
class ArchiveLag:
    """How far one application's archive is behind it, as its streamer last said."""

    namespace: str
    kind: str
    application: str
    lag_bytes: int | None
    lag_seconds: float | None


@attrs.define
class _Running:
    plan: Plan
    location: AppLocation
    streamer: Streamer
    thread: threading.Thread
    stop: threading.Event
    error: BaseException | None = None


class StreamHost:
    """The streamers of one runner; ``workdir`` holds a directory per application that
    outlives the process (what a killed streamer left there, the next one stores)."""

    def __init__(self, engine: Engine, workdir: Path) -> None:
        self.engine = engine
        self.workdir = workdir
        self.running: dict[_Key, _Running] = {}
        self._failed_at: dict[_Key, float] = {}
        self._lags: dict[_Key, Mapping[str, Any]] = {}

    def reconcile(self) -> list[str]:
        """Start, report and stop streamers as the Plans ask; a note per change."""
        notes: list[str] = []
        wanted: dict[_Key, Any] = {}
        catalog = self.engine.catalog()
        for plan in self.engine.host.objects.list(Plan):
            ref = plan.spec.application_ref
            try:
                resolved = catalog.resolve(plan.spec.backup_class_name, ref)
            except CozyError:
                continue  # the Plan's own jobs say why
            if resolved.driver.streams(resolved.parameters):
                wanted[(plan.metadata.namespace or "", ref.kind, ref.name)] = (plan, resolved)
        for key, run in list(self.running.items()):
            if not run.thread.is_alive():
                del self.running[key]
                if run.error is not None:
                    self._failed_at[key] = time.monotonic()
                    notes.append(self._report_failure(run.plan, run.error, run.location))
            elif key not in wanted:
                notes.append(f"stopped WAL streaming for {key[0]}/{key[2]}")
                self._stop(key, release=True)
        for key, (plan, resolved) in wanted.items():
            if key in self.running:
                self._report_running(key)
                continue
            if time.monotonic() - self._failed_at.get(key, -RESTART_AFTER) < RESTART_AFTER:
                continue
            try:
                self._start(key, plan, resolved)
                notes.append(f"started streaming for {key[0]}/{key[2]}")
            except Exception as exc:  # noqa: BLE001 - reported on the Plan, retried later
                self._failed_at[key] = time.monotonic()
                notes.append(self._report_failure(plan, exc))
        return notes

    def _start(self, key: _Key, plan: Plan, resolved: Any) -> None:
        ns, kind, name = key
        location = self.engine.host.locate(ns, plan.spec.application_ref)
        store = self.engine.store_for(resolved.storage)
        archive = SegmentArchive.for_application(store, ns, kind, name, resolved.driver.name)
        workdir = self.workdir / ns / kind / name
        streamer = resolved.driver.streamer(resolved.parameters, location, archive, workdir)
        stop = threading.Event()
        run = _Running(
            plan=plan, location=location, streamer=streamer, thread=threading.Thread(), stop=stop
        )

        def body() -> None:
            try:
                streamer.run(stop)
            except BaseException as exc:  # noqa: BLE001 - kept for the next reconcile
                run.error = exc
                log.error("streamer %s/%s ended: %r", ns, name, exc)

        run.thread = threading.Thread(target=body, name=f"cozybackup-stream-{ns}-{name}")
        run.thread.start()
        self.running[key] = run

    def lags(self) -> dict[_Key, Mapping[str, Any]]:
        out: dict[_Key, Mapping[str, Any]] = {}
        for key, run in self.running.items():
            try:
                out[key] = run.streamer.lag()
            except Exception as exc:  # noqa: BLE001 - a lag that cannot be read is not fatal
                log.warning("lag of %s/%s unknown: %r", key[0], key[2], exc)
        return out

    def reported_lags(self) -> tuple[ArchiveLag, ...]:
        """The lags the last :meth:`reconcile` read, of the streamers still running."""
        return tuple(
            ArchiveLag(
                namespace=key[0],
                kind=key[1],
                application=key[2],
                lag_bytes=lag.get("lagBytes"),
                lag_seconds=lag.get("lagSeconds"),
            )
            for key, lag in sorted(self._lags.items())
            if key in self.running
        )

    def _report_running(self, key: _Key) -> None:
        run = self.running[key]
        try:
            lag = run.streamer.lag()
        except Exception:  # noqa: BLE001 - said as unknown
            lag = {}
        self._lags[key] = lag
        said = ", ".join(f"{k} {v}" for k, v in sorted(lag.items()) if v is not None)
        self._set_condition(run.plan, "True", "Streaming", f"archiving continuously ({said})")

    def _report_failure(
        self, plan: Plan, exc: BaseException, location: AppLocation | None = None
    ) -> str:
        reason = exc.reason if isinstance(exc, CozyError) else "StreamerFailed"
        message = (
            str(exc)
            if isinstance(exc, CozyError)
            else "continuous archiving stopped on an internal error; it is started again"
        )
        # Tenant-visible: masked like a job's message (storage and the app's connection).
        message = self.engine.redactor(*([location] if location else []))(message)
        if self._set_condition(plan, "False", reason, message):
            # Once per failure, not at every retry of the same one.
            self.engine.host.event(plan, "Warning", reason, message)
        return f"streaming for {plan.metadata.namespace}/{plan.spec.application_ref.name} failed: {message}"

    def _set_condition(self, plan: Plan, status: str, reason: str, message: str) -> bool:
        """Set the Plan's ``Archiving`` condition; whether its status or reason changed."""
        current = self.engine.host.objects.get(Plan, plan.metadata.namespace, plan.metadata.name)
        if current is None:
            return False
        old = next((c for c in current.status.conditions if c.type == CONDITION), None)
        if old is not None and (old.status, old.reason, old.message) == (status, reason, message):
            return False
        changed = old is None or (old.status, old.reason) != (status, reason)
        cond = Condition(
            type=CONDITION,
            status=status,
            reason=reason,
            message=message,
            last_transition_time=self.engine.host.now()
            if changed or old is None
            else old.last_transition_time,
        )
        others = tuple(c for c in current.status.conditions if c.type != CONDITION)
        status_obj = attrs.evolve(current.status, conditions=(*others, cond))
        self.engine.host.objects.update_status(attrs.evolve(current, status=status_obj))
        return changed

    def _stop(self, key: _Key, *, release: bool) -> None:
        run = self.running.pop(key)
        run.stop.set()
        run.thread.join(timeout=60)
        if release:
            try:
                run.streamer.release()
            except Exception as exc:  # noqa: BLE001 - logged; the slot stays for the admin
                log.warning("releasing %s/%s: %r", key[0], key[2], exc)

    def stop_all(self) -> None:
        """Stop every streamer, keeping what it holds (the next run resumes from it)."""
        for key in list(self.running):
            self._stop(key, release=False)
