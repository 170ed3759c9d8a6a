"""Run the real ``cozybackup`` CLI the way an admin would, for driver tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(
    home: Path, *args: str, stdin: str | None = None, timeout: float = 280
) -> subprocess.CompletedProcess[str]:
    """``cozybackup ARGS`` in a child process on the embedded host at ``home``, with only
    the drivers installed as packages (``COZYBACKUP_PLUGINS`` is removed), as an admin
    would have it."""
    env = {**os.environ, "COZYBACKUP_HOME": str(home)}
    env.pop("COZYBACKUP_PLUGINS", None)
    return subprocess.run(
        [sys.executable, "-m", "cozybackup_core.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a run that must have succeeded (else its whole output, to debug)."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout
