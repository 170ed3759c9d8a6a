"""``cozybackup``: a kubectl-like CLI over the embedded host."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml

from ._api.crd import all_crds
from ._api.errors import CozyError, ValidationError
from ._api.types import (
    KINDS,
    ArtifactRecord,
    Backup,
    BackupClass,
    BackupJob,
    RestoreJob,
    StorageLocation,
)
from ._api.units import human_bytes, short_list
from ._api.version import __version__
from ._api.wire import load_yaml
from ._catalog.catalog import BUILTIN_STORAGE, DEFAULT_CLASS, builtin_class
from ._cli import completion, options
from ._cli.describe import describe
from ._cli.labels import parse_selector
from ._cli.output import output_format, render_objects, row, table
from ._cli.serving import ProgressPrinter, metrics_served, serve, stop_on_signals
from ._cli.status import standing_json, standing_row
from ._engine.admission import admit
from ._engine.engine import Engine, EngineConfig
from ._engine.standing import standings
from ._plugins.host import PluginHost
from ._storage.providers import unusable_keys
from .hosts._local_types import Application, Secret
from .hosts.kube_install import DEFAULT_NAMESPACE, IMAGE_REPOSITORY, kustomize_files
from .hosts.kube_install import bundle as install_bundle
from .hosts.kube_install import objects as install_objects
from .hosts.kube_install import to_yaml as install_yaml
from .hosts.local import LOCAL_KINDS, LocalHost, default_home

log = logging.getLogger("cozybackup")

_ALIASES: dict[str, type[Any]] = {}
_cls: Any
for _cls in (*KINDS.values(), Application, Secret):
    _plural = _cls.kind.lower() + ("es" if _cls.kind.endswith("s") else "s")
    for _alias in (_cls.kind.lower(), _plural):
        _ALIASES[_alias] = _cls
_ALIASES.update({"bj": BackupJob, "rj": RestoreJob, "bc": BackupClass, "apps": Application})


def _kind(name: str) -> type[Any]:
    try:
        return _ALIASES[name.lower()]
    except KeyError:
        kinds = ", ".join(sorted(c.kind for c in {*_ALIASES.values()}))
        raise ValidationError([("KIND", f"{name!r} is not a kind (one of {kinds})")]) from None


def _load_plugins() -> PluginHost:
    extra = [p.strip() for p in os.environ.get("COZYBACKUP_PLUGINS", "").split(",") if p.strip()]
    return PluginHost.load(modules=extra)


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.host = LocalHost(Path(args.home))
        self._plugins: PluginHost | None = None

    @property
    def plugins(self) -> PluginHost:
        if self._plugins is None:
            self._plugins = _load_plugins()
        return self._plugins

    def engine(self, on_progress: Any = None) -> Engine:
        return Engine(self.host, self.plugins, self.config(), on_progress=on_progress)

    def config(self) -> EngineConfig:
        """The engine's settings from ``run``/``controller``'s options (defaults elsewhere)."""
        if not hasattr(self.args, "workers"):
            return EngineConfig()
        return EngineConfig(
            workers=self.args.workers,
            finished_job_ttl=self.args.job_ttl,
            workers_per_tenant=getattr(self.args, "workers_per_tenant", None),
            leave_unserved=getattr(self.args, "leave_unserved", False),
        )


# ---------------------------------------------------------------------------- commands


def _pass_options(parser: argparse.ArgumentParser) -> None:
    """What ``run`` and ``controller`` share: how often a pass runs, how wide."""
    parser.add_argument(
        "--interval",
        type=options.interval,
        default=30.0,
        help="seconds between passes, at least 1 (default %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=options.workers,
        default=2,
        help="jobs for different applications run in parallel; with controller "
        "--data-mover jobs, the worker Jobs running at once (default %(default)s)",
    )
    parser.add_argument(
        "--metrics-address",
        type=options.address,
        metavar="HOST:PORT",
        help="serve Prometheus /metrics, /healthz and /readyz here (docs/metrics.md); "
        "off by default",
    )
    parser.add_argument(
        "--job-ttl",
        type=options.job_ttl,
        default=14 * 86400.0,
        metavar="DURATION",
        help="delete BackupJobs and RestoreJobs this long after they finish (their Backups "
        "stay), e.g. 14d, 36h; 'never' keeps them (default 14d)",
    )


def _read_manifest(path: Path) -> str:
    try:
        return sys.stdin.read() if str(path) == "-" else path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError([("", f"{path}: not UTF-8 text (byte {exc.start})")]) from None
    except IsADirectoryError:
        raise ValidationError([("", f"{path}: is a directory")]) from None


def _check_keys(ctx: Ctx, objs: list[Any]) -> None:
    """Encryption keys that would fail every job are refused now, with the field named:
    the applied locations, and stored ones whose key Secrets are applied."""
    applied = {o.metadata.name: o for o in objs if isinstance(o, Secret)}

    def secret(name: str) -> dict[str, str] | None:
        found = applied.get(name) or ctx.host.objects.get(Secret, None, name)
        return found.values() if found is not None else None

    locations = {o.metadata.name: o for o in ctx.host.objects.list(StorageLocation)}
    locations.update({o.metadata.name: o for o in objs if isinstance(o, StorageLocation)})
    problems = []
    for loc in locations.values():
        enc = loc.spec.encryption
        touched = loc in objs or (enc and any(k.secret_ref.name in applied for k in enc.keys))
        if enc is not None and touched:
            where = f"StorageLocation {loc.metadata.name}"
            problems += [(f, f"{m} [{where}]") for f, m in unusable_keys(enc, secret)]
    if problems:
        raise ValidationError(problems)


def cmd_apply(ctx: Ctx) -> int:
    paths: list[Path] = []
    for f in ctx.args.filename:
        p = Path(f)
        paths.extend(
            sorted(q for q in p.rglob("*") if q.suffix in (".yaml", ".yml", ".json"))
            if p.is_dir()
            else [p]
        )
    objs = []
    for p in paths:
        objs.extend(load_yaml(_read_manifest(p), str(p), LOCAL_KINDS, ctx.args.namespace))
    # Admin objects first, so a class applied with its storage in one file validates.
    order = {StorageLocation: 0, Secret: 0, BackupClass: 1, Application: 1}
    objs.sort(key=lambda o: order.get(type(o), 2))
    store = ctx.host.objects
    # Validate everything before writing anything: a bad file changes nothing.
    cat = ctx.engine().catalog()
    cat.storages.update({o.metadata.name: o for o in objs if isinstance(o, StorageLocation)})
    plan = admit(
        objs,
        cat,
        store.get,
        tenant=ctx.args.tenant,
        warn=lambda text: print(f"Warning: {text}", file=sys.stderr),
        listing=store.list,
    )
    _check_keys(ctx, objs)
    suffix = " (dry run)" if ctx.args.dry_run else ""
    for obj, action in plan:
        if action != "unchanged" and not ctx.args.dry_run:
            store.replace(obj)
        print(f"{obj.kind.lower()}/{obj.metadata.name} {action}{suffix}")
    return 0


def _all(ctx: Ctx, cls: type[Any], ns: str | None) -> list[Any]:
    items = list(ctx.host.objects.list(cls, ns))
    if cls is BackupClass and not any(c.metadata.name == DEFAULT_CLASS for c in items):
        items.insert(0, builtin_class(ctx.plugins.registry))
    if cls is StorageLocation and not any(
        s.metadata.name == BUILTIN_STORAGE.metadata.name for s in items
    ):
        items.insert(0, BUILTIN_STORAGE)
    return items


def _selected(ctx: Ctx, cls: type[Any], ns: str | None) -> list[Any]:
    """The objects ``get``/``delete`` name: by name, else all of the kind, narrowed by
    ``-l``."""
    items = _all(ctx, cls, ns)
    if getattr(ctx.args, "name", None):
        items = [i for i in items if i.metadata.name == ctx.args.name]
    if getattr(ctx.args, "selector", None):
        wanted = parse_selector(ctx.args.selector)
        items = [i for i in items if wanted(i.metadata.labels)]
    return items


def _none_found(cls: type[Any], ns: str | None) -> None:
    """What kubectl says for an empty result, on stderr."""
    where = f" in {ns} namespace" if ns is not None else ""
    print(f"No resources found{where}.", file=sys.stderr)


def cmd_get(ctx: Ctx) -> int:
    cls = _kind(ctx.args.kind)
    ns = None if (ctx.args.all_namespaces or not cls.namespaced) else ctx.args.namespace
    if ctx.args.watch:
        return _watch(ctx, cls, ns)
    items = _selected(ctx, cls, ns)
    if ctx.args.name and not items:
        print(
            f'Error from server (NotFound): {cls.kind} "{ctx.args.name}" not found', file=sys.stderr
        )
        return 1
    fmt = ctx.args.output
    if not items and fmt in ("table", "wide", "name"):
        _none_found(cls, ns)
        return 0
    text = render_objects(
        items, fmt, single=bool(ctx.args.name), with_ns=ctx.args.all_namespaces, now=ctx.host.now()
    )
    print(text, end="")
    return 0


def _watch(ctx: Ctx, cls: type[Any], ns: str | None) -> int:
    """``get -w``: a row whenever one changes, until Ctrl-C; with a job's name, until that
    job ends (exit 0 when it succeeded, 1 when it failed)."""
    fmt = ctx.args.output if ctx.args.output in ("table", "wide") else "table"
    following = ctx.args.name if cls in (BackupJob, RestoreJob) else None
    seen: dict[tuple[str, str], dict[str, str]] = {}
    header_done = False
    while True:
        now = ctx.host.now()
        items = _selected(ctx, cls, ns)
        if ctx.args.name and not items and not seen:
            print(
                f'Error from server (NotFound): {cls.kind} "{ctx.args.name}" not found',
                file=sys.stderr,
            )
            return 1
        for item in items:
            key = (item.metadata.namespace or "", item.metadata.name)
            cells = row(item, ctx.args.all_namespaces, now, wide=fmt == "wide")
            # A row is news when anything but its ages changed.
            news = {k: v for k, v in cells.items() if k not in ("AGE", "DURATION", "LAST", "TAKEN")}
            if seen.get(key) != news:
                seen[key] = news
                text = table([cells])
                print(text if not header_done else text.split("\n", 1)[1], end="", flush=True)
                header_done = True
            if following and item.status.phase in ("Succeeded", "Failed"):
                return 0 if item.status.phase == "Succeeded" else 1
        time.sleep(0.5)


def cmd_status(ctx: Ctx) -> int:
    """Where every protected application stands; exit 1 when an objective is missed, so a
    check or a cron job can alert on it."""
    host: Any = ctx.host
    if ctx.args.kubeconfig:
        from .hosts.kube import KubeHost

        host = KubeHost.from_config(kubeconfig=ctx.args.kubeconfig)
    try:
        now = host.now()
        found = standings(host, ctx.args.namespace)
    finally:
        if host is not ctx.host:
            host.close()
    missed = [a for a in found if a.objectives_met(now) is False]
    if ctx.args.output == "json":
        print(json.dumps([standing_json(a, now) for a in found], indent=2))
    elif not found:
        where = f" in namespace {ctx.args.namespace}" if ctx.args.namespace else ""
        print(f"No protected applications{where} (no Backups, no Plans).", file=sys.stderr)
    else:
        print(table([standing_row(a, now) for a in found]), end="")
        if missed:
            print(
                f"\n{len(missed)} application{'s' if len(missed) != 1 else ''} "
                "missing an objective",
                file=sys.stderr,
            )
    return 1 if missed else 0


def cmd_describe(ctx: Ctx) -> int:
    cls = _kind(ctx.args.kind)
    ns = ctx.args.namespace if cls.namespaced else None
    items = [i for i in _all(ctx, cls, ns) if i.metadata.name == ctx.args.name]
    if not items:
        print(f"error: {cls.kind} {ctx.args.name} not found in namespace {ns}", file=sys.stderr)
        return 1
    events = ctx.host.events(ns, cls.kind, ctx.args.name)
    print(describe(items[0], events, ctx.host.now()), end="")
    return 0


def cmd_delete(ctx: Ctx) -> int:
    cls = _kind(ctx.args.kind)
    ns = ctx.args.namespace if cls.namespaced else None
    if bool(ctx.args.name) == bool(ctx.args.selector):
        raise ValidationError([("NAME", "give a name or -l SELECTOR (one of them)")])
    items = _selected(ctx, cls, ns)
    if not items:
        if ctx.args.name:
            print(
                f'Error from server (NotFound): {cls.kind} "{ctx.args.name}" not found',
                file=sys.stderr,
            )
            return 1
        _none_found(cls, ns)
        return 0
    if cls is Backup:
        print(
            "error: deleting Backups (and their data) is done by retention; not supported here yet",
            file=sys.stderr,
        )
        return 2
    if cls is StorageLocation:
        for loc in items:
            users = _location_users(ctx, loc.metadata.name)
            if users:
                shown = short_list(users)
                print(
                    f"error: StorageLocation {loc.metadata.name} is still used by {shown}; "
                    "point them elsewhere (or let retention remove the Backups) first",
                    file=sys.stderr,
                )
                return 2
    suffix = " (dry run)" if ctx.args.dry_run else ""
    for item in items:
        if not ctx.args.dry_run:
            ctx.host.objects.delete(cls, ns, item.metadata.name)
        print(f"{cls.kind.lower()}/{item.metadata.name} deleted{suffix}")
    return 0


def _location_users(ctx: Ctx, location: str) -> list[str]:
    """What a deleted location would strand: classes that store there, and the records
    of Backups whose data is there (retention could then never delete them)."""
    users = []
    for c in ctx.host.objects.list(BackupClass):
        refs = [c.spec.storage_ref, *(b.storage_ref for b in c.spec.strategies)]
        if any(r is not None and r.name == location for r in refs):
            users.append(f"BackupClass {c.metadata.name}")
    held = sum(
        1 for r in ctx.host.objects.list(ArtifactRecord) if r.spec.storage_ref.name == location
    )
    if held:
        users.append(f"{held} Backup{'s' if held != 1 else ''}")
    return users


def cmd_run(ctx: Ctx) -> int:
    engine = ctx.engine(ProgressPrinter(ctx.args.quiet))
    recovered = threading.Event()
    address = ctx.args.metrics_address
    with ctx.host.runner_lock(), metrics_served(address, engine, recovered.is_set) as metrics:
        # Jobs run inside passes here, so a pass lasts as long as a backup: /healthz
        # does not judge passes by their age.
        return serve(
            engine,
            interval=ctx.args.interval,
            once=ctx.args.once,
            with_namespace=False,
            metrics=metrics,
            recovered=recovered,
            # Streamers (continuous archiving) keep their directories under the home; a
            # single pass starts none (a streamer is for a runner that stays).
            streams_dir=None if ctx.args.once else Path(ctx.host.home) / "streams",
        )


def cmd_controller(ctx: Ctx) -> int:
    """Run the engine against a Kubernetes cluster: the loop of ``cmd_run``, every
    ``--interval`` seconds, until SIGTERM/SIGINT (running jobs finish first).

    One controller is active per cluster: each replica waits for the Lease
    ``--lease`` in the platform namespace, recovers and runs passes only while it holds
    it, and releases it on a clean stop so a successor takes over at once.  A replica
    that cannot renew the Lease exits at once (status 3); the successor's recovery settles
    the jobs it was running (``--data-mover jobs``: it adopts their worker Jobs).
    ``--metrics-address``: /metrics, /readyz (recovered and leading) and /healthz (a
    standby is alive; a leader whose passes stopped is not).  ``--home`` (or ``$COZYBACKUP_HOME``) must be writable, as for
    every command, though nothing is kept there.
    """
    from .hosts.kube import KubeHost, load_conventions

    # The drivers' own locators, with the admin's conventions file over them.
    conventions = {
        **ctx.plugins.registry.locators(),
        **(
            load_conventions(Path(ctx.args.conventions).read_text(), ctx.args.conventions)
            if ctx.args.conventions
            else {}
        ),
    }
    host = KubeHost.from_config(
        platform_namespace=ctx.args.platform_namespace,
        kubeconfig=ctx.args.kubeconfig,
        conventions=conventions,
        local_bucket_root=ctx.args.local_buckets,
    )
    engine = Engine(host, ctx.plugins, ctx.config())
    workers = _worker_jobs(ctx, host) if ctx.args.data_mover == "jobs" else None
    if workers is not None:
        engine.executor = workers
    stop = stop_on_signals()
    elector = host.elector(ctx.args.lease)
    leading_now, recovered = threading.Event(), threading.Event()
    # Worker Jobs keep passes short, so a pass older than three intervals (five minutes at
    # least) is a wedged loop; inline, a pass lasts as long as the backup it runs.
    stale = max(3 * ctx.args.interval, 300.0) if ctx.args.data_mover == "jobs" else None
    where = f"{host.platform_namespace}/{ctx.args.lease}"

    def waiting(holder: str | None) -> None:
        held = f"held by {holder}" if holder else "not held yet"
        print(f"waiting for the controller Lease {where} ({held})", file=sys.stderr)

    def lost() -> None:
        # Another replica may take over now: stop every write at once.
        print(f"error: lost the controller Lease {where}; exiting", file=sys.stderr, flush=True)
        os._exit(3)

    try:
        with (
            metrics_served(
                ctx.args.metrics_address,
                engine,
                recovered.is_set,
                active=leading_now.is_set,
                stale_after=stale,
            ) as metrics,
            elector.leading(stop, lost, waiting) as leading,
        ):
            if not leading:
                return 0
            print(f"leading: holding the controller Lease {where}", file=sys.stderr)
            leading_now.set()
            # Passes read informers; a new job starts one at once, not at the next --interval,
            wake = threading.Event()
            host.objects.inform(stop, wake)
            if workers is not None:  # and a worker Job that ends wakes it too
                workers.watch_ends(stop, wake)
            serve(
                engine,
                interval=ctx.args.interval,
                once=ctx.args.once,
                with_namespace=True,
                stop=stop,
                wake=wake,
                metrics=metrics,
                recovered=recovered,
            )
    finally:
        host.close()
    return 0


def _worker_jobs(ctx: Ctx, host: Any) -> Any:
    """The controller's worker Jobs, from its ``--worker-*`` options."""
    from .hosts.kube_workers import KubeWorkers, WorkerSettings

    image = ctx.args.worker_image or os.environ.get("COZYBACKUP_WORKER_IMAGE")
    if not image:
        raise ValidationError(
            [("--worker-image", "required with --data-mover jobs (or $COZYBACKUP_WORKER_IMAGE)")]
        )
    env: dict[str, str] = {}
    for item in ctx.args.worker_env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValidationError([("--worker-env", f"{item!r} is not KEY=VALUE")])
        env[key] = value
    command = tuple(shlex.split(ctx.args.worker_command))
    if not command:
        raise ValidationError([("--worker-command", "is empty")])
    resources = {
        "requests": {"cpu": "250m", "memory": "256Mi", **ctx.args.worker_requests},
        "limits": dict(ctx.args.worker_limits),
    }
    return KubeWorkers(
        host, WorkerSettings(image=image, command=command, env=env, resources=resources)
    )


