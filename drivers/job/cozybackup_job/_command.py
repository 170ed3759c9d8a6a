"""An admin's command as the driver runs it: argv and environment rendered from the
application, the class's ``timeoutSeconds``, and messages a tenant may read.

The tenant reads only "the backup command failed with exit status N"-style messages;
the command's stderr (last 64 KiB, kept by ``run_tool``), the program and the
application go to the platform log.  Credentials reach the command only through its
environment, never its argv (checked when the class is applied).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import IO

from cozybackup_core import AppLocation, Deadline, DeadlineExceeded, DriverError, ToolPipe, run_tool

from ._params import Compiled, JobParameters
from ._template import MissingValue, app_values, env_name, render, scalar


def tighter(deadline: Deadline, timeout: int | None) -> tuple[Deadline, bool]:
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


def render_argv(cmd: Compiled, app: AppLocation, which: str) -> list[str]:
    try:
        return [render(parts, app) for parts in cmd.argv]
    except MissingValue as exc:
        raise _missing(exc, app, which) from None


def render_env(
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


def run(
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


def run_beside(
    pipe: ToolPipe,
    argv: list[str],
    which: str,
    app: AppLocation,
    params: JobParameters,
    limit: tuple[Deadline, bool],
    *,
    stdout: IO[bytes] | None = None,
    stdin: IO[bytes] | None = None,
) -> None:
    """The command in the class's ``image``, in its container beside the worker (see
    ``ToolPipe``): its stream through the pipe, its exit status as ``run`` reports it.
    Its stderr is in that container's log, for the operator."""
    what = f"the {which} command"
    deadline, by_class = limit
    try:
        if stdout is not None:
            code = pipe.read_into(stdout, deadline)
        else:
            code = pipe.write_from(stdin, deadline)
    except DeadlineExceeded:
        if by_class:
            raise DeadlineExceeded(
                f"{what} ran longer than the BackupClass allows ({params.timeout_seconds}s) "
                "and was stopped"
            ) from None
        raise
    if code != 0:
        raise DriverError(
            f"{what} failed with exit status {code}",
            admin_detail=f"{app.ref} in {app.namespace}: {argv[0]} in image {params.image} "
            "(its container's log has its stderr)",
        )
