"""The servers the tests here start: built once a test session by ``build.sh``.

A test module that needs them starts with ``require_servers()``: without Go (and without a
cached build) that skips the whole module with one line, at collection, so a build is never
cut short by a test's timeout.  A build that fails with Go present is not a skip: the
``kube_cluster`` fixture then fails every test that uses it, with the end of the build's log.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

BUILD = Path(__file__).with_name("build.sh")
GO_MISSING = (
    "go is not installed: the real Kubernetes API server tests need Go 1.26 (https://go.dev/dl/)"
)


@dataclass(frozen=True)
class BuildOutcome:
    """What ``build.sh`` gave: a bin directory, a reason to skip, or a failure."""

    bin_dir: Path | None = None
    skip: str = ""
    failure: str = ""


def build_servers(
    env: dict[str, str] | None = None, echo: Callable[[str], None] | None = None
) -> BuildOutcome:
    """Run build.sh (in ``env``); ``echo(line)`` gets each progress line it prints."""
    env = dict(os.environ if env is None else env)
    lines = []
    with subprocess.Popen(
        ["bash", str(BUILD)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            assert proc.stderr is not None and proc.stdout is not None
            for line in proc.stderr:
                lines.append(line.rstrip("\n"))
                if echo is not None:
                    echo(line.rstrip("\n"))
            out = proc.stdout.read()
            proc.wait()
        except BaseException:  # Ctrl-C: stop the go processes too
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if proc.returncode == 0:
        return BuildOutcome(bin_dir=Path(out.strip().splitlines()[-1]))
    if shutil.which("go", path=env.get("PATH")) is None:
        return BuildOutcome(skip=GO_MISSING)
    tail = "\n".join(lines[-50:])
    return BuildOutcome(failure=f"tests/kube/build.sh exited with {proc.returncode}:\n{tail}")


#: Set by conftest.py: shows build.sh's progress lines on the terminal.
echo: Callable[[str], None] | None = None
_outcome: BuildOutcome | None = None


def servers() -> BuildOutcome:
    """build.sh's outcome, run at the first call of the session."""
    global _outcome
    if _outcome is None:
        _outcome = build_servers(echo=echo)
    return _outcome


def require_servers() -> None:
    """At a test module's top: skip the module, with one line, when Go is missing."""
    outcome = servers()
    if outcome.skip:
        pytest.skip(outcome.skip, allow_module_level=True)
