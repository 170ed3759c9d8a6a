"""Test support for cozybackup drivers: a local platform and a conformance kit.

A driver's own tests subclass :class:`DriverConformance` and say how to create an
application of its kind, write data, checksum it and break it.  The kit then checks the
guarantees every driver must keep (see ``plugins-example/README.md``).
"""

from __future__ import annotations

from ._app import AppHandle
from ._cli import TENANT_KINDS, Cli, cli_ok, cli_round_trip, run_cli
from ._conformance import DriverConformance
from ._cozystack import MISSING_CRDS, cozystack_schemas, invalid_under_cozystack, shared_reference
from ._manifests import (
    CLI_NS,
    app_manifests,
    backup_class_yaml,
    backup_job,
    key_secret_yaml,
    local_location_yaml,
    restore_job,
    s3_location_yaml,
    typed_metadata,
)
from ._parameters import driver_class_yaml, refused_parameters, validate_parameters
from ._platform import LocalPlatform, tenant_visible_text
from ._s3server import S3ServerInfo, seaweed_s3

__all__ = [
    "CLI_NS",
    "MISSING_CRDS",
    "TENANT_KINDS",
    "AppHandle",
    "Cli",
    "DriverConformance",
    "LocalPlatform",
    "S3ServerInfo",
    "app_manifests",
    "backup_class_yaml",
    "backup_job",
    "cli_ok",
    "cli_round_trip",
    "cozystack_schemas",
    "driver_class_yaml",
    "invalid_under_cozystack",
    "key_secret_yaml",
    "local_location_yaml",
    "refused_parameters",
    "restore_job",
    "run_cli",
    "s3_location_yaml",
    "seaweed_s3",
    "shared_reference",
    "tenant_visible_text",
    "typed_metadata",
    "validate_parameters",
]
