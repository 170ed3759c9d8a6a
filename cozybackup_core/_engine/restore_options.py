"""``RestoreJob.spec.options``: Cozystack's free-form restore knobs, read once.

The engine honours what every restore shares (``restoreTimeoutSeconds``,
``targetNamespace``, ``recoveryTime``); a driver declares the keys it understands
(``Driver.restore_options``) and gets them as written; any other key is reported to the
tenant (``UnknownRestoreOption``) and the restore goes on, as Cozystack's drivers do.
Values may be strings, as Cozystack's console writes them (``"3600"``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import attrs

from .._api.errors import OptionRefused, PointInTimeNotSupported, ValidationError
from .._drivers.contract import Driver

#: The keys the engine itself reads.
ENGINE_OPTIONS = frozenset({"restoreTimeoutSeconds", "targetNamespace", "recoveryTime"})


@attrs.frozen(kw_only=True)
class RestoreOptions:
    timeout_seconds: float | None = None
    recovery_time: dt.datetime | None = None
    #: The keys the driver declared, as written.
    for_driver: Mapping[str, Any] = attrs.field(factory=dict)
    #: Keys neither the engine nor the driver knows (reported, then ignored).
    unknown: tuple[str, ...] = ()


def read_options(
    options: Mapping[str, Any] | None, namespace: str, driver: Driver
) -> RestoreOptions:
    """Check the options before anything is read or touched; errors name the field."""
    options = options or {}
    target_ns = options.get("targetNamespace")
    if target_ns not in (None, "", namespace):
        raise OptionRefused(
            f"spec.options.targetNamespace: a restore goes into its own namespace "
            f"({namespace}); restoring into another namespace is not allowed"
        )
    recovery = _recovery_time(options.get("recoveryTime"))
    if recovery is not None and not driver.capabilities.point_in_time:
        raise PointInTimeNotSupported(
            f"spec.options.recoveryTime: backups made by the {driver.name} strategy restore "
            "to the moment they were taken; point-in-time recovery is not available for them"
        )
    known = ENGINE_OPTIONS | driver.restore_options
    return RestoreOptions(
        timeout_seconds=_seconds(options.get("restoreTimeoutSeconds")),
        recovery_time=recovery,
        for_driver={k: v for k, v in options.items() if k in driver.restore_options},
        unknown=tuple(sorted(str(k) for k in options if k not in known)),
    )


def _seconds(value: Any) -> float | None:
    if value is None or value == "":
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) == 0:
        raise ValidationError(
            [
                (
                    "spec.options.restoreTimeoutSeconds",
                    f"{text[:40]!r} is not a whole number of seconds > 0",
                )
            ]
        )
    return float(int(text))


def _recovery_time(value: Any) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):  # YAML reads an unquoted timestamp as one
        parsed = value
    else:
        try:
            parsed = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise ValidationError(
            [
                (
                    "spec.options.recoveryTime",
                    f"{str(value)[:40]!r} is not an RFC 3339 time with a zone",
                )
            ]
        )
    return parsed.astimezone(dt.timezone.utc)
