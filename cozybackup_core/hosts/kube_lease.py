"""One active controller: leader election on a ``coordination.k8s.io/v1`` Lease.

The pinned ``kubernetes`` client (36.x) ships only a ConfigMap lock, so this is client-go's
``leaderelection`` algorithm, small:

* **Acquire.**  Read the Lease.  Absent: create it, holding it.  Held by another: take it
  over only when its record has not changed for ``leaseDurationSeconds`` *as observed
  here*, on this process's monotonic clock, never by comparing the holder's ``renewTime``
  with our wall clock (two pods' clocks disagree).  Released (no holder): take it at once.
  Every write carries the resourceVersion that was read, so of two candidates exactly one
  wins (the other gets 409 and tries again later).
* **Hold.**  Renew every ``retry_period``.  When no renewal has succeeded for
  ``renew_deadline`` (shorter than the lease duration), leadership is *lost*: the holder
  must stop acting before anyone else can take over.
* **Release** on a clean stop: the holder is cleared, so a successor takes over at once
  instead of waiting out the lease.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from .._api.errors import ConflictError, CozyError, NotFoundError

log = logging.getLogger("cozybackup.lease")

#: The Lease the controllers of one platform namespace compete for.
DEFAULT_LEASE = "cozybackup-controller"


@attrs.frozen
class LeaseTiming:
    """client-go's defaults: a lost holder stops within ``renew_deadline``; a successor
    takes over after ``duration`` (15 s) of silence, or at once after a release."""

    duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __attrs_post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.duration:
            raise ValueError("lease timing needs 0 < retry_period < renew_deadline < duration")


DEFAULT_TIMING = LeaseTiming()


def _micro_time(t: dt.datetime) -> str:
    """A ``MicroTime`` as the API server writes it."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseLock:
    """The Lease record and the compare-and-swap on it (no threads here).

    ``call`` maps API errors to the port's (see ``KubeObjectStore.call``); ``coordination``
    is a ``kubernetes.client.CoordinationV1Api``.
    """

    def __init__(
        self,
        call: Callable[..., Any],
        coordination: Any,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming = DEFAULT_TIMING,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._call = call
        self._api = coordination
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self._monotonic = monotonic
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        #: Who held the Lease when it was last read (for messages while waiting).
        self.holder: str | None = None

    def _read(self) -> dict[str, Any] | None:
        try:
            lease = self._call(
                f"read Lease {self.name}",
                self._api.read_namespaced_lease,
                self.name,
                self.namespace,
            )
        except NotFoundError:
            return None
        raw: dict[str, Any] = self._api.api_client.sanitize_for_serialization(lease)
        return raw

    def _spec(self, acquired: str, transitions: int, holder: str) -> dict[str, Any]:
        now = _micro_time(dt.datetime.now(dt.timezone.utc))
        return {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, round(self.timing.duration)),
            "acquireTime": acquired or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this process holds the Lease afterwards."""
        current = self._read()
        if current is None:
            first = self._spec("", 0, self.identity)
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": first,
            }
            try:
                self._call(
                    f"create Lease {self.name}",
                    self._api.create_namespaced_lease,
                    self.namespace,
                    body,
                )
            except ConflictError:
                return False  # another candidate created it first
            self._observe(first)
            return True
        spec = current.get("spec") or {}
        meta = current.get("metadata") or {}
        self._observe(spec)
        holder = spec.get("holderIdentity") or ""
        self.holder = holder or None
        mine = holder == self.identity
        if holder and not mine and self._monotonic() < self._observed_at + self._duration(spec):
            return False  # held, and renewed within its duration as far as we have seen
        if mine:
            new = self._spec(
                spec.get("acquireTime") or "", spec.get("leaseTransitions") or 0, holder
            )
        else:
            new = self._spec("", (spec.get("leaseTransitions") or 0) + 1, self.identity)
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": meta.get("resourceVersion"),
            },
            "spec": new,
        }
        try:
            self._call(
                f"update Lease {self.name}",
                self._api.replace_namespaced_lease,
                self.name,
                self.namespace,
                body,
            )
        except ConflictError:
            return False  # changed since we read it: another candidate won this round
        if not mine:
            log.info("took the Lease %s/%s over from %r", self.namespace, self.name, holder or None)
        self.holder = self.identity
        self._observe(new)
        return True

    def release(self) -> None:
        """Clear the holder if it is still us, so a successor need not wait out the lease."""
        current = self._read()
        if current is None or (current.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        spec = dict(current["spec"])
        spec.update(holderIdentity=None, leaseDurationSeconds=1)
        current["spec"] = spec
        with contextlib.suppress(ConflictError):
            self._call(
                f"release Lease {self.name}",
                self._api.replace_namespaced_lease,
                self.name,
                self.namespace,
                current,
            )

    def _duration(self, spec: dict[str, Any]) -> float:
        return float(spec.get("leaseDurationSeconds") or self.timing.duration)

    def _observe(self, spec: dict[str, Any]) -> None:
        record = (
            spec.get("holderIdentity"),
            spec.get("renewTime"),
            spec.get("acquireTime"),
            spec.get("leaseTransitions"),
        )
        if record != self._observed:
            self._observed = record
            self._observed_at = self._monotonic()


class LeaderElector:
    """Waits for the Lease, then keeps it on a thread until stopped or lost."""

    def __init__(self, lock: LeaseLock) -> None:
        self.lock = lock
        self._lost = threading.Event()

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def _attempt(self) -> bool:
        try:
            return self.lock.try_acquire_or_renew()
        except CozyError as exc:
            log.warning("Lease %s: %s (%s)", self.lock.name, exc, exc.admin_detail)
            return False

    def acquire(
        self, stop: threading.Event, on_wait: Callable[[str | None], None] | None = None
    ) -> bool:
        """Block until this process leads (True) or ``stop`` is set (False)."""
        told: str | None = "\0"
        period = self.lock.timing.retry_period
        while not stop.is_set():
            if self._attempt():
                return True
            if on_wait is not None and self.lock.holder != told:
                told = self.lock.holder
                on_wait(told)
            # Jitter, as client-go does, so candidates do not retry in lockstep.
            stop.wait(period * (1 + 0.2 * random.random()))  # noqa: S311 - jitter, not a secret
        return False

    def _renew(self, done: threading.Event, on_lost: Callable[[], None]) -> None:
        timing = self.lock.timing
        last_ok = time.monotonic()
        while not done.wait(timing.retry_period):
            if self._attempt():
                last_ok = time.monotonic()
            elif time.monotonic() - last_ok >= timing.renew_deadline:
                self._lost.set()
                log.error(
                    "lost the Lease %s/%s: not renewed for %.0fs",
                    self.lock.namespace,
                    self.lock.name,
                    timing.renew_deadline,
                )
                on_lost()
                return

    @contextlib.contextmanager
    def leading(
        self,
        stop: threading.Event,
        on_lost: Callable[[], None],
        on_wait: Callable[[str | None], None] | None = None,
    ) -> Iterator[bool]:
        """Lead for the body (yields False if ``stop`` came first).  ``on_lost`` runs on
        the renewal thread when leadership is lost; it must stop all work at once (the
        controller exits).  On leaving, the Lease is released."""
        if not self.acquire(stop, on_wait):
            yield False
            return
        done = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(done, on_lost), name="cozy-lease", daemon=True
        )
        renewer.start()
        try:
            yield True
        finally:
            done.set()
            renewer.join()
            if not self._lost.is_set():
                try:
                    self.lock.release()
                except CozyError as exc:
                    log.warning("could not release the Lease %s: %s", self.lock.name, exc)