def cmd_worker(ctx: Ctx) -> int:
    """Run one job's data move (what a worker Job runs; see hosts/kube_workers.py)."""
    from ._engine.workers import WorkerServices, run_in_worker
    from .hosts.kube_workers import WorkerHost, read_location, tool_session

    ns, sep, name = ctx.args.job.partition("/")
    if not sep or not ns or not name:
        raise ValidationError([("JOB", f"{ctx.args.job!r} is not NAMESPACE/NAME")])
    worker_job = os.environ.get("COZYBACKUP_WORKER_JOB", "")
    if not worker_job:
        raise ValidationError([("COZYBACKUP_WORKER_JOB", "not set: run by a worker Job only")])
    host = WorkerHost.from_config(
        platform_namespace=ctx.args.platform_namespace,
        kubeconfig=ctx.args.kubeconfig,
        location=read_location(Path(ctx.args.location).read_text()),
        worker_job=worker_job,
    )
    # The tool's container (a driver's own image) waits on us: it is told we are done
    # however this ends.
    with tool_session() as tool:
        try:
            job: BackupJob | RestoreJob | None = (
                host.objects.get(BackupJob, ns, name)
                if ctx.args.what == "backup"
                else host.objects.get(RestoreJob, ns, name)
            )
            if job is None or job.status.phase != "Running":
                print(f"error: {ctx.args.what} job {ns}/{name} is not running", file=sys.stderr)
                return 1
            svc = WorkerServices(host, ctx.plugins, ctx.config(), report=host.report)
            svc.tool = tool
            outcome = run_in_worker(svc, job)
        finally:
            host.close()
    print(f"{ctx.args.what} {ns}/{name}: {outcome.reason}: {outcome.message}")
    return 0 if outcome.ok else 1


