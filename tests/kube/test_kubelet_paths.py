"""The test kubelet's text rewriting: mount paths and $(VAR) references (no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .kubelet import expand, path_rewriter

pytestmark = pytest.mark.kube


def test_mount_paths_are_rewritten_as_whole_path_components(tmp_path: Path) -> None:
    creds, data, sub = tmp_path / "creds", Path("/tmp/pytest-x/data"), tmp_path / "sub"
    rewrite = path_rewriter({"/etc/creds/": creds, "/tmp": data, "/tmp/sub": sub})

    assert rewrite("/etc/creds") == str(creds)
    assert rewrite("/etc/creds/password") == f"{creds}/password"
    assert rewrite("--config=/etc/creds/c.json") == f"--config={creds}/c.json"
    assert rewrite("cat /etc/creds/a '/etc/creds/b'") == f"cat {creds}/a '{creds}/b'"
    # Not a mount path: a longer name, or the same text inside another path.
    assert (
        rewrite("/etc/credsx /x/etc/creds /etc/creds.d") == "/etc/credsx /x/etc/creds /etc/creds.d"
    )
    # The longest mount path wins, and a replacement is never rewritten again (one pass),
    # even when the directory itself lies under a mount path (/tmp here).
    assert rewrite("/tmp/sub/f /tmp/f") == f"{sub}/f {data}/f"
    assert path_rewriter({})("/etc/creds") == "/etc/creds"


def test_var_references_expand_as_kubernetes_does() -> None:
    env = {"A": "1", "B_2": "two"}
    assert expand("$(A)-$(B_2)", env) == "1-two"
    assert expand("$$(A) $(UNDEFINED) $A ${A}", env) == "$(A) $(UNDEFINED) $A ${A}"
