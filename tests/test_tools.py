"""run_tool's environment: added to the worker's, or replacing it for admin commands."""

from __future__ import annotations

import pytest

from cozybackup_core import Deadline, run_tool


def test_env_is_added_to_the_workers_or_replaces_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "worker-secret-123")
    script = ["sh", "-c", 'printf "%s|%s|%s" "$AWS_SECRET_ACCESS_KEY" "$MINE" "${PATH:+path}"']
    inherited = run_tool(script, deadline=Deadline.after(30), env={"MINE": "x"})
    assert inherited == b"worker-secret-123|x|path"
    isolated = run_tool(script, deadline=Deadline.after(30), env={"MINE": "x"}, inherit_env=False)
    assert isolated == b"|x|path"
