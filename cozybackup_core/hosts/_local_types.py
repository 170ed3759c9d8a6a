"""Admin-only kinds of the embedded host: how local applications and secrets are declared.

An ``Application`` tells the embedded host how to reach one tenant application (what the
Cozystack platform knows from its own resources on Kubernetes).  A ``Secret`` holds
credentials.  Neither is ever shown to a tenant.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from .._api.fields import kind_field
from .._api.types import APPS_GROUP, ApplicationRef, ObjectMeta, SecretKeyRef, default_apps_group

LOCAL_API_VERSION = "local.backups.cozystack.io/v1alpha1"


@attrs.frozen(kw_only=True)
class ApplicationSpec:
    api_group: str = attrs.field(default=APPS_GROUP, converter=default_apps_group)
    kind: str = kind_field()
    #: Driver-specific keys: host, port, path, database, ...
    connection: Mapping[str, Any] = attrs.field(factory=dict)
    credentials_secret_ref: SecretKeyRef | None = None


@attrs.frozen(kw_only=True)
class Application:
    api_version: ClassVar[str] = LOCAL_API_VERSION
    kind: ClassVar[str] = "Application"
    namespaced: ClassVar[bool] = True
    tenant_visible: ClassVar[bool] = False

    metadata: ObjectMeta
    spec: ApplicationSpec

    @property
    def ref(self) -> ApplicationRef:
        return ApplicationRef(
            api_group=self.spec.api_group, kind=self.spec.kind, name=self.metadata.name
        )


@attrs.frozen(kw_only=True)
class Secret:
    """Kubernetes ``v1`` Secret, platform-scoped here (no namespace)."""

    api_version: ClassVar[str] = "v1"
    kind: ClassVar[str] = "Secret"
    namespaced: ClassVar[bool] = False
    tenant_visible: ClassVar[bool] = False

    metadata: ObjectMeta
    type: str = "Opaque"
    data: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    string_data: Mapping[str, str] = attrs.field(factory=dict, repr=False)

    def values(self) -> dict[str, str]:
        out = {}
        for k, v in self.data.items():
            try:
                out[k] = base64.b64decode(v, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise ValueError(f"data.{k}: not valid base64 text") from None
        out.update(self.string_data)
        return out
