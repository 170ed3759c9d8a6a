"""Class parameters of the ``KubeVirt`` strategy.

In a BackupClass (camelCase on the wire)::

    parameters:
      consistency: auto        # auto (default) | freeze | stop | crash
      restoreFormat: qcow2     # qcow2 (default) | raw
      verifyRestore: true      # re-read the rebuilt image before it replaces the target
      changedBlocks: false     # on Kubernetes: read only the blocks changed since the last
                               # backup (KubeVirt's VirtualMachineBackup, changed-block tracking)
      fullEvery: 0             # with changedBlocks: read every block on each Nth backup (0: never)
      scratchStorageClass: ""  # with changedBlocks: StorageClass of the backup's scratch PVC
      snapshots: auto          # on Kubernetes: auto (default) | kubevirt | volume
      volumeSnapshotClass: ""  # with volume snapshots: the VolumeSnapshotClass (the default if unset)
      volumeGroupSnapshots: false  # with volume snapshots: cut a VM's disks together, at one
                                   # moment (a CSI VolumeGroupSnapshot; the CSI driver must offer it)
      volumeGroupSnapshotClass: "" # its VolumeGroupSnapshotClass (the default if unset)
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


class Snapshots(_Choice):
    """On Kubernetes, how a VM's disks are captured before they are read."""

    #: KubeVirt's VirtualMachineSnapshot where the cluster serves it, else ``volume``.
    AUTO = "auto"
    #: KubeVirt's VirtualMachineSnapshot (it freezes the guest through its agent).
    KUBEVIRT = "kubevirt"
    #: A CSI VolumeSnapshot of each disk's PVC, read through a PVC restored from it; no
    #: guest freeze, so a running VM needs ``consistency: crash``.
    VOLUME = "volume"


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
    ``changed_blocks`` (``changedBlocks``)
        On Kubernetes, back up a running VM through KubeVirt's ``VirtualMachineBackup``
        (pull mode, changed-block tracking): after the first, only the blocks the guest
        changed since the previous Backup of the class are read from the cluster, laid over
        that Backup's disks, so every Backup still holds whole disks (a restore needs no
        other Backup) and a deduplicating location stores only the changed chunks.
    ``full_every`` (``fullEvery``)
        With ``changed_blocks``: every Nth backup reads every block again (0: only when
        the chain is broken: no usable previous Backup, or KubeVirt lost the checkpoint).
    ``scratch_storage_class`` (``scratchStorageClass``)
        With ``changed_blocks``: the StorageClass of the filesystem PVC KubeVirt keeps the
        blocks the guest overwrites during the backup in (the cluster's default if unset).
    ``snapshots``
        See :class:`Snapshots`.
    ``volume_snapshot_class`` (``volumeSnapshotClass``)
        With volume snapshots: the VolumeSnapshotClass to take them with (the cluster's
        default for the disk's CSI driver if unset).
    ``volume_group_snapshots`` (``volumeGroupSnapshots``)
        With volume snapshots of a VM with several disks: one CSI ``VolumeGroupSnapshot``
        of all of them, cut at one moment, so that a running VM's disks are
        crash-consistent with each other, not only each on its own (a database whose
        data and journal are on two disks).  The cluster's snapshot controller and the
        CSI driver must offer group snapshots; a backup says so when they do not.
    ``volume_group_snapshot_class`` (``volumeGroupSnapshotClass``)
        The VolumeGroupSnapshotClass to take them with (the cluster's default if unset).
    """

    consistency: Consistency = Consistency.AUTO
    restore_format: DiskFormat = DiskFormat.QCOW2
    verify_restore: bool = True
    changed_blocks: bool = False
    full_every: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    scratch_storage_class: str | None = None
    snapshots: Snapshots = Snapshots.AUTO
    volume_snapshot_class: str | None = None
    volume_group_snapshots: bool = False
    volume_group_snapshot_class: str | None = None
