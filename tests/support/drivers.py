"""Purpose-built drivers that exercise the engine's failure paths.

These test the *engine* (what it does when a driver raises, a tool fails, storage
breaks); real backups of real data are tested with the SQLite driver in plugins-example.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from cozybackup_core import (
    BackupContext,
    Driver,
    DriverError,
    GroupKind,
    RestoreContext,
    ServerSideTarget,
    hookimpl,
    run_tool,
)

FILES = GroupKind(api_group="apps.example.com", kind="Directory")


class FilesDriver(Driver):
    """Backs up the regular files of a directory, one stream each."""

    name = "files"
    strategy_kind = "Files"
    kinds = (FILES,)
    version = "1"

    def backup(self, ctx: BackupContext) -> None:
        root = Path(ctx.application.connection["path"])
        if not root.is_dir():
            raise DriverError("the application's data directory is missing", admin_detail=str(root))
        kill_after = int(os.environ.get("COZYBACKUP_TEST_KILL_AFTER_BYTES", "0"))
        written = 0
        for f in sorted(root.iterdir()):
            ctx.progress.stage(f"copying {f.name}")
            with ctx.artifact.open(f.name) as out, f.open("rb") as src:
                while chunk := src.read(1 << 16):
                    out.write(chunk)
                    written += len(chunk)
                    if kill_after and written >= kill_after:
                        sys.stdout.flush()
                        os.kill(os.getpid(), signal.SIGKILL)
        ctx.metadata["files"] = len(list(root.iterdir()))
        ctx.resources["files"] = sorted(f.name for f in root.iterdir())
        for f in sorted(root.glob("*.lossy")):
            # names the platform's path, which the tenant must not see
            ctx.warn(f"{f} is not kept exactly; a physical mode would keep it")

    def restore(self, ctx: RestoreContext) -> None:
        root = _emptied(Path(ctx.target.connection["path"]))
        for name in ctx.artifact.names():
            with ctx.artifact.open(name) as src, (root / name).open("wb") as out:
                while chunk := src.read(1 << 16):
                    out.write(chunk)
            if name.endswith(".lossy"):
                # names the platform's path, which the tenant must not see
                ctx.warn(f"{root / name} came back changed by the server")


class RaisingDriver(FilesDriver):
    name = "raising"
    strategy_kind = "Raising"

    def backup(self, ctx: BackupContext) -> None:
        with ctx.artifact.open("partial") as out:
            out.write(b"some bytes before the crash" * 1000)
        raise RuntimeError(
            f"boom at {ctx.application.connection['path']} password={ctx.application.credentials.get('password')}"
        )


class ToolDriver(FilesDriver):
    """Runs a shell command as its 'dump tool' (exit status chosen by the connection)."""

    name = "tool"
    strategy_kind = "Tool"

    def backup(self, ctx: BackupContext) -> None:
        script = ctx.application.connection["script"]
        with ctx.artifact.open("dump") as out:
            run_tool(["sh", "-c", script], stdout=out, deadline=ctx.deadline, what="the dump tool")


@hookimpl
def cozybackup_register_drivers(registry: object) -> None:
    for driver in (FilesDriver, RaisingDriver, ToolDriver):
        registry.add(driver)  # type: ignore[attr-defined]


@hookimpl
def cozybackup_job_stage(stage: str) -> None:
    if os.environ.get("COZYBACKUP_TEST_KILL_AT") == stage:
        os.kill(os.getpid(), signal.SIGKILL)


class ServerSideDriver(FilesDriver):
    """Plays an application server that writes its own backup to S3 (as ClickHouse's
    ``BACKUP ... TO S3`` does): it uploads the files with the credentials it is handed."""

    name = "server-side"
    strategy_kind = "ServerSide"

    @staticmethod
    def _fs(target: ServerSideTarget) -> tuple[object, str]:
        import s3fs  # type: ignore[import-untyped]

        endpoint, _, path = target.url.partition("://")[2].partition("/")
        scheme = target.url.partition("://")[0]
        fs = s3fs.S3FileSystem(
            key=target.access_key_id,
            secret=target.secret_access_key,
            client_kwargs={"endpoint_url": f"{scheme}://{endpoint}"},
            skip_instance_cache=True,
        )
        return fs, path

    def backup(self, ctx: BackupContext) -> None:
        root = Path(ctx.application.connection["path"])
        fs, prefix = self._fs(ctx.artifact.server_side("native"))
        for f in sorted(root.iterdir()):
            fs.pipe_file(prefix + f.name, f.read_bytes())  # type: ignore[attr-defined]
        ctx.metadata["files"] = len(list(root.iterdir()))
        ctx.resources["files"] = sorted(f.name for f in root.iterdir())
        for f in sorted(root.glob("*.lossy")):
            # names the platform's path, which the tenant must not see
            ctx.warn(f"{f} is not kept exactly; a physical mode would keep it")

    def restore(self, ctx: RestoreContext) -> None:
        root = _emptied(Path(ctx.target.connection["path"]))
        fs, prefix = self._fs(ctx.artifact.server_side("native"))
        for p in fs.find(prefix):  # type: ignore[attr-defined]
            (root / p.rsplit("/", 1)[1]).write_bytes(fs.cat_file(p))  # type: ignore[attr-defined]


def _emptied(root: Path) -> Path:
    """The directory ``root``, created or emptied: a restore's target."""
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        old.unlink()
    return root
