"""cozybackup driver for etcd (``apps.cozystack.io/Etcd``).

Install it next to ``cozybackup-core``: the plugin host finds it through the
``cozybackup.drivers`` entry point ``etcd``, and the driver adds ``Etcd`` applications
to the built-in ``cozy-default`` BackupClass (``EtcdDriver.default_kinds``).
"""

from __future__ import annotations

from cozybackup_core import ApplicationMisconfigured, CredentialsRejected

from ._backup import FORMAT, SNAPSHOT_STREAM
from ._client import EtcdUnavailable, MissingPermission
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
