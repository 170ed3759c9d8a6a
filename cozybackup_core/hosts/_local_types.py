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

from .._api.fields import FieldInvalid, kind_field
from .._api.types import APPS_GROUP, ApplicationRef, ObjectMeta, SecretKeyRef, default_apps_group
from .._api.units import secret_text

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

    @data.validator
    def _data_is_base64(self, attribute: attrs.Attribute[Any], value: Mapping[str, str]) -> None:
        for key, text in value.items():
            try:
                base64.b64decode(text, validate=True)
            except (binascii.Error, TypeError):
                raise FieldInvalid(f"data.{key}", "is not valid base64") from None

    def values(self) -> dict[str, str]:
        """Every key's value; ``data`` holding bytes that are not UTF-8 (a raw key, as
        Kubernetes users write one) comes back losslessly (``surrogateescape``)."""
        out = {k: secret_text(base64.b64decode(v)) for k, v in self.data.items()}
        out.update(self.string_data)
        return out
