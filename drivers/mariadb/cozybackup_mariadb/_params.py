"""Class parameters of the ``MariaDB`` strategy, and their checks.

In a BackupClass (camelCase on the wire)::

    parameters:
      mode: logical            # or physical
      databases: [shop, crm]   # logical only; default: every user database
      parallel: 4              # physical only: mariabackup copy threads
      timeoutSeconds: 3600     # optional, on top of the platform's own job deadline
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

#: Schemas that belong to the server itself: never dumped, never named in ``databases``.
SYSTEM_SCHEMAS = frozenset({"mysql", "information_schema", "performance_schema", "sys"})
MAX_PARALLEL = 64
_MAX_NAME = 64  # MariaDB's limit on a database name


class Mode(enum.Enum):
    """How the data is taken: SQL text (``logical``) or the data files (``physical``).

    A plain ``Enum`` on purpose: the core's converter has a strict hook for ``str``
    that would also capture a ``str`` subclass and skip the enum check.
    """

    LOGICAL = "logical"
    PHYSICAL = "physical"

    @classmethod
    def _missing_(cls, value: object) -> Mode:
        # Raised from the converter with the field path in front of it:
        # "spec.strategies[0].parameters.mode: ...".
        raise ValueError(f'{str(value)[:40]!r} is not a mode; use "logical" or "physical"')


@attrs.frozen(kw_only=True)
class MariaDBParameters:
    """``parameters`` of a ``MariaDB`` strategy binding.

    ``mode``
        ``logical`` (default): ``mariadb-dump`` of the databases in one consistent
        transaction, plus the server's accounts and grants, restored with the
        ``mariadb`` client.  ``physical``: ``mariabackup`` of the whole data directory,
        restored by preparing it and putting it in place of the target's (the host
        must be able to stop and start the target server).
    ``databases``
        Logical mode only: the databases to back up.  Empty (default) means every
        user database, and then the accounts too.
    ``parallel``
        Physical mode only: how many files ``mariabackup`` and ``mbstream`` copy at once.
    ``timeout_seconds`` (``timeoutSeconds``)
        Stop the backup or restore after this long (the platform's own deadline
        still applies; the earlier one wins).
    """

    mode: Mode = Mode.LOGICAL
    databases: tuple[str, ...] = ()
    parallel: int = 1
    timeout_seconds: int | None = None


def check(params: Any) -> None:
    """Everything the types cannot say; raises ``ValueError`` naming the field."""
    if not isinstance(params, MariaDBParameters):
        raise ValueError(f"expected MariaDBParameters, got {type(params).__name__}")
    problems: list[str] = []
    if params.mode is Mode.PHYSICAL and params.databases:
        problems.append(
            "databases: a physical backup always copies the whole server; "
            "remove databases or use mode: logical"
        )
    seen: set[str] = set()
    for i, name in enumerate(params.databases):
        where = f"databases[{i}]"
        if not name:
            problems.append(f"{where}: must not be empty")
        elif len(name) > _MAX_NAME:
            problems.append(f"{where}: at most {_MAX_NAME} characters")
        elif "\x00" in name or name != name.strip() or name.endswith("."):
            problems.append(f"{where}: {name[:40]!r} is not a valid MariaDB database name")
        elif name.lower() in SYSTEM_SCHEMAS:
            problems.append(
                f"{where}: {name!r} is a system schema; accounts are backed up with all "
                "databases (leave databases empty), server internals are not backed up"
            )
        elif name in seen:
            problems.append(f"{where}: {name!r} is listed twice")
        seen.add(name)
    if not 1 <= params.parallel <= MAX_PARALLEL:
        problems.append(f"parallel: must be between 1 and {MAX_PARALLEL}, got {params.parallel}")
    elif params.parallel > 1 and params.mode is Mode.LOGICAL:
        problems.append(
            "parallel: only physical backups copy in parallel; a logical dump is one "
            "consistent transaction (set parallel: 1 or mode: physical)"
        )
    if params.timeout_seconds is not None and params.timeout_seconds < 1:
        problems.append(f"timeoutSeconds: must be at least 1, got {params.timeout_seconds}")
    if problems:
        raise ValueError("; ".join(problems))
