"""The generic ``Job`` strategy: admin-declared commands back up and restore any kind.

How a backup is made is in :mod:`._backup`, how a restore is applied in
:mod:`._restore`, and how either command is rendered and run (with tenant-safe
messages) in :mod:`._command`.
"""

from __future__ import annotations

from typing import ClassVar

from cozybackup_core import (
    BackupContext,
    Capabilities,
    Driver,
    RestoreContext,
    ToolContainer,
    ToolRequest,
    distribution_version,
)

from . import _backup, _restore
from ._params import JobParameters, check

__version__ = distribution_version("cozybackup-job")


class JobDriver(Driver[JobParameters]):
    """Runs the commands of the class's ``parameters``; serves any kind it is bound to."""

    name = "job"
    strategy_kind = "Job"
    # Whatever kind a BackupClass binds: the parameters say how to reach it.
    any_kind: ClassVar[bool] = True
    # Both, so the engine lets every restore through; a class that supports only one
    # (inPlaceRestore / toCopyRestore) is enforced in restore() before anything runs.
    capabilities = Capabilities(in_place_restore=True, to_copy_restore=True)
    version = __version__

    def validate_parameters(self, parameters: JobParameters) -> None:
        check(parameters)

    def backup(self, ctx: BackupContext[JobParameters]) -> None:
        _backup.backup(ctx)

    def restore(self, ctx: RestoreContext[JobParameters]) -> None:
        _restore.restore(ctx)

    def tool_container(
        self, parameters: JobParameters, request: ToolRequest
    ) -> ToolContainer | None:
        """With an ``image``, the command runs there, beside the worker: it never holds
        the storage's credentials, and the worker's image need not carry the tool."""
        if not parameters.image:
            return None
        if request.io == "out":
            argv, env = _backup.command(parameters, request.application)
        else:
            assert request.source is not None and request.taken_at is not None
            argv, env = _restore.command(
                parameters,
                request.application,
                request.in_place,
                request.source,
                request.taken_at,
                parameters.stream,
            )
        return ToolContainer(image=parameters.image, argv=tuple(argv), env=env)
