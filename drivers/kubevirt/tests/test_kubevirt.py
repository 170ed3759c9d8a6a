"""KubeVirt driver cases beyond the kit: sparse 4 GiB disks, formats, disks in use,
freeze/thaw and stop/start commands, failures that must leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cozybackup_kubevirt import Consistency, DiskFormat, KubeVirtDriver, KubeVirtParameters

from cozybackup_core import (
    ApplicationRef,
    ArtifactRecord,
    PluginHost,
)
from cozybackup_core.testing import (
    LocalPlatform,
    refused_parameters,
    typed_metadata,
    validate_parameters,
)

from conftest import FakeVM, GiB, MiB, guest_digest, identical, image_format, make_image

NS = "tenant-vm"

# 20 MiB of random data in five places over 4 GiB (the first and last MiB included).
SPARSE_DATA = (
    (0, 4 * MiB),
    (1 * GiB + 64 * 1024, 4 * MiB),
    (2 * GiB, 4 * MiB),
    (3 * GiB + 5 * MiB, 4 * MiB),
    (4 * GiB - 4 * MiB, 4 * MiB),
)


def class_yaml(
    name: str, parameters: str, kinds: tuple[str, ...] = ("VMDisk", "VMInstance")
) -> str:
    bindings = "".join(
        f"""
  - application: {{apiGroup: apps.cozystack.io, kind: {kind}}}
    strategyRef: {{apiGroup: strategy.backups.cozystack.io, kind: KubeVirt, name: {name}}}
    parameters: {parameters}"""
        for kind in kinds
    )
    return f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {{name: {name}}}
spec:
  strategies:{bindings}
"""


@pytest.fixture
def platform(tmp_path: Path) -> LocalPlatform:
    plat = LocalPlatform(tmp_path / "home", drivers=(KubeVirtDriver,))
    plat.apply(class_yaml("vm-crash", "{consistency: crash}"))
    plat.apply(class_yaml("vm-raw", "{restoreFormat: raw}"))
    plat.apply(class_yaml("vm-freeze", "{consistency: freeze}"))
    return plat


def disk_app(
    plat: LocalPlatform, name: str, path: Path, fmt: str | None, **extra: Any
) -> ApplicationRef:
    conn: dict[str, Any] = {"path": str(path), **extra}
    if fmt:
        conn["format"] = fmt
    return plat.declare_app(NS, name, "VMDisk", conn)


def instance_app(
    plat: LocalPlatform, name: str, disks: list[tuple[str, Path, str]], **extra: Any
) -> ApplicationRef:
    conn = {
        "disks": [{"name": n, "path": str(p), "format": f} for n, p, f in disks],
        **extra,
    }
    return plat.declare_app(NS, name, "VMInstance", conn)


def ok(job: Any) -> Any:
    assert job.status.phase == "Succeeded", f"{job.kind} failed: {job.status.message}"
    return job


def failed(job: Any) -> str:
    assert job.status.phase == "Failed", f"{job.kind} did not fail"
    message = str(job.status.message)
    assert message
    return message


def nothing_committed(plat: LocalPlatform) -> None:
    assert plat.backups(NS) == []
    assert plat.leftovers() == []
    assert plat.host.objects.list(ArtifactRecord) == []


def metadata(plat: LocalPlatform, name: str) -> dict[str, Any]:
    (backup,) = [b for b in plat.backups(NS) if b.metadata.name == name]
    return typed_metadata(backup.spec.driver_metadata or {})


def temp_files(*dirs: Path) -> list[Path]:
    return [p for d in dirs for p in d.iterdir() if ".cozybackup-restore-" in p.name]


# ---------------------------------------------------------------- sparse, formats


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_a_4gib_disk_with_20mib_of_data_stores_about_20mib(
    platform: LocalPlatform, tmp_path: Path, fmt: str
) -> None:
    src = make_image(tmp_path / f"big.{fmt}", fmt, 4 * GiB, random_at=SPARSE_DATA, seed=5)
    ref = disk_app(platform, "big", src, fmt)
    ok(platform.backup(NS, ref, "b1"))

    (stream,) = platform.manifest(NS, "b1").streams
    stored = stream.stored_bytes
    assert 20 * MiB <= stored < 21 * MiB, stored  # random data: zstd cannot shrink it
    meta = metadata(platform, "b1")
    assert meta["virtualSize"] == 4 * GiB
    assert meta["format"] == fmt
    assert meta["dataBytes"] == 20 * MiB
    assert 20 * MiB <= meta["allocatedBytes"] < 40 * MiB
    assert meta["consistency"] == "offline"
    assert str(tmp_path) not in json.dumps(meta) and "/" not in json.dumps(meta)

    copy = tmp_path / "copy.img"  # no format declared: restoreFormat (default qcow2)
    copy_ref = disk_app(platform, "copy", copy, None)
    ok(platform.restore(NS, "b1", "r1", target=copy_ref))
    assert image_format(copy) == "qcow2"
    assert identical(src, copy, fmt, "qcow2")
    info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", copy]))
    assert info["virtual-size"] == 4 * GiB
    assert info["actual-size"] < 40 * MiB, "the restored image is not sparse"
    assert temp_files(tmp_path) == []


def test_raw_in_place_restore_keeps_raw_and_is_sparse(
    platform: LocalPlatform, tmp_path: Path
) -> None:
    src = make_image(tmp_path / "d.raw", "raw", 4 * GiB, random_at=SPARSE_DATA[:2], seed=1)
    keep = tmp_path / "keep.raw"
    subprocess.run(["cp", "--sparse=always", src, keep], check=True)
    ref = disk_app(platform, "d", src, "raw")
    ok(platform.backup(NS, ref, "b1"))
    make_image(src, "raw", 4 * GiB, patterns=((0x5A, 7 * MiB, MiB),))
    assert not identical(src, keep, "raw", "raw")
    inode = src.stat().st_ino
    src.chmod(0o640)
    ok(platform.restore(NS, "b1", "r1"))
    # The declared format wins over restoreFormat's default (qcow2).
    assert image_format(src) == "raw"
    assert identical(src, keep, "raw", "raw")
    assert src.stat().st_ino != inode, "not swapped in: written in place"
    assert src.stat().st_mode & 0o777 == 0o640
    assert src.stat().st_blocks * 512 < 40 * MiB
    assert temp_files(tmp_path) == []


def test_restore_format_raw_parameter(platform: LocalPlatform, tmp_path: Path) -> None:
    src = make_image(tmp_path / "s.qcow2", "qcow2", 256 * MiB, patterns=((0xAB, MiB, 64 << 10),))
    ref = disk_app(platform, "s", src, "qcow2")
    ok(platform.backup(NS, ref, "b1", "vm-raw"))
    copy = tmp_path / "copy"
    ok(platform.restore(NS, "b1", "r1", target=disk_app(platform, "copy", copy, None)))
    assert image_format(copy) == "raw"
    assert identical(src, copy, "qcow2", "raw")


def test_unaligned_extents_and_zero_filled_data_round_trip(
    platform: LocalPlatform, tmp_path: Path
) -> None:
    """Data at odd offsets, a written-zero range (allocated but zero), a 512-byte write in
    the last sector: the stream drops zero blocks and keeps every byte that is not."""
    src = make_image(
        tmp_path / "odd.raw",
        "raw",
        96 * MiB + 512,
        patterns=((0x00, 0, 8 * MiB), (0x11, 8 * MiB + 512, 1000), (0x22, 96 * MiB, 512)),
        random_at=((33 * MiB + 4097, 77_777),),
    )
    ref = disk_app(platform, "odd", src, "raw")
    ok(platform.backup(NS, ref, "b1"))
    meta = metadata(platform, "b1")
    assert meta["dataBytes"] <= 4 * 64 * 1024  # 8 MiB of written zeros are not stored
    copy = tmp_path / "odd-copy.raw"
    ok(platform.restore(NS, "b1", "r1", target=disk_app(platform, "copy", copy, "raw")))
    assert guest_digest(copy, "raw") == guest_digest(src, "raw")


