"""A driver's tool in a container of its own, beside the worker (Kubernetes hosts).

A driver whose tool lives in another image (the Job strategy's ``image``) declares a
:class:`ToolContainer` (``Driver.tool_container``).  A host that moves data in worker
Pods runs it as a second container of the worker's Pod, with :data:`TOOL_SCRIPT`, and the
two meet in a directory both mount (an ``emptyDir``): the worker makes the FIFO
``stream`` there, the tool's stdout (a backup) or stdin (a restore) is connected to it,
and the tool's exit status comes back in the file ``exit``.  The tool never holds the
storage's credentials or keys: it sees only its own command and environment.

The driver's side is :class:`ToolPipe` (``BackupContext.tool``/``RestoreContext.tool``).
The script waits for the FIFO only while the worker lives (it wrote ``worker.pid``; the
Pod shares one process namespace) and leaves when the worker says ``done``, so a worker
that ends early or is killed does not leave the tool waiting until the Pod's deadline.
"""

from __future__ import annotations

import errno
import os
import select
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from .._api.errors import DriverError, PermanentError

#: The environment variable naming the shared directory, in both containers.
TOOL_DIR_ENV = "COZYBACKUP_TOOL_DIR"
#: ``out``: the tool's stdout is the stream (a backup); ``in``: its stdin (a restore).
TOOL_IO_ENV = "COZYBACKUP_TOOL_IO"
CHUNK = 1 << 20
ToolIO = Literal["out", "in"]

#: The tool container's ``sh -c`` script; the tool's argv follows as ``"$@"``.
TOOL_SCRIPT = """\
D="$COZYBACKUP_TOOL_DIR"
while [ ! -p "$D/stream" ]; do
  [ -e "$D/done" ] && exit 0
  if [ -s "$D/worker.pid" ] && ! kill -0 "$(cat "$D/worker.pid")" 2>/dev/null; then
    echo "the worker ended before the stream was opened" >&2; exit 125
  fi
  sleep 0.2
done
if [ "$COZYBACKUP_TOOL_IO" = out ]; then "$@" > "$D/stream"; else "$@" < "$D/stream"; fi
code=$?
echo "$code" > "$D/exit.tmp" && mv "$D/exit.tmp" "$D/exit"
exit "$code"
"""


@attrs.frozen(kw_only=True)
class ToolContainer:
    """A tool to run in its own image beside the worker: ``argv`` (no shell) with ``env``
    (which may hold the application's credentials: the host passes them through the
    job's own Secret, never in the Pod's spec)."""

    image: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = attrs.field(factory=dict, repr=False)


class ToolPipe:
    """The worker's end of a :class:`ToolContainer`: one stream, used once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._used = False

    @property
    def _fifo(self) -> Path:
        return self.directory / "stream"

    @property
    def _exit(self) -> Path:
        return self.directory / "exit"

    def _claim(self) -> None:
        if self._used:
            # The tool ran once, in its container; it cannot be run again from here.
            raise PermanentError(
                "the tool container has already run for this job; create the job again"
            )
        self._used = True
        os.mkfifo(self._fifo, 0o666)

    def read_into(self, out: Any, deadline: Any) -> int:
        """Copy the tool's stdout into ``out`` until it closes it; the tool's exit status."""
        self._claim()
        fd = os.open(self._fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            waiting = select.poll()
            waiting.register(fd, select.POLLIN | select.POLLHUP)
            # Nothing is reported until the tool has opened its end (data or a hang-up).
            while not waiting.poll(200):
                if self._exit.exists():
                    return self._status(deadline)
                deadline.check()
            os.set_blocking(fd, True)
            while chunk := os.read(fd, CHUNK):
                out.write(chunk)
                deadline.check()
        finally:
            os.close(fd)
        return self._status(deadline)

    def write_from(self, src: Any, deadline: Any) -> int:
        """Feed ``src`` to the tool's stdin, then close it; the tool's exit status."""
        self._claim()
        while True:
            try:
                fd = os.open(self._fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: the tool has not opened its end yet
                    raise
            if self._exit.exists():
                return self._status(deadline)
            deadline.check()
            time.sleep(0.1)
        os.set_blocking(fd, True)
        stopped_reading = False
        try:
            while chunk := src.read(CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                deadline.check()
        except BrokenPipeError:
            stopped_reading = True
        finally:
            os.close(fd)
        code = self._status(deadline)
        if code == 0 and stopped_reading:
            raise DriverError("the restore command stopped reading its input before its end")
        return code

    def _status(self, deadline: Any) -> int:
        while not self._exit.exists():
            deadline.check()
            time.sleep(0.1)
        text = self._exit.read_text().strip()
        return int(text) if text.lstrip("-").isdigit() else 255

    # -- the worker's bookkeeping (the host's, around the whole job)

    def open_session(self) -> None:
        """Say the worker is alive (its pid, for the tool's wait)."""
        (self.directory / "worker.pid").write_text(str(os.getpid()))

    def close_session(self) -> None:
        """Say the worker is done: a tool still waiting for the stream leaves."""
        (self.directory / "done").touch()