def cmd_verify(ctx: Ctx) -> int:
    if _kind(ctx.args.kind) is not Backup:
        raise ValidationError([("KIND", "only backups can be verified")])
    backup = ctx.host.objects.get(Backup, ctx.args.namespace, ctx.args.name)
    if backup is None:
        print(
            f"error: Backup {ctx.args.name} not found in namespace {ctx.args.namespace}",
            file=sys.stderr,
        )
        return 1
    result = ctx.engine().verify(backup, drill=ctx.args.drill).status.last_verified
    assert result is not None
    print(f"backup/{ctx.args.name} {result.method} {result.result}: {result.message}")
    return 0 if result.result == "Passed" else 1


def cmd_prune(ctx: Ctx) -> int:
    engine = ctx.engine()
    with ctx.host.runner_lock():
        actions = engine.prune(dry_run=ctx.args.dry_run, collect=True)
        frees = engine.retention_frees(actions) if ctx.args.dry_run else None
        archives = engine.prune_archives(actions, dry_run=ctx.args.dry_run)
    verb = "would delete" if ctx.args.dry_run else "deleted"
    for arch in archives:
        print(
            f"archive {arch.namespace}/{arch.application}: {verb} {len(arch.expired)} "
            f"segment(s), {arch.kept} {arch.reason}"
        )
    if not actions:
        print("no Backup is under a retention policy", file=sys.stderr)
        return 0
    rows = []
    for a in actions:
        cells = {
            "NAMESPACE": a.namespace,
            "BACKUP": a.backup,
            "APPLICATION": a.application,
            "TAKEN": a.taken_at,
            "ACTION": verb if a.delete else "keep",
        }
        if frees is not None:
            alone = frees.alone.get((a.namespace, a.backup))
            cells["FREES"] = human_bytes(alone) if a.delete and alone is not None else ""
        rows.append({**cells, "WHY": a.reason})
    print(table(rows), end="")
    if frees is not None:
        # More than the sum when Backups it deletes share chunks only among themselves.
        print(f"retention would free {human_bytes(frees.total)} of storage in all")
    return 0


