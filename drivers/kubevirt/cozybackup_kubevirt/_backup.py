"""How a backup is made: every disk read through ``qemu-nbd`` into one sparse stream,
while the virtual machine is off, frozen, stopped or (if the class allows) running."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import attrs

from cozybackup_core import BackupContext, DriverError, open_local

from . import _image as image
from ._machine import Machine
from ._params import Consistency, KubeVirtParameters
from ._stream import Summary, write_stream


def backup(ctx: BackupContext[KubeVirtParameters]) -> None:
    with contextlib.ExitStack() as held:
        # Every image is checked and held open before anything reads it: tools are
        # given /proc/<pid>/fd/<n> names of these very files, never the declared path.
        _backup(_held(Machine.from_location(ctx.application), held), ctx)


def _backup(m: Machine, ctx: BackupContext[KubeVirtParameters]) -> None:
    params = ctx.parameters
    mode = _mode(m, params.consistency)
    ctx.tool_versions["qemu"] = image.qemu_version(ctx.deadline)
    ctx.progress.stage("checking the disk images")
    # Every image must exist and be readable before any command touches the VM.
    infos = {d.name: image.probe(m.ref, d, ctx.deadline, force_share=True) for d in m.disks}
    busy = [d for d in m.disks if image.in_use(m.ref, d, ctx.deadline)]
    if not busy:
        # Nobody writes the disks: read them as they are, and run no command (a stop
        # and start would boot a VM that was off; a freeze would find no guest).
        mode = "offline"
    elif mode == "offline":
        raise DriverError(image.in_use_message(m), admin_detail=f"{[str(d.path) for d in busy]}")
    force_share = mode in ("frozen", "crash")
    summaries: dict[str, Summary] = {}
    with _quiesced(m, mode, ctx):
        for d in m.disks:
            ctx.progress.stage(f"reading disk {d.name}")
            fmt = infos[d.name].format
            with (
                ctx.artifact.open(d.stream) as out,
                image.served(m, d, fmt, ctx.deadline, force_share=force_share) as client,
            ):
                summaries[d.name] = write_stream(client, out, ctx.deadline.check)
            # The header again, now that qemu-nbd has read the image: a backing or
            # data file that appeared meanwhile fails the backup (nothing is kept).
            image.probe(m.ref, d, ctx.deadline, force_share=True)
    disks = [
        {
            "name": d.name,
            "format": infos[d.name].format,
            "virtualSize": summaries[d.name].virtual_size,
            "allocatedBytes": infos[d.name].actual_size,
            "dataBytes": summaries[d.name].data_bytes,
        }
        for d in m.disks
    ]
    ctx.metadata["consistency"] = mode
    ctx.metadata["disks"] = disks
    ctx.resources.update({"consistency": mode, "disks": disks})
    if mode == "crash":
        ctx.warn(
            "the virtual machine ran unfrozen while its disks were read: they are "
            "crash-consistent (as after a power cut); a class with consistency frozen or "
            "stopped gives an exact image",
            reason="CrashConsistent",
        )
    if m.ref.kind == "VMDisk":
        ctx.metadata.update({k: v for k, v in disks[0].items() if k != "name"})


@contextlib.contextmanager
def _quiesced(m: Machine, mode: str, ctx: BackupContext[KubeVirtParameters]) -> Iterator[None]:
    limit = image.command_limit(m, ctx.deadline)
    if mode == "frozen":
        assert m.freeze_command is not None and m.thaw_command is not None
        ctx.progress.stage("freezing the virtual machine's filesystems")
        try:
            image.command(m.freeze_command, limit, "freezing the virtual machine")
        except DriverError:
            # A half-done freeze must not stay: thaw, best effort, then report.
            with contextlib.suppress(DriverError):
                image.undo_command(m, m.thaw_command, "thawing the virtual machine")
            raise
        try:
            yield
        finally:
            ctx.progress.stage("thawing the virtual machine's filesystems")
            image.undo_command(m, m.thaw_command, "thawing the virtual machine")
    elif mode == "stopped":
        assert m.stop_command is not None and m.start_command is not None
        ctx.progress.stage("stopping the virtual machine")
        try:
            image.command(m.stop_command, limit, "stopping the virtual machine")
            image.wait_released(m.ref, m.disks, limit, ctx.deadline, "virtual machine")
            yield
        finally:
            ctx.progress.stage("starting the virtual machine")
            image.undo_command(m, m.start_command, "starting the virtual machine")
    else:
        yield


def _mode(m: Machine, consistency: Consistency) -> str:
    if consistency is Consistency.CRASH:
        return "crash"
    if consistency is Consistency.FREEZE or (consistency is Consistency.AUTO and m.can_freeze):
        if not m.can_freeze:
            raise _no_commands(m, "freeze/thaw", consistency)
        return "frozen"
    if consistency is Consistency.STOP or (consistency is Consistency.AUTO and m.can_stop):
        if not m.can_stop:
            raise _no_commands(m, "stop/start", consistency)
        return "stopped"
    return "offline"


def _no_commands(m: Machine, which: str, consistency: Consistency) -> DriverError:
    return DriverError(
        f"the BackupClass asks for '{consistency.value}' consistency, but the platform has not "
        f"declared {which} commands for this {m.what}; ask the platform operator",
        admin_detail=f"{m.ref}: consistency {consistency.value} without {which} commands",
    )


def _held(m: Machine, held: contextlib.ExitStack) -> Machine:
    """``m`` with every image opened without following links (see ``open_local``) and
    held open in ``held``; each disk's ``at`` names the open file for the tools."""
    disks = []
    for d in m.disks:
        f = open_local(d.path, what=d.what)
        assert f is not None
        held.enter_context(f)
        disks.append(attrs.evolve(d, at=f.fd_path))
    return attrs.evolve(m, disks=tuple(disks))
