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

import re
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import Any, ClassVar

from cozybackup_core import (
    APPS_GROUP,
    AppLocation,
    BackupContext,
    Deadline,
    Driver,
    DriverError,
    GroupKind,
    RestoreContext,
)

from . import _logical, _native, _restore
from ._chdb import ChdbClient
from ._client import ChdbTarget, Client, ServerError, Unreachable, secrets_of, target_of
from ._errors import classify
from ._http import HttpClient
from ._params import ClickHouseParameters, Mode, check

try:
    __version__ = _dist_version("cozybackup-clickhouse")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

#: The application kind this driver serves (Cozystack's managed ClickHouse).
CLICKHOUSE_KIND = GroupKind(api_group=APPS_GROUP, kind="ClickHouse")


class ClickHouseDriver(Driver[ClickHouseParameters]):
    """Backs up and restores ``apps.cozystack.io/ClickHouse`` applications."""

    name: ClassVar[str] = "clickhouse"
    strategy_kind: ClassVar[str] = "ClickHouse"
    kinds: ClassVar[tuple[GroupKind, ...]] = (CLICKHOUSE_KIND,)
    default_kinds: ClassVar[tuple[str, ...]] = ("ClickHouse",)
    parameters_type: ClassVar[type[Any]] = ClickHouseParameters
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
        params = ctx.parameters
        deadline = ctx.deadline.tighter(params.timeout_seconds)
        secrets = secrets_of(target_of(ctx.application))
        client = self.connect(ctx.application, deadline)
        try:
            if params.mode is Mode.NATIVE:
                _native.backup(ctx, client, params, secrets)
            else:
                _logical.backup(ctx, client, params, secrets)
        finally:
            client.close()
        deadline.check()

    def restore(self, ctx: RestoreContext[ClickHouseParameters]) -> None:
        params = ctx.parameters
        deadline = ctx.deadline.tighter(params.timeout_seconds)
        names = ctx.artifact.names()
        native = _native.INDEX_STREAM in names
        if not native and _logical.INDEX_STREAM not in names:
            raise DriverError(
                "the backup was not written by a compatible version of the ClickHouse driver",
                admin_detail=f"streams {names}",
            )
        secrets = secrets_of(target_of(ctx.target))
        client = self.connect(ctx.target, deadline)
        try:
            if native:
                _native.restore(ctx, client, secrets, _sync(client))
            else:
                _restore.restore(ctx, client, secrets, _sync(client))
        finally:
            client.close()
        ctx.log.info(
            "restored %s %s", ctx.source.name, "in place" if ctx.in_place else "into a copy"
        )


def _sync(client: Client) -> str:
    """`` SYNC`` where the server knows it (20.x and later): a dropped name is free, and
    its disk space released, at once rather than minutes later."""
    m = re.match(r"(\d+)\.", client.version)
    return " SYNC" if m and int(m.group(1)) >= 20 else ""
