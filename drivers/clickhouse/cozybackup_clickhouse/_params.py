"""Class parameters of the ``ClickHouse`` strategy, and their checks.

In a BackupClass (camelCase on the wire)::

    parameters:
      mode: logical            # or native
      databases: [shop, crm]   # default: every user database
      timeoutSeconds: 3600     # optional, on top of the platform's own job deadline
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from cozybackup_core import FieldInvalid, ValidationError

#: Databases that belong to the server itself: never backed up, never named in ``databases``.
SYSTEM_DATABASES = frozenset({"system", "information_schema", "INFORMATION_SCHEMA"})
_MAX_NAME = 206  # ClickHouse's limit on a file-system-backed name (255 minus escaping room)


class Mode(enum.Enum):
    """How the data is taken.

    A plain ``Enum`` on purpose: the core's converter has a strict hook for ``str`` that
    would also capture a ``str`` subclass and skip the enum check.
    """

    LOGICAL = "logical"
    NATIVE = "native"

    @classmethod
    def _missing_(cls, value: object) -> Mode:
        # Raised from the converter with the field path in front of it.
        raise ValueError(f'{str(value)[:40]!r} is not a mode; use "logical" or "native"')


def _positive(_inst: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 1:
        raise FieldInvalid(attribute.name, f"must be at least 1, got {value}")


@attrs.frozen(kw_only=True)
class ClickHouseParameters:
    """``parameters`` of a ``ClickHouse`` strategy binding.

    ``mode``
        ``logical`` (default): every table's schema and its rows in ClickHouse's Native
        format, streamed through the server's HTTP interface into the artifact; works with
        any server version.  ``native``: the server's own ``BACKUP ... TO S3`` into a
        location the platform hands out per backup (an admin opt-in; see the README).
    ``databases``
        The databases to back up.  Empty (default) means every database but the
        server's own (``system``, ``information_schema``).
    ``timeout_seconds`` (``timeoutSeconds``)
        Stop the backup or restore after this long (the platform's own deadline still
        applies; the earlier one wins).
    """

    mode: Mode = Mode.LOGICAL
    databases: tuple[str, ...] = ()
    timeout_seconds: int | None = attrs.field(default=None, validator=_positive)


def check(params: Any) -> None:
    """Everything the types cannot say; each problem names its field (camelCase)."""
    if not isinstance(params, ClickHouseParameters):
        raise ValueError(f"expected ClickHouseParameters, got {type(params).__name__}")
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, name in enumerate(params.databases):
        where = f"databases[{i}]"
        if not name:
            problems.append((where, "must not be empty"))
        elif len(name) > _MAX_NAME:
            problems.append((where, f"at most {_MAX_NAME} characters"))
        elif any(c in name for c in "\x00/") or name in (".", ".."):
            problems.append((where, f"{name[:40]!r} is not a valid ClickHouse database name"))
        elif name in SYSTEM_DATABASES:
            problems.append(
                (where, f"{name!r} is the server's own database and is never backed up")
            )
        elif name in seen:
            problems.append((where, f"{name!r} is listed twice"))
        seen.add(name)
    if problems:
        raise ValidationError(problems)
