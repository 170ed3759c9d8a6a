"""The manifests shown in the README load (so the docs cannot drift from the API)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cozybackup_core import load_yaml
from cozybackup_core.hosts.local import LOCAL_KINDS

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_manifests() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.split("kind: ")[1].split()[0])
def test_readme_manifest_loads(block: str) -> None:
    assert load_yaml(block, "README.md", LOCAL_KINDS)
