"""How a backup is made: the ``backup`` command runs (argv, no shell) with the
application's coordinates in its environment; its stdout is piped through
:func:`cozybackup_core.run_tool` straight into one artifact stream (compressed, hashed
and uploaded as it is written, no temp file).  A non-zero exit, a failure to start or
the deadline fails the job and the partial artifact is discarded by the engine.
"""

from __future__ import annotations

import io
import os
import time
from typing import Any

from cozybackup_core import (
    AppLocation,
    BackupContext,
    Deadline,
    DeadlineExceeded,
    DriverError,
    run_tool,
)

from ._command import render_argv, render_env, run, run_beside, tighter
from ._params import JobParameters, compile_command

#: How long ``versionCommand`` may take (within the job's own deadline).
VERSION_TIMEOUT = 30.0
_VERSION_MAX = 200


def command(params: JobParameters, app: AppLocation) -> tuple[list[str], dict[str, str]]:
    """The backup command's argv and environment for ``app``."""
    cmd = compile_command(params, "backup")
    argv = render_argv(cmd, app, "backup")
    return argv, render_env(cmd, app, "backup", {"COZY_STREAM": params.stream})


def backup(ctx: BackupContext[JobParameters]) -> None:
    params = ctx.parameters
    app = ctx.application
    argv, env = command(params, app)
    if params.version_command and ctx.tool is None:  # the tool is not here but in its image
        _record_version(ctx, params.version_command)
    if ctx.tool is not None:
        ctx.tool_versions["image"] = str(params.image)
    limit = tighter(ctx.deadline, params.timeout_seconds)
    ctx.metadata["tool"] = os.path.basename(argv[0])
    # All a generic command says of what it backed up is which tool made it.
    ctx.resources["tool"] = ctx.metadata["tool"]
    ctx.progress.stage("running the backup command")
    with ctx.artifact.open(params.stream) as out:
        if ctx.tool is not None:
            run_beside(ctx.tool, argv, "backup", app, params, limit, stdout=out)
        else:
            run(argv, env, "backup", app, params, limit, stdout=out)


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
