"""The generic ``Job`` strategy: admin-declared commands back up and restore any kind.

Backup
    The ``backup`` command runs (argv, no shell) with the application's coordinates in its
    environment; its stdout is piped through :func:`cozybackup_core.run_tool` straight
    into one artifact stream (compressed, hashed and uploaded as it is written, no temp
    file).  A non-zero exit, a failure to start or the deadline fails the job and the
    partial artifact is discarded by the engine.

Restore
    The engine has verified every stored byte before ``restore`` is called.  The
    ``restore`` command runs with the *target's* coordinates and reads the stream on its
    stdin.  If it exits 0 without having read the whole stream, the restore fails (the
    backup was not fully replayed).

Tenant safety
    The tenant reads only "the backup command failed with exit status N"-style messages;
    the command's stderr (last 64 KiB, kept by ``run_tool``), the program and the
    application go to the platform log.  Credentials reach the command only through its
    environment, never its argv (checked when the class is applied).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import IO, Any, ClassVar

from cozybackup_core import (
    AppLocation,
    BackupContext,
    Capabilities,
    Deadline,
    DeadlineExceeded,
    Driver,
    DriverError,
    RestoreContext,
    UnsupportedError,
    run_tool,
)

from ._params import Compiled, JobParameters, check, compile_command
from ._template import MissingValue, app_values, env_name, render, scalar

try:
    __version__ = _dist_version("cozybackup-job")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

#: How long ``versionCommand`` may take (within the job's own deadline).
VERSION_TIMEOUT = 30.0
_VERSION_MAX = 200


class JobDriver(Driver[JobParameters]):
    """Runs the commands of the class's ``parameters``; serves any kind it is bound to."""

    name = "job"
    strategy_kind = "Job"
    # Whatever kind a BackupClass binds: the parameters say how to reach it.
    any_kind: ClassVar[bool] = True
    parameters_type = JobParameters
    # Both, so the engine lets every restore through; a class that supports only one
    # (inPlaceRestore / toCopyRestore) is enforced in restore() before anything runs.
    capabilities = Capabilities(in_place_restore=True, to_copy_restore=True)
    version = __version__

    def validate_parameters(self, parameters: JobParameters) -> None:
        check(parameters)

    # ------------------------------------------------------------------ backup

    def backup(self, ctx: BackupContext[JobParameters]) -> None:
        params = ctx.parameters
        app = ctx.application
        cmd = compile_command(params, "backup")
        argv = _render_argv(cmd, app, "backup")
        env = _render_env(cmd, app, "backup", {"COZY_STREAM": params.stream})
        if params.version_command:
            _record_version(ctx, params.version_command)
        limit = _tighter(ctx.deadline, params.timeout_seconds)
        ctx.metadata["tool"] = os.path.basename(argv[0])
        ctx.progress.stage("running the backup command")
        with ctx.artifact.open(params.stream) as out:
            _run(argv, env, "backup", app, params, limit, stdout=out)

    # ------------------------------------------------------------------ restore

    def restore(self, ctx: RestoreContext[JobParameters]) -> None:
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
        cmd = compile_command(params, "restore")
        argv = _render_argv(cmd, target, "restore")
        env = _render_env(
            cmd,
            target,
            "restore",
            {
                "COZY_STREAM": stream,
                "COZY_RESTORE_MODE": "InPlace" if ctx.in_place else "ToCopy",
                "COZY_SOURCE_NAME": ctx.source.name,
                "COZY_BACKUP_TAKEN_AT": ctx.taken_at.isoformat(),
            },
        )
        limit = _tighter(ctx.deadline, params.timeout_seconds)
        # No progress.stage() here: the core counts the bytes read under "restoring".
        with ctx.artifact.open(stream) as src:
            _run(argv, env, "restore", target, params, limit, stdin=src)
            if src.read(1):
                raise DriverError(
                    "the restore command exited successfully without reading the whole "
                    "backup; the restore may be incomplete, ask the platform operator to "
                    "check the BackupClass's restore command",
                    admin_detail=f"{target.ref}: {argv[0]} stopped reading stdin before its end",
                )


# ---------------------------------------------------------------------- helpers


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


