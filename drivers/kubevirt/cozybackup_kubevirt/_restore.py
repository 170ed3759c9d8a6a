"""How a restore is applied: each disk's image is rebuilt beside the target (and read
back), then all are swapped in at once, the virtual machine stopped meanwhile if it runs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import IO

import attrs

from cozybackup_core import Deadline, DriverError, LocalDir, LocalFile, RestoreContext

from . import _image as image
from ._drill import scratch_dir
from ._machine import Disk, Machine
from ._nbd import NBDClient, NBDError
from ._params import KubeVirtParameters
from ._stream import StreamInvalid, Summary, content_digest, read_header, records

_TEMP_TAG = "cozybackup-restore"


def restore(ctx: RestoreContext[KubeVirtParameters]) -> None:
    params = ctx.parameters
    streams = sorted(ctx.artifact.names())
    scratch = scratch_dir(ctx.target)
    if scratch is not None:
        # A drill's throwaway target: one new image per disk of the backup.
        m = Machine(
            ref=ctx.target.ref,
            disks=tuple(
                Disk(name=n.removesuffix(".vmdisk"), path=scratch / f"{n}.img") for n in streams
            ),
        )
    else:
        m = Machine.from_location(ctx.target)
    by_stream = {d.stream: d for d in m.disks}
    missing = [s.removesuffix(".vmdisk") for s in streams if s not in by_stream]
    if missing:
        raise DriverError(
            f"the target {m.what} has no disk named {', '.join(missing)}; a restore needs "
            "a target with the same disks as the backup",
            admin_detail=f"{m.ref}: target disks {[d.name for d in m.disks]}",
        )
    untouched = [d.name for d in m.disks if d.stream not in streams]
    if untouched:
        ctx.log.warning("%s: disks %s are not in the backup; left as they are", m.ref, untouched)
    with contextlib.ExitStack() as held:
        # Each target's directory and its current image (if any) are checked and held
        # open first: a link or a special file at any of them refuses the restore
        # before anything is built.  Nothing is ever opened through the declared name.
        targets = [_target(by_stream[name], held) for name in streams]
        built: list[tuple[_Target, LocalFile]] = []
        try:
            for t in targets:
                d = t.disk
                fmt = d.format or params.restore_format.value
                with _file_errors(m, d):
                    new = held.enter_context(t.folder.create(d.path.name, tag=_TEMP_TAG))
                built.append((t, new))
                building = attrs.evolve(d, at=new.fd_path, format=fmt)
                ctx.progress.stage(f"rebuilding disk {d.name}")
                with ctx.artifact.open(d.stream) as src:
                    summary = _rebuild(m, building, fmt, src, ctx.deadline)
                image.check(building.open_name, fmt, ctx.deadline)
                if params.verify_restore:
                    ctx.progress.stage(f"verifying disk {d.name}")
                    _verify(m, building, fmt, summary, ctx.deadline)
                with _file_errors(m, d):
                    new.fsync()
            _swap(m, built, ctx)
        finally:
            for t, new in built:
                t.folder.unlink(new.name)  # nothing there once swapped in


def _rebuild(m: Machine, d: Disk, fmt: str, src: IO[bytes], deadline: Deadline) -> Summary:
    try:
        size = read_header(src)
    except StreamInvalid as exc:
        raise _invalid(m, d, exc) from None
    image.create(d.open_name, fmt, size, deadline)
    summary = Summary(virtual_size=size)

    def write_all(client: NBDClient) -> None:
        if client.size < size:
            raise NBDError(f"created image is {client.size} bytes, expected {size}")
        for offset, data in records(src, size, summary):
            client.write(offset, data)

    with image.served(m, d, fmt, deadline, writable=True) as client:
        try:
            write_all(client)
        except StreamInvalid as exc:
            raise _invalid(m, d, exc) from None
    return summary


def _verify(m: Machine, d: Disk, fmt: str, expected: Summary, deadline: Deadline) -> None:
    with image.served(m, d, fmt, deadline) as client:
        got = content_digest(client, deadline.check)
    if got.digest != expected.digest or got.data_bytes != expected.data_bytes:
        raise DriverError(
            f"the rebuilt image of disk {d.name} does not read back as the backup's "
            "content; the target was not changed",
            admin_detail=f"{d.path}: digest {got.digest} != {expected.digest}",
        )


def _swap(
    m: Machine, built: list[tuple[_Target, LocalFile]], ctx: RestoreContext[KubeVirtParameters]
) -> None:
    disks = tuple(t.disk for t, _ in built)  # ``at``: the current image, if there is one
    running = [d for d in disks if d.at is not None and image.in_use(m.ref, d, ctx.deadline)]
    stop = bool(running)
    if stop and not m.can_stop:
        raise DriverError(
            f"the {m.what} is in use by a running virtual machine; stop the virtual "
            "machine, then run the restore again (nothing was changed)",
            admin_detail=f"{m.ref}: locked images {[str(d.path) for d in running]}",
        )
    limit = image.command_limit(m, ctx.deadline)
    if stop:
        assert m.stop_command is not None
        ctx.progress.stage("stopping the virtual machine")
        image.command(m.stop_command, limit, "stopping the virtual machine")
    try:
        if stop:
            image.wait_released(m.ref, disks, limit, ctx.deadline, "virtual machine")
        ctx.progress.stage("replacing the disk images")
        for t, new in built:
            with _file_errors(m, t.disk):
                new.adopt(t.old.stat() if t.old is not None else None)
        for t, new in built:
            with _file_errors(m, t.disk):
                # renameat in the held directory: a link at the name is replaced.
                t.folder.replace(new.name, t.disk.path.name)
                t.folder.fsync()
    finally:
        if stop:
            assert m.start_command is not None
            ctx.progress.stage("starting the virtual machine")
            image.undo_command(m, m.start_command, "starting the virtual machine")


@attrs.frozen
class _Target:
    """One disk to restore: its directory and current image, both held open."""

    disk: Disk  # ``at`` names the current image, if there is one
    folder: LocalDir
    old: LocalFile | None


def _target(d: Disk, held: contextlib.ExitStack) -> _Target:
    folder = held.enter_context(LocalDir.open(d.path.parent, what=d.what, holds=True))
    old = folder.open_file(d.path.name, what=d.what, missing_ok=True)
    if old is None:
        return _Target(disk=d, folder=folder, old=None)
    held.enter_context(old)
    return _Target(disk=attrs.evolve(d, at=old.fd_path), folder=folder, old=old)


@contextlib.contextmanager
def _file_errors(m: Machine, d: Disk) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise DriverError(
            f"the rebuilt image of disk {d.name} could not be written beside the target; "
            "ask the platform operator",
            admin_detail=f"{m.ref}: {d.path}: {exc!r}",
        ) from None


def _invalid(m: Machine, d: Disk, exc: StreamInvalid) -> DriverError:
    return DriverError(
        f"the backup's data for disk {d.name} is not a disk stream this driver version can "
        "restore; the target was not changed",
        admin_detail=f"{m.ref}: {exc}",
    )
