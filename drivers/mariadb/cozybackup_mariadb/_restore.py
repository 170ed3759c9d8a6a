"""How a restore is applied: in the mode the backup was taken with, logical
(:mod:`._logical`) or physical (:mod:`._physical`), within the class's ``timeoutSeconds``."""

from __future__ import annotations

from cozybackup_core import DriverError, RestoreContext

from . import _logical, _physical
from ._conn import Server
from ._params import MariaDBParameters


def restore(ctx: RestoreContext[MariaDBParameters]) -> None:
    params = ctx.parameters
    server = Server.from_location(ctx.target)
    deadline = ctx.deadline.tighter(params.timeout_seconds)
    names = ctx.artifact.names()
    # The streams say how the backup was taken: a parameters snapshot could
    # have lost the mode (defaults are not recorded).
    if _physical.DATADIR_STREAM in names:
        _physical.restore(ctx, server, params, deadline)
    elif _logical.DATABASES_STREAM in names:
        _logical.restore(ctx, server, deadline)
    else:
        raise DriverError(
            "the backup was not written by a compatible version of the MariaDB driver",
            admin_detail=f"streams {names}",
        )
    ctx.log.info("restored %s %s", ctx.source.name, "in place" if ctx.in_place else "into a copy")
