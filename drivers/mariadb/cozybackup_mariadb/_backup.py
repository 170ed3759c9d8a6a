"""How a backup is made: in the class's mode, logical (:mod:`._logical`) or physical
(:mod:`._physical`), within the class's ``timeoutSeconds``."""

from __future__ import annotations

from cozybackup_core import BackupContext

from . import _logical, _physical
from ._conn import Server
from ._params import MariaDBParameters, Mode


def backup(ctx: BackupContext[MariaDBParameters]) -> None:
    params = ctx.parameters
    server = Server.from_location(ctx.application)
    deadline = ctx.deadline.tighter(params.timeout_seconds)
    if params.mode is Mode.PHYSICAL:
        _physical.backup(ctx, server, params, deadline)
    else:
        _logical.backup(ctx, server, params, deadline)
    deadline.check()
