"""Continuous archives: segments stored like streams (encrypted, verified), streamers the
runner keeps beside its passes, their lag in the metrics.  The real streamer (PostgreSQL's
WAL) is tested in drivers/postgres; here a test driver's streamer copies a file's lines."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cozybackup_core import (
    AppLocation,
    ArtifactCorruptError,
    ArtifactStore,
    DriverError,
    Plan,
    Runner,
    SegmentStore,
    Streamer,
)
from cozybackup_core._engine.metrics import Metrics
from cozybackup_core._engine.runner import PassReport
from cozybackup_core._engine.streaming import ArchiveLag
from cozybackup_core._storage.archive import SegmentArchive
from cozybackup_core._storage.crypto import KeyRing
from cozybackup_core.testing import LocalPlatform, backup_class_yaml

from support.drivers import FILES, FilesDriver

NS = "tenant-a"


def _archive(tmp_path: Path, keyring: KeyRing | None = None) -> SegmentArchive:
    store = ArtifactStore.local(str(tmp_path / "bucket"))
    store.keyring = keyring
    return SegmentArchive.for_application(store, NS, "Directory", "app1", "files")


@pytest.mark.parametrize("encrypted", [False, True])
def test_segments_are_stored_whole_read_back_verified_and_listed(
    tmp_path: Path, encrypted: bool
) -> None:
    ring = KeyRing(keys=(("k1", os.urandom(32)),), active="k1") if encrypted else None
    archive = _archive(tmp_path, ring)
    data = b"MARKER-PLAINTEXT" + os.urandom(1000) * 300
    archive.put("seg-2", io.BytesIO(data), {"lastCommit": "2026-01-01T00:00:00+00:00"})
    archive.put("seg-1", io.BytesIO(b"first"), {})
    assert archive.names() == ["seg-1", "seg-2"]
    assert archive.metadata("seg-2") == {"lastCommit": "2026-01-01T00:00:00+00:00"}
    with archive.open("seg-2") as f:
        assert f.read() == data
    stored = next((tmp_path / "bucket").rglob("seg-2/streams/segment.zst")).read_bytes()
    assert len(stored) < len(data) // 10  # compressed
    assert (b"MARKER-PLAINTEXT" in stored) is not encrypted
    # Beside the Backups, never in a namespace's folder.
    assert next((tmp_path / "bucket").rglob("seg-2")).parent.parts[-4] == "_archive"
    archive.delete("seg-1")
    assert archive.names() == ["seg-2"]


def test_a_damaged_segment_is_refused_naming_it(tmp_path: Path) -> None:
    archive = _archive(tmp_path)
    archive.put("seg-7", io.BytesIO(os.urandom(100_000)), {})
    path = next((tmp_path / "bucket").rglob("seg-7/streams/segment.zst"))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with (
        pytest.raises(ArtifactCorruptError, match="archived segment seg-7 is damaged"),
        archive.open("seg-7") as f,
    ):
        f.read()


def test_a_failed_put_leaves_no_segment(tmp_path: Path) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            raise OSError("disk gone")

    archive = _archive(tmp_path)
    with pytest.raises(OSError, match="disk gone"):
        archive.put("seg-1", Broken(), {})  # type: ignore[arg-type]
    assert archive.names() == []


# ---------------------------------------------------------------- streamers in the runner


class LinesStreamer:
    """Stores each line of the application's ``feed`` file as a segment."""

    def __init__(self, app: AppLocation, archive: SegmentStore) -> None:
        self.feed = Path(app.connection["path"]) / "feed"
        self.archive = archive
        self.released = False

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            lines = self.feed.read_text().splitlines() if self.feed.exists() else []
            for i, line in enumerate(lines):
                if line == "fail":
                    # names the platform's path, which the tenant must not see
                    raise DriverError(f"the feed {self.feed.parent} failed; take a new backup")
                name = f"line-{i:04d}"
                if name not in self.archive.names():
                    self.archive.put(name, io.BytesIO(line.encode()), {"n": i})
            stop.wait(0.05)

    def lag(self) -> Mapping[str, Any]:
        return {"lagBytes": 7, "lagSeconds": 0.5}

    def release(self) -> None:
        self.released = True


class StreamingDriver(FilesDriver):
    name = "streaming"
    strategy_kind = "Streaming"
    made: list[LinesStreamer] = []

    def streams(self, parameters: Any) -> bool:
        return True

    def streamer(
        self, parameters: Any, application: AppLocation, archive: SegmentStore, workdir: Path
    ) -> Streamer:
        made = LinesStreamer(application, archive)
        self.made.append(made)
        return made


