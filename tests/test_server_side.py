"""Server-side streams: the application's server writes to S3 itself (opt-in per location).

The platform must still hash and record every object the server wrote, check them before a
restore, remove them when the backup fails, and keep the credentials out of tenant view.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cozybackup_core import ValidationError, load_yaml
from cozybackup_core._api.types import ANNOTATION_STORED_BYTES, ANNOTATION_UNIQUE_BYTES
from cozybackup_core.testing import LocalPlatform, S3ServerInfo, s3_location_yaml

from support.drivers import FILES, ServerSideDriver
from support.manifests import directory_class

pytestmark = [pytest.mark.s3, pytest.mark.timeout(120)]
NS = "tenant-a"


#: The location's default (deduplicating: what the server writes is still never chunked)
#: and the stream format.
FORMATS = pytest.mark.parametrize("dedup", [None, False], ids=["default", "streams"])


def _platform(
    tmp_path: Path, s3: S3ServerInfo, *, opt_in: bool, dedup: bool | None = None
) -> LocalPlatform:
    plat = LocalPlatform(tmp_path / "home", drivers=(ServerSideDriver,))
    plat.apply(
        s3_location_yaml(
            s3,
            "native-bucket",
            "native-only",
            prefix=tmp_path.name,
            server_side=opt_in,
            deduplication=dedup,
        ),
        directory_class("native", "ServerSide", "server-side", storage="native-bucket"),
    )
    return plat


def _app(plat: LocalPlatform, tmp_path: Path, name: str, files: dict[str, bytes]) -> object:
    d = tmp_path / name
    d.mkdir()
    for n, b in files.items():
        (d / n).write_bytes(b)
    return plat.declare_app(NS, name, "Directory", {"path": str(d)}, api_group=FILES.api_group)


@FORMATS
def test_server_side_round_trip_is_recorded_and_verified(
    tmp_path: Path, s3: S3ServerInfo, dedup: bool | None
) -> None:
    plat = _platform(tmp_path, s3, opt_in=True, dedup=dedup)
    files = {"a.bin": os.urandom(50_000), "b.bin": b"hello" * 1000}
    ref = _app(plat, tmp_path, "app1", files)
    job = plat.backup(NS, ref, "b1", "native")  # type: ignore[arg-type]
    assert job.status.phase == "Succeeded", job.status.message
    backup = plat.backups(NS)[0]
    manifest = plat.engine.open_backup(backup).manifest
    assert manifest.deduplicated == (dedup is None)
    assert sorted(f.path for f in manifest.server_files) == ["a.bin", "b.bin"]
    size = sum(len(b) for b in files.values())
    assert manifest.size_bytes == size
    # What the server wrote is stored bytes of this backup alone, in either format.
    plat.engine.prune(collect=True)
    [backup] = plat.backups(NS)
    notes = backup.metadata.annotations
    assert notes[ANNOTATION_STORED_BYTES] == notes[ANNOTATION_UNIQUE_BYTES] == str(size)

    for f in (tmp_path / "app1").iterdir():
        f.write_bytes(b"damaged")
    assert plat.restore(NS, "b1", "r1").status.phase == "Succeeded"
    assert {f.name: f.read_bytes() for f in (tmp_path / "app1").iterdir()} == files

    view = plat.tenant_view(NS)
    leaks = [s for s in (s3.access_key, s3.secret_key, s3.endpoint_url, "native-only") if s in view]
    assert not leaks, view


@FORMATS
def test_a_changed_server_object_is_refused_before_the_restore(
    tmp_path: Path, s3: S3ServerInfo, dedup: bool | None
) -> None:
    plat = _platform(tmp_path, s3, opt_in=True, dedup=dedup)
    ref = _app(plat, tmp_path, "app1", {"a.bin": b"original" * 100})
    assert plat.backup(NS, ref, "b1", "native").status.phase == "Succeeded"  # type: ignore[arg-type]
    store, key, _ = plat.engine.artifact_of(plat.backups(NS)[0])
    store.fs.pipe_file(store.server_path(key, "native") + "/a.bin", b"tampered")
    (tmp_path / "app1" / "a.bin").write_bytes(b"current")

    job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Failed"
    assert "checksum" in (job.status.message or "")
    assert (tmp_path / "app1" / "a.bin").read_bytes() == b"current"  # target untouched


def test_without_the_opt_in_the_job_fails_and_stores_nothing(
    tmp_path: Path, s3: S3ServerInfo
) -> None:
    plat = _platform(tmp_path, s3, opt_in=False)
    ref = _app(plat, tmp_path, "app1", {"a.bin": b"x" * 100})
    job = plat.backup(NS, ref, "b1", "native")  # type: ignore[arg-type]
    assert job.status.phase == "Failed"
    assert "does not allow" in (job.status.message or "")
    assert plat.backups(NS) == []
    store = plat.engine.store_for(plat.engine.catalog().storages["native-bucket"])
    assert [p for p in store.fs.find(store.root) if not p.endswith("/")] == []


def test_server_side_access_is_refused_with_encryption_or_on_local_storage() -> None:
    with pytest.raises(ValidationError, match=r"spec\.serverSideAccess: needs provider: S3"):
        load_yaml(
            """
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {name: x}
spec: {provider: Local, bucket: b, serverSideAccess: true}
"""
        )
    with pytest.raises(
        ValidationError, match=r"spec\.serverSideAccess: cannot be combined with encryption"
    ):
        load_yaml(
            """
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {name: x}
spec:
  provider: S3
  bucket: b
  serverSideAccess: true
  encryption: {keys: [{id: k1, secretRef: {name: k}}]}
"""
        )
    with pytest.raises(ValidationError, match=r"spec\.encryption\.keys: key ids must be unique"):
        load_yaml(
            """
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {name: x}
spec:
  bucket: b
  encryption: {keys: [{id: k1, secretRef: {name: k}}, {id: k1, secretRef: {name: j}}]}
"""
        )
