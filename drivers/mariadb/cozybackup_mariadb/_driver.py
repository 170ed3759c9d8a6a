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
from typing import Any, ClassVar

from cozybackup_core import (
    BackupContext,
    Capabilities,
    Driver,
    GroupKind,
    Locator,
    LocatorCase,
    RestoreContext,
    distribution_version,
)

from . import _backup, _restore
from ._params import MariaDBParameters, check

__version__ = distribution_version("cozybackup-mariadb")

#: The application kind this driver serves (Cozystack's managed MariaDB).
MARIADB_KIND = GroupKind(kind="MariaDB")


class MariaDBDriver(Driver[MariaDBParameters]):
    """Backs up and restores ``apps.cozystack.io/MariaDB`` applications."""

    name: ClassVar[str] = "mariadb"
    strategy_kind: ClassVar[str] = "MariaDB"
    default_kinds: ClassVar[tuple[str, ...]] = ("MariaDB",)
    # Cozystack's Helm release mariadb-X: a mariadb-operator MariaDB, root's password under
    # key root of Secret mariadb-X-credentials.  With replication (replicas > 1) writes go
    # to service mariadb-X-primary; a single replica has only service mariadb-X.
    locators: ClassVar[Mapping[str, Locator]] = {
        "MariaDB": Locator(
            resource="mariadbs",
            connection={"host": "mariadb-{name}-primary.{namespace}.svc", "port": 3306},
            credentials_from="mariadb-{name}-credentials",
            keys={"password": "root"},
            fixed={"username": "root"},
            cases=(
                LocatorCase(
                    when={"spec.replicas": 1},
                    connection={"host": "mariadb-{name}.{namespace}.svc"},
                ),
            ),
        )
    }
    #: physical mode reads and replaces the declared ``datadir``
    capabilities: ClassVar[Capabilities] = Capabilities(local_paths=True)
    version: ClassVar[str] = __version__

    def validate_parameters(self, parameters: Any) -> None:
        check(parameters)

    def backup(self, ctx: BackupContext[MariaDBParameters]) -> None:
        _backup.backup(ctx)

    def restore(self, ctx: RestoreContext[MariaDBParameters]) -> None:
        _restore.restore(ctx)
