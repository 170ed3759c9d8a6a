"""The tool that turns a snapshot into a member's data directory.

``etcdutl snapshot restore`` from etcd 3.5 on; etcd 3.4 has no ``etcdutl`` and restores
with ``etcdctl snapshot restore`` (API v3).  The admin picks the etcd release per
application with the ``binDir`` connection key (default: ``PATH``), so a worker can
serve clusters of several versions.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import attrs

from cozybackup_core import DriverError

_VERSION = re.compile(r"(?:etcdutl|etcdctl) version:\s*v?(\d+)\.(\d+)\.(\d+)")


@attrs.frozen(kw_only=True)
class RestoreTool:
    """``argv`` up to the snapshot file, the environment it needs, and its version."""

    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    version: tuple[int, int, int]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


def _which(name: str, bin_dir: Path | None) -> str | None:
    if bin_dir is None:
        return shutil.which(name)
    path = bin_dir / name
    return str(path) if path.is_file() and os.access(path, os.X_OK) else None


def _version(path: str, env: dict[str, str]) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run(
            [path, "version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, **env},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _VERSION.search(out.stdout + out.stderr)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def find_restore_tool(bin_dir: Path | None) -> RestoreTool:
    """``etcdutl`` if present (3.5+), else ``etcdctl`` of a release that still restores."""
    where = str(bin_dir) if bin_dir else f"PATH={os.environ.get('PATH', '')}"
    utl = _which("etcdutl", bin_dir)
    if utl is not None:
        version = _version(utl, {})
        if version is not None:
            return RestoreTool(
                name="etcdutl", argv=(utl, "snapshot", "restore"), env={}, version=version
            )
    ctl = _which("etcdctl", bin_dir)
    env = {"ETCDCTL_API": "3"}
    version = _version(ctl, env) if ctl is not None else None
    if ctl is not None and version is not None and version[:2] < (3, 6):
        return RestoreTool(
            name="etcdctl", argv=(ctl, "snapshot", "restore"), env=env, version=version
        )
    raise DriverError(
        "etcdutl (etcd 3.5 or later) or etcdctl (etcd 3.4) is not installed on the backup "
        "worker; ask the platform operator",
        admin_detail=f"no working etcdutl, nor etcdctl < 3.6, in {where} "
        f"(etcdutl={utl!r}, etcdctl={ctl!r})",
    )


def parse_version(text: str) -> tuple[int, int] | None:
    m = re.match(r"v?(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def check_compatible(tool: RestoreTool, snapshot_version: str) -> None:
    """etcd upgrades one minor release at a time and never downgrades: the tool must
    be of the snapshot's release or the next one."""
    taken = parse_version(snapshot_version)
    if taken is None:
        return
    have = tool.version[:2]
    if have[0] != taken[0] or not 0 <= have[1] - taken[1] <= 1:
        raise DriverError(
            f"the backup was taken from etcd {taken[0]}.{taken[1]} and this cluster's "
            f"restore tool is etcd {have[0]}.{have[1]}; etcd restores a snapshot into the "
            "same release or the next minor one only. Ask the platform operator",
            admin_detail=f"{tool.name} {tool.version_text} at {tool.argv[0]}, snapshot from "
            f"etcd {snapshot_version}",
        )
