"""Reading an artifact back whole, for the storage tests' comparisons."""

from __future__ import annotations

from cozybackup_core import ArtifactKey, ArtifactStore


def read_streams(store: ArtifactStore, key: ArtifactKey) -> dict[str, bytes]:
    """Every stream of the artifact at ``key``, by name (read through the store's checks)."""
    reader = store.reader(key)
    out = {}
    for name in reader.names():
        with reader.open(name) as f:
            out[name] = f.read()
    return out
