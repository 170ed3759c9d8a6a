"""End to end through the real ``cozybackup`` CLI, the driver found by its entry point:
an admin declares a VMDisk (qcow2) and a VMInstance (qcow2 + raw) plus a copy of each, a
tenant applies BackupJobs on the built-in ``cozy-default`` class, then RestoreJobs in place
and into the copies."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from cozybackup_core.testing import cli_ok as ok
from cozybackup_core.testing import run_cli as cli

from conftest import GiB, MiB, identical, make_image

NS = "tenant-user1"


def application(name: str, kind: str, connection: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "local.backups.cozystack.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"apiGroup": "apps.cozystack.io", "kind": kind, "connection": connection},
    }


def job(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "backups.cozystack.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


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

    admin = [
        application("scratch", "VMDisk", {"path": str(disk), "format": "qcow2"}),
        application("scratch-copy", "VMDisk", {"path": str(images / "scratch-copy.img")}),
        application("shop", "VMInstance", vm("shop")),
        application("shop-copy", "VMInstance", vm("copy")),
    ]
    ok(cli(home, "apply", "-f", "-", stdin=yaml.safe_dump_all(admin)))
    drivers = ok(cli(home, "drivers"))
    assert "kubevirt" in drivers and "strategy=KubeVirt" in drivers, drivers

    backups = [
        job(
            "BackupJob",
            f"{name}-1",
            {
                "applicationRef": {"apiGroup": "apps.cozystack.io", "kind": kind, "name": name},
                "backupClassName": "cozy-default",
            },
        )
        for name, kind in (("scratch", "VMDisk"), ("shop", "VMInstance"))
    ]
    ok(cli(home, "apply", "-f", "-", stdin=yaml.safe_dump_all(backups)))
    out = ok(cli(home, "run", "--once"))
    assert "backupjob/scratch-1 Succeeded" in out and "backupjob/shop-1 Succeeded" in out, out
    backup = json.loads(ok(cli(home, "get", "backup", "shop-1", "-n", NS, "-o", "json")))
    meta = backup["spec"]["driverMetadata"]
    assert [d["name"] for d in meta["disks"]] == ["root", "data"]
    assert meta["disks"][0]["virtualSize"] == 2 * GiB
    assert backup["spec"]["strategyRef"]["kind"] == "KubeVirt"
    ok(cli(home, "verify", "backup", "shop-1", "-n", NS))

    # The damage, then restores in place and into the copies.
    for src in keep:
        fmt = "raw" if src.suffix == ".raw" else "qcow2"
        make_image(src, fmt, GiB, patterns=((0xEE, 0, 2 * MiB),))
        assert not identical(src, keep[src], fmt, fmt)
    restores = [
        job("RestoreJob", "scratch-back", {"backupRef": {"name": "scratch-1"}}),
        job("RestoreJob", "shop-back", {"backupRef": {"name": "shop-1"}}),
        job(
            "RestoreJob",
            "scratch-drill",
            {
                "backupRef": {"name": "scratch-1"},
                "targetApplicationRef": {"kind": "VMDisk", "name": "scratch-copy"},
            },
        ),
        job(
            "RestoreJob",
            "shop-drill",
            {
                "backupRef": {"name": "shop-1"},
                "targetApplicationRef": {"kind": "VMInstance", "name": "shop-copy"},
            },
        ),
    ]
    ok(cli(home, "apply", "-f", "-", stdin=yaml.safe_dump_all(restores)))
    out = ok(cli(home, "run", "--once"))
    for name in ("scratch-back", "shop-back", "scratch-drill", "shop-drill"):
        assert f"restorejob/{name} Succeeded" in out, out
    assert identical(root, keep[root], "qcow2", "qcow2")
    assert identical(data, keep[data], "raw", "raw")
    assert identical(disk, keep[disk], "qcow2", "qcow2")
    assert identical(images / "scratch-copy.img", keep[disk], "qcow2", "qcow2")
    assert identical(images / "copy-root.qcow2", keep[root], "qcow2", "qcow2")
    assert identical(images / "copy-data.raw", keep[data], "raw", "raw")

    tenant = "".join(
        cli(home, "get", kind, "-n", NS, "-o", "yaml").stdout
        for kind in ("backupjobs", "backups", "restorejobs")
    )
    assert "Backup shop-1 is ready" in tenant
    for secret in (str(home), str(images), ".qcow2", ".raw"):
        assert secret not in tenant
