"""A driver's tool in a container beside the worker, as the two processes meet on one
machine: the real tool script (``sh``) on one side, ``ToolPipe`` on the other, a FIFO
between them.  (On a real API server: tests/kube/test_controller.py.)"""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from cozybackup_core import Deadline, DriverError, PermanentError, ToolPipe
from cozybackup_core._drivers.toolpipe import TOOL_DIR_ENV, TOOL_IO_ENV, TOOL_SCRIPT


def tool(directory: Path, io_: str, script: str) -> subprocess.Popen[bytes]:
    """The tool container's command, as the worker Pod runs it."""
    env = {"PATH": os.environ["PATH"], TOOL_DIR_ENV: str(directory), TOOL_IO_ENV: io_}
    with (directory / "tool.err").open("wb") as err:
        return subprocess.Popen(
            ["sh", "-c", TOOL_SCRIPT, "cozybackup-tool", "sh", "-c", script],
            env=env,
            stderr=err,
        )


def test_a_backup_reads_the_tools_stdout_and_its_exit_status(tmp_path: Path) -> None:
    pipe = ToolPipe(tmp_path)
    pipe.open_session()
    proc = tool(tmp_path, "out", "head -c 5000000 /dev/urandom; exit 0")
    out = io.BytesIO()
    assert pipe.read_into(out, Deadline.after(60)) == 0
    assert proc.wait(10) == 0
    assert len(out.getvalue()) == 5_000_000
    with pytest.raises(PermanentError, match="already run"):
        pipe.read_into(io.BytesIO(), Deadline.after(5))


def test_a_failing_tool_gives_its_exit_status(tmp_path: Path) -> None:
    pipe = ToolPipe(tmp_path)
    proc = tool(tmp_path, "out", "printf partial; exit 3")
    out = io.BytesIO()
    assert pipe.read_into(out, Deadline.after(60)) == 3
    assert out.getvalue() == b"partial"
    assert proc.wait(10) == 3


def test_a_restore_feeds_the_tools_stdin(tmp_path: Path) -> None:
    pipe = ToolPipe(tmp_path)
    data = os.urandom(3_000_000)
    target = tmp_path / "restored"
    proc = tool(tmp_path, "in", f"cat > {target}")
    assert pipe.write_from(io.BytesIO(data), Deadline.after(60)) == 0
    assert proc.wait(10) == 0
    assert target.read_bytes() == data


def test_a_restore_tool_that_stops_reading_fails_the_restore(tmp_path: Path) -> None:
    pipe = ToolPipe(tmp_path)
    proc = tool(tmp_path, "in", "head -c 10 > /dev/null; exit 0")
    with pytest.raises(DriverError, match="stopped reading its input"):
        pipe.write_from(io.BytesIO(os.urandom(5_000_000)), Deadline.after(60))
    assert proc.wait(10) == 0


def test_the_tool_does_not_wait_for_a_worker_that_is_gone(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / "worker.pid").write_text(str(gone.pid))
    proc = tool(tmp_path, "out", "echo never")
    assert proc.wait(10) == 125
    assert "the worker ended" in (tmp_path / "tool.err").read_text()
    done = tmp_path / "second"
    done.mkdir()
    ToolPipe(done).close_session()  # a worker that ended without using the tool
    assert tool(done, "out", "echo never").wait(10) == 0
