"""cozybackup driver for etcd (``apps.cozystack.io/Etcd``).

Install it next to ``cozybackup-core``: the plugin host finds it through the
``cozybackup.drivers`` entry point ``etcd``, and the built-in ``cozy-default``
BackupClass already binds ``Etcd`` applications to its ``Etcd`` strategy.
"""

from __future__ import annotations

from ._backup import FORMAT, SNAPSHOT_STREAM
from ._client import CredentialsRejected, EtcdUnavailable, MissingPermission
from ._cluster import ApplicationMisconfigured
from ._driver import ETCD_KIND, EtcdDriver, __version__
from ._params import EtcdParameters, SnapshotFrom
from ._snapshot import SnapshotCorrupt

__all__ = [
    "ETCD_KIND",
    "FORMAT",
    "SNAPSHOT_STREAM",
    "ApplicationMisconfigured",
    "CredentialsRejected",
    "EtcdDriver",
    "EtcdParameters",
    "EtcdUnavailable",
    "MissingPermission",
    "SnapshotCorrupt",
    "SnapshotFrom",
    "__version__",
]
