"""Worker Jobs: each backup or restore's data moves in a ``batch/v1`` Job in the platform
namespace, running ``cozybackup worker`` (the engine's :class:`~.._engine.executor.Executor`
on Kubernetes).

* **One Job per job**, named from the job's uid (``cozy-backup-<16 hex>``), so launching
  is idempotent and a controller that restarts finds (adopts) the workers still running.
  ``backoffLimit: 0`` (the engine retries transient errors itself),
  ``activeDeadlineSeconds`` from the job's deadline, ``ttlSecondsAfterFinished``.
* **Credentials** of the application reach the worker through a Secret in the platform
  namespace owned by its Job (the garbage collector deletes it with the Job; the runner
  deletes it as soon as it has recorded the worker's end), never through a tenant
  namespace.  The worker's ServiceAccount reads no tenant Secret.
* **A driver's tool in its own image** (``Driver.tool_container``: the Job strategy's
  ``image``) runs as a second container of the worker's Pod (:mod:`.._drivers.toolpipe`):
  the two share an ``emptyDir`` holding the FIFO and one process namespace (the tool
  leaves when the worker is gone).  The tool's environment comes from the job's Secret;
  the Pod mounts no ServiceAccount token by default, only the worker container gets one,
  so the tool can read neither the storage's credentials nor anything else.
* **Reports**: the worker writes its progress and its outcome as annotations of its own
  Job; the controller, the only writer of tenant-visible status, copies them.  A worker
  killed before it reports ends ``Failed`` by the Job controller, with no outcome.
* **Ends are watched** (``watch_ends``): a worker Job that becomes Complete or Failed
  wakes the controller, which reads its outcome at once instead of at the next pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from .._api.errors import ConflictError, CozyError, NotFoundError
from .._api.types import ApplicationRef, BackupJob
from .._api.wire import structure, unstructure
from .._drivers.contract import AppLocation
from .._drivers.toolpipe import TOOL_DIR_ENV, TOOL_IO_ENV, TOOL_SCRIPT, ToolContainer, ToolPipe
from .._engine.executor import Outcome, WorkerState
from .kube import KubeHost

log = logging.getLogger("cozybackup.kube.workers")
#: Seconds a watch of worker Jobs lasts before it is renewed; before a failed one is retried.
WATCH_SECONDS = 300
RETRY_SECONDS = 5.0

LABEL_WORKER = "backups.cozystack.io/worker"
ANNOTATION_FOR = "backups.cozystack.io/for"
ANNOTATION_OUTCOME = "backups.cozystack.io/outcome"
ANNOTATION_PROGRESS = "backups.cozystack.io/progress"
#: Where the worker finds the application's location (the per-job Secret, mounted).
LOCATION_DIR = "/var/run/cozybackup/app"
LOCATION_KEY = "location.json"
#: Where the worker and a driver's tool container meet (an emptyDir in both).
TOOL_DIR = "/var/run/cozybackup/tool"
#: The Secret's keys for the tool's environment: ``tool-env.<NAME>``.
TOOL_ENV_KEY = "tool-env.{}"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"  # noqa: S105 - a path
#: The client would pick a strategic merge patch for a dict; say what is meant.
MERGE_PATCH = "application/merge-patch+json"


@attrs.frozen
class WorkerSettings:
    """How worker Pods are made (the controller's ``--worker-*`` flags)."""

    image: str
    #: The ``cozybackup`` command in the image.
    command: Sequence[str] = ("cozybackup",)
    #: Extra environment for the worker container.
    env: Mapping[str, str] = attrs.field(factory=dict)
    service_account: str = "cozybackup-worker"
    #: The Job (and its logs) stays this long after it ends, for the operator.
    ttl_seconds: int = 3600
    #: Added to the job's deadline for the Pod's start and the final reports.
    deadline_grace: int = 300
    home: str = "/var/lib/cozybackup"
    #: The worker's (and a tool container's) ``resources``.  Requests by default, so the
    #: scheduler places workers where there is room; no limit by default: a dump tool's
    #: memory depends on the application (the admin sets one with --worker-limits).
    resources: Mapping[str, Mapping[str, str]] = attrs.field(
        factory=lambda: {"requests": {"cpu": "250m", "memory": "256Mi"}}
    )


def _add_tool(
    pod: dict[str, Any], worker: dict[str, Any], tool: ToolContainer, secret: str, io: str
) -> None:
    """The driver's tool as a second container (see the module docstring)."""
    share = {"name": "tool-io", "mountPath": TOOL_DIR}
    where = {"name": TOOL_DIR_ENV, "value": TOOL_DIR}
    worker["env"].append(where)
    worker["volumeMounts"] += [share, {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True}]
    pod["containers"].append(
        {
            "name": "tool",
            "image": tool.image,
            "command": ["sh", "-c", TOOL_SCRIPT, "cozybackup-tool", *tool.argv],
            "env": [
                where,
                {"name": TOOL_IO_ENV, "value": io},
                *(
                    {
                        "name": k,
                        "valueFrom": {
                            "secretKeyRef": {"name": secret, "key": TOOL_ENV_KEY.format(k)}
                        },
                    }
                    for k in sorted(tool.env)
                ),
            ],
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
            "resources": worker["resources"],
            "volumeMounts": [share],
        }
    )
    # One process namespace, so the tool sees whether the worker lives; no token but the
    # worker's (the tool must not act as the worker's ServiceAccount).
    pod["shareProcessNamespace"] = True
    pod["automountServiceAccountToken"] = False
    pod["volumes"] += [
        {"name": "tool-io", "emptyDir": {}},
        {
            "name": "token",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {
                        "configMap": {
                            "name": "kube-root-ca.crt",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {"fieldPath": "metadata.namespace"},
                                }
                            ]
                        }
                    },
                ]
            },
        },
    ]


