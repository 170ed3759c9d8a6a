"""Manifests the core's tests declare again and again."""

from __future__ import annotations

from pathlib import Path

from cozybackup_core import ApplicationRef
from cozybackup_core.testing import LocalPlatform, S3ServerInfo, backup_class_yaml

from .drivers import FILES


def directory_class(
    name: str, strategy_kind: str, strategy_name: str | None = None, *, storage: str | None = None
) -> str:
    """A BackupClass sending ``apps.example.com/Directory`` applications to one strategy."""
    return backup_class_yaml(
        name, "Directory", strategy_kind, strategy_name, api_group=FILES.api_group, storage=storage
    )


#: The class binding ``Directory`` applications to the Files test driver.
FILES_CLASS = directory_class("files", "Files")


def directory_app(
    plat: LocalPlatform, data: Path, content: bytes, namespace: str = "tenant-a", name: str = "app1"
) -> ApplicationRef:
    """A Directory application ``name`` whose data is ``data/x.bin`` holding ``content``."""
    data.mkdir()
    (data / "x.bin").write_bytes(content)
    return plat.declare_app(
        namespace, name, "Directory", {"path": str(data)}, api_group=FILES.api_group
    )


def hidden_s3_platform(s3: S3ServerInfo) -> str:
    """A StorageLocation ``platform-s3`` on ``s3`` (bucket, prefix and the Secret ``s3-creds``
    named so a tenant-leak check can look for them) and the class ``files`` stored there."""
    return f"""
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {{name: platform-s3}}
spec:
  provider: S3
  endpoint: "{s3.endpoint_url}"
  bucket: hidden-bucket-name
  prefix: hidden/prefix-q
  credentialsSecretRef: {{name: s3-creds}}
---
""" + directory_class("files", "Files", storage="platform-s3")
