"""A test kubelet (and scheduler): runs the containers of Pods as local processes.

No kubelet and no scheduler run in the test cluster, so a Pod stays Pending.  ``Kubelet``
plays both for the namespaces it watches, so that the real Job controller, TTL controller
and garbage collector can do the rest:

1. it registers Node ``runner`` (status Ready);
2. one thread a namespace lists Pods, then watches from the list's resourceVersion (with
   bookmarks), and relists on 410 Gone;
3. each new Pod without a node is bound to ``runner`` (POST ``pods/<name>/binding``); a Pod
   created with ``spec.nodeName: runner`` is taken as it is;
4. init containers run one after the other, then every container at once, each as a local
   process in its own process group: ``command`` + ``args`` (the image is ignored; a
   container without ``command`` fails with ``StartError``), with the Pod's environment;
5. the Pod's status becomes Running, with a ``containerStatuses`` entry a container, and then
   Succeeded, or Failed if any container exited non-zero, with ``state.terminated.exitCode``
   (128 + n for a process killed by signal n, as a container runtime reports it);
6. when the Pod is deleted while it runs (the Job controller does so on
   ``activeDeadlineSeconds``) its processes get SIGTERM, then SIGKILL after the grace period;
   the Pod is reported Failed and then removed (a delete with grace period 0, as a kubelet
   confirms a graceful deletion).  Every process group is killed when its Pod ends, so no
   child a container left behind survives it.

**Environment.**  A container's process gets only: ``PATH`` and ``LANG`` of the test process
(so ``sh`` and ``python`` are found), ``HOME`` = its own empty directory (also its working
directory unless ``workingDir`` is set), and the Pod's ``envFrom`` and ``env``: literal values,
``$(VAR)`` references as Kubernetes expands them, ``valueFrom.secretKeyRef``,
``configMapKeyRef`` and ``fieldRef`` (metadata.name/namespace/uid/labels/annotations,
spec.nodeName/serviceAccountName, status.podIP/hostIP).  ``Kubelet(base_env=...)`` adds more.

**Volumes** are directories under the Pod's directory: ``emptyDir`` (shared by the Pod's
containers), ``secret``, ``configMap``, ``downwardAPI``, ``projected`` (the ServiceAccount token
Kubernetes mounts into every Pod by default comes from the TokenRequest API, bound to the Pod)
and ``hostPath`` (the host path itself).  Other kinds fail the Pod.

**Mount paths are rewritten, not mounted.**  A process here shares the test machine's
filesystem, so a path like ``/etc/creds`` cannot be made to exist for it alone.  Instead,
wherever a ``volumeMounts[].mountPath`` appears in ``command``, ``args``, ``workingDir`` or an
env value as a whole path component (``/etc/creds``, ``/etc/creds/key``, ``--file=/etc/creds/key``
and ``cat /etc/creds/key`` in a shell script, but not ``/etc/credsx`` or ``x/etc/creds``) it is
replaced by the volume's directory, in one pass, the longest mount path first.  A path a
program computes at run time is not rewritten: pass it in through an argument or env var.

**What tests read.**  :meth:`Kubelet.pods` returns a :class:`PodRun` a Pod, whose containers
(:class:`ContainerRun`) keep ``stdout``/``stderr`` (files in the Pod's directory),
``exit_code`` and whether the process group is still ``alive``.  ``Kubelet.errors`` collects
anything unexpected from its threads; the ``kubelet`` fixture fails a test that left some.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client  # type: ignore[import-untyped, import-not-found, unused-ignore]
from kubernetes.client.exceptions import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
    ApiException,
)

NODE = "runner"
STRATEGIC = "application/strategic-merge-patch+json"
T = TypeVar("T")
WATCH_SECONDS = 30  # server-side timeout of one watch request; the watch is then resumed


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(resp: Any) -> Any:
    """The body of a ``_preload_content=False`` response, as plain JSON."""
    return json.loads(_drain(resp))


def _drain(resp: Any) -> bytes:
    """Read a ``_preload_content=False`` response to its end, and give back its connection.

    A connection whose response was not read to the end must not go back to the pool: the
    next request on it would read the rest of this one.
    """
    try:
        return bytes(resp.data)
    finally:
        resp.release_conn()


def _transient(e: BaseException) -> bool:
    """Connection trouble, 429 or 5xx: worth trying again."""
    if isinstance(e, ApiException):
        return e.status is None or e.status == 429 or e.status >= 500
    return isinstance(e, (urllib3.exceptions.HTTPError, OSError))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class PodSetupError(Exception):
    """The Pod cannot be run here (an unsupported volume, a missing Secret, ...)."""


class Missing(PodSetupError):
    """A Secret, ConfigMap or key the Pod names does not exist (yet: this is retried)."""


@dataclass
class ContainerRun:
    """One container of a Pod, run as a local process."""

    name: str
    dir: Path
    init: bool = False
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    exit_code: int | None = None
    reason: str = ""
    message: str = ""
    started_at: str = ""
    finished_at: str = ""

    @property
    def stdout_path(self) -> Path:
        return self.dir / "stdout"

    @property
    def stderr_path(self) -> Path:
        return self.dir / "stderr"

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text() if self.stdout_path.exists() else ""

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        """Whether the process, or anything left in its process group, still runs."""
        if self.proc is None:
            return False
        return self.proc.poll() is None or _group_alive(self.proc.pid)

    def status(self) -> dict[str, Any]:
        """Its entry in the Pod's ``containerStatuses``."""
        if self.reason == "NotStarted" or (self.proc is None and self.exit_code is None):
            state: dict[str, Any] = {"waiting": {"reason": "PodInitializing"}}
        elif self.exit_code is None:
            state = {"running": {"startedAt": self.started_at or _now()}}
        else:
            state = {
                "terminated": {
                    "exitCode": self.exit_code,
                    "reason": self.reason,
                    "message": self.message or None,
                    "startedAt": self.started_at or None,
                    "finishedAt": self.finished_at or _now(),
                }
            }
        return {
            "name": self.name,
            "image": "test-kubelet/local-process",
            "imageID": "",
            "containerID": f"local://{self.pid or 0}",
            "ready": "running" in state,
            "started": "running" in state,
            "restartCount": 0,
            "state": state,
        }


