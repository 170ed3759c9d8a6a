"""The artifact store: streaming, checksums, commit marker; local and real S3 (SeaweedFS)."""

from __future__ import annotations

import hashlib
import os
import resource
from pathlib import Path

import pytest

from cozybackup_core import ArtifactCorruptError, ArtifactKey, ArtifactStore
from cozybackup_core._storage.store import Manifest

from support.stores import read_streams

KEY = ArtifactKey(namespace="tenant-a", kind="Postgres", application="db1", uid="u-1")


def _manifest(writer) -> Manifest:  # type: ignore[no-untyped-def]
    return Manifest(
        format_version=1,
        backup_uid="u-1",
        namespace="tenant-a",
        application={"kind": "Postgres", "name": "db1"},
        driver={"name": "t", "version": "1"},
        strategy_ref={"kind": "T", "name": "t"},
        parameters={},
        taken_at="2026-01-01T00:00:00Z",
        streams=tuple(writer.streams),
    )


def _write(store: ArtifactStore, streams: dict[str, bytes]) -> bytes:
    writer = store.writer(KEY)
    for name, data in streams.items():
        with writer.open(name) as out:
            for i in range(0, len(data), 1 << 20):
                out.write(data[i : i + (1 << 20)])
    return writer.commit(_manifest(writer))


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore.local(str(tmp_path / "bucket"))
    info = request.getfixturevalue("s3")
    return ArtifactStore.s3(
        endpoint=info.endpoint_url,
        bucket="cozy-backups",
        prefix=f"t/{tmp_path.name}",
        key=info.access_key,
        secret=info.secret_key,
    )


def test_round_trip_with_checksums(store: ArtifactStore) -> None:
    data = {"dump": os.urandom(3_000_000) + b"text" * 2_000_000, "globals": b"CREATE ROLE x;\n"}
    raw = _write(store, data)
    assert store.is_committed(KEY)
    assert read_streams(store, KEY) == data
    m = store.reader(KEY).manifest
    assert {s.name: s.sha256 for s in m.streams} == {
        k: hashlib.sha256(v).hexdigest() for k, v in data.items()
    }
    assert m.stream("dump").stored_bytes < m.stream("dump").size_bytes
    assert raw == store.reader(KEY).manifest_bytes


def test_uncommitted_artifact_is_not_readable(store: ArtifactStore) -> None:
    writer = store.writer(KEY)
    with writer.open("dump") as out:
        out.write(b"x" * 1000)
    assert not store.is_committed(KEY)
    with pytest.raises(ArtifactCorruptError, match="missing"):
        store.reader(KEY)
    store.delete(KEY)
    assert not store.exists(KEY)


def test_failed_stream_leaves_no_object(store: ArtifactStore) -> None:
    writer = store.writer(KEY)
    with pytest.raises(RuntimeError), writer.open("dump") as out:
        out.write(os.urandom(10_000_000))
        raise RuntimeError("dump tool died")
    assert writer.streams == []
    assert not store.fs.exists(store.stream_path(KEY, "dump"))


def test_corruption_is_detected(store: ArtifactStore) -> None:
    _write(store, {"dump": os.urandom(200_000)})
    path = store.stream_path(KEY, "dump")
    blob = bytearray(store.fs.cat_file(path))
    blob[len(blob) // 2] ^= 0x40
    store.fs.pipe_file(path, bytes(blob))
    with pytest.raises(ArtifactCorruptError):
        store.reader(KEY).verify()


def test_truncation_is_detected(store: ArtifactStore) -> None:
    _write(store, {"dump": os.urandom(200_000)})
    path = store.stream_path(KEY, "dump")
    store.fs.pipe_file(path, store.fs.cat_file(path)[:-100])
    with pytest.raises(ArtifactCorruptError):
        store.reader(KEY).verify()


def test_unsafe_keys_are_refused() -> None:
    for bad in ("..", "a/b", "", "x\x00"):
        with pytest.raises(ValueError):
            ArtifactKey(namespace="t", kind="K", application=bad, uid="u")


def test_memory_stays_flat_while_streaming(tmp_path: Path) -> None:
    """Writing 256 MiB through the pipeline must not grow the process by anything like it."""
    store = ArtifactStore.local(str(tmp_path / "bucket"))
    chunk = os.urandom(1 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    writer = store.writer(KEY)
    with writer.open("big") as out:
        for _ in range(256):
            out.write(chunk)
    writer.commit(_manifest(writer))
    store.reader(KEY).verify()
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 128, f"peak RSS grew by {grown_mib:.0f} MiB for a 256 MiB stream"
