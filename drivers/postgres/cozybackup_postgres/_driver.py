"""The PostgreSQL driver: ``pg_dump`` streamed out, ``pg_restore`` streamed back in.

Connection keys of an application (declared by the platform admin; a tenant never sees
them) and its credentials::

    connection:  {host: 10.0.0.5, port: 5432, sslmode: require, database: postgres}
    credentials: {username: postgres, password: ...}

How a backup is made is in ``_backup.py``, how a restore is applied in ``_restore.py``,
the artifact's streams and index in ``_artifact.py``, and how the client tools reach
the server in ``_pg.py``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from cozybackup_core import (
    AppLocation,
    BackupContext,
    Capabilities,
    Driver,
    GroupKind,
    Locator,
    PointInTimeNotSupported,
    RestoreContext,
    SegmentStore,
    Streamer,
    distribution_version,
)

from . import _backup, _basebackup, _params, _physical, _restore, _wal
from ._drill import Drills
from ._params import PostgresParameters
from ._streamer import PARTIAL_SECONDS, WalStreamer

__version__ = distribution_version("cozybackup-postgres")

#: The application kind this driver serves (Cozystack's managed PostgreSQL).
POSTGRES_KIND = GroupKind(kind="Postgres")


class PostgresDriver(Drills, Driver[PostgresParameters]):
    """Backups of PostgreSQL servers (``apps.cozystack.io/Postgres``): logical
    (``pg_dump``) or, with ``mode: physical``, base backups and archived WAL, restored to
    any moment the archive reaches."""

    name: ClassVar[str] = "postgres"
    strategy_kind: ClassVar[str] = "Postgres"
    default_kinds: ClassVar[tuple[str, ...]] = ("Postgres",)
    # Cozystack's Helm release postgres-X: CloudNativePG Cluster postgres-X, service
    # postgres-X-rw, superuser Secret postgres-X-superuser.
    locators: ClassVar[Mapping[str, Locator]] = {
        "Postgres": Locator(
            resource="postgreses",
            connection={
                "host": "postgres-{name}-rw.{namespace}.svc",
                "port": 5432,
                "sslmode": "require",
            },
            credentials_from="postgres-{name}-superuser",
            keys={"username": "username", "password": "password"},
        )
    }
    version: ClassVar[str] = __version__
    # Physical backups only; a logical one refuses a recoveryTime (restore below).
    capabilities: ClassVar[Capabilities] = Capabilities(point_in_time=True)

    def validate_parameters(self, parameters: Any) -> None:
        _params.check(parameters)

    # timeoutSeconds can only shorten the platform's own deadline for the job.

    def streams(self, parameters: PostgresParameters) -> bool:
        return parameters.mode == "physical" and parameters.wal_archiving

    def streamer(
        self,
        parameters: PostgresParameters,
        application: AppLocation,
        archive: SegmentStore,
        workdir: Path,
    ) -> Streamer:
        every = parameters.wal_partial_seconds
        return WalStreamer(application, archive, workdir, partial_seconds=every or PARTIAL_SECONDS)

    def archive_expired(
        self,
        parameters: PostgresParameters,
        kept: Sequence[Mapping[str, Any]],
        names: Sequence[str],
        now: dt.datetime,
    ) -> tuple[list[str], str]:
        return _wal.expired(names, kept, parameters.pitr_window_seconds, now)

    def backup(self, ctx: BackupContext[PostgresParameters]) -> None:
        deadline = ctx.deadline.tighter(ctx.parameters.timeout_seconds)
        if ctx.parameters.mode == "physical":
            _basebackup.backup(ctx, deadline)
        else:
            _backup.backup(ctx, deadline)

    def restore(self, ctx: RestoreContext[PostgresParameters]) -> None:
        # The Backup's own mode decides, not the class's current one.
        deadline = ctx.deadline.tighter(ctx.parameters.timeout_seconds)
        if ctx.driver_metadata.get("mode") == "physical":
            _physical.restore(ctx, deadline)
            return
        if ctx.recovery_time is not None:
            raise PointInTimeNotSupported(
                "spec.options.recoveryTime: this Backup is logical (pg_dump) and restores to "
                "the moment it was taken; point-in-time recovery needs a BackupClass with "
                "mode: physical and walArchiving: true"
            )
        _restore.restore(ctx, deadline)
