"""Reading an artifact back whole, for the storage tests' comparisons."""

from __future__ import annotations

from cozybackup_core import ArtifactKey, ArtifactStore
from cozybackup_core._storage.store import ArtifactWriter, Manifest


def read_streams(store: ArtifactStore, key: ArtifactKey) -> dict[str, bytes]:
    """Every stream of the artifact at ``key``, by name (read through the store's checks)."""
    reader = store.reader(key)
    out = {}
    for name in reader.names():
        with reader.open(name) as f:
            out[name] = f.read()
    return out


def write_backup(store: ArtifactStore, key: ArtifactKey, streams: dict[str, bytes]) -> int:
    """Write and commit; returns the stored bytes the backup added (deduplicated)."""
    writer = store.writer(key)
    for name, data in streams.items():
        with writer.open(name) as out:
            for i in range(0, len(data), 3_000_001):  # odd pieces: chunking must not care
                out.write(data[i : i + 3_000_001])
    writer.commit(manifest_of(writer, key))
    return writer.added_bytes


def manifest_of(writer: ArtifactWriter, key: ArtifactKey) -> Manifest:
    return Manifest(
        format_version=1,
        backup_uid=key.uid,
        namespace=key.namespace,
        application={"kind": key.kind, "name": key.application},
        driver={"name": "t", "version": "1"},
        strategy_ref={"kind": "T", "name": "t"},
        parameters={},
        taken_at="2026-01-01T00:00:00Z",
        streams=tuple(writer.streams),
        encryption=writer.encryption,
    )
