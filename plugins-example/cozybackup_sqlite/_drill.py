"""Restore drills: a throwaway target to restore into, and the check of what arrived."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cozybackup_core import AppLocation, DriverError

from ._connection import db_path
from ._replay import check_integrity


class Drills:
    """The optional methods of :class:`~cozybackup_core.Driver` that restore drills use;
    ``SQLiteDriver`` inherits them (they keep no state: one driver instance serves every job)."""

    @contextlib.contextmanager
    def scratch_target(self, workdir: Path, like: AppLocation) -> Iterator[AppLocation]:
        """A throwaway database file under the drill's temp dir (removed with it)."""
        yield AppLocation(
            ref=like.ref,
            namespace=like.namespace,
            connection={"path": str(workdir / "drill.sqlite")},
        )

    def smoke_check(self, target: AppLocation, driver_metadata: Mapping[str, Any]) -> str:
        """The restored file opens, passes ``integrity_check`` and has what the dump had."""
        conn = sqlite3.connect(db_path(target))
        try:
            check_integrity(conn)
            query = (
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
            tables = conn.execute(query).fetchone()[0]
        finally:
            conn.close()
        expected = driver_metadata.get("tables")
        if isinstance(expected, int) and tables != expected:
            raise DriverError(
                f"the restored database has {tables} tables; the backup had {expected}"
            )
        return f"integrity check passed, {tables} tables"
