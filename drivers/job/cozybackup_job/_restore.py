"""How a restore is applied: the engine has verified every stored byte before
``restore`` is called.  The ``restore`` command runs with the *target's* coordinates and
reads the stream on its stdin.  If it exits 0 without having read the whole stream, the
restore fails (the backup was not fully replayed).
"""

from __future__ import annotations

import datetime as dt

from cozybackup_core import (
    ApplicationRef,
    AppLocation,
    DriverError,
    RestoreContext,
    UnsupportedError,
)

from ._command import render_argv, render_env, run, run_beside, tighter
from ._params import JobParameters, compile_command


def restore(ctx: RestoreContext[JobParameters]) -> None:
    params = ctx.parameters
    if ctx.in_place and not params.in_place_restore:
        raise UnsupportedError(
            "this BackupClass cannot restore in place; set spec.targetApplicationRef "
            "to restore into a copy"
        )
    if not ctx.in_place and not params.to_copy_restore:
        raise UnsupportedError(
            "this BackupClass cannot restore into a copy; restore in place instead"
        )
    target = ctx.target
    stream = _stream_name(ctx, params)
    argv, env = command(params, target, ctx.in_place, ctx.source, ctx.taken_at, stream)
    limit = tighter(ctx.deadline, params.timeout_seconds)
    # No progress.stage() here: the core counts the bytes read under "restoring".
    with ctx.artifact.open(stream) as src:
        if ctx.tool is not None:
            run_beside(ctx.tool, argv, "restore", target, params, limit, stdin=src)
        else:
            run(argv, env, "restore", target, params, limit, stdin=src)
        if src.read(1):
            raise DriverError(
                "the restore command exited successfully without reading the whole "
                "backup; the restore may be incomplete, ask the platform operator to "
                "check the BackupClass's restore command",
                admin_detail=f"{target.ref}: {argv[0]} stopped reading stdin before its end",
            )


def command(
    params: JobParameters,
    target: AppLocation,
    in_place: bool,
    source: ApplicationRef,
    taken_at: dt.datetime,
    stream: str,
) -> tuple[list[str], dict[str, str]]:
    """The restore command's argv and environment for ``target``."""
    cmd = compile_command(params, "restore")
    argv = render_argv(cmd, target, "restore")
    extra = {
        "COZY_STREAM": stream,
        "COZY_RESTORE_MODE": "InPlace" if in_place else "ToCopy",
        "COZY_SOURCE_NAME": source.name,
        "COZY_BACKUP_TAKEN_AT": taken_at.isoformat(),
    }
    return argv, render_env(cmd, target, "restore", extra)


def _stream_name(ctx: RestoreContext, params: JobParameters) -> str:
    """The stream to replay: the class's ``stream``, else the backup's only stream (the
    class may have been changed since the backup was taken)."""
    names = ctx.artifact.names()
    if params.stream in names:
        return params.stream
    if len(names) == 1:
        return names[0]
    raise DriverError(
        "the backup does not hold the data stream this BackupClass restores; ask the "
        "platform operator",
        admin_detail=f"stream {params.stream!r} not in {names}",
    )
