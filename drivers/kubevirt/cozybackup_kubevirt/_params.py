"""Class parameters of the ``KubeVirt`` strategy.

In a BackupClass (camelCase on the wire)::

    parameters:
      consistency: auto        # auto (default) | freeze | stop | crash
      restoreFormat: qcow2     # qcow2 (default) | raw
      verifyRestore: true      # re-read the rebuilt image before it replaces the target
"""

from __future__ import annotations

import enum

import attrs


class _Choice(enum.Enum):
    @classmethod
    def _missing_(cls, value: object) -> _Choice:
        # The converter puts the field path in front: "…parameters.consistency: …".
        choices = ", ".join(f'"{m.value}"' for m in cls)
        raise ValueError(f"{str(value)[:40]!r} is not a valid choice; use one of {choices}")


class Consistency(_Choice):
    """How a disk that a running VM may be writing is made consistent for the read.

    A plain ``Enum`` on purpose: the core's converter has a strict hook for ``str``.
    """

    #: freeze/thaw if the platform declared them, else stop/start if declared, else
    #: the disks must not be in use (the backup is refused while a VM writes them).
    AUTO = "auto"
    #: the platform's ``freezeCommand``/``thawCommand`` must be declared.
    FREEZE = "freeze"
    #: the platform's ``stopCommand``/``startCommand`` must be declared.
    STOP = "stop"
    #: the admin accepts crash-consistent copies of disks in use (no command is run).
    CRASH = "crash"


class DiskFormat(_Choice):
    QCOW2 = "qcow2"
    RAW = "raw"


@attrs.frozen(kw_only=True)
class KubeVirtParameters:
    """``parameters`` of a ``KubeVirt`` strategy binding.

    ``consistency``
        See :class:`Consistency`.
    ``restore_format`` (``restoreFormat``)
        Image format a restore writes when the target does not declare its ``format``.
    ``verify_restore`` (``verifyRestore``)
        Re-read the rebuilt image and compare its content digest with the backup's before
        it replaces the target (costs one read of the data, not of the holes).
    """

    consistency: Consistency = Consistency.AUTO
    restore_format: DiskFormat = DiskFormat.QCOW2
    verify_restore: bool = True
