"""An embedded platform in a temp dir, for tests: host, engine and helpers."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from .._api.types import (
    ApplicationRef,
    Backup,
    BackupJob,
    BackupJobSpec,
    LocalObjectRef,
    ObjectMeta,
    Plan,
    RestoreJob,
    RestoreJobSpec,
    SecretKeyRef,
)
from .._api.wire import dump, load, load_yaml
from .._drivers.contract import Driver
from .._engine.engine import Engine, EngineConfig
from .._plugins.host import PluginHost
from .._storage.store import Manifest
from ..hookspecs import hookimpl
from ..hosts._local_types import Application, ApplicationSpec, Secret
from ..hosts.local import LOCAL_KINDS, LocalHost

TENANT_KINDS = (BackupJob, Plan, Backup, RestoreJob)


class _InProcess:
    def __init__(self, drivers: Iterable[type[Driver]]) -> None:
        self.drivers = list(drivers)

    @hookimpl
    def cozybackup_register_drivers(self, registry: Any) -> None:
        for d in self.drivers:
            registry.add(d)


@attrs.define
class LocalPlatform:
    """A LocalHost + Engine in ``home``.  Drivers come from entry points and/or ``drivers``."""

    home: Path
    drivers: tuple[type[Driver], ...] = ()
    entry_points: bool = False
    config: EngineConfig = attrs.field(
        factory=lambda: EngineConfig(attempts=1, backoff=0.01, workers=1)
    )
    clock: Any = None
    host: LocalHost = attrs.field(init=False)
    plugins: PluginHost = attrs.field(init=False)
    engine: Engine = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.host = LocalHost(self.home, clock=self.clock)
        plugins = [_InProcess(self.drivers)] if self.drivers else []
        self.plugins = PluginHost.load(entry_points=self.entry_points, plugins=plugins)
        self.engine = Engine(self.host, self.plugins, self.config)

    # -- declaring things (admin)

    def apply(self, *objs_or_yaml: Any) -> list[Any]:
        out: list[Any] = []
        for item in objs_or_yaml:
            objs = (
                load_yaml(item, kinds=LOCAL_KINDS)
                if isinstance(item, str)
                else [load(item, LOCAL_KINDS) if isinstance(item, Mapping) else item]
            )
            out.extend(self.host.objects.replace(o) for o in objs)
        return out

    def declare_app(
        self,
        namespace: str,
        name: str,
        kind: str,
        connection: Mapping[str, Any],
        credentials: Mapping[str, str] | None = None,
        api_group: str = "apps.cozystack.io",
    ) -> ApplicationRef:
        secret_ref = None
        if credentials:
            secret_name = f"app-{namespace}-{name}"[:253]
            self.host.objects.replace(
                Secret(metadata=ObjectMeta(name=secret_name), string_data=dict(credentials))
            )
            secret_ref = SecretKeyRef(name=secret_name)
        app = Application(
            metadata=ObjectMeta(name=name, namespace=namespace),
            spec=ApplicationSpec(
                api_group=api_group,
                kind=kind,
                connection=dict(connection),
                credentials_secret_ref=secret_ref,
            ),
        )
        self.host.objects.replace(app)
        return app.ref

    # -- tenant actions

    def backup(
        self, namespace: str, app: ApplicationRef, name: str, backup_class: str = "cozy-default"
    ) -> BackupJob:
        job = self.host.objects.create(
            BackupJob(
                metadata=ObjectMeta(name=name, namespace=namespace),
                spec=BackupJobSpec(application_ref=app, backup_class_name=backup_class),
            )
        )
        return self.engine.run_backup(job)

    def restore(
        self, namespace: str, backup: str, name: str, target: ApplicationRef | None = None
    ) -> RestoreJob:
        job = self.host.objects.create(
            RestoreJob(
                metadata=ObjectMeta(name=name, namespace=namespace),
                spec=RestoreJobSpec(
                    backup_ref=LocalObjectRef(name=backup), target_application_ref=target
                ),
            )
        )
        return self.engine.run_restore(job)

    def backups(self, namespace: str) -> list[Backup]:
        return self.host.objects.list(Backup, namespace)

    def manifest(self, namespace: str, backup: str) -> Manifest:
        """The stored manifest of Backup ``backup``: its streams whatever their format."""
        [found] = [b for b in self.backups(namespace) if b.metadata.name == backup]
        return self.engine.open_backup(found).manifest

    def stored_files(self) -> list[Path]:
        """Every file under the local buckets."""
        root = self.home / "buckets"
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []

    def leftovers(self) -> list[Path]:
        """What a failed backup must not leave: every stored file but a tenant
        repository's key (``_repos/<namespace>/<plain|sealed>/config.json``, made by the
        tenant's first deduplicated backup and kept whatever becomes of that backup)."""
        return [p for p in self.stored_files() if not _repository_key(p)]

    def tenant_view(self, namespace: str) -> str:
        return tenant_visible_text(self.host, namespace)

    def now(self) -> dt.datetime:
        return self.host.now()


def _repository_key(path: Path) -> bool:
    return (
        path.name == "config.json"
        and path.parts[-4] == "_repos"
        and path.parts[-2] in ("plain", "sealed")
    )


def tenant_visible_text(host: LocalHost, namespace: str) -> str:
    """Everything a tenant of ``namespace`` can read: its objects and their events."""
    docs = [dump(o) for cls in TENANT_KINDS for o in host.objects.list(cls, namespace)]
    events = host.events(namespace)
    return yaml.safe_dump_all(docs) + "\n" + json.dumps(events)
