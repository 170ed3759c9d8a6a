"""Retention as a pure function: which Backups of one application to keep, and why.

Kept separate from the I/O (``_engine/prune.py``) so it can be property-tested against the policy.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import attrs

from .._api.types import Retention
from .._api.units import parse_duration


def _cutoff(now: dt.datetime, max_age: str) -> dt.datetime | None:
    """``now - maxAge``, or None (nothing is that old) where it would precede year 1: a
    class stored before ``maxAge`` was bounded must not stop retention for everyone."""
    try:
        return now - parse_duration(max_age)
    except OverflowError:
        return None


@attrs.frozen
class Candidate:
    name: str
    taken_at: dt.datetime
    pinned: bool = False


def _iso_week(t: dt.datetime) -> str:
    year, week, _ = t.isocalendar()
    return f"{year}-W{week:02d}"


PERIODS: tuple[tuple[str, Callable[[dt.datetime], str]], ...] = (
    ("keep_hourly", lambda t: t.strftime("%Y-%m-%d %H")),
    ("keep_daily", lambda t: t.strftime("%Y-%m-%d")),
    ("keep_weekly", _iso_week),
    ("keep_monthly", lambda t: t.strftime("%Y-%m")),
    ("keep_yearly", lambda t: t.strftime("%Y")),
)


def _camel(rule: str) -> str:
    head, *rest = rule.split("_")
    return head + "".join(r.title() for r in rest)


def decide(
    backups: Sequence[Candidate], policy: Retention, now: dt.datetime
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``(keep, delete)``: names kept with every reason, names deleted with the reason."""
    ordered = sorted(backups, key=lambda b: (b.taken_at, b.name), reverse=True)
    keep: dict[str, list[str]] = {}

    def mark(name: str, why: str) -> None:
        keep.setdefault(name, []).append(why)

    counted = [r for r in ("keep_last", *(p for p, _ in PERIODS)) if getattr(policy, r) is not None]
    cutoff = _cutoff(now, policy.max_age) if policy.max_age else None
    young = [b for b in ordered if cutoff is None or b.taken_at >= cutoff]
    if not counted:
        for b in young:
            mark(b.name, "within maxAge" if cutoff else "no count rule")
    if policy.keep_last:
        for b in young[: policy.keep_last]:
            mark(b.name, f"keepLast={policy.keep_last}")
    for rule, bucket_of in PERIODS:
        limit = getattr(policy, rule)
        if not limit:
            continue
        seen: set[str] = set()
        for b in young:
            bucket = bucket_of(b.taken_at.astimezone(dt.timezone.utc))
            if bucket not in seen:
                seen.add(bucket)
                if len(seen) > limit:
                    break
                mark(b.name, f"{_camel(rule)}={limit} ({bucket})")
    for i, b in enumerate(ordered):
        if i == 0:
            mark(b.name, "newest")
        if i < policy.min_count:
            mark(b.name, f"minCount={policy.min_count}")
        if b.pinned:
            mark(b.name, "pinned")
    delete = {}
    for b in ordered:
        if b.name not in keep:
            old = cutoff is not None and b.taken_at < cutoff
            delete[b.name] = (
                f"older than maxAge={policy.max_age}"
                if old
                else "not selected by "
                + ", ".join(f"{_camel(r)}={getattr(policy, r)}" for r in counted)
            )
    return keep, delete
