"""Restore drills: throwaway images under the drill's temp dir, and their smoke check."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cozybackup_core import AppLocation, Deadline, DriverError

from . import _image as image
from ._machine import Disk

#: the connection of a drill's scratch target (see ``scratch_location``)
SCRATCH_KEY = "cozybackupScratchDir"


def scratch_location(workdir: Path, like: AppLocation) -> AppLocation:
    """A target whose images are made under ``workdir``: one per disk of the backup."""
    return AppLocation(
        ref=like.ref, namespace=like.namespace, connection={SCRATCH_KEY: str(workdir)}
    )


def scratch_dir(target: AppLocation) -> Path | None:
    """The directory of a drill's scratch target; ``None`` for any other target."""
    scratch = target.connection.get(SCRATCH_KEY)
    if isinstance(scratch, str) and set(target.connection) == {SCRATCH_KEY}:
        return Path(scratch)
    return None


def smoke_check(target: AppLocation, driver_metadata: Mapping[str, Any]) -> str:
    """Every restored image opens, passes ``qemu-img check`` and has the backup's
    virtual size (its content digest was already compared by the restore)."""
    deadline = Deadline.after(300)
    expected = {
        d.get("name"): d for d in driver_metadata.get("disks", []) if isinstance(d, Mapping)
    }
    workdir = Path(str(target.connection.get(SCRATCH_KEY)))
    checked = 0
    for name, meta in expected.items():
        disk = Disk(name=str(name), path=workdir / f"{name}.vmdisk.img")
        info = image.probe(target.ref, disk, deadline)
        image.check(disk.open_name, info.format, deadline)
        if info.virtual_size < int(meta.get("virtualSize", 0)):
            raise DriverError(
                f"the restored disk {name} is smaller than the backed-up disk",
                admin_detail=f"{info.virtual_size} < {meta.get('virtualSize')}",
            )
        checked += 1
    if checked == 0:
        raise DriverError("the backup records no disks to check")
    return f"{checked} disk image(s) rebuilt, content verified, qemu-img check passed"
