"""Test support for cozybackup drivers: a local platform and a conformance kit.

A driver's own tests subclass :class:`DriverConformance` and say how to create an
application of its kind, write data, checksum it and break it.  The kit then checks the
guarantees every driver must keep (see ``plugins-example/README.md``).
"""

from __future__ import annotations

from ._cli import cli_ok, run_cli
from ._conformance import AppHandle, DriverConformance
from ._platform import LocalPlatform, tenant_visible_text
from ._s3server import S3ServerInfo, seaweed_s3

__all__ = [
    "AppHandle",
    "DriverConformance",
    "LocalPlatform",
    "S3ServerInfo",
    "cli_ok",
    "run_cli",
    "seaweed_s3",
    "tenant_visible_text",
]
