"""The plugin module named by the ``cozybackup.drivers`` entry point ``postgres``.

Kept this small so an import error here is easy to diagnose: the plugin host reports the
plugin as broken and the other drivers keep working.
"""

from __future__ import annotations

from cozybackup_core import DriverRegistry, hookimpl

from ._driver import PostgresDriver


@hookimpl
def cozybackup_register_drivers(registry: DriverRegistry) -> None:
    registry.add(PostgresDriver)