def cmd_usage(ctx: Ctx) -> int:
    """Per tenant and application: backups, logical and stored bytes, their ratio."""
    found = [u for _, u in ctx.engine().usages() if ctx.args.namespace in (None, u.namespace)]
    lines = [
        (u.namespace, label, totals)
        for u in found
        for label, totals in [
            *((f"{kind}/{app}", t) for (kind, app), t in u.applications.items()),
            ("(all)", u.total),  # each chunk once: less than the sum when apps share
        ]
    ]
    if ctx.args.output == "json":
        docs = [
            {
                "namespace": ns,
                "application": app,
                "backups": t.backups,
                "logicalBytes": t.logical_bytes,
                "storedBytes": t.stored_bytes,
                "ratio": round(t.ratio, 3),
            }
            for ns, app, t in lines
        ]
        print(json.dumps(docs, indent=2))
        return 0
    if not lines:
        where = f" in namespace {ctx.args.namespace}" if ctx.args.namespace else ""
        print(f"No backups{where}.", file=sys.stderr)
        return 0
    rows = [
        {
            "NAMESPACE": ns,
            "APPLICATION": app,
            "BACKUPS": str(t.backups),
            "LOGICAL": human_bytes(t.logical_bytes),
            "STORED": human_bytes(t.stored_bytes),
            "RATIO": f"{t.ratio:.2f}x",
        }
        for ns, app, t in lines
    ]
    print(table(rows), end="")
    return 0


