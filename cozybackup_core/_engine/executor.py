"""Where a job's data moves: inline (the runner's own threads, the default) or in a worker
a host launches (on Kubernetes a batch/v1 Job per backup or restore).

The runner stays the only writer of tenant-visible status: a worker reports its progress
and its outcome to the host (:meth:`Executor.report`), and the runner copies them onto the
job on its next pass (``workers.reconcile``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs

from .._drivers.contract import AppLocation
from .._drivers.toolpipe import ToolContainer


@attrs.frozen
class Outcome:
    """What a worker says when it ends: the job's reason and message (already redacted by
    the worker, and again by the runner)."""

    ok: bool
    reason: str
    message: str
    #: A restore's warnings (``{"reason", "message"}``), made Warning events by the runner.
    warnings: tuple[dict[str, str], ...] = ()


@attrs.frozen
class WorkerState:
    """A worker as the runner sees it."""

    #: Still running (or not started yet): its job stays Running.
    active: bool
    #: The worker's outcome when it reported one (a killed worker reports none).
    outcome: Outcome | None = None
    #: Why it ended without an outcome (``DeadlineExceeded``, an exit code...), for the log.
    detail: str = ""
    #: The worker's last progress report (``stage``, ``bytesDone``, ``bytesTotal``).
    progress: Mapping[str, Any] | None = None


class Executor(Protocol):
    """A host's way of running jobs' data moves elsewhere (see the module docstring)."""

    def launch(
        self,
        job: Any,
        app: AppLocation,
        timeout_seconds: float,
        tool: ToolContainer | None = None,
    ) -> None:
        """Start the worker of ``job`` (idempotent: an existing worker is kept), with the
        driver's ``tool`` in a container beside it where the driver declares one."""

    def state(self, job: Any) -> WorkerState | None:
        """The worker of ``job``; None when there is none (never launched, or gone)."""

    def release(self, job: Any) -> None:
        """The runner has recorded the worker's end: its resources may go."""

    def cancel_strays(self, running: Sequence[Any]) -> list[str]:
        """Stop every worker still running whose job is not among ``running`` (a job
        deleted while it ran); the names of those stopped."""
