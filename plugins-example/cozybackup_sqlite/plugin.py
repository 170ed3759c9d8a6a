"""The plugin module named by the ``cozybackup.drivers`` entry point ``sqlite``.

The plugin host imports it and calls its hook once; keep it this small so that an
import error here is easy to diagnose (the host reports the plugin as broken and the
other drivers keep working).
"""

from __future__ import annotations

from cozybackup_core import DriverRegistry, hookimpl

from ._driver import SQLiteDriver


@hookimpl
def cozybackup_register_drivers(registry: DriverRegistry) -> None:
    registry.add(SQLiteDriver)
