"""The index stream both modes write last, and what the manifest records with it."""

from __future__ import annotations

import json
from typing import Any

from cozybackup_core import BackupContext

from ._client import Client


def write_index(
    ctx: BackupContext, client: Client, stream: str, index: dict[str, Any], **metadata: Any
) -> None:
    """``index`` as JSON in ``stream``; the manifest gets the index's mode and format, the
    server's version and ``metadata``, which the Backup's ``underlyingResources`` shows
    with the mode and version."""
    with ctx.artifact.open(stream) as out:
        out.write(json.dumps(index, indent=1, ensure_ascii=False).encode())
    ctx.metadata.update(
        {"mode": index["mode"], "format": index["format"], "serverVersion": client.version}
    )
    ctx.metadata.update(metadata)
    ctx.resources.update({"mode": index["mode"], "serverVersion": client.version, **metadata})
    ctx.tool_versions["clickhouse"] = client.version
