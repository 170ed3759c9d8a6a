"""What drivers share beyond the contract: the standard errors and connection-key readers.

Every message is tenant-safe; what the operator needs (which key, which value was wrong)
goes in ``admin_detail``, which reaches the platform log only.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _installed_version
from typing import Any

from .._api.errors import DriverError, TransientError
from .._api.types import ApplicationRef


class ApplicationMisconfigured(DriverError):
    """The admin's declaration of the application is incomplete or wrong."""

    reason = "ApplicationMisconfigured"


class CredentialsRejected(DriverError):
    """The application refused the account or certificate the platform holds for it."""

    reason = "CredentialsRejected"


class MissingPrivilege(DriverError):
    """The platform's account lacks a privilege the backup or restore needs."""

    reason = "MissingPrivilege"


class DatabaseUnavailable(TransientError):
    """The application could not be reached or went away: worth retrying later."""

    reason = "DatabaseUnavailable"


def misconfigured(
    ref: ApplicationRef, detail: str, subject: str = "this application"
) -> ApplicationMisconfigured:
    """The standard tenant message about ``subject``, with ``detail`` for the operator."""
    return ApplicationMisconfigured(
        f"{subject}'s connection settings for backups are incomplete or wrong; "
        "ask the platform operator",
        admin_detail=f"{ref.kind} {ref.name}: {detail}",
    )


def connection_str(
    ref: ApplicationRef, conn: Mapping[str, Any], key: str, subject: str = "this application"
) -> str | None:
    """An optional one-line string connection key; anything else is misconfigured (the
    tenant's message names ``subject``, as :func:`misconfigured`)."""
    value = conn.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(c in value for c in "\x00\n\r"):
        raise misconfigured(ref, f"connection key {key!r} must be a non-empty string", subject)
    return value


def connection_argv(
    ref: ApplicationRef, conn: Mapping[str, Any], key: str, subject: str = "this application"
) -> tuple[str, ...] | None:
    """An optional command: a non-empty list of strings (an argv; no shell, and an empty
    string is an argument like any other)."""
    value = conn.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(isinstance(v, str) and "\x00" not in v for v in value)
    ):
        raise misconfigured(
            ref, f"connection key {key!r} must be a non-empty list of strings", subject
        )
    return tuple(value)


def distribution_version(distribution: str) -> str:
    """The installed version of a driver's package (``Driver.version``), or
    ``0.0.0+unknown`` when it runs from a source tree that is not installed."""
    try:
        return _installed_version(distribution)
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0.0.0+unknown"
