"""The project's example manifests are the brief's seed manifests, unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SEEDS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "seed-manifests"


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/seed-manifests (the brief)")
def test_examples_are_the_briefs_seed_manifests() -> None:
    brief = {p.name: p.read_bytes() for p in SHARED.glob("*.yaml")}
    ours = {p.name: p.read_bytes() for p in SEEDS.glob("*.yaml")}
    assert brief and ours == brief
