"""The plugin module named by the ``cozybackup.drivers`` entry point ``job``."""

from __future__ import annotations

from cozybackup_core import DriverRegistry, hookimpl

from ._driver import JobDriver


@hookimpl
def cozybackup_register_drivers(registry: DriverRegistry) -> None:
    registry.add(JobDriver)