PLAN = {
    "apiVersion": "backups.cozystack.io/v1alpha1",
    "kind": "Plan",
    "metadata": {"name": "p1", "namespace": NS},
    "spec": {
        "applicationRef": {"apiGroup": FILES.api_group, "kind": "Directory", "name": "app1"},
        "backupClassName": "streaming",
        "schedule": {"type": "cron", "cron": "0 3 1 1 *"},
    },
}


def _wait(check: Any) -> None:
    done = threading.Event()
    for _ in range(200):
        if check():
            return
        done.wait(0.05)
    raise AssertionError("gave up waiting")


def test_the_runner_keeps_a_streamer_per_plan_reports_failures_and_releases(
    tmp_path: Path,
) -> None:
    StreamingDriver.made = []
    plat = LocalPlatform(tmp_path / "home", drivers=(StreamingDriver,))
    plat.apply(backup_class_yaml("streaming", "Directory", "Streaming", api_group=FILES.api_group))
    data = tmp_path / "data"
    data.mkdir()
    (data / "feed").write_text("a\nb\n")
    ref = plat.declare_app(NS, "app1", "Directory", {"path": str(data)}, api_group=FILES.api_group)
    plat.apply(PLAN)
    runner = Runner(plat.engine, streams_dir=tmp_path / "streams")
    try:
        report = runner.run_pass()
        assert report.streams == ("started streaming for tenant-a/app1",)
        store = plat.engine.store_for(plat.engine.catalog().resolve("streaming", ref).storage)
        archive = SegmentArchive.for_application(store, NS, "Directory", "app1", "streaming")
        _wait(lambda: archive.names() == ["line-0000", "line-0001"])
        report = runner.run_pass()
        assert report.archive_lags == (
            ArchiveLag(
                namespace=NS, kind="Directory", application="app1", lag_bytes=7, lag_seconds=0.5
            ),
        )
        plan = plat.host.objects.get(Plan, NS, "p1")
        assert plan is not None
        (cond,) = [c for c in plan.status.conditions if c.type == "Archiving"]
        assert (cond.status, cond.reason) == ("True", "Streaming")

        (data / "feed").write_text("a\nb\nfail\n")
        streams = runner.streams
        assert streams is not None
        _wait(lambda: not streams.running[NS, "Directory", "app1"].thread.is_alive())
        report = runner.run_pass()
        assert report.streams == (
            "streaming for tenant-a/app1 failed: the feed [redacted] failed; take a new backup",
        )
        plan = plat.host.objects.get(Plan, NS, "p1")
        assert plan is not None
        (cond,) = [c for c in plan.status.conditions if c.type == "Archiving"]
        assert (cond.status, cond.reason) == ("False", "DriverFailed")
        assert "the feed [redacted] failed" in plat.tenant_view(NS)
        assert str(data) not in plat.tenant_view(NS)
        assert report.archive_lags == ()
        # Retried, failing the same way: said again in the pass, not as a new event.
        streams._failed_at.clear()  # skip the pause before a restart
        runner.run_pass()
        _wait(lambda: not streams.running[NS, "Directory", "app1"].thread.is_alive())
        assert runner.run_pass().streams == report.streams
        warnings = [e for e in plat.host.events(NS, "Plan", "p1") if e["type"] == "Warning"]
        assert [e["reason"] for e in warnings] == ["DriverFailed"]

        (data / "feed").write_text("a\nb\nc\n")
        streams._failed_at.clear()  # skip the pause before a restart
        assert runner.run_pass().streams == ("started streaming for tenant-a/app1",)
        _wait(lambda: "line-0002" in archive.names())
        plat.host.objects.delete(Plan, NS, "p1")
        assert runner.run_pass().streams == ("stopped WAL streaming for tenant-a/app1",)
        assert StreamingDriver.made[-1].released
        assert not StreamingDriver.made[0].released  # failed: nothing to give back yet
    finally:
        runner.close()


def test_archive_lags_are_gauges_that_vanish_with_their_streamer(tmp_path: Path) -> None:
    plat = LocalPlatform(tmp_path / "home")
    metrics = Metrics(plat.engine)
    lag = ArchiveLag(namespace=NS, kind="Postgres", application="db", lag_bytes=42, lag_seconds=1.5)
    metrics.observe(PassReport(archive_lags=(lag,)))
    text = metrics.exposition().decode()
    labels = 'application="db",application_kind="Postgres",namespace="tenant-a"'
    assert f"cozybackup_archive_lag_bytes{{{labels}}} 42.0" in text
    assert f"cozybackup_archive_lag_seconds{{{labels}}} 1.5" in text
    metrics.observe(PassReport())
    assert "cozybackup_archive_lag_bytes{" not in metrics.exposition().decode()
