"""End to end through the real ``cozybackup`` CLI, the driver found by its entry point:
an admin declares a VMDisk (qcow2) and a VMInstance (qcow2 + raw) plus a copy of each, a
tenant applies BackupJobs on the built-in ``cozy-default`` class, then RestoreJobs in place
and into the copies."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from cozybackup_core import ApplicationRef
from cozybackup_core.testing import (
    AppHandle,
    Cli,
    app_manifests,
    backup_job,
    restore_job,
    typed_metadata,
)

from conftest import GiB, MiB, identical, make_image


def application(name: str, kind: str, connection: dict[str, Any]) -> AppHandle:
    return AppHandle(ref=ApplicationRef(kind=kind, name=name), connection=connection)


def test_vmdisk_and_vminstance_through_the_cli(tmp_path: Path) -> None:
    home = tmp_path / "home"
    images = tmp_path / "images"
    images.mkdir()
    root = make_image(
        images / "shop-root.qcow2", "qcow2", 2 * GiB,
        patterns=((0xAB, MiB, 64 << 10),), random_at=((GiB, 3 * MiB),), seed=1,
    )  # fmt: skip
    data = make_image(images / "shop-data.raw", "raw", GiB, random_at=((7 * MiB, MiB),), seed=2)
    disk = make_image(images / "scratch.qcow2", "qcow2", GiB, patterns=((0x5A, 0, MiB),))
    keep = {p: images / f"keep-{p.name}" for p in (root, data, disk)}
    for src, dst in keep.items():
        subprocess.run(["cp", "--sparse=always", src, dst], check=True)

    def vm(prefix: str) -> dict[str, Any]:
        return {
            "disks": [
                {"name": "root", "path": str(images / f"{prefix}-root.qcow2"), "format": "qcow2"},
                {"name": "data", "path": str(images / f"{prefix}-data.raw"), "format": "raw"},
            ]
        }

    scratch, shop = (
        application("scratch", "VMDisk", {"path": str(disk), "format": "qcow2"}),
        application("shop", "VMInstance", vm("shop")),
    )
    scratch_copy = application("scratch-copy", "VMDisk", {"path": str(images / "scratch-copy.img")})
    shop_copy = application("shop-copy", "VMInstance", vm("copy"))
    cli = Cli(home)
    cli.apply(
        [doc for app in (scratch, scratch_copy, shop, shop_copy) for doc in app_manifests(app)]
    )
    drivers = cli.ok("drivers")
    assert "kubevirt" in drivers and "strategy=KubeVirt" in drivers, drivers

    cli.apply([backup_job("scratch-1", scratch.ref), backup_job("shop-1", shop.ref)])
    cli.run_once("backupjob/scratch-1", "backupjob/shop-1")
    backup = cli.get("backup", "shop-1")
    meta = typed_metadata(backup["spec"]["driverMetadata"])
    assert [d["name"] for d in meta["disks"]] == ["root", "data"]
    assert meta["disks"][0]["virtualSize"] == 2 * GiB
    assert backup["spec"]["strategyRef"]["kind"] == "KubeVirt"
    cli.ok("verify", "backup", "shop-1", "-n", cli.namespace)

    # The damage, then restores in place and into the copies.
    for src in keep:
        fmt = "raw" if src.suffix == ".raw" else "qcow2"
        make_image(src, fmt, GiB, patterns=((0xEE, 0, 2 * MiB),))
        assert not identical(src, keep[src], fmt, fmt)
    cli.apply(
        [
            restore_job("scratch-back", "scratch-1"),
            restore_job("shop-back", "shop-1"),
            restore_job("scratch-drill", "scratch-1", target=scratch_copy.ref),
            restore_job("shop-drill", "shop-1", target=shop_copy.ref),
        ]
    )
    names = ("scratch-back", "shop-back", "scratch-drill", "shop-drill")
    cli.run_once(*(f"restorejob/{name}" for name in names))
    assert identical(root, keep[root], "qcow2", "qcow2")
    assert identical(data, keep[data], "raw", "raw")
    assert identical(disk, keep[disk], "qcow2", "qcow2")
    assert identical(images / "scratch-copy.img", keep[disk], "qcow2", "qcow2")
    assert identical(images / "copy-root.qcow2", keep[root], "qcow2", "qcow2")
    assert identical(images / "copy-data.raw", keep[data], "raw", "raw")

    tenant = cli.tenant_text()
    assert "Backup shop-1 is ready" in tenant
    for secret in (str(home), str(images), ".qcow2", ".raw"):
        assert secret not in tenant
