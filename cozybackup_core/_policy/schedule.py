"""Cron arithmetic, kept pure so it can be property-tested: which slots are due.

A *slot* is an instant the cron expression names.  Given the last slot already handled
(``base``) and ``now``, every slot in ``(base, now]`` is either run (the latest one, once)
or reported as missed: none is dropped silently and none is run twice.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Iterator

import attrs
from croniter import CroniterError, croniter

from .._api.errors import ValidationError
from .._api.types import Schedule

UTC = dt.timezone.utc
DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_TZ_PREFIX = re.compile(r"^\s*(?:CRON_TZ|TZ)=(\S+)\s+(.*)$")
#: Counting missed slots stops here (an every-minute Plan down for months); the count
#: recorded is then a lower bound, and the message says so.
MAX_SLOTS = 100_000


#: Each cron field's name and bounds; month and weekday names stand for their numbers.
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
_NAMES = {
    **{
        m: i + 1
        for i, m in enumerate(
            ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
        )
    },
    **{d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}


def _odd_field(fields: list[str]) -> str | None:
    """What croniter accepts but a person did not mean: a reversed range (``1-0`` runs
    every minute) or a step longer than the field (``*/99`` runs once)."""
    for text, (what, low, high) in zip(fields, _FIELDS, strict=True):
        for item in text.lower().split(","):
            span, _, step = item.partition("/")
            if step.isdigit() and not 1 <= int(step) <= high - low + 1:
                return f"the {what} step {step[:12]} is not between 1 and {high - low + 1}"
            first, dash, last = span.partition("-")
            ends = [_NAMES.get(e, int(e) if e.isdigit() else None) for e in (first, last)]
            if dash and None not in ends and ends[0] > ends[1]:  # type: ignore[operator]
                return f"the {what} range {span} is reversed"
    return None


@attrs.frozen
class CronSpec:
    expr: str
    zone: dt.tzinfo

    def next_after(self, t: dt.datetime) -> dt.datetime:
        return next(self.slots_after(t))

    def slots_after(self, t: dt.datetime) -> Iterator[dt.datetime]:
        """Successive slots strictly after ``t`` (one parsed iterator: cheap per slot)."""
        it = croniter(self.expr, t.astimezone(self.zone))
        while True:
            yield it.get_next(dt.datetime).astimezone(UTC)


def parse(schedule: Schedule) -> CronSpec:
    """Validate a schedule; errors name ``spec.schedule.cron`` / ``spec.schedule.timeZone``."""
    expr = schedule.cron.strip()
    zone_name = schedule.time_zone
    m = _TZ_PREFIX.match(expr)
    if m:
        if zone_name and zone_name != m.group(1):
            raise ValidationError(
                [
                    (
                        "spec.schedule.timeZone",
                        f"{zone_name!r} contradicts CRON_TZ={m.group(1)} in spec.schedule.cron",
                    )
                ]
            )
        zone_name, expr = m.group(1), m.group(2).strip()
    fields = expr.split()
    if expr.startswith("@"):
        if expr not in DESCRIPTORS:
            raise ValidationError(
                [("spec.schedule.cron", f"{expr[:40]!r} is not one of {', '.join(DESCRIPTORS)}")]
            )
    elif len(fields) != 5 or not croniter.is_valid(expr):
        raise ValidationError(
            [
                (
                    "spec.schedule.cron",
                    f'{schedule.cron[:80]!r} is not a valid cron expression (5 fields, e.g. "0 2 * * *", or @daily)',
                )
            ]
        )
    odd = None if expr.startswith("@") else _odd_field(fields)
    if odd:
        raise ValidationError([("spec.schedule.cron", f"{schedule.cron[:80]!r}: {odd}")])
    zone: dt.tzinfo = UTC
    if zone_name:
        try:
            zone = zoneinfo.ZoneInfo(zone_name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            field = "spec.schedule.timeZone" if schedule.time_zone else "spec.schedule.cron"
            raise ValidationError(
                [(field, f"{zone_name[:64]!r} is not a known time zone")]
            ) from None
    spec = CronSpec(expr, zone)
    try:  # a cron naming a day that never comes (30 February) would fail every pass
        spec.next_after(dt.datetime.now(UTC))
    except (CroniterError, ValueError, OverflowError, StopIteration):
        raise ValidationError(
            [("spec.schedule.cron", f"{schedule.cron[:80]!r} never fires (no such date)")]
        ) from None
    return spec


@attrs.frozen(kw_only=True)
class Decision:
    #: The slot to create a job for now, if any (always the latest due one).
    run: dt.datetime | None
    #: How many due slots produce no job (older ones collapsed into ``run``, or past the
    #: starting deadline), and the latest of them.
    missed: int
    last_missed: dt.datetime | None
    #: The latest slot <= now: the new ``lastScheduleTime`` (unchanged if nothing was due).
    last_slot: dt.datetime | None
    next_slot: dt.datetime
    capped: bool = False


def decide(
    spec: CronSpec, base: dt.datetime, now: dt.datetime, starting_deadline: int | None = None
) -> Decision:
    """Slots in ``(base, now]``: the latest is run (unless past its deadline), the rest missed."""
    due: list[dt.datetime] = []
    count = 0
    capped = False
    for t in spec.slots_after(base):
        if t > now:
            next_slot = t
            break
        count += 1
        due = [due[-1], t] if due else [t]  # only the last two are needed
        if count >= MAX_SLOTS:
            capped = True
            next_slot = spec.next_after(now)
            last = (
                croniter(spec.expr, now.astimezone(spec.zone)).get_prev(dt.datetime).astimezone(UTC)
            )
            due = [due[-1], last] if last > due[-1] else due
            break
    if not due:
        return Decision(run=None, missed=0, last_missed=None, last_slot=None, next_slot=next_slot)
    latest = due[-1]
    late = starting_deadline is not None and (now - latest).total_seconds() > starting_deadline
    if late:
        return Decision(
            run=None,
            missed=count,
            last_missed=latest,
            last_slot=latest,
            next_slot=next_slot,
            capped=capped,
        )
    earlier = due[-2] if len(due) > 1 else None
    return Decision(
        run=latest,
        missed=count - 1,
        last_missed=earlier,
        last_slot=latest,
        next_slot=next_slot,
        capped=capped,
    )