def _ended(job: Any) -> tuple[str, bool]:
    """A watched Job's name, and whether it has ended."""
    conditions = (job.status.conditions if job.status else None) or []
    done = any(c.type in ("Complete", "Failed") and c.status == "True" for c in conditions)
    return job.metadata.name, done


def worker_name(job: Any) -> str:
    """``cozy-backup-<hash>``/``cozy-restore-<hash>`` of the job's uid: a DNS label, and
    another name for a job re-created under the same name."""
    word = "backup" if isinstance(job, BackupJob) else "restore"
    key = job.metadata.uid or f"{job.metadata.namespace}/{job.metadata.name}"
    return f"cozy-{word}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


class KubeWorkers:
    """Implements the engine's Executor with worker Jobs (see the module docstring)."""

    def __init__(self, host: KubeHost, settings: WorkerSettings) -> None:
        from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]

        self.host = host
        self.settings = settings
        self._batch = client.BatchV1Api(host.api_client)
        self._core = client.CoreV1Api(host.api_client)

    @property
    def namespace(self) -> str:
        return self.host.platform_namespace

    def launch(
        self,
        job: Any,
        app: AppLocation,
        timeout_seconds: float,
        tool: ToolContainer | None = None,
    ) -> None:
        name = worker_name(job)
        call = self.host.objects.call
        labels = {LABEL_WORKER: "backup" if isinstance(job, BackupJob) else "restore"}
        data = {LOCATION_KEY: json.dumps(unstructure(app))}
        if tool is not None:
            data.update({TOOL_ENV_KEY.format(k): v for k, v in tool.env.items()})
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "stringData": data,
        }
        try:
            call(
                f"create Secret {name}", self._core.create_namespaced_secret, self.namespace, secret
            )
        except ConflictError:
            pass  # launched before (a retry after a crash): keep it
        try:
            created = call(
                f"create Job {name}",
                self._batch.create_namespaced_job,
                self.namespace,
                self._job(job, name, labels, timeout_seconds, tool),
            )
        except ConflictError:
            created = call(
                f"read Job {name}", self._batch.read_namespaced_job, name, self.namespace
            )
        except CozyError:
            # No Job owns the credentials' Secret: do not leave it behind.
            self._delete_secret(name)
            raise
        owner = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": name,
            "uid": created.metadata.uid,
            "controller": True,
        }
        call(
            f"own Secret {name}",
            self._core.patch_namespaced_secret,
            name,
            self.namespace,
            {"metadata": {"ownerReferences": [owner]}},
            _content_type=MERGE_PATCH,
        )

    def _job(
        self,
        job: Any,
        name: str,
        labels: Mapping[str, str],
        timeout_seconds: float,
        tool: ToolContainer | None = None,
    ) -> dict[str, Any]:
        s = self.settings
        word = labels[LABEL_WORKER]
        command = [
            *s.command,
            "--home",
            s.home,
            "worker",
            word,
            f"{job.metadata.namespace}/{job.metadata.name}",
            "--location",
            f"{LOCATION_DIR}/{LOCATION_KEY}",
        ]
        env = [
            {"name": "COZYBACKUP_WORKER_JOB", "value": name},
            {"name": "COZYBACKUP_NAMESPACE", "value": self.namespace},
            # The root filesystem is read-only: temporary files (a driver's staged
            # table of contents, a command's output) go to the home emptyDir.
            {"name": "TMPDIR", "value": s.home},
            *({"name": k, "value": v} for k, v in sorted(s.env.items())),
        ]
        worker: dict[str, Any] = {
            "name": "worker",
            "image": s.image,
            "command": command,
            "env": env,
            "resources": {k: dict(v) for k, v in s.resources.items() if v},
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [
                {"name": "app", "mountPath": LOCATION_DIR, "readOnly": True},
                {"name": "home", "mountPath": s.home},
            ],
        }
        pod: dict[str, Any] = {
            "restartPolicy": "Never",
            "serviceAccountName": s.service_account,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
            "containers": [worker],
            "volumes": [
                {"name": "app", "secret": {"secretName": name}},
                {"name": "home", "emptyDir": {}},
            ],
        }
        if tool is not None:
            _add_tool(pod, worker, tool, name, "out" if word == "backup" else "in")
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": dict(labels),
                "annotations": {
                    ANNOTATION_FOR: f"{job.kind}/{job.metadata.namespace}/{job.metadata.name}"
                },
            },
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": int(timeout_seconds) + s.deadline_grace,
                "ttlSecondsAfterFinished": s.ttl_seconds,
                "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
            },
        }

    def watch_ends(self, stop: threading.Event, wake: threading.Event) -> threading.Thread:
        """Until ``stop``: set ``wake`` when a worker Job ends (Complete or Failed), so the
        controller reads its outcome at once, not at the next ``--interval``.  Only a
        trigger: the pass reads every Job itself, so a missed event costs an interval."""

        def run() -> None:
            from kubernetes import watch  # type: ignore[import-untyped, import-not-found, unused-ignore]

            ended: set[str] = set()
            while not stop.is_set():
                try:
                    for event in watch.Watch().stream(
                        self._batch.list_namespaced_job,
                        self.namespace,
                        label_selector=LABEL_WORKER,
                        timeout_seconds=WATCH_SECONDS,
                    ):
                        name, done = _ended(event["object"])
                        if done and name not in ended:
                            ended.add(name)
                            wake.set()
                        if stop.is_set():
                            return
                except Exception as exc:  # noqa: BLE001 - retried: passes go on meanwhile
                    log.warning("watching worker Jobs failed (retried): %r", exc)
                    stop.wait(RETRY_SECONDS)

        thread = threading.Thread(target=run, name="cozy-worker-ends", daemon=True)
        thread.start()
        return thread

    def state(self, job: Any) -> WorkerState | None:
        name = worker_name(job)
        try:
            got = self.host.objects.call(
                f"read Job {name}", self._batch.read_namespaced_job, name, self.namespace
            )
        except NotFoundError:
            return None
        conditions = (
            {c.type: c for c in (got.status.conditions or []) if c.status == "True"}
            if got.status
            else {}
        )
        ended = "Complete" in conditions or "Failed" in conditions
        notes = got.metadata.annotations or {}
        outcome = None
        if ANNOTATION_OUTCOME in notes:
            try:
                outcome = structure(json.loads(notes[ANNOTATION_OUTCOME]), Outcome)
            except Exception:  # noqa: BLE001 - a damaged report is no report
                log.warning("Job %s: unreadable outcome %r", name, notes[ANNOTATION_OUTCOME])
        progress = None
        if ANNOTATION_PROGRESS in notes:
            try:
                progress = json.loads(notes[ANNOTATION_PROGRESS])
            except ValueError:
                progress = None
        failed = conditions.get("Failed")
        detail = f"{failed.reason}: {failed.message}" if failed is not None else ""
        return WorkerState(
            active=not ended and got.metadata.deletion_timestamp is None,
            outcome=outcome,
            detail=detail,
            progress=progress if isinstance(progress, dict) else None,
        )

    def cancel_strays(self, running: Sequence[Any]) -> list[str]:
        wanted = {worker_name(j) for j in running}
        listed = self.host.objects.call(
            "list worker Jobs",
            self._batch.list_namespaced_job,
            self.namespace,
            label_selector=LABEL_WORKER,
        )
        stopped = []
        for item in listed.items:
            name = item.metadata.name
            ended = any(
                c.type in ("Complete", "Failed") and c.status == "True"
                for c in (item.status.conditions or [])
            )
            if name in wanted or ended or item.metadata.deletion_timestamp is not None:
                continue
            try:
                self.host.objects.call(
                    f"delete Job {name}",
                    self._batch.delete_namespaced_job,
                    name,
                    self.namespace,
                    propagation_policy="Background",
                )
            except NotFoundError:
                continue
            stopped.append(name)
        return stopped

    def release(self, job: Any) -> None:
        # The credentials go now; the Job and its logs stay until their TTL.
        self._delete_secret(worker_name(job))

    def _delete_secret(self, name: str) -> None:
        try:
            self.host.objects.call(
                f"delete Secret {name}", self._core.delete_namespaced_secret, name, self.namespace
            )
        except NotFoundError:
            pass
        except CozyError as exc:
            log.warning("could not delete the worker Secret %s: %s", name, exc)


