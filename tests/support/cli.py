"""The real CLI for the core's tests: the test drivers in ``support.drivers`` loaded as
plugins (``COZYBACKUP_PLUGINS``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from cozybackup_core.testing import run_cli

TESTS = Path(__file__).resolve().parents[1]


def cli(
    home: Path,
    *args: str,
    stdin: str | None = None,
    plugins: str = "support.drivers",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``cozybackup ARGS`` on ``home`` with the plugins ``plugins`` importable."""
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    extra = {"COZYBACKUP_PLUGINS": plugins, "PYTHONPATH": path, **(env or {})}
    return run_cli(home, *args, stdin=stdin, timeout=120, env=extra)