def test_the_same_content_gives_the_same_stream_in_both_formats(
    platform: LocalPlatform, tmp_path: Path
) -> None:
    spec: dict[str, Any] = {
        "patterns": ((0xC3, 3 * MiB + 4096, 200_000),),
        "random_at": ((40 * MiB, 2 * MiB),),
        "seed": 9,
    }
    a = make_image(tmp_path / "a.qcow2", "qcow2", 64 * MiB, **spec)
    b = make_image(tmp_path / "b.raw", "raw", 64 * MiB, **spec)
    ok(platform.backup(NS, disk_app(platform, "a", a, "qcow2"), "ba"))
    ok(platform.backup(NS, disk_app(platform, "b", b, "raw"), "bb"))
    manifests = [
        json.loads(p.read_text()) for p in platform.stored_files() if p.name == "manifest.json"
    ]
    digests = {json.dumps(m["streams"][0]["sha256"]) for m in manifests}
    assert len(manifests) == 2 and len(digests) == 1, manifests


# ---------------------------------------------------------------- failures


def test_missing_image_fails_without_a_path_in_the_message(
    platform: LocalPlatform, tmp_path: Path
) -> None:
    ref = disk_app(platform, "gone", tmp_path / "nope.qcow2", "qcow2")
    message = failed(platform.backup(NS, ref, "b1"))
    assert "does not exist" in message and "platform operator" in message
    assert str(tmp_path) not in platform.tenant_view(NS)
    nothing_committed(platform)


def test_corrupted_qcow2_header_fails(platform: LocalPlatform, tmp_path: Path) -> None:
    src = make_image(tmp_path / "c.qcow2", "qcow2", 64 * MiB, patterns=((1, 0, 4096),))
    with src.open("r+b") as f:
        f.write(b"QFI\x00")  # magic broken
    message = failed(platform.backup(NS, disk_app(platform, "c", src, "qcow2"), "b1"))
    assert "damaged or is not a valid qcow2 image" in message
    assert str(tmp_path) not in platform.tenant_view(NS)
    nothing_committed(platform)


def test_backing_files_are_refused(platform: LocalPlatform, tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.qcow2", "qcow2", 64 * MiB)
    top = tmp_path / "top.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top],
        check=True,
    )
    message = failed(platform.backup(NS, disk_app(platform, "top", top, "qcow2"), "b1"))
    assert "backing file" in message
    nothing_committed(platform)


def test_misconfigured_connections(platform: LocalPlatform, tmp_path: Path) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("VMInstance", {}),
        ("VMInstance", {"disks": [{"name": "Root", "path": "/x"}]}),
        ("VMDisk", {"path": "relative.img"}),
        ("VMDisk", {"path": "/x.img", "format": "vmdk"}),
        ("VMDisk", {"path": "/x.img", "freezeCommand": ["true"]}),
        ("VMDisk", {"path": "/x.img", "stopCommand": "systemctl stop vm"}),
        ("VMDisk", {"path": "/x.img", "bogus": 1}),
    ]
    for i, (kind, conn) in enumerate(cases):
        ref = platform.declare_app(NS, f"bad{i}", kind, conn)
        job = platform.backup(NS, ref, f"b{i}")
        assert "connection settings for backups are incomplete or wrong" in failed(job), conn
        assert job.status.conditions[0].reason == "ApplicationMisconfigured"
    nothing_committed(platform)


# ---------------------------------------------------------------- disks in use


