"""cozybackup driver for SQLite database files.

Install it next to ``cozybackup-core`` and the plugin host finds it through the
``cozybackup.drivers`` entry point ``sqlite``; bind ``apps.example.com/SQLiteDatabase``
to the ``SQLite`` strategy in a BackupClass to use it.
"""

from __future__ import annotations

from ._driver import SQLITE_KIND, SQLiteDriver, __version__
from ._dump import DUMP_STREAM
from ._params import SQLiteParameters

__all__ = ["DUMP_STREAM", "SQLITE_KIND", "SQLiteDriver", "SQLiteParameters", "__version__"]
