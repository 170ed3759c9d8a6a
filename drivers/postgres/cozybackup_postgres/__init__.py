"""cozybackup driver for PostgreSQL (``apps.cozystack.io/Postgres``).

Install it next to ``cozybackup-core``: the plugin host finds it through the
``cozybackup.drivers`` entry point ``postgres``, and the built-in ``cozy-default``
BackupClass already binds ``apps.cozystack.io/Postgres`` to its strategy ``Postgres``.
"""

from __future__ import annotations

from ._driver import (
    GLOBALS_STREAM,
    INDEX_STREAM,
    POSTGRES_KIND,
    PostgresDriver,
    PostgresParameters,
    __version__,
    stream_names,
)
from ._pg import CredentialsRejected, DatabaseUnavailable

__all__ = [
    "GLOBALS_STREAM",
    "INDEX_STREAM",
    "POSTGRES_KIND",
    "CredentialsRejected",
    "DatabaseUnavailable",
    "PostgresDriver",
    "PostgresParameters",
    "__version__",
    "stream_names",
]
