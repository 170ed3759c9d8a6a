"""Manifests for tests, as an admin or a tenant would write them."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, Protocol

from .._api.types import APPS_GROUP, ApplicationRef
from .._api.wire import metadata_values
from ._app import AppHandle

#: The tenant namespace of the CLI tests.
CLI_NS = "tenant-user1"


def app_manifests(app: AppHandle, *, namespace: str = CLI_NS) -> list[dict[str, Any]]:
    """The admin's manifests declaring ``app``: its ``Application`` and, when it has
    credentials, the Secret ``<name>-credentials`` holding them."""
    spec: dict[str, Any] = {
        "apiGroup": app.ref.api_group,
        "kind": app.ref.kind,
        "connection": app.connection,
    }
    docs: list[dict[str, Any]] = []
    if app.credentials:
        secret = f"{app.ref.name}-credentials"
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": secret},
                "stringData": dict(app.credentials),
            }
        )
        spec["credentialsSecretRef"] = {"name": secret}
    docs.append(
        {
            "apiVersion": "local.backups.cozystack.io/v1alpha1",
            "kind": "Application",
            "metadata": {"name": app.ref.name, "namespace": namespace},
            "spec": spec,
        }
    )
    return docs


def _tenant_object(kind: str, name: str, spec: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "backups.cozystack.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _ref(app: ApplicationRef) -> dict[str, str]:
    return {"apiGroup": app.api_group, "kind": app.kind, "name": app.name}


def backup_job(
    name: str, app: ApplicationRef, *, backup_class: str = "cozy-default", namespace: str = CLI_NS
) -> dict[str, Any]:
    """A tenant's ``BackupJob`` of ``app``."""
    spec = {"applicationRef": _ref(app), "backupClassName": backup_class}
    return _tenant_object("BackupJob", name, spec, namespace)


def restore_job(
    name: str, backup: str, *, target: ApplicationRef | None = None, namespace: str = CLI_NS
) -> dict[str, Any]:
    """A tenant's ``RestoreJob`` of ``backup``: in place, or into ``target``."""
    spec: dict[str, Any] = {"backupRef": {"name": backup}}
    if target is not None:
        spec["targetApplicationRef"] = _ref(target)
    return _tenant_object("RestoreJob", name, spec, namespace)


def backup_class_yaml(
    name: str,
    app_kind: str,
    strategy_kind: str,
    strategy_name: str | None = None,
    *,
    api_group: str = APPS_GROUP,
    strategy_group: str | None = None,
    parameters: str | None = None,
    storage: str | None = None,
) -> str:
    """A BackupClass ``name`` with one strategy: applications ``api_group/app_kind`` go to
    the ``strategy_kind`` strategy ``strategy_name`` (default: ``name``), with
    ``parameters`` (flow YAML such as ``{mode: physical}``), stored in ``storage``."""
    group = f"apiGroup: {strategy_group}, " if strategy_group else ""
    return f"""
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {{name: {name}}}
spec:
{f"  storageRef: {{name: {storage}}}{chr(10)}" if storage else ""}  strategies:
  - application: {{apiGroup: {api_group}, kind: {app_kind}}}
    strategyRef: {{{group}kind: {strategy_kind}, name: {strategy_name or name}}}
{f"    parameters: {parameters}{chr(10)}" if parameters else ""}"""


def _deduplication(value: bool | None) -> str:
    """The location's ``deduplication`` line; None leaves the setting at its default (on)."""
    return "" if value is None else f"  deduplication: {str(value).lower()}\n"


def local_location_yaml(
    name: str = "cozy-backups", *, bucket: str | None = None, deduplication: bool | None = None
) -> str:
    """A Local StorageLocation ``name`` (by default the built-in one, overridden);
    ``deduplication=False`` keeps new backups in the stream format."""
    return f"""
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {{name: {name}}}
spec:
  bucket: {bucket or name}
{_deduplication(deduplication)}"""


class S3Endpoint(Protocol):
    endpoint_url: str
    access_key: str
    secret_key: str


def s3_location_yaml(
    s3: S3Endpoint,
    name: str,
    bucket: str,
    *,
    prefix: str,
    endpoint: str | None = None,
    keys: str = "s3-creds",
    server_side: bool | None = None,
    deduplication: bool | None = None,
) -> str:
    """An S3 StorageLocation ``name`` on the server ``s3`` (or at ``endpoint``, a proxy in
    front of it) and the Secret ``keys`` holding its keys; ``deduplication=False`` keeps
    new backups in the stream format."""
    access = "" if server_side is None else f"  serverSideAccess: {str(server_side).lower()}\n"
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: {keys}}}
stringData: {{accessKeyId: "{s3.access_key}", secretAccessKey: "{s3.secret_key}"}}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {{name: {name}}}
spec:
  provider: S3
  endpoint: "{endpoint or s3.endpoint_url}"
  bucket: {bucket}
  prefix: {prefix}
  credentialsSecretRef: {{name: {keys}}}
{access}{_deduplication(deduplication)}"""


def key_secret_yaml(name: str, raw: bytes) -> str:
    """A Secret ``name`` holding the encryption key ``raw`` (base64, under ``key``)."""
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: {name}}}
stringData: {{key: "{base64.b64encode(raw).decode()}"}}
"""


def typed_metadata(driver_metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A Backup's ``driverMetadata`` (strings, as Cozystack types it) read back exactly as
    the driver recorded it (see ``metadata_strings``)."""
    return metadata_values(driver_metadata)