# --------------------------------------------------------------------------- the worker's side


class WorkerHost(KubeHost):
    """The host a worker runs with: the application's location comes from the mounted
    per-job Secret (no tenant Secret is read), and nothing tenant-visible is written: events
    are only logged, reports go to the worker's own Job."""

    def __init__(self, *args: Any, location: AppLocation, worker_job: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]

        self.location = location
        self.worker_job = worker_job
        self._batch = client.BatchV1Api(self.api_client)

    def locate(self, namespace: str, ref: ApplicationRef) -> AppLocation:
        if (namespace, ref) != (self.location.namespace, self.location.ref):
            raise NotFoundError(
                f"application {ref.kind} {ref.name} is not the one this worker was given"
            )
        return self.location

    def event(self, obj: Any, type_: str, reason: str, message: str) -> None:
        log.info("%s %s: %s: %s", obj.kind, obj.metadata.name, reason, message)

    def report(self, what: str, payload: Mapping[str, Any]) -> None:
        key = ANNOTATION_OUTCOME if what == "outcome" else ANNOTATION_PROGRESS
        self.objects.call(
            f"report {what} on Job {self.worker_job}",
            self._batch.patch_namespaced_job,
            self.worker_job,
            self.platform_namespace,
            {"metadata": {"annotations": {key: json.dumps(dict(payload), sort_keys=True)}}},
            _content_type=MERGE_PATCH,
        )


@contextlib.contextmanager
def tool_session() -> Iterator[ToolPipe | None]:
    """In a worker whose Pod runs a driver's tool beside it: the worker's end of it, with
    the worker said alive while it runs and done when it ends (see ``TOOL_SCRIPT``)."""
    directory = os.environ.get(TOOL_DIR_ENV)
    if not directory:
        yield None
        return
    pipe = ToolPipe(Path(directory))
    pipe.open_session()
    try:
        yield pipe
    finally:
        pipe.close_session()


def read_location(text: str) -> AppLocation:
    """The location a worker was given (the JSON ``launch`` wrote)."""
    location: AppLocation = structure(json.loads(text), AppLocation)
    return location
