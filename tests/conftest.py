from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cozybackup_core.testing import LocalPlatform

sys.path.insert(0, str(Path(__file__).parent))

from support.drivers import FILES, FilesDriver, RaisingDriver, ToolDriver

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seed-manifests"
if not SEEDS.exists():
    SEEDS = Path(os.environ.get("COZYBACKUP_SHARED", "../shared")) / "seed-manifests"

FILES_CLASS = """
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {name: files}
spec:
  strategies:
  - application: {apiGroup: apps.example.com, kind: Directory}
    strategyRef: {kind: Files, name: files}
"""


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[LocalPlatform]:
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver, RaisingDriver, ToolDriver))
    plat.apply(FILES_CLASS)
    yield plat


@pytest.fixture
def files_app(platform: LocalPlatform, tmp_path: Path):  # type: ignore[no-untyped-def]
    data = tmp_path / "app"
    data.mkdir()
    (data / "a.bin").write_bytes(os.urandom(300_000))
    (data / "b.txt").write_text("hello\n" * 1000)
    ref = platform.declare_app(
        "tenant-a",
        "app1",
        "Directory",
        {"path": str(data)},
        {"password": "hunter2-very-secret"},
        api_group=FILES.api_group,
    )
    return ref, data
