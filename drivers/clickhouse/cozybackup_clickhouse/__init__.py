"""cozybackup driver for ClickHouse (``apps.cozystack.io/ClickHouse``).

Install it next to ``cozybackup-core``: the plugin host finds it through the
``cozybackup.drivers`` entry point ``clickhouse``, and the built-in ``cozy-default``
BackupClass already binds ``ClickHouse`` applications to its ``ClickHouse`` strategy.
"""

from __future__ import annotations

from ._client import ApplicationMisconfigured
from ._driver import CLICKHOUSE_KIND, ClickHouseDriver, __version__
from ._errors import CredentialsRejected, DatabaseUnavailable, MissingPrivilege
from ._logical import INDEX_STREAM as LOGICAL_INDEX_STREAM
from ._native import INDEX_STREAM as NATIVE_INDEX_STREAM
from ._params import ClickHouseParameters, Mode

__all__ = [
    "CLICKHOUSE_KIND",
    "LOGICAL_INDEX_STREAM",
    "NATIVE_INDEX_STREAM",
    "ApplicationMisconfigured",
    "ClickHouseDriver",
    "ClickHouseParameters",
    "CredentialsRejected",
    "DatabaseUnavailable",
    "MissingPrivilege",
    "Mode",
    "__version__",
]
