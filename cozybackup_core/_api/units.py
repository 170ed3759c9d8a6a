"""Human units for what a person reads (messages, tables); exact numbers stay in objects."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: A duration as people write one in a policy or a flag: ``90d``, ``12h``, ``2w3d``.
DURATION_PATTERN = r"^([0-9]{1,6}[smhdw])+$"
#: The longest duration a policy may name (``maxAge``, drill ``every``): a century.
#: Longer ones mean "forever", which is no ``maxAge`` at all, and would overflow dates.
MAX_DURATION = dt.timedelta(days=36525)


def human_age(age: dt.timedelta) -> str:
    """kubectl's ages: ``45s``, ``12m``, ``5h``, ``3d`` (the largest whole unit)."""
    seconds = max(0, int(age.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_duration(text: str) -> dt.timedelta:
    """``2w3d`` -> 17 days (units s, m, h, d, w, summed)."""
    return dt.timedelta(
        seconds=sum(int(n) * _UNITS[u] for n, u in re.findall(r"(\d+)([smhdw])", text))
    )


def human_bytes(n: int) -> str:
    """``5429299`` -> ``5.2 MiB`` (binary units, one decimal; bytes as they are)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def secret_text(raw: bytes) -> str:
    """A Secret value as text: UTF-8, with bytes that are not (a raw key) kept losslessly
    as surrogates, so ``secret_text(b).encode("utf-8", "surrogateescape") == b``."""
    return raw.decode("utf-8", "surrogateescape")


def short_list(names: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` names and how many more: ``a, b, c and 7 more``, so that a
    message naming what a long list holds stays one readable line."""
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
