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

    def __call__(self, text: str, keep: Iterable[str] = ()) -> str:
        """``text`` with every known value masked, except inside an occurrence of a
        ``keep`` string: names the tenant chose (its job's, its application's) are shown
        as written, so masking can never confirm a guessed bucket or password."""
        kept = _spans(text, [k for k in keep if k])
        masked: list[tuple[int, int]] = []
        # Longest first, so a URL is masked whole before its host part is.
        for secret in sorted(self._secrets, key=len, reverse=True):
            for start, end in _spans(text, [secret]):
                inside_name = any(a <= start and end <= b for a, b in kept)
                overlaps = any(start < b and a < end for a, b in masked)
                if not inside_name and not overlaps:
                    masked.append((start, end))
        for start, end in sorted(masked, reverse=True):
            text = text[:start] + MASK + text[end:]
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


def chosen_by_tenant(obj: Any) -> tuple[str, ...]:
    """The names a tenant wrote in one of its objects (its own, its namespace, the
    references in its spec): shown as written in messages about it."""
    spec = getattr(obj, "spec", None)
    refs = (
        getattr(spec, field, None)
        for field in ("application_ref", "target_application_ref", "backup_ref", "plan_ref")
    )
    names = (obj.metadata.name, obj.metadata.namespace, *(getattr(r, "name", None) for r in refs))
    return tuple(n for n in names if isinstance(n, str) and n)


def _spans(text: str, needles: Iterable[str]) -> list[tuple[int, int]]:
    out = []
    for needle in needles:
        at = text.find(needle)
        while at >= 0:
            out.append((at, at + len(needle)))
            at = text.find(needle, at + 1)
    return out


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