def test_a_disk_in_use_is_refused_unless_crash_consistency_is_allowed(
    platform: LocalPlatform, tmp_path: Path, fake_vms: list[FakeVM]
) -> None:
    src = make_image(tmp_path / "live.qcow2", "qcow2", 64 * MiB, patterns=((0x42, MiB, MiB),))
    vm = FakeVM([(src, "qcow2")], tmp_path)
    fake_vms.append(vm)
    vm.start()
    ref = disk_app(platform, "live", src, "qcow2")
    message = failed(platform.backup(NS, ref, "b1"))
    assert "in use by a running virtual machine" in message
    assert "stop the virtual machine" in message and "consistency: crash" in message
    nothing_committed(platform)

    ok(platform.backup(NS, ref, "b2", "vm-crash"))
    assert metadata(platform, "b2")["consistency"] == "crash"
    vm.stop()
    copy = tmp_path / "copy.qcow2"
    ok(platform.restore(NS, "b2", "r1", target=disk_app(platform, "copy", copy, "qcow2")))
    assert identical(src, copy, "qcow2", "qcow2")


def test_consistency_freeze_needs_declared_commands(
    platform: LocalPlatform, tmp_path: Path
) -> None:
    src = make_image(tmp_path / "d.qcow2", "qcow2", 64 * MiB)
    message = failed(platform.backup(NS, disk_app(platform, "d", src, "qcow2"), "b1", "vm-freeze"))
    assert "'freeze' consistency" in message and "freeze/thaw commands" in message
    nothing_committed(platform)


def two_disks(tmp_path: Path, prefix: str, seed: int) -> list[tuple[str, Path, str]]:
    root = make_image(
        tmp_path / f"{prefix}-root.qcow2", "qcow2", 128 * MiB,
        patterns=((0x10 + seed, 0, MiB),), random_at=((70 * MiB, 3 * MiB),), seed=seed,
    )  # fmt: skip
    data = make_image(
        tmp_path / f"{prefix}-data.raw", "raw", 256 * MiB,
        patterns=((0x20 + seed, 200 * MiB, 64 << 10),), random_at=((5 * MiB, MiB),), seed=seed + 1,
    )  # fmt: skip
    return [("root", root, "qcow2"), ("data", data, "raw")]


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def test_vminstance_frozen_backup_of_running_disks(
    platform: LocalPlatform, tmp_path: Path, fake_vms: list[FakeVM]
) -> None:
    disks = two_disks(tmp_path, "vm", seed=1)
    vm = FakeVM([(p, f) for _, p, f in disks], tmp_path)
    fake_vms.append(vm)
    vm.start()
    log = tmp_path / "commands.log"
    ref = instance_app(
        platform, "vm", disks,
        freezeCommand=sh(f"echo freeze >> {log}"), thawCommand=sh(f"echo thaw >> {log}"),
    )  # fmt: skip
    ok(platform.backup(NS, ref, "b1"))
    assert log.read_text().split() == ["freeze", "thaw"]
    meta = metadata(platform, "b1")
    assert meta["consistency"] == "frozen"
    assert [d["name"] for d in meta["disks"]] == ["root", "data"]
    assert len(platform.manifest(NS, "b1").streams) == 2
    vm.stop()

    copies = [(n, tmp_path / f"copy-{n}", f) for n, _, f in disks]
    ok(platform.restore(NS, "b1", "r1", target=instance_app(platform, "copy", copies)))
    for (_, src, fmt), (_, dst, _) in zip(disks, copies, strict=True):
        assert identical(src, dst, fmt, fmt)


def test_a_failing_freeze_command_commits_nothing_and_thaws(
    platform: LocalPlatform, tmp_path: Path, fake_vms: list[FakeVM]
) -> None:
    disks = two_disks(tmp_path, "vm", seed=2)
    fake_vms.append(FakeVM([(p, f) for _, p, f in disks], tmp_path))
    fake_vms[-1].start()
    log = tmp_path / "commands.log"
    ref = instance_app(
        platform, "vm", disks,
        freezeCommand=sh(f"echo freeze >> {log}; echo agent not responding >&2; exit 3"),
        thawCommand=sh(f"echo thaw >> {log}"),
    )  # fmt: skip
    job = platform.backup(NS, ref, "b1")
    message = failed(job)
    assert message.startswith(
        "the platform's command for freezing the virtual machine failed (exit status 3)"
    )
    assert "nothing was backed up or changed; ask the platform operator" in message
    assert job.status.conditions[0].reason == "DriverFailed"
    assert log.read_text().split() == ["freeze", "thaw"]
    view = platform.tenant_view(NS)
    assert "agent not responding" not in view and str(tmp_path) not in view
    nothing_committed(platform)


