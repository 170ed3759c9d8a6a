"""An application under test, as the kit's tests and helpers pass it around."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import attrs

from .._api.types import APPS_GROUP, ApplicationRef


class Server(Protocol):
    """A test server (or cluster) that says how an application reaches it."""

    def connection(self) -> Mapping[str, Any]: ...
    def credentials(self) -> Mapping[str, str]: ...


@attrs.define
class AppHandle:
    """One application under test: its ref plus whatever the driver's tests need."""

    ref: ApplicationRef
    connection: dict[str, Any]
    credentials: dict[str, str] = attrs.field(factory=dict)
    extra: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def of(
        cls,
        server: Server,
        kind: str,
        name: str,
        *,
        api_group: str = APPS_GROUP,
        connection: Mapping[str, Any] | None = None,
    ) -> AppHandle:
        """The application ``name`` that ``server`` serves, with the server's connection
        (or ``connection``) and credentials; the server is kept as ``extra["server"]``."""
        return cls(
            ref=ApplicationRef(api_group=api_group, kind=kind, name=name),
            connection=dict(server.connection() if connection is None else connection),
            credentials=dict(server.credentials()),
            extra={"server": server},
        )

    def with_credentials(self, **changes: str) -> AppHandle:
        """The same application with some credentials replaced (a wrong password, say)."""
        return attrs.evolve(self, credentials={**self.credentials, **changes})
