"""Prometheus metrics (the official ``prometheus-client``), ``/healthz`` and ``/readyz``.

Two sources, one registry:

* **What happened** — counters and histograms the runner feeds after each pass
  (:meth:`Metrics.observe`): jobs by result and reason, their durations, bytes backed up.
* **Where things stand** — read from the objects at each scrape (:class:`_Standing`; on
  Kubernetes from the informers' memory): last good backup and last verification per
  application, RPO and RTO measured and targeted with the verdict, stored bytes, Backups
  kept, missed Plan runs, the last drill's result, running jobs.

Labels are the tenant's namespace, the application's kind and name, the class and the
Plan: never a storage endpoint, bucket, path or credential.  Every metric is described
in ``docs/metrics.md``.
"""

from __future__ import annotations

import datetime as dt
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .._api.types import Backup, BackupJob, Plan, RestoreJob
from .._api.units import parse_duration
from .services import Services
from .standing import standings, verdicts

APP = ("namespace", "application_kind", "application")
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 2 * 3600, 6 * 3600, 86400)


def _app_labels(obj: Any) -> list[str]:
    ref = obj.spec.application_ref
    return [obj.metadata.namespace or "", ref.kind, ref.name]


def _ts(t: dt.datetime | None) -> float | None:
    return t.timestamp() if t is not None else None


