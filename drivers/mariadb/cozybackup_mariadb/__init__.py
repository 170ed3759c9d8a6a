"""cozybackup driver for MariaDB (``apps.cozystack.io/MariaDB``).

Install it next to ``cozybackup-core``: the plugin host finds it through the
``cozybackup.drivers`` entry point ``mariadb``, and the built-in ``cozy-default``
BackupClass already binds ``MariaDB`` applications to its ``MariaDB`` strategy.
"""

from __future__ import annotations

from ._accounts import ACCOUNTS_STREAM
from ._conn import (
    ApplicationMisconfigured,
    CredentialsRejected,
    DatabaseUnavailable,
    MissingPrivilege,
)
from ._driver import MARIADB_KIND, MariaDBDriver, __version__
from ._logical import DATABASES_STREAM
from ._params import MariaDBParameters, Mode
from ._physical import DATADIR_STREAM

__all__ = [
    "ACCOUNTS_STREAM",
    "DATABASES_STREAM",
    "DATADIR_STREAM",
    "MARIADB_KIND",
    "ApplicationMisconfigured",
    "CredentialsRejected",
    "DatabaseUnavailable",
    "MariaDBDriver",
    "MariaDBParameters",
    "MissingPrivilege",
    "Mode",
    "__version__",
]
