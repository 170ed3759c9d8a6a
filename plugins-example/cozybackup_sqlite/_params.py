"""Class parameters of the ``SQLite`` strategy.

In a BackupClass (camelCase on the wire)::

    parameters:
      integrityCheck: true     # check the restored file before it replaces the target
      batchStatements: 1000    # statements replayed between commits and deadline checks
"""

from __future__ import annotations

import attrs
from cozybackup_core import ValidationError


@attrs.frozen(kw_only=True)
class SQLiteParameters:
    """``parameters`` of a ``SQLite`` strategy binding (camelCase in a BackupClass).

    ``integrityCheck``: run ``PRAGMA integrity_check`` on the restored file before it
    replaces the target.  ``batchStatements``: while replaying a dump, commit every this
    many statements and check the deadline in between (larger is a little faster).
    """

    integrity_check: bool = True
    batch_statements: int = 1000


def check(parameters: SQLiteParameters) -> None:
    """The checks beyond the type, run when a BackupClass is applied and when a job
    resolves it."""
    if parameters.batch_statements <= 0:
        # Name the field relative to the parameters; the core prefixes the class's path.
        raise ValidationError(
            [("batchStatements", f"must be greater than 0, got {parameters.batch_statements}")]
        )