class Metrics:
    """The registry ``cozybackup run`` and ``controller`` serve (see the module docstring)."""

    def __init__(
        self,
        svc: Services,
        registry: CollectorRegistry | None = None,
        *,
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Counter(
            "cozybackup_jobs_total",
            "Backup and restore jobs finished, by result and reason.",
            ["job", *APP, "result", "reason"],
            registry=self.registry,
        )
        self.durations = Histogram(
            "cozybackup_job_duration_seconds",
            "How long finished jobs ran, from start to end.",
            ["job", *APP],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.backed_up = Counter(
            "cozybackup_backup_bytes_total",
            "Bytes read from applications by successful backups (before compression).",
            list(APP),
            registry=self.registry,
        )
        self.passes = Counter(
            "cozybackup_passes_total",
            "Runner passes, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.archive_lag_bytes = Gauge(
            "cozybackup_archive_lag_bytes",
            "Bytes an application wrote that its continuous archive does not hold yet.",
            list(APP),
            registry=self.registry,
        )
        self.archive_lag_seconds = Gauge(
            "cozybackup_archive_lag_seconds",
            "Seconds since a continuous archive last stored a segment while WAL was waiting.",
            list(APP),
            registry=self.registry,
        )
        self.svc = svc
        # Only the replica that runs passes reports where things stand: a standby's
        # copy of the same series would double every sum over replicas.
        self.registry.register(_Standing(svc, active))
        #: Monotonic time of the last sign of life of the runner (``/healthz``).
        self.last_pass: float | None = None

    def heartbeat(self) -> None:
        """The runner is about to pass (it just started leading): /healthz measures from now."""
        self.last_pass = time.monotonic()

    def observe(self, report: Any) -> None:
        """Count what one runner pass finished."""
        self.heartbeat()
        self.passes.labels("error" if report.error else "ok").inc()
        self._observe_lags(getattr(report, "archive_lags", ()))
        for job in report.finished:
            word = "backup" if isinstance(job, BackupJob) else "restore"
            labels = self._job_app(job)
            reason = job.status.conditions[0].reason if job.status.conditions else ""
            self.jobs.labels(word, *labels, job.status.phase or "", reason).inc()
            if job.status.started_at and job.status.completed_at:
                took = (job.status.completed_at - job.status.started_at).total_seconds()
                self.durations.labels(word, *labels).observe(max(0.0, took))
            made = job.status.backup_ref if isinstance(job, BackupJob) else None
            if made is not None and job.status.phase == "Succeeded":
                backup = self.svc.host.objects.get(Backup, job.metadata.namespace, made.name)
                if backup is not None and backup.status.artifact is not None:
                    self.backed_up.labels(*labels).inc(backup.status.artifact.size_bytes)

    def _observe_lags(self, lags: Any) -> None:
        # A streamer that stopped leaves no stale series behind.
        self.archive_lag_bytes.clear()
        self.archive_lag_seconds.clear()
        for lag in lags:
            labels = (lag.namespace, lag.kind, lag.application)
            if lag.lag_bytes is not None:
                self.archive_lag_bytes.labels(*labels).set(lag.lag_bytes)
            if lag.lag_seconds is not None:
                self.archive_lag_seconds.labels(*labels).set(lag.lag_seconds)

    @staticmethod
    def _job_app(job: Any) -> list[str]:
        if isinstance(job, RestoreJob):
            ref = job.spec.target_application_ref
            if ref is None:
                return [job.metadata.namespace or "", "", ""]  # the Backup's: not read here
            return [job.metadata.namespace or "", ref.kind, ref.name]
        return _app_labels(job)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Standing(Collector):
    """Gauges computed from the objects at each scrape (``standing.standings``)."""

    def __init__(self, svc: Services, active: Callable[[], bool]) -> None:
        self.svc = svc
        self.active = active

    def collect(self) -> Iterator[Any]:
        if not self.active():
            return
        now = self.svc.host.now()
        app = list(APP)
        plan_labels = ["namespace", "plan", "application_kind", "application", "class"]
        gauges = {
            name: GaugeMetricFamily(name, text, labels=app)
            for name, text in (
                (
                    "cozybackup_last_success_timestamp_seconds",
                    "When the newest good Backup of the application was taken (Unix time).",
                ),
                (
                    "cozybackup_last_verified_timestamp_seconds",
                    "When a Backup of the application was last checked and passed (Unix time).",
                ),
                ("cozybackup_backups", "Ready Backups kept, per application."),
                (
                    "cozybackup_backups_size_bytes",
                    "Bytes the application's Ready Backups hold (before compression).",
                ),
                (
                    "cozybackup_drill_passed",
                    "1 when the application's newest restore drill passed, 0 when it failed.",
                ),
            )
        }
        missed = CounterMetricFamily(
            "cozybackup_plan_missed_runs",
            "Scheduled runs of the Plan that produced no job, ever.",
            labels=plan_labels,
        )
        per_plan = {
            name: GaugeMetricFamily(name, text, labels=plan_labels)
            for name, text in (
                ("cozybackup_rpo_seconds", "Age of the newest good Backup (measured RPO)."),
                ("cozybackup_rpo_target_seconds", "The class's RPO objective."),
                (
                    "cozybackup_rto_seconds",
                    "Measured RTO: the newest passed drill's duration, scaled to the newest Backup.",
                ),
                ("cozybackup_rto_target_seconds", "The class's RTO objective."),
                (
                    "cozybackup_objectives_met",
                    "1 when every objective of the Plan's application is met, else 0.",
                ),
            )
        }
        for a in standings(self.svc.host):
            labels = [a.namespace, a.kind, a.name]
            gauges["cozybackup_backups"].add_metric(labels, a.backups)
            gauges["cozybackup_backups_size_bytes"].add_metric(labels, a.size_bytes)
            if a.last_good is not None:
                gauges["cozybackup_last_success_timestamp_seconds"].add_metric(
                    labels, a.last_good.timestamp()
                )
            if a.last_verified is not None:
                gauges["cozybackup_last_verified_timestamp_seconds"].add_metric(
                    labels, a.last_verified.timestamp()
                )
            if a.last_drill is not None:
                passed = a.last_drill.result == "Passed"
                gauges["cozybackup_drill_passed"].add_metric(labels, 1.0 if passed else 0.0)
            for plan in a.plans:
                values = [a.namespace, plan.metadata.name, a.kind, a.name]
                values.append(plan.spec.backup_class_name)
                missed.add_metric(values, plan.status.missed_runs)
                self._objectives(per_plan, values, plan, now)
        yield from gauges.values()
        yield missed
        yield from per_plan.values()
        yield self._running()

    @staticmethod
    def _objectives(
        per_plan: dict[str, GaugeMetricFamily],
        values: list[str],
        plan: Plan,
        now: dt.datetime,
    ) -> None:
        judged = plan.status.objectives
        if judged is None:
            return
        if judged.rpo is not None:
            target = parse_duration(judged.rpo.target).total_seconds()
            per_plan["cozybackup_rpo_target_seconds"].add_metric(values, target)
            if judged.rpo.since is not None:
                age = (now - judged.rpo.since).total_seconds()
                per_plan["cozybackup_rpo_seconds"].add_metric(values, age)
        if judged.rto is not None:
            target = parse_duration(judged.rto.target).total_seconds()
            per_plan["cozybackup_rto_target_seconds"].add_metric(values, target)
            if judged.rto.measured_seconds is not None:
                per_plan["cozybackup_rto_seconds"].add_metric(values, judged.rto.measured_seconds)
        ok = all(verdicts(judged, now))
        per_plan["cozybackup_objectives_met"].add_metric(values, 1.0 if ok else 0.0)

    def _running(self) -> GaugeMetricFamily:
        running = GaugeMetricFamily("cozybackup_jobs_running", "Jobs running now.", labels=["job"])
        host = self.svc.host
        backup_jobs, restore_jobs = host.objects.list(BackupJob), host.objects.list(RestoreJob)
        running.add_metric(["backup"], sum(j.status.phase == "Running" for j in backup_jobs))
        running.add_metric(["restore"], sum(j.status.phase == "Running" for j in restore_jobs))
        return running


# --------------------------------------------------------------------------- the server


class MetricsServer:
    """``/metrics``, ``/readyz`` (``ready()`` says so: recovered, leading) and
    ``/healthz`` on ``address``.

    ``/healthz`` fails when a ready process's runner has not passed within
    ``stale_after`` seconds (a wedged loop: restarting it is the cure).  With
    ``stale_after=None`` it only says the process answers: a pass that runs a backup
    in-process lasts as long as the backup, and a liveness probe must not kill it.  A
    process that is not ready (a standby waiting for the Lease) makes no passes and is
    alive."""

    def __init__(
        self,
        metrics: Metrics,
        address: tuple[str, int],
        ready: Callable[[], bool],
        stale_after: float | None,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.stale_after = stale_after
        self.started = time.monotonic()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, body, kind = outer.answer(self.path)
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the log

        self.httpd = http.server.ThreadingHTTPServer(address, Handler)
        self.httpd.daemon_threads = True
        bound = self.httpd.server_address
        #: Where it listens (the port chosen when ``address`` asked for port 0).
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="cozy-metrics", daemon=True
        )

    def answer(self, path: str) -> tuple[int, bytes, str]:
        text = "text/plain; charset=utf-8"
        route = path.split("?", 1)[0]
        if route == "/metrics":
            return 200, self.metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8"
        if route == "/healthz":
            last = self.metrics.last_pass or self.started
            stale = self.stale_after is not None and time.monotonic() - last > self.stale_after
            if stale and self.ready():
                return 503, b"no runner pass within the expected time\n", text
            return 200, b"ok\n", text
        if route == "/readyz":
            return (200, b"ok\n", text) if self.ready() else (503, b"not ready\n", text)
        return 404, b"not found\n", text

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