def _tighter(deadline: Deadline, timeout: int | None) -> tuple[Deadline, bool]:
    """The earlier of the job's deadline and the class's ``timeoutSeconds``; and whether
    the class's timeout is the one that ends the command."""
    if timeout is None:
        return deadline, False
    own = time.monotonic() + timeout
    return (Deadline(own), True) if own < deadline.at else (deadline, False)


def _missing(exc: MissingValue, app: AppLocation, which: str) -> DriverError:
    return DriverError(
        f"the application is missing a setting the {which} command needs "
        f"({exc.ref.source} key {exc.ref.key!r}); ask the platform operator",
        admin_detail=f"{app.ref} in {app.namespace}: {exc}",
    )


def _render_argv(cmd: Compiled, app: AppLocation, which: str) -> list[str]:
    try:
        return [render(parts, app) for parts in cmd.argv]
    except MissingValue as exc:
        raise _missing(exc, app, which) from None


def _render_env(
    cmd: Compiled, app: AppLocation, which: str, extra: Mapping[str, str]
) -> dict[str, str]:
    """The variables the driver always sets, then the admin's env (rendered)."""
    values = app_values(app)
    env = {
        "COZY_APP_NAME": values["name"],
        "COZY_APP_NAMESPACE": values["namespace"],
        "COZY_APP_KIND": values["kind"],
        "COZY_APP_API_GROUP": values["apiGroup"],
    }
    for key, value in app.connection.items():
        text = scalar(value)
        if text is not None and "\x00" not in text:
            env[env_name("COZY_CONN_", str(key))] = text
    for key, secret in app.credentials.items():
        if "\x00" not in secret:
            env[env_name("COZY_SECRET_", str(key))] = secret
    env.update(extra)
    try:
        env.update({name: render(parts, app) for name, parts in cmd.env.items()})
    except MissingValue as exc:
        raise _missing(exc, app, which) from None
    return env


def _run(
    argv: list[str],
    env: dict[str, str],
    which: str,
    app: AppLocation,
    params: JobParameters,
    limit: tuple[Deadline, bool],
    *,
    stdout: IO[bytes] | None = None,
    stdin: IO[bytes] | None = None,
) -> None:
    """``run_tool`` with tenant-safe messages; the program and stderr go to the log."""
    what = f"the {which} command"
    deadline, by_class = limit
    try:
        # The worker's own environment (storage credentials, if any) is not passed on.
        run_tool(
            argv,
            deadline=deadline,
            stdout=stdout,
            stdin=stdin,
            env=env,
            inherit_env=False,
            what=what,
        )
    except DeadlineExceeded:
        if by_class:
            raise DeadlineExceeded(
                f"{what} ran longer than the BackupClass allows ({params.timeout_seconds}s) "
                "and was stopped"
            ) from None
        raise
    except DriverError as exc:
        raise DriverError(
            exc.message, admin_detail=f"{app.ref} in {app.namespace}: {argv[0]}: {exc.admin_detail}"
        ) from None


class _Head(io.BytesIO):
    """Keeps the first 4 KiB written to it and drops the rest (a chatty version command
    cannot fill memory)."""

    LIMIT = 4096

    def write(self, data: Any) -> int:
        room = self.LIMIT - self.tell()
        if room > 0:
            super().write(bytes(data[:room]))
        return len(data)


def _record_version(ctx: BackupContext, argv: tuple[str, ...]) -> None:
    """First line of ``versionCommand``'s stdout into the manifest's tool versions.

    It runs with the worker's own environment and no application values or credentials.
    A failure is logged, not fatal: the backup itself says whether the tool works.
    """
    label = os.path.basename(argv[0])
    deadline = Deadline(min(ctx.deadline.at, time.monotonic() + VERSION_TIMEOUT))
    head = _Head()
    try:
        run_tool(
            list(argv),
            deadline=deadline,
            stdout=head,
            inherit_env=False,
            what="the version command",
        )
    except (DriverError, DeadlineExceeded) as exc:
        ctx.log.warning(
            "%s: versionCommand failed: %s %s", ctx.application.ref, exc, exc.admin_detail or ""
        )
        return
    text = head.getvalue().decode(errors="replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    ctx.tool_versions[label] = lines[0][:_VERSION_MAX] if lines else "unknown"