@dataclass
class PodRun:
    """A Pod this kubelet took, and what became of it."""

    namespace: str
    name: str
    uid: str
    labels: dict[str, str]
    dir: Path
    containers: list[ContainerRun] = field(default_factory=list)
    phase: str = "Pending"
    message: str = ""
    deleted: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    terminate: threading.Event = field(default_factory=threading.Event)
    grace_seconds: float = 30.0

    def container(self, name: str | None = None) -> ContainerRun:
        """The container ``name`` (default: the only, else first, regular container)."""
        regular = [c for c in self.containers if not c.init]
        if name is None:
            return regular[0]
        return next(c for c in self.containers if c.name == name)

    @property
    def alive(self) -> bool:
        return any(c.alive for c in self.containers)

    def kill(self) -> None:
        for c in self.containers:
            if c.proc is not None:
                _killpg(c.proc.pid, signal.SIGKILL)


# -- environment and paths ---------------------------------------------------------------

_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` is ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, value)


def path_rewriter(mounts: Mapping[str, Path]) -> Any:
    """A function replacing each mount path (as a whole path component) by its directory."""
    if not mounts:
        return lambda s: s
    paths = sorted((p.rstrip("/") for p in mounts), key=len, reverse=True)
    target = {p.rstrip("/"): str(d) for p, d in mounts.items()}
    pattern = re.compile(
        r"(?<![A-Za-z0-9_.\-/])(" + "|".join(map(re.escape, paths)) + r")(?![A-Za-z0-9_.\-])"
    )
    return lambda s: pattern.sub(lambda m: target[m.group(1)], s)


def _field(pod: dict[str, Any], path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "metadata.labels": "\n".join(f'{k}="{v}"' for k, v in (meta.get("labels") or {}).items()),
        "metadata.annotations": "\n".join(
            f'{k}="{v}"' for k, v in (meta.get("annotations") or {}).items()
        ),
        "spec.nodeName": spec.get("nodeName") or NODE,
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP") or "127.0.0.1",
        "status.hostIP": status.get("hostIP") or "127.0.0.1",
    }
    if path not in simple:
        raise PodSetupError(f"fieldRef {path!r} is not supported by the test kubelet")
    return str(simple[path] or "")


class Kubelet:
    """Node ``runner``: binds and runs the Pods of the namespaces it watches (module doc)."""

    def __init__(
        self,
        api: Any,
        workdir: Path,
        namespaces: tuple[str, ...] | list[str] = (),
        *,
        node: str = NODE,
        base_env: Mapping[str, str] | None = None,
        setup_timeout: float = 30.0,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.workdir = Path(workdir)
        self.node = node
        self.base_env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            **(base_env or {}),
        }
        self.setup_timeout = setup_timeout
        self.errors: list[str] = []
        #: how many times a watch was answered 410 Gone and the namespace listed again
        self.relists = 0
        self._initial = list(namespaces)
        self._runs: dict[str, PodRun] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watched: set[str] = set()
        self._responses: set[Any] = set()

    # -- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> Kubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Kubelet:
        self.register_node()
        for ns in self._initial:
            self.watch(ns)
        return self

    def stop(self) -> None:
        """Kill every process it started, end its threads."""
        with self._lock:  # no thread starts after this
            self._stop.set()
            runs = list(self._runs.values())
            responses = list(self._responses)
            threads = list(self._threads)
        for run in runs:
            run.terminate.set()
            run.kill()
        for resp in responses:  # end the blocking watch reads now
            with contextlib.suppress(Exception):
                resp.shutdown()
        for t in threads:
            t.join(timeout=WATCH_SECONDS + 15)
        for run in runs:
            run.kill()

    def register_node(self) -> None:
        """Create Node ``runner`` (if absent) and report it Ready."""
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {"kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux"},
            },
        }
        try:
            self._call(self.core.create_node, node)
        except ApiException as e:
            if e.status != 409:
                raise
        now = _now()
        resources = {"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi"}
        status = {
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": self.node},
                ],
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "test kubelet: runs Pods as local processes",
                        "lastHeartbeatTime": now,
                        "lastTransitionTime": now,
                    }
                ],
                "nodeInfo": {
                    "architecture": "amd64",
                    "operatingSystem": "linux",
                    "kubeletVersion": "test",
                    "containerRuntimeVersion": "local://processes",
                    "osImage": "",
                    "kernelVersion": "",
                    "bootID": "",
                    "machineID": "",
                    "systemUUID": "",
                },
            }
        }
        self._call(self.core.patch_node_status, self.node, status, _content_type=STRATEGIC)

    def watch(self, namespace: str) -> None:
        """Run the Pods of ``namespace`` too."""
        with self._lock:
            if namespace in self._watched or self._stop.is_set():
                return
            self._watched.add(namespace)
            self._spawn(f"kubelet-watch-{namespace}", self._watch_loop, namespace)

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        """Start a thread (called with the lock held, so stop() sees every thread)."""
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    # -- what tests read -----------------------------------------------------------------

    def pods(self, namespace: str | None = None, *, job: str | None = None) -> list[PodRun]:
        """The Pods taken so far, oldest first; those of one namespace, or of one Job."""
        with self._lock:
            runs = list(self._runs.values())
        return [
            r
            for r in runs
            if (namespace is None or r.namespace == namespace)
            and (job is None or r.labels.get("batch.kubernetes.io/job-name") == job)
        ]

    def pod(self, namespace: str, name: str) -> PodRun:
        return next(r for r in self.pods(namespace) if r.name == name)

    # -- the watch -----------------------------------------------------------------------

    def _watch_loop(self, namespace: str) -> None:
        """List, then watch from the list's resourceVersion, as an informer does.

        A watch that ends or breaks (the server's timeout, an apiserver restart) is resumed
        from the last resourceVersion seen; 410 Gone means that version is no longer served:
        list again.  429 and 5xx answers and connection errors are waited out.
        """
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if rv is None:
                    rv = self._list(namespace)
                rv = self._watch_once(namespace, rv)
            except Exception as e:
                if self._stop.is_set():
                    return
                if isinstance(e, ApiException) and e.status == 410:
                    self.relists += 1
                    rv = None
                    continue
                if not _transient(e):
                    self._error(f"watching Pods in {namespace}:\n{traceback.format_exc()}")
                    rv = None
                self._stop.wait(1)

    def _list(self, namespace: str) -> str:
        # Not through _call: the watch loop deals with failures.
        listed = _json(self.core.list_namespaced_pod(namespace, _preload_content=False))
        present = set()
        for pod in listed["items"]:
            present.add(pod["metadata"]["uid"])
            self._on_event("ADDED", pod)
        # A Pod deleted while no watch was open is seen as deleted now.
        for run in self.pods(namespace):
            if run.uid not in present and not run.done.is_set():
                self._on_deleted(run)
        return str(listed["metadata"]["resourceVersion"])

    def _watch_once(self, namespace: str, rv: str) -> str:
        resp = self.core.list_namespaced_pod(
            namespace,
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=(10, WATCH_SECONDS + 30),
        )
        with self._lock:
            self._responses.add(resp)
        try:
            for line in self._lines(resp):
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":  # a Status; 410 when rv is too old
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                rv = obj["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    self._on_event(event["type"], obj)
        finally:
            with self._lock:
                self._responses.discard(resp)
            resp.close()  # mid-stream: this connection cannot be reused
            resp.release_conn()
        return rv

    def _lines(self, resp: Any) -> Iterator[bytes]:
        buf = b""
        for chunk in resp.stream(amt=None, decode_content=True):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            yield from (line for line in lines if line.strip())
            if self._stop.is_set():
                return
        if buf.strip():
            yield buf

    def _on_event(self, kind: str, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        with self._lock:
            run = self._runs.get(meta["uid"])
        if run is not None:
            if kind == "DELETED":
                self._on_deleted(run)
            elif meta.get("deletionTimestamp"):
                run.grace_seconds = float(meta.get("deletionGracePeriodSeconds") or 0)
                run.terminate.set()
            return
        phase = (pod.get("status") or {}).get("phase", "Pending")
        node = spec.get("nodeName")
        if (
            kind == "DELETED"
            or meta.get("deletionTimestamp")
            or phase != "Pending"
            or node not in (None, "", self.node)
            or spec.get("schedulerName", "default-scheduler") != "default-scheduler"
        ):
            return
        run = PodRun(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            labels=dict(meta.get("labels") or {}),
            dir=self.workdir / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}",
        )
        with self._lock:
            if self._stop.is_set() or run.uid in self._runs:
                return
            self._runs[run.uid] = run
            self._spawn(f"kubelet-pod-{run.name}", self._run_pod, run, pod)

    def _on_deleted(self, run: PodRun) -> None:
        run.deleted = True
        run.grace_seconds = 0
        run.terminate.set()

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``'s body as plain JSON; connection errors, 429 and 5xx are
        retried for up to a minute (an apiserver restart), other errors raised."""
        deadline = time.monotonic() + 60
        while True:
            try:
                return _json(fn(*args, _preload_content=False, **kwargs))
            except Exception as e:
                if not _transient(e) or time.monotonic() > deadline or self._stop.is_set():
                    raise
            time.sleep(0.5)

    def _error(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)

    # -- one Pod -------------------------------------------------------------------------

    def _run_pod(self, run: PodRun, pod: dict[str, Any]) -> None:
        try:
            self._run_pod_inner(run, pod)
        except Exception:
            if not self._stop.is_set():
                self._error(f"Pod {run.namespace}/{run.name}:\n{traceback.format_exc()}")
        finally:
            run.kill()
            run.done.set()

    def _run_pod_inner(self, run: PodRun, pod: dict[str, Any]) -> None:
        ns, name = run.namespace, run.name
        if not pod["spec"].get("nodeName"):
            binding = {
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "uid": run.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
            }
            try:
                # Raw: the generated client cannot parse the Status this answers.
                self._call(self.core.create_namespaced_binding, ns, binding)
            except ApiException as e:
                if e.status == 404:  # deleted meanwhile
                    return
                if e.status != 409:
                    raise
                # Bound already: by us (a retried request), or by someone else.
                current = self._call(self.core.read_namespaced_pod, name, ns)
                if current["spec"].get("nodeName") != self.node:
                    return
        run.dir.mkdir(parents=True, exist_ok=True)
        start_time = _now()
        spec = pod["spec"]
        for c in spec.get("initContainers") or []:
            run.containers.append(ContainerRun(c["name"], run.dir / f"init-{c['name']}", True))
        for c in spec.get("containers") or []:
            run.containers.append(ContainerRun(c["name"], run.dir / c["name"]))
        by_name = {c["name"]: c for c in [*(spec.get("initContainers") or []), *spec["containers"]]}
        try:
            volumes = self._retry(run, lambda: self._volumes(pod, run.dir / "volumes"))
            for c in run.containers:
                self._retry(run, lambda c=c: self._configure(c, by_name[c.name], pod, volumes))  # type: ignore[misc]
        except (PodSetupError, ApiException) as e:
            msg = e.reason if isinstance(e, ApiException) else str(e)
            run.message = f"the test kubelet cannot run this Pod: {msg}"
            for c in run.containers:
                c.exit_code, c.reason, c.message = 128, "CreateContainerConfigError", run.message
            self._finish(run, start_time)
            return

        inits = [c for c in run.containers if c.init]
        regular = [c for c in run.containers if not c.init]
        self._patch_status(run, start_time, "Pending" if inits else "Running")
        for c in inits:
            self._launch(run, c)
            self._wait(run, [c])
            if c.exit_code != 0:
                break
        else:
            for c in regular:
                self._launch(run, c)
            if inits:
                self._patch_status(run, start_time, "Running")
            self._wait(run, regular)
        self._finish(run, start_time)

    def _finish(self, run: PodRun, start_time: str) -> None:
        for c in run.containers:
            if c.exit_code is None:  # never started: an init container failed
                c.exit_code, c.reason = 0, "NotStarted"
        if self._stop.is_set():
            return
        ran = [c for c in run.containers if c.reason != "NotStarted"]
        run.phase = "Succeeded" if all(c.exit_code == 0 for c in ran) else "Failed"
        if run.terminate.is_set() and run.phase == "Succeeded":
            run.phase = "Failed"  # stopped before it was done, as a kubelet reports it
        if not run.deleted:
            self._patch_status(run, start_time, run.phase)
            if run.terminate.is_set():  # confirm the graceful deletion, as a kubelet does
                with contextlib.suppress(ApiException):
                    self._call(
                        self.core.delete_namespaced_pod,
                        run.name,
                        run.namespace,
                        body={"gracePeriodSeconds": 0, "preconditions": {"uid": run.uid}},
                        grace_period_seconds=0,
                    )

    def _patch_status(self, run: PodRun, start_time: str, phase: str) -> None:
        run.phase = phase
        now = _now()
        running = phase == "Running"
        regular = [c for c in run.containers if not c.init]
        inits = [c for c in run.containers if c.init]
        body: dict[str, Any] = {
            "status": {
                "phase": phase,
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": start_time,
                "message": run.message or None,
                "conditions": [
                    {"type": t, "status": s, "lastTransitionTime": now}
                    for t, s in (
                        ("PodScheduled", "True"),
                        ("Initialized", str(phase != "Pending" or not inits)),
                        ("ContainersReady", str(running)),
                        ("Ready", str(running)),
                    )
                ],
                "containerStatuses": [c.status() for c in regular],
            }
        }
        if inits:
            body["status"]["initContainerStatuses"] = [c.status() for c in inits]
        try:
            self._call(
                self.core.patch_namespaced_pod_status,
                run.name,
                run.namespace,
                body,
                _content_type=STRATEGIC,
            )
        except ApiException as e:
            if e.status != 404:  # gone: nobody left to tell
                raise
            run.deleted = True

    # -- containers ----------------------------------------------------------------------

    def _retry(self, run: PodRun, step: Callable[[], T]) -> T:
        """``step()``, again while what it reads is missing, for up to ``setup_timeout``.

        A kubelet keeps a Pod waiting until the Secret it names exists; this one gives up
        after a while, so that a test sees a failed Pod rather than a hang.
        """
        deadline = time.monotonic() + self.setup_timeout
        while True:
            try:
                return step()
            except Missing:
                if time.monotonic() > deadline or run.terminate.is_set() or self._stop.is_set():
                    raise
            time.sleep(0.5)

    def _configure(
        self, c: ContainerRun, spec: dict[str, Any], pod: dict[str, Any], volumes: dict[str, Path]
    ) -> None:
        """Resolve a container's argv, env and working directory."""
        mounts: dict[str, Path] = {}
        for m in spec.get("volumeMounts") or []:
            if m["name"] not in volumes:
                raise PodSetupError(f"volumeMount {m['name']!r} names no volume")
            mounts[m["mountPath"]] = volumes[m["name"]] / m.get("subPath", "")
        rewrite = path_rewriter(mounts)
        env = self._env(spec, pod)
        if not spec.get("command"):
            raise PodSetupError(
                f"container {c.name}: no command; the test kubelet runs command + args "
                "and knows no image entrypoint"
            )
        home = c.dir / "home"
        c.argv = [rewrite(expand(a, env)) for a in [*spec["command"], *(spec.get("args") or [])]]
        c.env = {**self.base_env, "HOME": str(home), **{k: rewrite(v) for k, v in env.items()}}
        c.cwd = Path(rewrite(spec["workingDir"])) if spec.get("workingDir") else home

    def _launch(self, run: PodRun, c: ContainerRun) -> None:
        """Start a configured container's process, in a process group of its own."""
        (c.dir / "home").mkdir(parents=True, exist_ok=True)
        c.started_at = _now()
        if run.terminate.is_set():
            c.exit_code, c.reason, c.finished_at = 137, "Error", _now()
            return
        with c.stdout_path.open("wb") as out, c.stderr_path.open("wb") as err:
            try:
                c.proc = subprocess.Popen(
                    c.argv,
                    env=c.env,
                    cwd=c.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            except OSError as e:
                c.exit_code, c.reason, c.finished_at = 128, "StartError", _now()
                c.message = f"{c.argv[0]}: {e}"
                err.write(f"{c.message}\n".encode())

    def _wait(self, run: PodRun, containers: list[ContainerRun]) -> None:
        """Wait until every process ends; on terminate: SIGTERM, then SIGKILL after grace."""
        term_sent: float | None = None
        while True:
            pending = [c for c in containers if c.exit_code is None and c.proc is not None]
            for c in pending:
                assert c.proc is not None
                code = c.proc.poll()
                if code is not None:
                    _killpg(c.proc.pid, signal.SIGKILL)  # whatever it left in its group
                    c.exit_code = 128 - code if code < 0 else code
                    c.reason = "Completed" if code == 0 else "Error"
                    c.finished_at = _now()
            if all(c.exit_code is not None for c in containers):
                return
            if run.terminate.is_set():
                if term_sent is None:
                    term_sent = time.monotonic()
                    for c in pending:
                        assert c.proc is not None
                        _killpg(c.proc.pid, signal.SIGTERM)
                elif time.monotonic() - term_sent >= run.grace_seconds:
                    run.kill()
            time.sleep(0.05)

    def _env(self, spec: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for src in spec.get("envFrom") or []:
            prefix = src.get("prefix", "")
            if "secretRef" in src:
                data = self._secret(ns, src["secretRef"]["name"], src["secretRef"].get("optional"))
            elif "configMapRef" in src:
                ref = src["configMapRef"]
                data = self._config_map(ns, ref["name"], ref.get("optional"))
            else:
                raise PodSetupError(f"envFrom {src!r} is not supported by the test kubelet")
            env.update({prefix + k: v.decode() for k, v in data.items()})
        for var in spec.get("env") or []:
            name, source = var["name"], var.get("valueFrom")
            if source is None:
                env[name] = expand(var.get("value", ""), env)
            elif "secretKeyRef" in source or "configMapKeyRef" in source:
                secret = "secretKeyRef" in source
                ref = source["secretKeyRef" if secret else "configMapKeyRef"]
                read = self._secret if secret else self._config_map
                data = read(ns, ref["name"], ref.get("optional"))
                if ref["key"] in data:
                    env[name] = data[ref["key"]].decode()
                elif not ref.get("optional"):
                    raise Missing(f"key {ref['key']!r} is not in {ref['name']!r}")
            elif "fieldRef" in source:
                env[name] = _field(pod, source["fieldRef"]["fieldPath"])
            else:
                raise PodSetupError(f"env {name}: {source!r} is not supported by the test kubelet")
        return env

    def _secret(self, ns: str, name: str, optional: bool | None) -> dict[str, bytes]:
        try:
            obj = self._call(self.core.read_namespaced_secret, name, ns)
        except ApiException as e:
            if e.status == 404 and optional:
                return {}
            if e.status == 404:
                raise Missing(f"secret {name!r} not found") from None
            raise
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    def _config_map(self, ns: str, name: str, optional: bool | None) -> dict[str, bytes]:
        try:
            obj = self._call(self.core.read_namespaced_config_map, name, ns)
        except ApiException as e:
            if e.status == 404 and optional:
                return {}
            if e.status == 404:
                raise Missing(f"configmap {name!r} not found") from None
            raise
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    # -- volumes -------------------------------------------------------------------------

    def _volumes(self, pod: dict[str, Any], root: Path) -> dict[str, Path]:
        out: dict[str, Path] = {}
        for vol in pod["spec"].get("volumes") or []:
            name = vol["name"]
            if "hostPath" in vol:
                out[name] = Path(vol["hostPath"]["path"])
                continue
            d = root / name
            d.mkdir(parents=True, exist_ok=True)
            out[name] = d
            if "emptyDir" in vol:
                pass
            elif "secret" in vol or "configMap" in vol:
                self._project(pod, d, [vol])
            elif "projected" in vol:
                mode = vol["projected"].get("defaultMode")
                self._project(pod, d, vol["projected"].get("sources") or [], mode)
            elif "downwardAPI" in vol:
                self._project(pod, d, [vol])
            else:
                kinds = sorted(set(vol) - {"name"})
                raise PodSetupError(
                    f"volume {name!r}: {kinds} is not supported by the test kubelet"
                )
        return out

    def _project(
        self,
        pod: dict[str, Any],
        d: Path,
        sources: list[dict[str, Any]],
        projected_mode: int | None = None,
    ) -> None:
        """Write the files of secret/configMap/downwardAPI/serviceAccountToken sources."""
        ns = pod["metadata"]["namespace"]
        for src in sources:
            files: dict[str, tuple[bytes, int | None]] = {}
            if "secret" in src or "configMap" in src:
                secret = "secret" in src
                ref = src["secret" if secret else "configMap"]
                name = ref.get("secretName") or ref.get("name")
                read = self._secret if secret else self._config_map
                data = read(ns, name, ref.get("optional"))
                mode = ref.get("defaultMode", projected_mode)
                if ref.get("items"):
                    for item in ref["items"]:
                        if item["key"] not in data:
                            if ref.get("optional"):
                                continue
                            raise Missing(f"key {item['key']!r} is not in {name!r}")
                        files[item["path"]] = (data[item["key"]], item.get("mode", mode))
                else:
                    files.update({k: (v, mode) for k, v in data.items()})
            elif "downwardAPI" in src:
                mode = src["downwardAPI"].get("defaultMode", projected_mode)
                for item in src["downwardAPI"].get("items") or []:
                    if "fieldRef" not in item:
                        raise PodSetupError(f"downwardAPI {item!r} is not supported")
                    value = _field(pod, item["fieldRef"]["fieldPath"]).encode()
                    files[item["path"]] = (value, item.get("mode", mode))
            elif "serviceAccountToken" in src:
                tok = src["serviceAccountToken"]
                files[tok["path"]] = (self._token(pod, tok), projected_mode)
            else:
                raise PodSetupError(f"volume source {sorted(src)} is not supported")
            for rel, (content, file_mode) in files.items():
                p = d / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(content)
                p.chmod(file_mode if file_mode is not None else 0o644)

    def _token(self, pod: dict[str, Any], tok: dict[str, Any]) -> bytes:
        meta = pod["metadata"]
        sa = pod["spec"].get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [tok["audience"]] if tok.get("audience") else [],
                "expirationSeconds": tok.get("expirationSeconds", 3600),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        resp = self._call(
            self.core.create_namespaced_service_account_token, sa, meta["namespace"], body
        )
        return str(resp["status"]["token"]).encode()