def cmd_rekey(ctx: Ctx) -> int:
    engine = ctx.engine()
    with ctx.host.runner_lock():
        changed, current, problems = engine.rekey()
    print(f"re-wrapped {changed} backup key(s) under the active key; {current} already current")
    for p in problems:
        print(f"not re-wrapped: {p}", file=sys.stderr)
    return 1 if problems else 0


def cmd_annotate(ctx: Ctx) -> int:
    cls = _kind(ctx.args.kind)
    ns = ctx.args.namespace if cls.namespaced else None
    obj = ctx.host.objects.get(cls, ns, ctx.args.name)
    if obj is None:
        print(f"error: {cls.kind} {ctx.args.name} not found", file=sys.stderr)
        return 1
    notes = dict(obj.metadata.annotations)
    for item in ctx.args.annotations:
        if item.endswith("-") and "=" not in item:
            notes.pop(item[:-1], None)
        elif "=" in item:
            key, value = item.split("=", 1)
            notes[key] = value
        else:
            raise ValidationError([("ANNOTATION", f"{item!r}: use key=value, or key- to remove")])
    meta = attrs.evolve(obj.metadata, annotations=notes)
    ctx.host.objects.set_metadata(attrs.evolve(obj, metadata=meta))
    print(f"{cls.kind.lower()}/{ctx.args.name} annotated")
    return 0


