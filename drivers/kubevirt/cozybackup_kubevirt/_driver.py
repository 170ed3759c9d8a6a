"""The ``KubeVirt`` strategy: VMDisk and VMInstance backups and restores."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import IO, Any

import attrs

from cozybackup_core import (
    AppLocation,
    BackupContext,
    Capabilities,
    Deadline,
    Driver,
    DriverError,
    GroupKind,
    LocalDir,
    LocalFile,
    RestoreContext,
    open_local,
)

from . import _image as image
from ._machine import Disk, Machine
from ._nbd import NBDClient, NBDError, QemuNbdFailed, serve
from ._params import Consistency, KubeVirtParameters
from ._stream import StreamInvalid, Summary, content_digest, read_header, records, write_stream

try:
    __version__ = _dist_version("cozybackup-kubevirt")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

_TEMP_TAG = "cozybackup-restore"
#: the connection of a drill's scratch target (see ``scratch_target``)
_SCRATCH_KEY = "cozybackupScratchDir"


def _in_use_message(m: Machine) -> str:
    return (
        f"the {m.what} is in use by a running virtual machine, so a backup now would not be "
        "consistent; stop the virtual machine and run the backup again, or ask the platform "
        "operator to declare freeze/thaw or stop/start commands for it (or to allow "
        "crash-consistent backups with 'consistency: crash' in the BackupClass)"
    )


class KubeVirtDriver(Driver[KubeVirtParameters]):
    name = "kubevirt"
    strategy_kind = "KubeVirt"
    kinds = (
        GroupKind(api_group="apps.cozystack.io", kind="VMDisk"),
        GroupKind(api_group="apps.cozystack.io", kind="VMInstance"),
    )
    default_kinds = ("VMInstance", "VMDisk")
    parameters_type = KubeVirtParameters
    capabilities = Capabilities(in_place_restore=True, to_copy_restore=True, local_paths=True)
    version = __version__

    # ------------------------------------------------------------------ backup

    def backup(self, ctx: BackupContext[KubeVirtParameters]) -> None:
        with contextlib.ExitStack() as held:
            # Every image is checked and held open before anything reads it: tools are
            # given /proc/<pid>/fd/<n> names of these very files, never the declared path.
            m = _held(Machine.from_location(ctx.application), held)
            self._backup(m, ctx)

    def _backup(self, m: Machine, ctx: BackupContext[KubeVirtParameters]) -> None:
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
            raise DriverError(_in_use_message(m), admin_detail=f"{[str(d.path) for d in busy]}")
        force_share = mode in ("frozen", "crash")
        summaries: dict[str, Summary] = {}
        with self._quiesced(m, mode, ctx.deadline, ctx):
            for d in m.disks:
                ctx.progress.stage(f"reading disk {d.name}")
                fmt = infos[d.name].format
                with (
                    ctx.artifact.open(d.stream) as out,
                    self._open(m, d, fmt, ctx.deadline, force_share=force_share) as client,
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
        if m.ref.kind == "VMDisk":
            ctx.metadata.update({k: v for k, v in disks[0].items() if k != "name"})

    @contextlib.contextmanager
    def _quiesced(
        self, m: Machine, mode: str, deadline: Deadline, ctx: BackupContext
    ) -> Iterator[None]:
        limit = Deadline.after(min(m.service_timeout, deadline.remaining()))
        if mode == "frozen":
            assert m.freeze_command is not None and m.thaw_command is not None
            ctx.progress.stage("freezing the virtual machine's filesystems")
            try:
                image.command(m.freeze_command, limit, "freezing the virtual machine")
            except DriverError:
                # A half-done freeze must not stay: thaw, best effort, then report.
                with contextlib.suppress(DriverError):
                    image.command(m.thaw_command, _fresh(m), "thawing the virtual machine")
                raise
            try:
                yield
            finally:
                ctx.progress.stage("thawing the virtual machine's filesystems")
                image.command(m.thaw_command, _fresh(m), "thawing the virtual machine")
        elif mode == "stopped":
            assert m.stop_command is not None and m.start_command is not None
            ctx.progress.stage("stopping the virtual machine")
            try:
                image.command(m.stop_command, limit, "stopping the virtual machine")
                image.wait_released(m.ref, m.disks, limit, deadline, "virtual machine")
                yield
            finally:
                ctx.progress.stage("starting the virtual machine")
                image.command(m.start_command, _fresh(m), "starting the virtual machine")
        else:
            yield

    @contextlib.contextmanager
    def _open(
        self,
        m: Machine,
        d: Disk,
        fmt: str,
        deadline: Deadline,
        *,
        force_share: bool = False,
        writable: bool = False,
    ) -> Iterator[NBDClient]:
        try:
            with serve(
                d.open_name, fmt, deadline=deadline, force_share=force_share, writable=writable
            ) as client:
                yield client
        except QemuNbdFailed as exc:
            if image._locked(exc.stderr):
                raise DriverError(_in_use_message(m), admin_detail=exc.stderr) from None
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

    # ------------------------------------------------------------------ restore

    def restore(self, ctx: RestoreContext[KubeVirtParameters]) -> None:
        params = ctx.parameters
        streams = sorted(ctx.artifact.names())
        scratch = ctx.target.connection.get(_SCRATCH_KEY)
        if isinstance(scratch, str) and set(ctx.target.connection) == {_SCRATCH_KEY}:
            # A drill's throwaway target: one new image per disk of the backup.
            m = Machine(
                ref=ctx.target.ref,
                disks=tuple(
                    Disk(name=n.removesuffix(".vmdisk"), path=Path(scratch) / f"{n}.img")
                    for n in streams
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
            ctx.log.warning(
                "%s: disks %s are not in the backup; left as they are", m.ref, untouched
            )
        with contextlib.ExitStack() as held:
            # Each target's directory and its current image (if any) are checked and held
            # open first: a link or a special file at any of them refuses the restore
            # before anything is built.  Nothing is ever opened through the declared name.
            targets = [_target(m, by_stream[name], held) for name in streams]
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
                        summary = self._rebuild(m, building, fmt, src, ctx.deadline)
                    image.check(building.open_name, fmt, ctx.deadline)
                    if params.verify_restore:
                        ctx.progress.stage(f"verifying disk {d.name}")
                        self._verify(m, building, fmt, summary, ctx.deadline)
                    with _file_errors(m, d):
                        new.fsync()
                self._swap(m, built, ctx)
            finally:
                for t, new in built:
                    t.folder.unlink(new.name)  # nothing there once swapped in

    def _rebuild(
        self, m: Machine, d: Disk, fmt: str, src: IO[bytes], deadline: Deadline
    ) -> Summary:
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

        with self._open(m, d, fmt, deadline, writable=True) as client:
            try:
                write_all(client)
            except StreamInvalid as exc:
                raise _invalid(m, d, exc) from None
        return summary

    def _verify(self, m: Machine, d: Disk, fmt: str, expected: Summary, deadline: Deadline) -> None:
        with self._open(m, d, fmt, deadline) as client:
            got = content_digest(client, deadline.check)
        if got.digest != expected.digest or got.data_bytes != expected.data_bytes:
            raise DriverError(
                f"the rebuilt image of disk {d.name} does not read back as the backup's "
                "content; the target was not changed",
                admin_detail=f"{d.path}: digest {got.digest} != {expected.digest}",
            )

    def _swap(
        self, m: Machine, built: list[tuple[_Target, LocalFile]], ctx: RestoreContext
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
        limit = Deadline.after(min(m.service_timeout, ctx.deadline.remaining()))
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
                image.command(m.start_command, _fresh(m), "starting the virtual machine")

    # ------------------------------------------------------------------ restore drills

    @contextlib.contextmanager
    def scratch_target(self, workdir: Path, like: AppLocation) -> Iterator[AppLocation]:
        """Throwaway images under the drill's temp dir (removed with it): one per disk of
        the backup, in ``restoreFormat``.  Only a restore accepts this connection."""
        yield AppLocation(
            ref=like.ref, namespace=like.namespace, connection={_SCRATCH_KEY: str(workdir)}
        )

    def smoke_check(self, target: AppLocation, driver_metadata: Mapping[str, Any]) -> str:
        """Every restored image opens, passes ``qemu-img check`` and has the backup's
        virtual size (its content digest was already compared by the restore)."""
        deadline = Deadline.after(300)
        expected = {
            d.get("name"): d for d in driver_metadata.get("disks", []) if isinstance(d, Mapping)
        }
        workdir = Path(str(target.connection.get(_SCRATCH_KEY)))
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


def _fresh(m: Machine) -> Deadline:
    """Thaw and start run even after the job's deadline: a VM must not stay frozen."""
    return Deadline.after(m.service_timeout)


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


@attrs.frozen
class _Target:
    """One disk to restore: its directory and current image, both held open."""

    disk: Disk  # ``at`` names the current image, if there is one
    folder: LocalDir
    old: LocalFile | None


def _target(m: Machine, d: Disk, held: contextlib.ExitStack) -> _Target:
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
