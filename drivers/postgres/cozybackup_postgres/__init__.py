"""cozybackup driver for PostgreSQL (``apps.cozystack.io/Postgres``).

Install it next to ``cozybackup-core``: the plugin host finds it through the
``cozybackup.drivers`` entry point ``postgres``, and the built-in ``cozy-default``
BackupClass already binds ``apps.cozystack.io/Postgres`` to its strategy ``Postgres``.
"""

from __future__ import annotations

from ._artifact import GLOBALS_STREAM, INDEX_STREAM, stream_names
from ._driver import POSTGRES_KIND, PostgresDriver, __version__
from ._params import PostgresParameters
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
