"""The ``KubeVirt`` strategy: VMDisk and VMInstance backups and restores."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from cozybackup_core import (
    AppLocation,
    BackupContext,
    Capabilities,
    Driver,
    GroupKind,
    Locator,
    RestoreContext,
    distribution_version,
)

from . import _backup, _drill, _kube_backup, _kube_restore, _restore
from ._kube_machine import is_kube
from ._params import KubeVirtParameters

__version__ = distribution_version("cozybackup-kubevirt")


class KubeVirtDriver(Driver[KubeVirtParameters]):
    name = "kubevirt"
    strategy_kind = "KubeVirt"
    # Said apart from default_kinds only for the order the kinds are listed in.
    kinds = (GroupKind(kind="VMDisk"), GroupKind(kind="VMInstance"))
    default_kinds = ("VMInstance", "VMDisk")
    capabilities = Capabilities(in_place_restore=True, to_copy_restore=True, local_paths=True)
    version = __version__
    # Cozystack's charts: vm-disk X is DataVolume vm-disk-X, which vm-instance VMs mount
    # as volume disk-X; vm-instance Y is VirtualMachine vm-instance-Y.  The disks are then
    # read through KubeVirt's snapshot and export, and restored through CDI's upload.
    locators: ClassVar[Mapping[str, Locator]] = {
        "VMDisk": Locator(
            resource="vmdisks", connection={"dataVolume": "vm-disk-{name}", "volume": "disk-{name}"}
        ),
        "VMInstance": Locator(
            resource="vminstances", connection={"virtualMachine": "vm-instance-{name}"}
        ),
    }

    def backup(self, ctx: BackupContext[KubeVirtParameters]) -> None:
        if is_kube(ctx.application):
            _kube_backup.backup(ctx)
        else:
            _backup.backup(ctx)

    def restore(self, ctx: RestoreContext[KubeVirtParameters]) -> None:
        if is_kube(ctx.target):
            _kube_restore.restore(ctx)
        else:
            _restore.restore(ctx)

    # ------------------------------------------------------------------ restore drills

    @contextlib.contextmanager
    def scratch_target(self, workdir: Path, like: AppLocation) -> Iterator[AppLocation]:
        """Throwaway images under the drill's temp dir (removed with it): one per disk of
        the backup, in ``restoreFormat``.  Only a restore accepts this connection."""
        yield _drill.scratch_location(workdir, like)

    def smoke_check(self, target: AppLocation, driver_metadata: Mapping[str, Any]) -> str:
        return _drill.smoke_check(target, driver_metadata)