def cmd_drivers(ctx: Ctx) -> int:
    plugins = ctx.plugins
    for d in plugins.registry:
        kinds = "any kind a class binds" if d.any_kind else ", ".join(str(k) for k in d.kinds)
        caps = [
            n
            for n, v in (
                ("in-place", d.capabilities.in_place_restore),
                ("to-copy", d.capabilities.to_copy_restore),
            )
            if v
        ]
        print(
            f"{d.name:<12} {d.version:<8} strategy={d.strategy_kind:<12} kinds={kinds}  restore={'/'.join(caps)}  [{plugins.registry.origin(d.name)}]"
        )
    for b in plugins.broken:
        print(f"BROKEN {b.name}: {b.error}")
    if not len(plugins.registry) and not plugins.broken:
        print("no drivers installed (pip install cozybackup-postgres, ...)", file=sys.stderr)
    return 1 if plugins.broken else 0


def cmd_crds(_ctx: Ctx) -> int:
    print(yaml.safe_dump_all(all_crds(), sort_keys=False), end="")
    return 0


def cmd_install(ctx: Ctx) -> int:
    try:
        parts = install_bundle(ctx.args.namespace, ctx.args.image)
    except ValidationError as exc:
        flags = {"namespace": "--namespace", "image": "--image"}
        raise ValidationError([(flags.get(p, p), m) for p, m in exc.problems]) from None
    if ctx.args.write_kustomize is None:
        print(install_yaml(install_objects(parts)), end="")
        return 0
    out = Path(ctx.args.write_kustomize)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in kustomize_files(parts).items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


# ---------------------------------------------------------------------------- parser


def _kind_and_name(parser: argparse.ArgumentParser, name_nargs: str | None = None) -> None:
    kind = parser.add_argument(
        "kind", help="backupjobs (bj), plans, backups, restorejobs (rj), backupclasses (bc), ..."
    )
    kind.completer = completion.kind_completer(_ALIASES)  # type: ignore[attr-defined]
    name = parser.add_argument("name", nargs=name_nargs)
    name.completer = completion.name_completer(_ALIASES)  # type: ignore[attr-defined]


