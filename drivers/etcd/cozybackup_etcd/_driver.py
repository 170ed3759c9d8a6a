"""The etcd driver: snapshots through the v3 maintenance API, restores that rebuild
every member's data directory.

Connection keys and credentials are described in ``_cluster.py`` and the README.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from cozybackup_core import (
    BackupContext,
    Capabilities,
    Driver,
    GroupKind,
    Locator,
    RestoreContext,
    distribution_version,
)

from . import _backup, _restore
from ._cluster import Cluster
from ._params import EtcdParameters

__version__ = distribution_version("cozybackup-etcd")

#: The application kind this driver serves (Cozystack's tenant etcd).
ETCD_KIND = GroupKind(kind="Etcd")


class EtcdDriver(Driver[EtcdParameters]):
    """Backs up and restores ``apps.cozystack.io/Etcd`` clusters."""

    name: ClassVar[str] = "etcd"
    strategy_kind: ClassVar[str] = "Etcd"
    default_kinds: ClassVar[tuple[str, ...]] = ("Etcd",)
    # Cozystack's EtcdCluster "etcd" in the tenant's namespace, TLS with a client certificate.
    locators: ClassVar[Mapping[str, Locator]] = {
        "Etcd": Locator(
            resource="etcds",
            connection={"endpoints": ["https://etcd.{namespace}.svc:2379"]},
            credentials_from="etcd-client-tls",
            keys={"ca.crt": "ca.crt", "tls.crt": "tls.crt", "tls.key": "tls.key"},
        )
    }
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
