"""cozybackup driver for KubeVirt virtual machine disks (``VMDisk``) and machines
(``VMInstance``): sparse, streamed disk contents; images rebuilt beside the target and
swapped in."""

from __future__ import annotations

from ._driver import KubeVirtDriver, __version__
from ._params import Consistency, DiskFormat, KubeVirtParameters

__all__ = ["Consistency", "DiskFormat", "KubeVirtDriver", "KubeVirtParameters", "__version__"]
