"""Running a dump/restore tool as a subprocess, streaming, under a deadline.

Drivers use this to pipe ``pg_dump``-style tools into an artifact stream (or a stream
into a restore tool) without a temp file.  Stderr is kept (last 64 KiB) for the
operator; the tenant gets a message naming the tool and its exit status only.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from typing import IO

from .._api.errors import DeadlineExceeded, DriverError
from .contract import Deadline

CHUNK = 1 << 20
_STDERR_KEEP = 64 << 10


_KEPT_ENV = frozenset({"PATH", "HOME", "LANG", "LC_ALL", "TZ"})


def run_tool(
    argv: Sequence[str],
    *,
    deadline: Deadline,
    stdout: IO[bytes] | None = None,
    stdin: IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = True,
    what: str | None = None,
) -> bytes:
    """Run ``argv``; copy its stdout to ``stdout`` and/or feed ``stdin`` from a stream.

    Returns the tool's stdout if ``stdout`` is None.  Raises :class:`DriverError` if it
    exits non-zero (``admin_detail`` holds its stderr) and :class:`DeadlineExceeded`
    (after killing it) if the deadline passes.

    ``env`` is added to the worker's environment; with ``inherit_env=False`` it replaces
    it (only ``PATH``, ``HOME``, ``LANG``, ``LC_ALL`` and ``TZ`` are kept), so a command an
    admin wrote does not see whatever credentials the worker process holds.
    """
    label = what or os.path.basename(argv[0])
    base = os.environ if inherit_env else {k: v for k, v in os.environ.items() if k in _KEPT_ENV}
    full_env = {**base, **(env or {})}
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            start_new_session=True,
        )
    except OSError as exc:
        raise DriverError(
            f"{label} could not be started on the backup worker", admin_detail=repr(exc)
        ) from None
    assert proc.stdout is not None and proc.stderr is not None
    err = bytearray()
    captured = bytearray()
    failure: list[BaseException] = []

    def pump_err() -> None:
        assert proc.stderr is not None
        while chunk := proc.stderr.read(8192):
            err.extend(chunk)
            del err[:-_STDERR_KEEP]

    def feed() -> None:
        assert proc.stdin is not None and stdin is not None
        try:
            while chunk := stdin.read(CHUNK):
                proc.stdin.write(chunk)
        except BrokenPipeError:
            pass  # the tool exited; its status says why
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    threads = [threading.Thread(target=pump_err, daemon=True)]
    if stdin is not None:
        threads.append(threading.Thread(target=feed, daemon=True))
    for t in threads:
        t.start()

    def kill_group() -> None:
        # The tool may have children holding our pipes: stop its whole session.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(deadline.remaining(), kill_group)
    timer.start()
    # A reader thread drains the tool's pipe into a small bounded queue while this thread
    # compresses and hashes: the tool never waits on a full 64 KiB pipe (8 MiB in flight).
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
    stopping = threading.Event()

    def pump_out() -> None:
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read(CHUNK):
                while not stopping.is_set():
                    try:
                        chunks.put(chunk, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stopping.is_set():
                    return
        finally:
            with contextlib.suppress(queue.Full):
                chunks.put(None, timeout=5)

    reader = threading.Thread(target=pump_out, daemon=True)
    reader.start()
    threads.append(reader)
    try:
        while (chunk := chunks.get()) is not None:
            if stdout is None:
                captured.extend(chunk)
            else:
                stdout.write(chunk)
        rc = proc.wait()
    except BaseException:
        stopping.set()
        kill_group()
        proc.wait()
        raise
    finally:
        stopping.set()
        timer.cancel()
        for t in threads:
            t.join(timeout=30)
        for pipe in (proc.stdout, proc.stderr):
            pipe.close()
    if failure:
        raise failure[0]
    if deadline.expired:
        raise DeadlineExceeded(f"{label} ran past the job's deadline and was stopped")
    if rc != 0:
        detail = err.decode(errors="replace")
        raise DriverError(f"{label} failed with exit status {rc}", admin_detail=detail)
    return bytes(captured)


_COMMAND_OUTPUT_KEEP = 8 << 10


def run_admin_command(
    argv: Sequence[str], *, deadline: Deadline, doing: str, consequence: str = ""
) -> None:
    """Run a command the admin declared (stop/start a server, freeze a VM) to completion.

    Output goes to a temp file, never a pipe: a start command leaves daemons behind that
    would hold a pipe open forever.  Past the deadline the command is killed.  A failure
    raises a tenant-safe :class:`DriverError` naming ``doing`` ("starting the server"),
    followed by ``consequence`` if given ("nothing was changed"); the command line, its
    status and the end of its output go to ``admin_detail`` only.
    """
    said = f"; {consequence}" if consequence else ""
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise DriverError(
                f"the platform's command for {doing} could not be run{said}; ask the platform operator",
                admin_detail=f"{list(argv)}: {exc!r}",
            ) from None
        try:
            rc: int | None = proc.wait(timeout=max(deadline.remaining(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        out.seek(0)
        text = out.read()[-_COMMAND_OUTPUT_KEEP:].decode(errors="replace")
    if rc != 0:
        status = "timed out" if rc is None else f"exit status {rc}"
        raise DriverError(
            f"the platform's command for {doing} failed ({status}){said}; ask the platform operator",
            admin_detail=f"{list(argv)}: {status}: {text}",
        )