def test_a_failing_thaw_command_fails_the_backup(
    platform: LocalPlatform, tmp_path: Path, fake_vms: list[FakeVM]
) -> None:
    disks = two_disks(tmp_path, "vm", seed=3)
    fake_vms.append(FakeVM([(p, f) for _, p, f in disks[:1]], tmp_path))
    fake_vms[-1].start()
    ref = instance_app(platform, "vm", disks, freezeCommand=["true"], thawCommand=["false"])
    message = failed(platform.backup(NS, ref, "b1"))
    assert "thawing the virtual machine failed" in message
    nothing_committed(platform)


@pytest.fixture
def managed_vm(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A VM that the admin's stop/start commands control: ``qemu-nbd --fork`` per disk,
    stopped by the PID in its pid file."""
    pids: list[Path] = []
    yield {"pids": pids}
    for pidfile in pids:
        try:
            pid = int(pidfile.read_text())
        except (FileNotFoundError, ValueError):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)


def vm_commands(
    tmp_path: Path, disks: list[tuple[str, Path, str]], pids: list[Path]
) -> dict[str, Any]:
    starts, stops = [], []
    for name, path, fmt in disks:
        pid, sock = tmp_path / f"{name}.pid", tmp_path / f"{name}.sock"
        pids.append(pid)
        starts.append(
            f"qemu-nbd --fork --persistent --pid-file={pid} --socket={sock} -f {fmt} {path}"
        )
        stops.append(f"kill $(cat {pid}); rm -f {pid}")
    log = tmp_path / "commands.log"
    return {
        "stopCommand": sh(f"echo stop >> {log}; " + "; ".join(stops)),
        "startCommand": sh(f"echo start >> {log}; " + " && ".join(starts)),
    }


def running(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text()), 0)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False
    return True


def test_stop_start_backup_and_in_place_restore_of_a_running_vm(
    platform: LocalPlatform, tmp_path: Path, managed_vm: dict[str, Any]
) -> None:
    disks = two_disks(tmp_path, "vm", seed=4)
    keep = []
    for name, path, _ in disks:
        copy = tmp_path / f"keep-{name}"
        subprocess.run(["cp", "--sparse=always", path, copy], check=True)
        keep.append(copy)
    commands = vm_commands(tmp_path, disks, managed_vm["pids"])
    subprocess.run(commands["startCommand"], check=True, timeout=60)
    ref = instance_app(platform, "vm", disks, **commands)
    ok(platform.backup(NS, ref, "b1"))
    assert metadata(platform, "b1")["consistency"] == "stopped"
    assert all(running(p) for p in managed_vm["pids"]), "the VM was not started again"

    # Damage both disks (offline), start the VM, restore in place: stop, swap, start.
    subprocess.run(commands["stopCommand"], check=True, timeout=60)
    time.sleep(0.3)
    for _, path, fmt in disks:
        make_image(path, fmt, 64 * MiB, patterns=((0xEE, 0, MiB),))
    subprocess.run(commands["startCommand"], check=True, timeout=60)
    log = tmp_path / "commands.log"
    log.write_text("")
    ok(platform.restore(NS, "b1", "r1"))
    assert log.read_text().split() == ["stop", "start"]
    assert all(running(p) for p in managed_vm["pids"])
    for (_, path, fmt), copy in zip(disks, keep, strict=True):
        assert identical(path, copy, fmt, fmt)
    assert temp_files(tmp_path) == []


def test_commands_are_not_run_for_a_vm_that_is_off(
    platform: LocalPlatform, tmp_path: Path, managed_vm: dict[str, Any]
) -> None:
    disks = two_disks(tmp_path, "vm", seed=6)
    commands = vm_commands(tmp_path, disks, managed_vm["pids"])
    log = tmp_path / "freeze.log"
    ref = instance_app(
        platform, "vm", disks, **commands,
        freezeCommand=sh(f"echo freeze >> {log}"), thawCommand=sh(f"echo thaw >> {log}"),
    )  # fmt: skip
    ok(platform.backup(NS, ref, "b1"))
    ok(platform.backup(NS, ref, "b2", "vm-freeze"))
    assert [metadata(platform, b)["consistency"] for b in ("b1", "b2")] == ["offline"] * 2
    assert not log.exists() and not (tmp_path / "commands.log").exists()
    assert not any(running(p) for p in managed_vm["pids"]), "a VM that was off was started"
    ok(platform.restore(NS, "b1", "r1"))
    assert not (tmp_path / "commands.log").exists()


def test_in_place_restore_of_a_running_vm_without_stop_is_refused(
    platform: LocalPlatform, tmp_path: Path, fake_vms: list[FakeVM]
) -> None:
    src = make_image(tmp_path / "d.qcow2", "qcow2", 64 * MiB, patterns=((0x42, MiB, MiB),))
    ref = disk_app(platform, "d", src, "qcow2")
    ok(platform.backup(NS, ref, "b1"))
    make_image(src, "qcow2", 64 * MiB, patterns=((0x43, 2 * MiB, MiB),))
    before = guest_digest(src, "qcow2")
    vm = FakeVM([(src, "qcow2")], tmp_path)
    fake_vms.append(vm)
    vm.start()
    message = failed(platform.restore(NS, "b1", "r1"))
    assert "stop the virtual machine, then run the restore again" in message
    vm.stop()
    assert guest_digest(src, "qcow2") == before
    assert temp_files(tmp_path) == []


def test_to_copy_needs_the_same_disks(platform: LocalPlatform, tmp_path: Path) -> None:
    disks = two_disks(tmp_path, "vm", seed=5)
    ok(platform.backup(NS, instance_app(platform, "vm", disks), "b1"))
    other = make_image(tmp_path / "other-root.qcow2", "qcow2", 64 * MiB, patterns=((7, 0, 512),))
    before = guest_digest(other, "qcow2")
    target = instance_app(platform, "other", [("root", other, "qcow2")])
    message = failed(platform.restore(NS, "b1", "r1", target=target))
    assert "has no disk named data" in message
    assert guest_digest(other, "qcow2") == before
    assert temp_files(tmp_path) == []


# ---------------------------------------------------------------- parameters, plugin


def _validate(parameters: str) -> None:
    validate_parameters(KubeVirtDriver, parameters, kind="VMDisk")


@pytest.mark.parametrize(
    "parameters",
    ["{}", "{consistency: freeze}", "{consistency: stop, restoreFormat: raw}",
     "{consistency: crash, verifyRestore: false}"],
)  # fmt: skip
def test_good_parameters(parameters: str) -> None:
    _validate(parameters)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{consistency: snapshot}", "parameters.consistency: 'snapshot' is not a valid choice; use one of \"auto\", \"freeze\", \"stop\", \"crash\""),
        ("{restoreFormat: vmdk}", "parameters.restoreFormat: 'vmdk' is not a valid choice; use one of \"qcow2\", \"raw\""),
        ("{verifyRestore: 'yes'}", "parameters.verifyRestore"),
    ],
)  # fmt: skip
def test_bad_parameters_are_refused_with_the_field_path(parameters: str, message: str) -> None:
    assert message in str(refused_parameters(KubeVirtDriver, parameters, kind="VMDisk"))


def test_parameter_defaults() -> None:
    p = KubeVirtParameters()
    assert (p.consistency, p.restore_format, p.verify_restore) == (
        Consistency.AUTO,
        DiskFormat.QCOW2,
        True,
    )


def test_entry_point_registers_the_driver() -> None:
    host = PluginHost.load()
    assert all(b.name != "kubevirt" for b in host.broken)
    assert isinstance(host.registry.for_strategy("KubeVirt"), KubeVirtDriver)


def test_a_symlinked_image_is_refused_and_its_target_untouched(
    platform: LocalPlatform, tmp_path: Path
) -> None:
    """The image's name is a link (to another tenant's image, say): never followed, on
    backup nor on restore, in place or into a copy; nothing is created through a
    dangling one."""
    store = tmp_path / "other-tenant"
    store.mkdir()
    real = make_image(store / "real.qcow2", "qcow2", 64 * MiB, patterns=((0x31, MiB, MiB),))
    keep = tmp_path / "keep.qcow2"
    subprocess.run(["cp", real, keep], check=True)
    disk = tmp_path / "disk.qcow2"
    make_image(disk, "qcow2", 64 * MiB, patterns=((0x32, 0, MiB),))
    ref = disk_app(platform, "d", disk, "qcow2")
    ok(platform.backup(NS, ref, "b1"))
    disk.unlink()
    disk.symlink_to(real)
    copy = tmp_path / "copy.qcow2"
    copy.symlink_to(store / "created-through-the-link.qcow2")
    copy_ref = disk_app(platform, "c", copy, "qcow2")
    for job in (
        platform.backup(NS, ref, "b2"),
        platform.restore(NS, "b1", "r1"),
        platform.restore(NS, "b1", "r2", target=copy_ref),
    ):
        message = failed(job)
        assert job.status.conditions[0].reason == "UnsafeApplicationPath"
        assert "image of disk disk is a symbolic link" in message
    assert disk.is_symlink() and disk.resolve() == real
    assert identical(real, keep, "qcow2", "qcow2")
    assert sorted(p.name for p in store.iterdir()) == ["real.qcow2"]
    assert temp_files(store) == [] and temp_files(tmp_path) == []
    assert str(tmp_path) not in platform.tenant_view(NS)


def test_an_external_data_file_is_refused(platform: LocalPlatform, tmp_path: Path) -> None:
    """A qcow2 whose header names an external data file elsewhere (another tenant's disk,
    a host file): qemu would read that file as the guest's data.  Refused."""
    secret = tmp_path / "outside" / "secret.raw"
    secret.parent.mkdir()
    evil = tmp_path / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o",
         f"data_file={secret},data_file_raw=on,preallocation=metadata", evil, str(MiB)],
        check=True,
    )  # fmt: skip
    with secret.open("r+b") as f:
        f.write(b"TOPSECRET" * 1000)
    for fmt in ("qcow2", None):
        job = platform.backup(NS, disk_app(platform, "evil", evil, fmt), f"b-{fmt or 'probed'}")
        message = failed(job)
        assert "external data file" in message
        nothing_committed(platform)
    assert str(tmp_path) not in platform.tenant_view(NS)


