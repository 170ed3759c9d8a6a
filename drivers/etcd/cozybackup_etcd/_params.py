"""Class parameters of the ``Etcd`` strategy.

In a BackupClass (camelCase on the wire)::

    parameters:
      snapshotFrom: leader      # leader (default) | follower | any
      timeoutSeconds: 3600      # optional, on top of the platform's own job deadline
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from cozybackup_core import FieldInvalid

#: A day: longer than any etcd snapshot of the 8 GiB etcd allows at its slowest.
MAX_TIMEOUT = 86_400


class SnapshotFrom(enum.Enum):
    """Which member streams the snapshot.

    A plain ``Enum`` on purpose: the core's converter has a strict hook for ``str``
    that would also capture a ``str`` subclass and skip the enum check.
    """

    #: The leader has applied every committed write: the freshest snapshot.
    LEADER = "leader"
    #: Spares the leader the read of the whole database (falls back to the leader
    #: on a one-member cluster).
    FOLLOWER = "follower"
    #: The first member that answers.
    ANY = "any"

    @classmethod
    def _missing_(cls, value: object) -> SnapshotFrom:
        # The converter puts the field path in front: "…parameters.snapshotFrom: …".
        choices = ", ".join(f'"{m.value}"' for m in cls)
        raise ValueError(f"{str(value)[:40]!r} is not a member choice; use one of {choices}")


def _timeout(_inst: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and not 1 <= value <= MAX_TIMEOUT:
        raise FieldInvalid(attribute.name, f"must be between 1 and {MAX_TIMEOUT}, got {value}")


@attrs.frozen(kw_only=True)
class EtcdParameters:
    """``parameters`` of an ``Etcd`` strategy binding.

    ``snapshot_from`` (``snapshotFrom``)
        The member whose database is streamed; every member holds the whole keyspace.
    ``timeout_seconds`` (``timeoutSeconds``)
        Stop the backup or restore after this long (the platform's own deadline still
        applies; the earlier one wins).
    """

    snapshot_from: SnapshotFrom = SnapshotFrom.LEADER
    timeout_seconds: int | None = attrs.field(default=None, validator=_timeout)
