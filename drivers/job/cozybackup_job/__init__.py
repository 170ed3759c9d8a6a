"""cozybackup's generic ``Job`` strategy: admins back up any application kind with
commands of their own, no code.

Install it next to ``cozybackup-core``: the plugin host finds it through the
``cozybackup.drivers`` entry point ``job``.  A BackupClass binds a kind to
``strategyRef: {kind: Job, name: ...}`` with the commands in its ``parameters``
(:class:`JobParameters`; the README has the reference).
"""

from __future__ import annotations

from ._driver import JobDriver, __version__
from ._params import Command, JobParameters
from ._template import TemplateError

__all__ = [
    "Command",
    "JobDriver",
    "JobParameters",
    "TemplateError",
    "__version__",
]
