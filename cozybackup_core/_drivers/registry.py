"""The driver registry: driver instances by name and by strategy kind.

Its own module (below the plugin host and the hookspecs) so that ``hookspecs`` can name it
without an import circle.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import attrs

from .._api.errors import DriverNotFoundError
from .._api.types import APPS_GROUP, STRATEGY_GROUP, GroupKind
from .contract import Driver, Locator

IN_PROCESS = "<in-process>"
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


class DuplicateDriverError(ValueError):
    pass


class DriverRegistry:
    """Driver classes by name and by strategy kind.  Lookups are explicit."""

    def __init__(self) -> None:
        self._by_name: dict[str, Driver] = {}
        self._by_strategy: dict[tuple[str, str], Driver] = {}
        self._origin: dict[str, str] = {}
        self._current = IN_PROCESS

    @contextlib.contextmanager
    def transaction(self, origin: str) -> Iterator[None]:
        """Register on behalf of ``origin``, all or nothing: if the block raises, every
        driver it added is removed again before the error propagates."""
        before = set(self._by_name)
        self._current = origin
        try:
            yield
        except BaseException:
            for name in set(self._by_name) - before:
                driver = self._by_name.pop(name)
                self._by_strategy.pop((driver.strategy_group, driver.strategy_kind), None)
                self._origin.pop(name, None)
            raise
        finally:
            self._current = IN_PROCESS

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
        for default in driver_cls.default_kinds:
            if not driver_cls.serves(GroupKind(api_group=APPS_GROUP, kind=default)):
                raise ValueError(
                    f"{driver_cls.__qualname__}.default_kinds names {default!r}, "
                    "which it does not serve"
                )
        if not attrs.has(driver_cls.parameters_type):
            raise TypeError(f"{driver_cls.__qualname__}.parameters_type must be an attrs class")
        if name in self._by_name:
            raise DuplicateDriverError(
                f"driver {name!r} is already registered by {self._origin[name]}"
            )
        strategy = (driver_cls.strategy_group, kind)
        if strategy in self._by_strategy:
            raise DuplicateDriverError(
                f"strategy kind {kind!r} is already served by {self._by_strategy[strategy].name!r}"
            )
        driver = driver_cls()
        self._by_name[name] = driver
        self._by_strategy[strategy] = driver
        self._origin[name] = self._current

    def get(self, name: str) -> Driver:
        try:
            return self._by_name[name]
        except KeyError:
            raise DriverNotFoundError(f"no driver named {name!r} is installed") from None

    def for_strategy(self, strategy_kind: str, api_group: str = STRATEGY_GROUP) -> Driver:
        """The driver serving ``strategyRef`` (apiGroup, kind); the error names what is."""
        try:
            return self._by_strategy[(api_group, strategy_kind)]
        except KeyError:
            group = "" if api_group == STRATEGY_GROUP else f" of {api_group}"
            served = ", ".join(sorted(k for g, k in self._by_strategy if g == STRATEGY_GROUP))
            raise DriverNotFoundError(
                f"no driver installed on this platform serves the {strategy_kind} "
                f"strategy{group} (installed: {served or 'none'})"
            ) from None

    def default_bindings(self) -> list[tuple[str, str]]:
        """``(application kind, strategy kind)`` for the built-in class, from what every
        installed driver declares; the first driver (by name) to claim a kind has it."""
        out: dict[str, str] = {}
        for driver in self:
            for kind in driver.default_kinds:
                out.setdefault(kind, driver.strategy_kind)
        return list(out.items())

    def locators(self) -> dict[tuple[str, str], Locator]:
        """``(apiGroup, kind) -> Locator`` declared by the installed drivers."""
        out: dict[tuple[str, str], Locator] = {}
        for driver in self:
            for kind, locator in driver.locators.items():
                out.setdefault((APPS_GROUP, kind), locator)
        return out

    def origin(self, name: str) -> str:
        return self._origin[name]

    def __iter__(self) -> Any:
        return iter(sorted(self._by_name.values(), key=lambda d: d.name))

    def __len__(self) -> int:
        return len(self._by_name)
