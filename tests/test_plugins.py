"""The plugin host survives broken plugins and loads real entry points."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from cozybackup_core import DriverNotFoundError, PluginHost, hookimpl

from support.drivers import FilesDriver, ToolDriver


def _fake_dist(root: Path, dist: str, module: str, source: str) -> None:
    """An installed distribution (dist-info + module) with a cozybackup.drivers entry point."""
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[cozybackup.drivers]\n{dist} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("cozy_fake_")]:
        del sys.modules[mod]


def test_broken_plugin_is_reported_and_others_load(site: Path) -> None:
    _fake_dist(site, "broken-import", "cozy_fake_broken", "raise ImportError('needs libfoo.so')\n")
    _fake_dist(
        site,
        "broken-register",
        "cozy_fake_badreg",
        """
        from cozybackup_core import hookimpl
        @hookimpl
        def cozybackup_register_drivers(registry):
            raise RuntimeError("misconfigured")
    """,
    )
    _fake_dist(
        site,
        "good",
        "cozy_fake_good",
        """
        from cozybackup_core import hookimpl, Driver, GroupKind
        class Good(Driver):
            name = "good"; strategy_kind = "Good"; kinds = (GroupKind(kind="Redis"),)
            def backup(self, ctx): pass
            def restore(self, ctx): pass
        @hookimpl
        def cozybackup_register_drivers(registry):
            registry.add(Good)
    """,
    )
    host = PluginHost.load()
    broken = {b.name: b.error for b in host.broken}
    assert "needs libfoo.so" in broken["broken-import"]
    assert "misconfigured" in broken["broken-register"]
    assert host.registry.get("good").strategy_kind == "Good"
    assert host.registry.origin("good") == "good"


def test_duplicate_driver_name_is_refused() -> None:
    class Twin(FilesDriver):
        strategy_kind = "Twin"

    class P:
        @hookimpl
        def cozybackup_register_drivers(self, registry: object) -> None:
            registry.add(FilesDriver)  # type: ignore[attr-defined]

    class Q:
        @hookimpl
        def cozybackup_register_drivers(self, registry: object) -> None:
            registry.add(ToolDriver)  # type: ignore[attr-defined]
            registry.add(Twin)  # type: ignore[attr-defined]

    host = PluginHost.load(entry_points=False, plugins=[P(), Q()])
    assert [b.error for b in host.broken] == [
        "registration failed: DuplicateDriverError: driver 'files' is already registered by "
        + host.registry.origin("files")
    ]
    # All or nothing: Q's first driver was rolled back with it.
    with pytest.raises(DriverNotFoundError):
        host.registry.get("tool")


def test_observer_errors_never_fail_a_job(platform, files_app) -> None:  # type: ignore[no-untyped-def]
    class Noisy:
        @hookimpl
        def cozybackup_job_stage(self, stage: str) -> None:
            raise RuntimeError(f"observer broke at {stage}")

    platform.plugins.register(Noisy())
    ref, _ = files_app
    assert platform.backup("tenant-a", ref, "b1", "files").status.phase == "Succeeded"
