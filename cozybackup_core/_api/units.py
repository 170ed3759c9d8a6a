"""Human units for what a person reads (messages, tables); exact numbers stay in objects."""

from __future__ import annotations


def human_bytes(n: int) -> str:
    """``5429299`` -> ``5.2 MiB`` (binary units, one decimal; bytes as they are)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
