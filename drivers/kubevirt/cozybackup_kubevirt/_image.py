"""Disk images through ``qemu-img`` (and served by ``qemu-nbd``), and the admin's
freeze/thaw and stop/start commands.

"In use" is what QEMU itself says: a running QEMU holds OFD locks on its images, and
``qemu-img info`` (without ``-U``) refuses an image that another process holds for
writing ("Failed to get shared "write" lock").
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import attrs

from cozybackup_core import ApplicationRef, Deadline, DriverError, run_admin_command, run_tool

from ._machine import Disk, Machine
from ._nbd import NBDClient, NBDError, QemuNbdFailed, serve

_POLL = 0.2


class DiskInUse(Exception):
    """Another process (a running VM) holds the image open for writing."""


@attrs.frozen(kw_only=True)
class ImageInfo:
    format: str
    virtual_size: int
    actual_size: int


def _locked(text: str) -> bool:
    return "lock" in text.lower() and "another process" in text.lower()


def probe(
    ref: ApplicationRef, disk: Disk, deadline: Deadline, *, force_share: bool = False
) -> ImageInfo:
    """Check the image exists, is qcow2 or raw (as declared), has no backing file and no
    external data file, and is not held by a writer (unless ``force_share``): raises
    :class:`DiskInUse` if it is."""
    if disk.at is None and not disk.path.is_file():
        raise DriverError(
            f"the image of {ref.kind} {ref.name} (disk {disk.name}) does not exist; "
            "ask the platform operator",
            admin_detail=f"no regular file at {disk.path}",
        )
    argv = ["qemu-img", "info", "--output=json"]
    if disk.format:
        argv += ["-f", disk.format]
    if force_share:
        argv.append("-U")
    argv.append(disk.open_name)
    try:
        out = run_tool(argv, deadline=deadline, what="qemu-img info")
    except DriverError as exc:
        detail = exc.admin_detail or ""
        if _locked(detail):
            raise DiskInUse(detail) from None
        raise DriverError(
            f"the image of disk {disk.name} is damaged or is not a valid "
            f"{disk.format or 'qcow2 or raw'} image",
            admin_detail=f"{disk.path}: {detail}",
        ) from None
    info: dict[str, Any] = json.loads(out)
    fmt = info.get("format")
    if fmt not in ("qcow2", "raw"):
        raise DriverError(
            f"the image of disk {disk.name} is neither qcow2 nor raw; only those are supported",
            admin_detail=f"{disk.path}: format {fmt!r}",
        )
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise DriverError(
            f"the image of disk {disk.name} has a backing file; images with backing chains "
            "are not supported (flatten it with 'qemu-img convert' or 'qemu-img rebase -b \"\"')",
            admin_detail=f"{disk.path}: backing {info.get('backing-filename')!r}",
        )
    specific = info.get("format-specific", {}).get("data", {})
    if specific.get("data-file"):
        # qemu would read (and on restore write) that file as the guest's data: a file
        # anywhere, named by whoever wrote the image's header.
        raise DriverError(
            f"the image of disk {disk.name} keeps its data in an external data file; such "
            "images are not supported (convert it with 'qemu-img convert')",
            admin_detail=f"{disk.path}: data file {specific.get('data-file')!r}",
        )
    if specific.get("corrupt"):
        raise DriverError(
            f"the image of disk {disk.name} is marked corrupt by QEMU; "
            "ask the platform operator to repair it ('qemu-img check -r')",
            admin_detail=f"{disk.path}: corrupt flag set",
        )
    return ImageInfo(
        format=fmt,
        virtual_size=int(info["virtual-size"]),
        actual_size=int(info.get("actual-size", 0)),
    )


def in_use(ref: ApplicationRef, disk: Disk, deadline: Deadline) -> bool:
    try:
        probe(ref, disk, deadline)
    except DiskInUse:
        return True
    return False


def create(path: str, fmt: str, size: int, deadline: Deadline) -> None:
    """Format the (empty) file ``path`` names as a new image of ``size`` bytes."""
    argv = ["qemu-img", "create", "-q", "-f", fmt]
    if fmt == "qcow2":
        argv += ["-o", "preallocation=off"]
    run_tool([*argv, path, str(size)], deadline=deadline, what="qemu-img create")


def check(path: str, fmt: str, deadline: Deadline) -> None:
    """``qemu-img check`` (qcow2 metadata consistency); raw has nothing to check."""
    if fmt == "qcow2":
        run_tool(
            ["qemu-img", "check", "-q", "-f", fmt, path],
            deadline=deadline,
            what="qemu-img check",
        )


def qemu_version(deadline: Deadline) -> str:
    out = run_tool(["qemu-img", "--version"], deadline=deadline, what="qemu-img")
    first = out.decode(errors="replace").splitlines()[0] if out else ""
    return first.removeprefix("qemu-img version ").split(" ")[0] or "unknown"


def in_use_message(m: Machine) -> str:
    return (
        f"the {m.what} is in use by a running virtual machine, so a backup now would not be "
        "consistent; stop the virtual machine and run the backup again, or ask the platform "
        "operator to declare freeze/thaw or stop/start commands for it (or to allow "
        "crash-consistent backups with 'consistency: crash' in the BackupClass)"
    )


@contextlib.contextmanager
def served(
    m: Machine,
    d: Disk,
    fmt: str,
    deadline: Deadline,
    *,
    force_share: bool = False,
    writable: bool = False,
) -> Iterator[NBDClient]:
    """The image of ``d`` served by ``qemu-nbd``, its failures told as the tenant reads them."""
    try:
        with serve(
            d.open_name, fmt, deadline=deadline, force_share=force_share, writable=writable
        ) as client:
            yield client
    except QemuNbdFailed as exc:
        if _locked(exc.stderr):
            raise DriverError(in_use_message(m), admin_detail=exc.stderr) from None
        raise DriverError(
            f"the image of disk {d.name} could not be opened",
            admin_detail=f"{d.path}: {exc.stderr}",
        ) from None
    except NBDError as exc:
        raise DriverError(
            f"reading or writing the image of disk {d.name} failed",
            admin_detail=f"{d.path}: {exc}",
        ) from None
    except OSError as exc:
        raise DriverError(
            f"the image of disk {d.name} could not be served for reading or writing",
            admin_detail=f"{d.path}: {exc!r}",
        ) from None


def command(argv: tuple[str, ...], limit: Deadline, doing: str) -> None:
    """Run an admin-declared command (freeze/thaw, stop/start the VM)."""
    run_admin_command(
        argv, deadline=limit, doing=doing, consequence="nothing was backed up or changed"
    )


def command_limit(m: Machine, deadline: Deadline) -> Deadline:
    """How long a freeze or stop command (and waiting for a stop) may take."""
    return Deadline.after(min(m.service_timeout, deadline.remaining()))


def undo_command(m: Machine, argv: tuple[str, ...], doing: str) -> None:
    """Thaw or start: these run even after the job's deadline, a VM must not stay frozen
    or stopped."""
    command(argv, Deadline.after(m.service_timeout), doing)


def wait_released(
    ref: ApplicationRef, disks: tuple[Disk, ...], limit: Deadline, deadline: Deadline, what: str
) -> None:
    """After a stop command: wait until no process holds any disk for writing."""
    while any(in_use(ref, d, deadline) for d in disks if d.at is not None):
        if limit.expired:
            raise DriverError(
                f"the {what} did not stop in time; nothing was changed; ask the platform operator",
                admin_detail=f"{ref}: images still locked after stopCommand",
            )
        time.sleep(_POLL)
