"""The plugin host: owns its PluginManager, loads each entry point in isolation."""

from __future__ import annotations

import importlib.metadata
import logging
import re
import traceback
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from . import hookspecs
from ._driver import Driver
from ._errors import DriverNotFoundError

ENTRY_POINT_GROUP = "cozybackup.drivers"
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
log = logging.getLogger("cozybackup.plugins")


class DuplicateDriverError(ValueError):
    pass


@attrs.frozen(kw_only=True)
class BrokenPlugin:
    """A plugin that failed to import or register: reported, never fatal."""

    name: str
    error: str
    detail: str = attrs.field(repr=False, default="")


class DriverRegistry:
    """Driver classes by name and by strategy kind.  Lookups are explicit."""

    def __init__(self) -> None:
        self._by_name: dict[str, Driver] = {}
        self._by_strategy: dict[str, Driver] = {}
        self._origin: dict[str, str] = {}
        self.current_plugin = "<in-process>"

    def add(self, driver_cls: type[Driver]) -> None:
        if not (isinstance(driver_cls, type) and issubclass(driver_cls, Driver)):
            raise TypeError(f"{driver_cls!r} is not a cozybackup_core.Driver subclass")
        name = getattr(driver_cls, "name", None)
        kind = getattr(driver_cls, "strategy_kind", None)
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"{driver_cls.__qualname__}.name {name!r} is not a valid name")
        if not isinstance(kind, str) or not re.match(r"^[A-Z][A-Za-z0-9]*$", kind):
            raise ValueError(f"{driver_cls.__qualname__}.strategy_kind {kind!r} is not CamelCase")
        if not getattr(driver_cls, "kinds", ()) and not driver_cls.any_kind:
            raise ValueError(f"{driver_cls.__qualname__}.kinds is empty (and any_kind is not set)")
        if not attrs.has(driver_cls.parameters_type):
            raise TypeError(f"{driver_cls.__qualname__}.parameters_type must be an attrs class")
        if name in self._by_name:
            raise DuplicateDriverError(
                f"driver {name!r} is already registered by {self._origin[name]}"
            )
        if kind in self._by_strategy:
            raise DuplicateDriverError(
                f"strategy kind {kind!r} is already served by {self._by_strategy[kind].name!r}"
            )
        driver = driver_cls()
        self._by_name[name] = driver
        self._by_strategy[kind] = driver
        self._origin[name] = self.current_plugin

    def get(self, name: str) -> Driver:
        try:
            return self._by_name[name]
        except KeyError:
            raise DriverNotFoundError(f"no driver named {name!r} is installed") from None

    def for_strategy(self, strategy_kind: str) -> Driver:
        try:
            return self._by_strategy[strategy_kind]
        except KeyError:
            raise DriverNotFoundError(
                f"the {strategy_kind} strategy's driver is not installed on this platform"
            ) from None

    def origin(self, name: str) -> str:
        return self._origin[name]

    def __iter__(self) -> Any:
        return iter(sorted(self._by_name.values(), key=lambda d: d.name))

    def __len__(self) -> int:
        return len(self._by_name)


class PluginHost:
    """Owns the PluginManager.  A broken plugin is recorded in ``broken``; others load."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("cozybackup")
        self.pm.add_hookspecs(hookspecs)
        self.registry = DriverRegistry()
        self.broken: list[BrokenPlugin] = []

    @classmethod
    def load(cls, *, entry_points: bool = True, plugins: Iterable[object] = ()) -> PluginHost:
        host = cls()
        if entry_points:
            host.load_entry_points()
        for plugin in plugins:
            host.register(plugin)
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
        impls = [
            i
            for i in self.pm.hook.cozybackup_register_drivers.get_hookimpls()
            if i.plugin is plugin
        ]
        before = dict(self.registry._by_name)
        for impl in impls:
            self.registry.current_plugin = label
            try:
                _call(impl, registry=self.registry)
            except Exception as exc:
                # Undo whatever this plugin added before failing: all or nothing.
                for drv_name in set(self.registry._by_name) - set(before):
                    drv = self.registry._by_name.pop(drv_name)
                    self.registry._by_strategy.pop(drv.strategy_kind, None)
                    self.registry._origin.pop(drv_name, None)
                self.pm.unregister(plugin)
                self._broken(label, f"registration failed: {type(exc).__name__}: {exc}", exc)
            finally:
                self.registry.current_plugin = "<in-process>"

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
