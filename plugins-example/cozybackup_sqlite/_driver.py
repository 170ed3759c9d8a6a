"""The SQLite driver: a consistent SQL dump out, an atomic file swap in.

Connection keys of an application (declared by the platform admin; a tenant never
sees them)::

    path: /abs/path/to/db.sqlite

How a backup is made is in ``_backup.py``, how a restore is applied in ``_restore.py``
(building the new file: ``_replay.py``), the dump format in ``_dump.py``, and why the
declared path is never followed in ``_files.py``.

Known limits (those of SQL dumps, shared with the ``sqlite3`` shell's ``.dump``): the
implicit ``rowid`` of tables without an ``INTEGER PRIMARY KEY`` is renumbered; text
that is not valid UTF-8 cannot be dumped; one row is held in memory at a time, so a
single huge BLOB costs about three times its size in RAM while it passes.
"""

from __future__ import annotations

from typing import Any, ClassVar

from cozybackup_core import (
    BackupContext,
    Capabilities,
    Driver,
    GroupKind,
    RestoreContext,
    distribution_version,
)

from . import _backup, _params, _restore
from ._drill import Drills
from ._params import SQLiteParameters

__version__ = distribution_version("cozybackup-sqlite")

#: The application kind this driver serves.
SQLITE_KIND = GroupKind(api_group="apps.example.com", kind="SQLiteDatabase")


class SQLiteDriver(Drills, Driver[SQLiteParameters]):
    """Backs up and restores SQLite database files (``apps.example.com/SQLiteDatabase``)."""

    name: ClassVar[str] = "sqlite"
    strategy_kind: ClassVar[str] = "SQLite"
    # Said here because the kind is not in apps.cozystack.io, which is all that
    # default_kinds can name.
    kinds: ClassVar[tuple[GroupKind, ...]] = (SQLITE_KIND,)
    #: it opens files at admin-declared paths (see ``_files.py``)
    capabilities: ClassVar[Capabilities] = Capabilities(local_paths=True)
    version: ClassVar[str] = __version__

    def validate_parameters(self, parameters: Any) -> None:
        _params.check(parameters)

    def backup(self, ctx: BackupContext[SQLiteParameters]) -> None:
        _backup.backup(ctx)

    def restore(self, ctx: RestoreContext[SQLiteParameters]) -> None:
        _restore.restore(ctx)
