"""Transient storage faults between the engine and a real S3 server (SeaweedFS).

A fault-injecting proxy on 127.0.0.1 sits in front of SeaweedFS.  Throttling, 5xx answers,
connection resets and slow responses are absorbed by retries (a failed multipart part is
retried on its own, not the whole upload); an outage longer than the job's deadline fails
the job cleanly, and once storage is back nothing partial is left.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cozybackup_core import EngineConfig
from cozybackup_core._api.types import ArtifactRecord
from cozybackup_core.testing import LocalPlatform, S3ServerInfo, s3_location_yaml

from support.drivers import FILES, FilesDriver
from support.faultproxy import Delay, FaultProxy, Request, Reset, Status, fault_proxy
from support.manifests import FILES_CLASS

pytestmark = [pytest.mark.s3, pytest.mark.timeout(240)]
NS = "tenant-a"
SIZE = 20 << 20  # three multipart parts of 8 MiB


@pytest.fixture
def proxy(s3: S3ServerInfo) -> Iterator[FaultProxy]:
    with fault_proxy(s3.endpoint_url) as p:
        yield p


def _platform(
    tmp_path: Path, s3: S3ServerInfo, proxy: FaultProxy, **config: float
) -> LocalPlatform:
    cfg = EngineConfig(attempts=3, backoff=0.2, workers=1, **config)  # type: ignore[arg-type]
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,), config=cfg)
    plat.apply(
        s3_location_yaml(
            s3, "cozy-backups", "faults", prefix=tmp_path.name, endpoint=proxy.endpoint
        ),
        FILES_CLASS,
    )
    return plat


def _app(plat: LocalPlatform, tmp_path: Path) -> tuple[object, bytes]:
    d = tmp_path / "app"
    d.mkdir()
    data = os.urandom(SIZE)
    (d / "data.bin").write_bytes(data)
    ref = plat.declare_app(NS, "app1", "Directory", {"path": str(d)}, api_group=FILES.api_group)
    return ref, data


def _stored_objects(plat: LocalPlatform) -> list[str]:
    store = plat.engine.store_for(plat.engine.catalog().storages["cozy-backups"])
    return [p for p in store.fs.find(store.root) if not p.endswith("/")]


def test_throttling_and_server_errors_are_retried(
    tmp_path: Path, s3: S3ServerInfo, proxy: FaultProxy
) -> None:
    plat = _platform(tmp_path, s3, proxy)
    ref, data = _app(plat, tmp_path)
    seen: Counter[str] = Counter()

    def fault(r: Request) -> Status | None:
        # The first two tries of every part, and of every stream download, fail.
        kind = f"part {r.query['partNumber']}" if r.is_part_upload else r.method + r.path
        if r.is_part_upload or (r.method == "GET" and r.path.endswith(".zst")):
            seen[kind] += 1
            if seen[kind] <= 2:
                return Status(503, "SlowDown") if seen[kind] == 1 else Status(500, "InternalError")
        return None

    proxy.fault = fault
    job = plat.backup(NS, ref, "b1", "files")  # type: ignore[arg-type]
    assert job.status.phase == "Succeeded", job.status.message
    assert len(proxy.requests("status 503")) >= 3 and proxy.requests("status 500")
    (tmp_path / "app" / "data.bin").write_bytes(b"damaged")
    restore = plat.restore(NS, "b1", "r1")
    assert restore.status.phase == "Succeeded", restore.status.message
    assert (tmp_path / "app" / "data.bin").read_bytes() == data


def test_a_reset_part_is_retried_alone_not_the_whole_upload(
    tmp_path: Path, s3: S3ServerInfo, proxy: FaultProxy
) -> None:
    plat = _platform(tmp_path, s3, proxy)
    ref, data = _app(plat, tmp_path)
    resets: list[int] = []

    def fault(r: Request) -> Reset | None:
        if r.is_part_upload and r.query["partNumber"] == "2" and not resets:
            resets.append(r.n)
            return Reset()
        return None

    proxy.fault = fault
    job = plat.backup(NS, ref, "b1", "files")  # type: ignore[arg-type]
    assert job.status.phase == "Succeeded", job.status.message
    assert resets
    uploads = [r for r in proxy.requests() if r.method == "POST" and "uploads" in r.query]
    assert len(uploads) == 1, "the multipart upload was restarted instead of resumed"
    parts = Counter(r.query["partNumber"] for r in proxy.requests() if r.is_part_upload)
    assert parts == {"1": 1, "2": 2, "3": 1}
    assert len(plat.host.objects.list(ArtifactRecord)) == 1  # one engine attempt
    assert plat.restore(NS, "b1", "r1").status.phase == "Succeeded"
    assert (tmp_path / "app" / "data.bin").read_bytes() == data


def test_slow_responses_only_slow_the_job(
    tmp_path: Path, s3: S3ServerInfo, proxy: FaultProxy
) -> None:
    plat = _platform(tmp_path, s3, proxy)
    ref, _ = _app(plat, tmp_path)
    proxy.fault = lambda r: Delay(1.0) if r.n % 3 == 0 else None
    job = plat.backup(NS, ref, "b1", "files")  # type: ignore[arg-type]
    assert job.status.phase == "Succeeded", job.status.message
    assert proxy.requests("delayed")


def test_an_outage_longer_than_the_deadline_fails_cleanly(
    tmp_path: Path, s3: S3ServerInfo, proxy: FaultProxy
) -> None:
    plat = _platform(tmp_path, s3, proxy, backup_timeout=8.0)
    ref, _ = _app(plat, tmp_path)
    # Storage answers until the first part is stored, then is down for good.
    down: list[bool] = []

    def fault(r: Request) -> Status | Reset | None:
        if down:
            return Status(503) if r.n % 2 else Reset()
        if r.is_part_upload:
            down.append(True)
        return None

    proxy.fault = fault
    started = time.monotonic()
    job = plat.backup(NS, ref, "b1", "files")  # type: ignore[arg-type]
    took = time.monotonic() - started
    assert job.status.phase == "Failed"
    message = job.status.message or ""
    assert "storage" in message and proxy.endpoint not in message and "faults" not in message
    assert plat.backups(NS) == []
    assert took < 150, f"the job took {took:.0f}s to give up"

    # Storage is back: the next run removes whatever the failed attempts left behind, all
    # but the tenant repository's key (made by the first attempt, kept as on a Local
    # location: LocalPlatform.leftovers).
    proxy.fault = lambda r: None
    plat.engine.recover()
    key = re.compile(r".*/_repos/[^/]+/(plain|sealed)/config\.json")
    assert [p for p in _stored_objects(plat) if not key.fullmatch(p)] == []
    assert all(r.status.phase != "Writing" for r in plat.host.objects.list(ArtifactRecord))
