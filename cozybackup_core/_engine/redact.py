"""Scrubbing of tenant-visible text: defence in depth behind tenant-safe messages."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MASK = "[redacted]"


class Redactor:
    """Replaces every known sensitive string (credentials, endpoints, buckets, paths)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *values: object) -> None:
        for value in values:
            if isinstance(value, str) and len(value) >= 3:
                self._secrets.add(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                continue  # ports alone are not worth masking every digit run for

    def __call__(self, text: str) -> str:
        # Longest first, so a URL is masked whole before its host part is.
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def scrub(self, value: Any) -> Any:
        """Redact every string inside nested dicts/lists (driver metadata)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(str(k)): self.scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub(v) for v in value]
        return value


#: Credential keys that name an account rather than prove it: not masked, so a database
#: or role that happens to share the name (``postgres``, ``root``) stays readable.
_ACCOUNT_KEYS = {"user", "username", "login", "account"}
#: Connection keys that say where something is.
_LOCATION_KEYS = {
    "host",
    "hostname",
    "endpoint",
    "url",
    "uri",
    "path",
    "datadir",
    "socket",
    "address",
    "server",
    "dsn",
    "bucket",
}


def sensitive_values(connection: Mapping[str, object], credentials: Mapping[str, str]) -> list[str]:
    """What of an application's settings must never reach a tenant: every credential but
    the account name, and every connection value that locates something (hosts, paths,
    URLs) - not plain settings such as ``sslmode: require``."""
    out = [v for k, v in credentials.items() if k.lower() not in _ACCOUNT_KEYS]
    for key, value in connection.items():
        if isinstance(value, str) and (
            key.lower() in _LOCATION_KEYS or any(c in value for c in "/:@") or value.count(".") >= 1
        ):
            out.append(value)
    return out
