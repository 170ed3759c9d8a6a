from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cozybackup_core import ArtifactStore
from cozybackup_core.testing import LocalPlatform, S3ServerInfo, seaweed_s3

sys.path.insert(0, str(Path(__file__).parent))

from support.drivers import FILES, FilesDriver, RaisingDriver, ToolDriver
from support.manifests import FILES_CLASS

#: The brief's manifests, kept as the project's own examples (a user's clone has no
#: ../shared); tests/test_examples.py checks they are still the brief's, byte for byte.
SEEDS = Path(__file__).resolve().parents[1] / "examples" / "seed-manifests"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3ServerInfo]:
    """A SeaweedFS S3 server for the tests of one module."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with seaweed_s3(tmp_path_factory.mktemp("weed")) as info:
        yield info


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def dedup_store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    """A deduplicating store on a local bucket, and on SeaweedFS."""
    if request.param == "local":
        s = ArtifactStore.local(str(tmp_path / "bucket"))
    else:
        info = request.getfixturevalue("s3")
        s = ArtifactStore.s3(
            endpoint=info.endpoint_url,
            bucket="cozy-backups",
            prefix=f"d/{tmp_path.name}",
            key=info.access_key,
            secret=info.secret_key,
        )
    s.deduplicate = True
    return s


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


@pytest.fixture
def kube() -> Iterator[tuple[Any, Any]]:
    """``(server, api_client)``: the strict Kubernetes API stand-in (support/kubeapi.py,
    kmock: Python 3.11+) and an official client for it; no violation may be left."""
    from kubernetes import client as kclient

    from support.kubeapi import running_api_server

    with running_api_server() as (api, url):
        api_client = kclient.ApiClient(kclient.Configuration(host=url))
        try:
            yield api, api_client
        finally:
            api_client.close()
        assert api.violations == [], api.violations
