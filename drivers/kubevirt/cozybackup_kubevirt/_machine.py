"""One VMDisk or VMInstance as the platform admin declared it: ``AppLocation`` → typed.

Connection keys (a tenant never sees them)::

    # VMDisk
    path: /var/lib/vms/shop-root.qcow2     # the disk image (absolute)
    format: qcow2                          # qcow2 | raw; strongly advised (else probed)

    # VMInstance
    disks:
    - {name: root, path: /var/lib/vms/shop-root.qcow2, format: qcow2}
    - {name: data, path: /var/lib/vms/shop-data.img, format: raw}

    # both, optional: argv lists run without a shell
    freezeCommand: [virsh, domfsfreeze, shop]
    thawCommand: [virsh, domfsthaw, shop]
    stopCommand: [systemctl, stop, vm@shop]
    startCommand: [systemctl, start, vm@shop]
    serviceTimeoutSeconds: 300             # each command, and waiting for a stop
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from cozybackup_core import (
    ApplicationMisconfigured,
    ApplicationRef,
    AppLocation,
    connection_argv,
)
from cozybackup_core import misconfigured as kit_misconfigured

DEFAULT_SERVICE_TIMEOUT = 300.0
#: the one disk of a VMDisk
SINGLE_DISK = "disk"
FORMATS = ("qcow2", "raw")
_COMMAND_KEYS = ("freezeCommand", "thawCommand", "stopCommand", "startCommand")
_DISK_KEYS = frozenset({"path", "format"})
_INSTANCE_KEYS = frozenset({"disks", *_COMMAND_KEYS, "serviceTimeoutSeconds"})
_DISK_APP_KEYS = frozenset({*_DISK_KEYS, *_COMMAND_KEYS, "serviceTimeoutSeconds"})
_DISK_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


#: Who the tenant's message about a misdeclared application names.
SUBJECT = "this virtual machine"


def misconfigured(ref: ApplicationRef, detail: str) -> ApplicationMisconfigured:
    return kit_misconfigured(ref, detail, SUBJECT)


@attrs.frozen(kw_only=True)
class Disk:
    """One disk image: its name (the stream's name), path and declared format."""

    name: str
    path: Path = attrs.field(repr=False)
    format: str | None = None
    #: The name tools open: a ``/proc/<pid>/fd/<n>`` of the image as checked and held
    #: open by the driver (see ``cozybackup_core.open_local``); None: ``path`` itself
    #: (only for the driver's own scratch files).
    at: str | None = attrs.field(default=None, repr=False)

    @property
    def stream(self) -> str:
        return f"{self.name}.vmdisk"

    @property
    def open_name(self) -> str:
        return self.at if self.at is not None else str(self.path)

    @property
    def what(self) -> str:
        """Tenant-facing: "image of disk root"."""
        return f"image of disk {self.name}"


@attrs.frozen(kw_only=True)
class Machine:
    """Typed connection settings of one VMDisk (one disk) or VMInstance (its disks)."""

    ref: ApplicationRef
    disks: tuple[Disk, ...]
    freeze_command: tuple[str, ...] | None = None
    thaw_command: tuple[str, ...] | None = None
    stop_command: tuple[str, ...] | None = None
    start_command: tuple[str, ...] | None = None
    service_timeout: float = DEFAULT_SERVICE_TIMEOUT

    @property
    def can_freeze(self) -> bool:
        return self.freeze_command is not None and self.thaw_command is not None

    @property
    def can_stop(self) -> bool:
        return self.stop_command is not None and self.start_command is not None

    @property
    def what(self) -> str:
        """Tenant-facing noun."""
        return "virtual machine" if self.ref.kind == "VMInstance" else "disk"

    @classmethod
    def from_location(cls, loc: AppLocation) -> Machine:
        ref, conn = loc.ref, loc.connection
        instance = ref.kind == "VMInstance"
        known = _INSTANCE_KEYS if instance else _DISK_APP_KEYS
        unknown = sorted(set(conn) - known)
        if unknown:
            raise misconfigured(ref, f"unknown connection keys {unknown} (known: {sorted(known)})")
        if instance:
            disks = _disks(ref, conn.get("disks"))
        else:
            disks = (_disk(ref, SINGLE_DISK, conn, "connection"),)
        commands = {k: connection_argv(ref, conn, k, SUBJECT) for k in _COMMAND_KEYS}
        for a, b in (("freezeCommand", "thawCommand"), ("stopCommand", "startCommand")):
            if (commands[a] is None) != (commands[b] is None):
                raise misconfigured(ref, f"'{a}' and '{b}' must be declared together")
        timeout = conn.get("serviceTimeoutSeconds", DEFAULT_SERVICE_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise misconfigured(ref, "'serviceTimeoutSeconds' must be a positive number")
        return cls(
            ref=ref,
            disks=disks,
            freeze_command=commands["freezeCommand"],
            thaw_command=commands["thawCommand"],
            stop_command=commands["stopCommand"],
            start_command=commands["startCommand"],
            service_timeout=float(timeout),
        )


def _disks(ref: ApplicationRef, value: Any) -> tuple[Disk, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise misconfigured(ref, "a VMInstance needs 'disks': a list of {name, path, format}")
    out: list[Disk] = []
    for i, item in enumerate(value):
        where = f"disks[{i}]"
        if not isinstance(item, Mapping):
            raise misconfigured(ref, f"{where} must be a mapping")
        unknown = sorted(set(item) - {"name", *_DISK_KEYS})
        if unknown:
            raise misconfigured(ref, f"{where}: unknown keys {unknown}")
        name = item.get("name")
        if not isinstance(name, str) or not _DISK_NAME.match(name):
            raise misconfigured(ref, f"{where}.name must be an RFC 1123 label, got {name!r}")
        out.append(_disk(ref, name, item, where))
    names = [d.name for d in out]
    if len(set(names)) != len(names):
        raise misconfigured(ref, f"disk names repeat: {names}")
    paths = [d.path for d in out]
    if len(set(paths)) != len(paths):
        raise misconfigured(ref, "two disks name the same image path")
    return tuple(out)


def _disk(ref: ApplicationRef, name: str, conn: Mapping[str, Any], where: str) -> Disk:
    path = conn.get("path")
    if (
        not isinstance(path, str)
        or not path
        or "\0" in path
        or not Path(path).is_absolute()
        or any(part in (".", "..") for part in path.split("/"))
        or path.endswith("/")
    ):
        raise misconfigured(
            ref, f"{where}.path must be the absolute path of the disk image (no '.' or '..')"
        )
    fmt = conn.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise misconfigured(ref, f"{where}.format must be one of {list(FORMATS)}, got {fmt!r}")
    return Disk(name=name, path=Path(path), format=fmt)