def test_a_rebuilt_image_that_does_not_read_back_is_never_swapped_in(
    platform: LocalPlatform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cozybackup_kubevirt._restore as restore_module
    from cozybackup_kubevirt._stream import Summary

    src = make_image(tmp_path / "d.qcow2", "qcow2", 64 * MiB, patterns=((0x41, MiB, MiB),))
    ref = disk_app(platform, "d", src, "qcow2")
    ok(platform.backup(NS, ref, "b1"))
    make_image(src, "qcow2", 64 * MiB, patterns=((0x42, MiB, MiB),))
    before = guest_digest(src, "qcow2")
    monkeypatch.setattr(
        restore_module, "content_digest", lambda client, tick: Summary(client.size, 1, 1, "0" * 64)
    )
    message = failed(platform.restore(NS, "b1", "r1"))
    assert "does not read back as the backup's content; the target was not changed" in message
    assert guest_digest(src, "qcow2") == before
    assert temp_files(tmp_path) == []


def test_restore_drill_into_a_scratch_target(platform: LocalPlatform, tmp_path: Path) -> None:
    disks = two_disks(tmp_path, "vm", seed=7)
    ok(platform.backup(NS, instance_app(platform, "vm", disks), "b1"))
    (backup,) = platform.backups(NS)
    checked = platform.engine.verify(backup, drill=True).status.last_verified
    assert checked is not None
    assert (checked.method, checked.result) == ("RestoreDrill", "Passed"), checked.message
    assert checked.message.startswith("2 disk image(s) rebuilt, content verified")