def cmd_completion(ctx: Ctx) -> int:
    print(completion.script(ctx.args.shell), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cozybackup",
        description="Backups for multi-tenant platforms, on the embedded local host. "
        "Tenants apply BackupJobs, Plans and RestoreJobs; `cozybackup run` does the work.",
        epilog="examples:\n  cozybackup apply -f backupjob.yaml\n  cozybackup run --once\n"
        "  cozybackup get backups -n tenant-user1\n  cozybackup describe backupjob oneshot -n tenant-user1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"cozybackup {__version__}")
    p.add_argument(
        "--home",
        default=str(default_home()),
        help="state and default bucket directory (env COZYBACKUP_HOME; default %(default)s)",
    )
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    a = sub.add_parser("apply", help="create or update objects from YAML files or directories")
    a.add_argument(
        "-f", "--filename", action="append", required=True, help="file, directory or - for stdin"
    )
    a.add_argument(
        "-n",
        "--namespace",
        help="namespace of namespaced objects that name none (one that names another is refused)",
    )
    a.add_argument(
        "--tenant",
        metavar="NAMESPACE",
        help="apply as the tenant of NAMESPACE: only BackupJob, Plan and RestoreJob objects "
        "in that namespace, no platform labels (what a tenant's credentials would allow)",
    )
    a.add_argument(
        "--dry-run", action="store_true", help="validate and say what would change, only"
    )
    a.set_defaults(fn=cmd_apply)

    g = sub.add_parser("get", help="list objects of a kind")
    _kind_and_name(g, name_nargs="?")
    g.add_argument("-n", "--namespace", default="default")
    g.add_argument("-A", "--all-namespaces", action="store_true")
    g.add_argument(
        "-o",
        "--output",
        type=output_format,
        default="table",
        metavar="FORMAT",
        help="table (default), wide, name, yaml, json or jsonpath=TEMPLATE",
    )
    g.add_argument("-l", "--selector", help="label selector, e.g. app=shop,tier!=cache")
    g.add_argument(
        "-w",
        "--watch",
        action="store_true",
        help="print a row whenever one changes; with a job's name, until it ends "
        "(exit 1 if it failed)",
    )
    g.set_defaults(fn=cmd_get)

    st = sub.add_parser(
        "status",
        help="where each protected application stands: backups, checks, drills, objectives "
        "(exit 1 when an objective is missed)",
    )
    st.add_argument("-n", "--namespace", help="one namespace (default: all)")
    st.add_argument("-o", "--output", choices=["table", "json"], default="table")
    st.add_argument(
        "--kubeconfig", metavar="FILE", help="read a cluster's objects instead of the local home"
    )
    st.set_defaults(fn=cmd_status)

    us = sub.add_parser(
        "usage",
        help="what backups cost in storage, per tenant and application: logical bytes, "
        "stored bytes (each shared chunk once), deduplication ratio",
    )
    us.add_argument("-n", "--namespace", help="one namespace (default: all)")
    us.add_argument("-o", "--output", choices=["table", "json"], default="table")
    us.set_defaults(fn=cmd_usage)

    d = sub.add_parser("describe", help="show one object with its events")
    _kind_and_name(d)
    d.add_argument("-n", "--namespace", default="default")
    d.set_defaults(fn=cmd_describe)

    rm = sub.add_parser("delete", help="delete objects (not Backups: see retention)")
    _kind_and_name(rm, name_nargs="?")
    rm.add_argument("-n", "--namespace", default="default")
    rm.add_argument("-l", "--selector", help="delete every object the label selector matches")
    rm.add_argument("--dry-run", action="store_true", help="say what would be deleted, only")
    rm.set_defaults(fn=cmd_delete)

    r = sub.add_parser(
        "run", help="process due Plans, pending jobs and retention (after recovering from a crash)"
    )
    r.add_argument(
        "--once",
        action="store_true",
        help="process what is due now, then exit (exit 1 if a job failed)",
    )
    _pass_options(r)
    r.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    r.set_defaults(fn=cmd_run)

    v = sub.add_parser(
        "verify", help="re-read a backup and check every checksum; records lastVerified"
    )
    v.add_argument("kind", help="backup")
    v.add_argument(
        "--drill",
        action="store_true",
        help="restore into a throwaway target and smoke-check it (driver support needed)",
    )
    v.add_argument("name")
    v.add_argument("-n", "--namespace", default="default")
    v.set_defaults(fn=cmd_verify)

    pr = sub.add_parser("prune", help="apply the retention policies of the BackupClasses")
    pr.add_argument("--dry-run", action="store_true", help="show what would be deleted and why")
    pr.set_defaults(fn=cmd_prune)

    rk = sub.add_parser(
        "rekey",
        help="re-wrap encrypted backups' data keys under each location's active key "
        "(after adding a new first key; streams are not re-uploaded)",
    )
    rk.set_defaults(fn=cmd_rekey)

    an = sub.add_parser(
        "annotate",
        help="set (key=value) or remove (key-) annotations; "
        "backups.cozystack.io/pinned=true keeps a Backup from retention",
    )
    an.add_argument("kind")
    an.add_argument("name")
    an.add_argument("annotations", nargs="+", metavar="KEY=VALUE|KEY-")
    an.add_argument("-n", "--namespace", default="default")
    an.set_defaults(fn=cmd_annotate)

    dr = sub.add_parser("drivers", help="list installed and broken drivers")
    dr.set_defaults(fn=cmd_drivers)

    c = sub.add_parser("crds", help="print the CustomResourceDefinitions")
    c.set_defaults(fn=cmd_crds)

    ins = sub.add_parser(
        "install",
        help="print what a cluster needs for `cozybackup controller` (CRDs, RBAC, admission "
        "policy, Deployment) as YAML",
        description="Print the install bundle for a Kubernetes cluster as multi-document YAML:\n"
        "the platform namespace (labelled cozystack.io/system), the CRDs, the controller's\n"
        "ServiceAccount and RBAC, the tenant ClusterRoles Cozystack aggregates, the\n"
        "ValidatingAdmissionPolicy for reserved labels and job specs, and the controller's\n"
        "Deployment.  The namespace is written into the policy and the controller's flags:\n"
        "for another one, generate with -n rather than patch.",
        epilog="examples:\n  cozybackup install | kubectl apply --server-side -f -\n"
        "  cozybackup install -n backups --image registry.example/cozybackup:0.1.0\n"
        "  cozybackup install --write-kustomize deploy/   # regenerate the kustomize base",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ins.add_argument(
        "-n",
        "--namespace",
        default=DEFAULT_NAMESPACE,
        help="the platform namespace: the controller, its Secrets and its rights "
        "(default %(default)s)",
    )
    ins.add_argument(
        "--image",
        help=f"the controller's image (default {IMAGE_REPOSITORY}:<this version>)",
    )
    ins.add_argument(
        "--write-kustomize",
        metavar="DIR",
        help="write a kustomize base to DIR (one file per concern and kustomization.yaml) "
        "instead of printing",
    )
    ins.set_defaults(fn=cmd_install)

    k = sub.add_parser(
        "controller",
        help="run the engine against a Kubernetes cluster (in-cluster config or --kubeconfig)",
    )
    k.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else $KUBECONFIG)")
    k.add_argument(
        "--platform-namespace",
        help="namespace of the platform's Secrets (default: $COZYBACKUP_NAMESPACE, else the "
        "service account's, else cozy-system)",
    )
    _pass_options(k)
    k.add_argument(
        "--conventions",
        metavar="FILE",
        help="YAML: how to reach application kinds beyond the built-in Cozystack ones "
        "(apiGroup/Kind: {connection, credentialsFrom, keys, fixed, resource, cases}; over the "
        "drivers' own locators)",
    )
    k.add_argument(
        "--local-buckets",
        metavar="DIR",
        default="/var/lib/cozybackup/buckets",
        help="where provider: Local buckets live: mount a PersistentVolume here, or use S3 "
        "(default %(default)s)",
    )
    k.add_argument(
        "--data-mover",
        choices=("inline", "jobs"),
        default="inline",
        help="where data moves: inline (this process) or jobs (a batch/v1 Job per backup "
        "or restore in the platform namespace; default %(default)s)",
    )
    k.add_argument(
        "--worker-image",
        metavar="IMAGE",
        help="image of worker Jobs (default $COZYBACKUP_WORKER_IMAGE)",
    )
    k.add_argument(
        "--worker-command",
        default="cozybackup",
        metavar="CMD",
        help="the cozybackup command in the worker image (default %(default)s)",
    )
    k.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment of worker containers (repeatable)",
    )
    k.add_argument(
        "--worker-requests",
        type=options.resources,
        default={},
        metavar="cpu=Q,memory=Q",
        help="resource requests of worker containers (default cpu=250m,memory=256Mi)",
    )
    k.add_argument(
        "--worker-limits",
        type=options.resources,
        default={},
        metavar="cpu=Q,memory=Q",
        help="resource limits of worker containers (default none: a dump tool's memory "
        "depends on the application)",
    )
    k.add_argument(
        "--workers-per-tenant",
        type=options.workers,
        default=None,
        metavar="N",
        help="with --data-mover jobs: at most N workers of one tenant at once "
        "(--workers caps them all)",
    )
    k.add_argument(
        "--leave-unserved",
        action="store_true",
        help="coexist with another backup controller (Cozystack's own): leave BackupJobs and "
        "RestoreJobs whose strategy no installed driver serves untouched, for it",
    )
    k.add_argument(
        "--lease",
        default="cozybackup-controller",
        metavar="NAME",
        help="the coordination.k8s.io Lease in the platform namespace that elects the one "
        "active controller (default %(default)s)",
    )
    k.add_argument("--once", action="store_true", help="one pass, then exit")
    k.set_defaults(fn=cmd_controller)

    comp = sub.add_parser(
        "completion",
        help="print the shell completion script: source <(cozybackup completion bash)",
    )
    comp.add_argument("shell", choices=completion.SHELLS)
    comp.set_defaults(fn=cmd_completion)

    w = sub.add_parser(
        "worker",
        help="run one job's data move (what the controller's worker Jobs run)",
    )
    w.add_argument("what", choices=("backup", "restore"))
    w.add_argument("job", metavar="NAMESPACE/NAME", help="the BackupJob or RestoreJob")
    w.add_argument(
        "--location", required=True, metavar="FILE", help="the application's location (JSON)"
    )
    w.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, else $KUBECONFIG)")
    w.add_argument(
        "--platform-namespace",
        help="namespace of the platform's Secrets (default: $COZYBACKUP_NAMESPACE)",
    )
    w.set_defaults(fn=cmd_worker)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    completion.autocomplete(parser)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(Ctx(args)))
    except ValidationError as exc:
        for path, msg in exc.problems:
            print(f"error: {path}: {msg}" if path else f"error: {msg}", file=sys.stderr)
        return 2
    except CozyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"error: {exc.filename}: no such file", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C outside run/controller (which finish their jobs on it): quietly, as a shell
        # expects (128 + SIGINT).
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `cozybackup get ... | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        # A full disk or a read-only home: one line, without the home's path or a traceback.
        print(f"error: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
