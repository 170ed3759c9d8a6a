"""The ``cozybackup.drivers`` entry point: one hook, one registration."""

from __future__ import annotations

from cozybackup_core import DriverRegistry, hookimpl

from ._driver import KubeVirtDriver


@hookimpl
def cozybackup_register_drivers(registry: DriverRegistry) -> None:
    registry.add(KubeVirtDriver)
