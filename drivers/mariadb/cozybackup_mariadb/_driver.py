"""The MariaDB driver: logical (``mariadb-dump``) or physical (``mariabackup``) backups.

Connection keys of an application (declared by the platform admin; a tenant never
sees them), credentials from its secret (``username``, ``password``)::

    host: mariadb-shop.tenant-user1.svc     # or socket: /run/mysqld/mysqld.sock
    port: 3306
    # physical mode (backups read only this directory; the server's @@datadir is not used):
    datadir: /var/lib/mysql-shop/data
    # physical restores only:
    stopCommand: [systemctl, stop, mariadb@shop]
    startCommand: [systemctl, start, mariadb@shop]
    datadirOwner: mysql                     # default: the current datadir's owner
    serviceTimeoutSeconds: 300

The mode is a class parameter (see :class:`MariaDBParameters`); a restore uses the
mode its backup was taken with (read from the backup's own streams).
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
    DriverError,
    GroupKind,
    Locator,
    RestoreContext,
)

from . import _logical, _physical
from ._conn import Server
from ._params import MariaDBParameters, Mode, check

try:
    __version__ = _dist_version("cozybackup-mariadb")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

#: The application kind this driver serves (Cozystack's managed MariaDB).
MARIADB_KIND = GroupKind(kind="MariaDB")


class MariaDBDriver(Driver):
    """Backs up and restores ``apps.cozystack.io/MariaDB`` applications."""

    name: ClassVar[str] = "mariadb"
    strategy_kind: ClassVar[str] = "MariaDB"
    kinds: ClassVar[tuple[GroupKind, ...]] = (MARIADB_KIND,)
    default_kinds: ClassVar[tuple[str, ...]] = ("MariaDB",)
    # Cozystack's Helm release mariadb-X: a mariadb-operator MariaDB; writes go to the primary.
    locators: ClassVar[Mapping[str, Locator]] = {
        "MariaDB": Locator(
            connection={"host": "mariadb-{name}-primary.{namespace}.svc", "port": 3306},
            credentials_from="mariadb-{name}-credentials",
            keys={"password": "root"},
            fixed={"username": "root"},
        )
    }
    parameters_type: ClassVar[type[Any]] = MariaDBParameters
    #: physical mode reads and replaces the declared ``datadir``
    capabilities: ClassVar[Capabilities] = Capabilities(local_paths=True)
    version: ClassVar[str] = __version__

    def validate_parameters(self, parameters: Any) -> None:
        check(parameters)

    def backup(self, ctx: BackupContext) -> None:
        params = _params(ctx.parameters)
        server = Server.from_location(ctx.application)
        deadline = ctx.deadline.tighter(params.timeout_seconds)
        if params.mode is Mode.PHYSICAL:
            _physical.backup(ctx, server, params, deadline)
        else:
            _logical.backup(ctx, server, params, deadline)
        deadline.check()

    def restore(self, ctx: RestoreContext) -> None:
        params = _params(ctx.parameters)
        server = Server.from_location(ctx.target)
        deadline = ctx.deadline.tighter(params.timeout_seconds)
        names = ctx.artifact.names()
        # The streams say how the backup was taken: a parameters snapshot could
        # have lost the mode (defaults are not recorded).
        if _physical.DATADIR_STREAM in names:
            _physical.restore(ctx, server, params, deadline)
        elif _logical.DATABASES_STREAM in names:
            _logical.restore(ctx, server, deadline)
        else:
            raise DriverError(
                "the backup was not written by a compatible version of the MariaDB driver",
                admin_detail=f"streams {names}",
            )
        ctx.log.info(
            "restored %s %s", ctx.source.name, "in place" if ctx.in_place else "into a copy"
        )


def _params(value: Any) -> MariaDBParameters:
    if not isinstance(value, MariaDBParameters):  # pragma: no cover - the engine structures it
        raise TypeError(f"expected MariaDBParameters, got {type(value).__name__}")
    return value
