"""The etcd driver: snapshots through the v3 maintenance API, restores that rebuild
every member's data directory.

Connection keys and credentials are described in ``_cluster.py`` and the README.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import Any, ClassVar

from cozybackup_core import (
    BackupContext,
    Capabilities,
    Driver,
    GroupKind,
    Locator,
    RestoreContext,
)

from . import _backup, _restore
from ._cluster import Cluster
from ._params import EtcdParameters

try:
    __version__ = _dist_version("cozybackup-etcd")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

#: The application kind this driver serves (Cozystack's tenant etcd).
ETCD_KIND = GroupKind(kind="Etcd")


class EtcdDriver(Driver[EtcdParameters]):
    """Backs up and restores ``apps.cozystack.io/Etcd`` clusters."""

    name: ClassVar[str] = "etcd"
    strategy_kind: ClassVar[str] = "Etcd"
    kinds: ClassVar[tuple[GroupKind, ...]] = (ETCD_KIND,)
    default_kinds: ClassVar[tuple[str, ...]] = ("Etcd",)
    # Cozystack's EtcdCluster "etcd" in the tenant's namespace, TLS with a client certificate.
    locators: ClassVar[Mapping[str, Locator]] = {
        "Etcd": Locator(
            connection={"endpoints": ["https://etcd.{namespace}.svc:2379"]},
            credentials_from="etcd-client-tls",
            keys={"ca.crt": "ca.crt", "tls.crt": "tls.crt", "tls.key": "tls.key"},
        )
    }
    parameters_type: ClassVar[type[Any]] = EtcdParameters
    #: restores rebuild the members' declared data directories
    capabilities: ClassVar[Capabilities] = Capabilities(local_paths=True)
    version: ClassVar[str] = __version__

    def backup(self, ctx: BackupContext[EtcdParameters]) -> None:
        params = ctx.parameters
        cluster = Cluster.from_location(ctx.application)
        _backup.backup(ctx, cluster, params, ctx.deadline.tighter(params.timeout_seconds))

    def restore(self, ctx: RestoreContext[EtcdParameters]) -> None:
        params = ctx.parameters
        cluster = Cluster.from_location(ctx.target)
        _restore.restore(ctx, cluster, ctx.deadline.tighter(params.timeout_seconds))
        ctx.log.info(
            "restored %s %s", ctx.source.name, "in place" if ctx.in_place else "into a copy"
        )
