"""The plugin module named by the ``cozybackup.drivers`` entry point ``clickhouse``."""

from __future__ import annotations

from cozybackup_core import DriverRegistry, hookimpl

from ._driver import ClickHouseDriver


@hookimpl
def cozybackup_register_drivers(registry: DriverRegistry) -> None:
    registry.add(ClickHouseDriver)
