"""The ClickHouse driver: logical (Native rows through the server) or native (BACKUP TO S3).

Connection keys of an application (declared by the platform admin; a tenant never sees
them) and its credentials::

    connection:  {host: chi-analytics.tenant-a.svc, port: 8123}   # the HTTP interface
                 {host: ..., port: 8443, secure: true}              # HTTPS
                 {engine: chdb, path: /srv/analytics}               # chdb, in this process
    credentials: {username: backup, password: ...}

The mode is a class parameter (:class:`ClickHouseParameters`); a restore uses the mode
its backup was taken with (read from the backup's own streams).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from cozybackup_core import (
    AppLocation,
    BackupContext,
    Deadline,
    Driver,
    GroupKind,
    Locator,
    RestoreContext,
    distribution_version,
)

from . import _backup, _restore
from ._chdb import ChdbClient
from ._client import ChdbTarget, Client, ServerError, Unreachable, secrets_of, target_of
from ._errors import classify
from ._http import HttpClient
from ._params import ClickHouseParameters, check

__version__ = distribution_version("cozybackup-clickhouse")

#: The application kind this driver serves (Cozystack's managed ClickHouse).
CLICKHOUSE_KIND = GroupKind(kind="ClickHouse")


class ClickHouseDriver(Driver[ClickHouseParameters]):
    """Backs up and restores ``apps.cozystack.io/ClickHouse`` applications."""

    name: ClassVar[str] = "clickhouse"
    strategy_kind: ClassVar[str] = "ClickHouse"
    default_kinds: ClassVar[tuple[str, ...]] = ("ClickHouse",)
    # Cozystack's Helm release clickhouse-X: an Altinity ClickHouseInstallation of cluster
    # "clickhouse"; Secret clickhouse-X-credentials holds each user's password under the
    # user's name, and the chart always adds the user "backup".  The first replica's own
    # service (chi-<chi>-<cluster>-<shard>-<replica>), not the chendpoint one that spreads
    # requests: without Keeper the replicas' tables are independent, and a backup must read
    # one replica throughout (HTTP on 8123).
    locators: ClassVar[Mapping[str, Locator]] = {
        "ClickHouse": Locator(
            resource="clickhouses",
            connection={
                "host": "chi-clickhouse-{name}-clickhouse-0-0.{namespace}.svc",
                "port": 8123,
            },
            credentials_from="clickhouse-{name}-credentials",
            keys={"password": "backup"},
            fixed={"username": "backup"},
        )
    }
    version: ClassVar[str] = __version__

    def validate_parameters(self, parameters: Any) -> None:
        check(parameters)

    def connect(self, location: AppLocation, deadline: Deadline) -> Client:
        """A session with the application's ClickHouse (tests wrap it to inject faults)."""
        target = target_of(location)
        try:
            if isinstance(target, ChdbTarget):
                return ChdbClient(target, deadline)
            return HttpClient(target, deadline)
        except (ServerError, Unreachable) as exc:
            raise classify(exc, doing="connecting", secrets=secrets_of(target)) from None

    def backup(self, ctx: BackupContext[ClickHouseParameters]) -> None:
        _backup.backup(ctx, self.connect)

    def restore(self, ctx: RestoreContext[ClickHouseParameters]) -> None:
        _restore.restore(ctx, self.connect)
