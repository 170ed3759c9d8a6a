"""run_tool's environment: added to the worker's, or replacing it for admin commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from cozybackup_core import Deadline, DriverError, run_admin_command, run_tool


def test_env_is_added_to_the_workers_or_replaces_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "worker-secret-123")
    script = ["sh", "-c", 'printf "%s|%s|%s" "$AWS_SECRET_ACCESS_KEY" "$MINE" "${PATH:+path}"']
    inherited = run_tool(script, deadline=Deadline.after(30), env={"MINE": "x"})
    assert inherited == b"worker-secret-123|x|path"
    isolated = run_tool(script, deadline=Deadline.after(30), env={"MINE": "x"}, inherit_env=False)
    assert isolated == b"|x|path"


def test_admin_command_failures_are_tenant_safe_and_keep_the_output_for_the_admin(
    tmp_path: Path,
) -> None:
    run_admin_command(["true"], deadline=Deadline.after(30), doing="starting the server")
    with pytest.raises(DriverError) as err:
        run_admin_command(
            ["sh", "-c", f"echo secret-output-{tmp_path.name}; exit 3"],
            deadline=Deadline.after(30),
            doing="starting the server",
            consequence="nothing was changed",
        )
    assert str(err.value) == (
        "the platform's command for starting the server failed (exit status 3); "
        "nothing was changed; ask the platform operator"
    )
    assert f"secret-output-{tmp_path.name}" in (err.value.admin_detail or "")
    with pytest.raises(DriverError, match="could not be run"):
        run_admin_command([str(tmp_path / "missing")], deadline=Deadline.after(30), doing="x")


def test_an_admin_command_past_its_deadline_is_killed_without_waiting_on_its_daemons() -> None:
    import time

    started = time.monotonic()
    # The background sleeper keeps stdout open: a pipe would make this wait 30 s.
    run_admin_command(["sh", "-c", "sleep 30 & exit 0"], deadline=Deadline.after(10), doing="x")
    with pytest.raises(DriverError, match=r"\(timed out\)"):
        run_admin_command(["sleep", "30"], deadline=Deadline.after(0.5), doing="x")
    assert time.monotonic() - started < 10
