"""The core's conformance kit on real images: a qcow2 VMDisk, a raw VMDisk, and a
VMInstance with a qcow2 and a raw disk.  Disks are 64 MiB with data at scattered offsets
(patterns and random bytes) and holes everywhere else."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from cozybackup_kubevirt import KubeVirtDriver

from cozybackup_core import ApplicationRef
from cozybackup_core.testing import AppHandle, DriverConformance

from conftest import MiB, guest_digest, make_image

SIZE = 64 * MiB


def fill(path: Path, fmt: str, seed: int) -> None:
    """Replace the disk's contents: what lands where depends on the seed."""
    base = (seed * 7 % 40) * MiB
    make_image(
        path,
        fmt,
        SIZE,
        patterns=((0xA0 + seed, base + 4096, 64 << 10), (seed, SIZE - MiB, 512)),
        random_at=((base + 3 * MiB, MiB + 12345), (50 * MiB + seed * 4096, 300_000)),
        seed=seed,
    )


class TestVMDiskQcow2(DriverConformance):
    driver = KubeVirtDriver
    kind = "VMDisk"
    fmt: ClassVar[str] = "qcow2"

    def create_app(self, tmp_path: Path, name: str) -> AppHandle:
        path = tmp_path / f"{name}.{self.fmt}"
        make_image(path, self.fmt, SIZE)
        return AppHandle(
            ref=ApplicationRef(kind=self.kind, name=name),
            connection={"path": str(path), "format": self.fmt},
        )

    def write_data(self, app: AppHandle, seed: int) -> None:
        fill(Path(app.connection["path"]), self.fmt, seed)

    def checksum(self, app: AppHandle) -> str:
        return guest_digest(Path(app.connection["path"]), self.fmt)

    def break_app(self, app: AppHandle) -> AppHandle:
        # A corrupted qcow2 header: the magic is gone.
        path = Path(app.connection["path"])
        if self.fmt == "qcow2":
            with path.open("r+b") as f:
                f.write(b"\0\0\0\0")
        else:
            path.unlink()
        return app

    def local_paths(self, app: AppHandle) -> list[Path]:
        return [Path(app.connection["path"])]


class TestVMDiskRaw(TestVMDiskQcow2):
    fmt = "raw"


class TestVMInstanceTwoDisks(DriverConformance):
    driver = KubeVirtDriver
    kind = "VMInstance"

    def create_app(self, tmp_path: Path, name: str) -> AppHandle:
        disks = []
        for disk, fmt in (("root", "qcow2"), ("data", "raw")):
            path = tmp_path / f"{name}-{disk}.{fmt}"
            make_image(path, fmt, SIZE)
            disks.append({"name": disk, "path": str(path), "format": fmt})
        return AppHandle(ref=ApplicationRef(kind=self.kind, name=name), connection={"disks": disks})

    def write_data(self, app: AppHandle, seed: int) -> None:
        for i, disk in enumerate(app.connection["disks"]):
            fill(Path(disk["path"]), disk["format"], seed * 3 + i)

    def checksum(self, app: AppHandle) -> str:
        return "|".join(
            f"{d['name']}={guest_digest(Path(d['path']), d['format'])}"
            for d in app.connection["disks"]
        )

    def break_app(self, app: AppHandle) -> AppHandle:
        # The second disk's image is missing: not even the first one may be committed.
        Path(app.connection["disks"][1]["path"]).unlink()
        return app

    def local_paths(self, app: AppHandle) -> list[Path]:
        return [Path(d["path"]) for d in app.connection["disks"]]
