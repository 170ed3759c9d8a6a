"""build.sh without Go, and with a broken one: a skip with one line, or a failure."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .servers import GO_MISSING, build_servers

pytestmark = pytest.mark.kube


@pytest.mark.parametrize("go", ["absent", "broken"])
def test_the_build_skips_without_go_and_fails_with_a_broken_one(go: str, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "python3", "date", "sed", "tail", "mkdir", "cat", "printf"):
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True)
        if found.stdout.startswith("/"):
            (bin_dir / tool).symlink_to(found.stdout.strip())
    if go == "broken":
        (bin_dir / "go").write_text("#!/bin/sh\necho 'go: this go is broken' >&2\nexit 1\n")
        (bin_dir / "go").chmod(0o755)
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "COZYBACKUP_KUBE_CACHE": str(tmp_path / "cache"),
    }

    outcome = build_servers(env)

    assert outcome.bin_dir is None
    if go == "absent":
        assert (outcome.skip, outcome.failure) == (GO_MISSING, "")
    else:
        assert not outcome.skip
        assert "go: this go is broken" in outcome.failure  # the end of build.log, shown
