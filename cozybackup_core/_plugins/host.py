"""The plugin host: owns its PluginManager, loads each entry point in isolation."""

from __future__ import annotations

import importlib.metadata
import logging
import traceback
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from .. import hookspecs
from .._drivers.registry import DriverRegistry
from .._storage.providers import StorageProviders

ENTRY_POINT_GROUP = "cozybackup.drivers"
log = logging.getLogger("cozybackup.plugins")


@attrs.frozen(kw_only=True)
class BrokenPlugin:
    """A plugin that failed to import or register: reported, never fatal."""

    name: str
    error: str
    detail: str = attrs.field(repr=False, default="")


class PluginHost:
    """Owns the PluginManager.  A broken plugin is recorded in ``broken``; others load."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("cozybackup")
        self.pm.add_hookspecs(hookspecs)
        self.registry = DriverRegistry()
        self.storage = StorageProviders()
        self.broken: list[BrokenPlugin] = []

    @classmethod
    def load(
        cls,
        *,
        entry_points: bool = True,
        plugins: Iterable[object] = (),
        modules: Iterable[str] = (),
    ) -> PluginHost:
        """Entry points of ``cozybackup.drivers``, then in-process ``plugins``, then
        ``modules`` imported by name; each one isolated from the others."""
        host = cls()
        if entry_points:
            host.load_entry_points()
        for plugin in plugins:
            host.register(plugin)
        for module in modules:
            host.import_plugin(module)
        return host

    def load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self._broken(ep.name, f"import failed: {type(exc).__name__}: {exc}", exc)
                continue
            self.register(plugin, name=ep.name)

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin (module or object with hookimpls) and run its registration."""
        label = name or getattr(plugin, "__name__", None) or repr(plugin)
        try:
            self.pm.register(plugin, name=label)
        except Exception as exc:
            self._broken(label, f"not a valid plugin: {exc}", exc)
            return
        hook = self.pm.hook
        drivers = [
            i for i in hook.cozybackup_register_drivers.get_hookimpls() if i.plugin is plugin
        ]
        storage = [
            i for i in hook.cozybackup_register_storage.get_hookimpls() if i.plugin is plugin
        ]
        try:
            # All or nothing: a plugin that fails leaves no driver or provider behind.
            with self.registry.transaction(label), self.storage.transaction():
                for impl in drivers:
                    _call(impl, registry=self.registry)
                for impl in storage:
                    _call(impl, providers=self.storage)
        except Exception as exc:
            self.pm.unregister(plugin)
            self._broken(label, f"registration failed: {type(exc).__name__}: {exc}", exc)

    def import_plugin(self, module: str) -> None:
        """Import ``module`` and register it as a plugin; a failure is reported in
        ``broken`` like a broken entry point (``COZYBACKUP_PLUGINS`` uses this)."""
        try:
            plugin = importlib.import_module(module)
        except Exception as exc:
            self._broken(module, f"import failed: {type(exc).__name__}: {exc}", exc)
            return
        self.register(plugin, name=module)

    def _broken(self, name: str, error: str, exc: BaseException) -> None:
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        log.error("plugin %s is broken: %s", name, error)
        self.broken.append(BrokenPlugin(name=name, error=error, detail=detail))

    def notify_stage(self, kind: str, namespace: str, name: str, stage: str) -> None:
        for impl in self.pm.hook.cozybackup_job_stage.get_hookimpls():
            try:
                _call(impl, kind=kind, namespace=namespace, name=name, stage=stage)
            except Exception:
                log.exception("observer %s failed at stage %s", impl.plugin_name, stage)


def _call(impl: pluggy.HookImpl, **kwargs: Any) -> Any:
    # Like pluggy's own call: an implementation may declare only the arguments it uses.
    return impl.function(*[kwargs[name] for name in impl.argnames])
