"""``describe``, as kubectl describes: a summary a person reads first (human units and
ages), then the object's spec and status as they are stored, then its events."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from .._api.types import Backup, BackupJob, Plan, RestoreJob
from .._api.units import human_age, human_bytes
from .._api.wire import dump


def _when(t: dt.datetime | None, now: dt.datetime) -> str:
    if t is None:
        return "<none>"
    return f"{t.isoformat(timespec='seconds')} ({human_age(now - t)} ago)"


def _labels(labels: Mapping[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(labels.items())] or ["<none>"]


def _summary(obj: Any, now: dt.datetime) -> list[tuple[str, str]]:
    """The lines a person needs before the YAML: what, where, how it went."""
    out: list[tuple[str, str]] = []
    status = getattr(obj, "status", None)
    if isinstance(obj, (BackupJob, RestoreJob)):
        s = obj.status
        out.append(("Phase", s.phase or "Pending"))
        out.append(("Started", _when(s.started_at, now)))
        if s.started_at is not None:
            took = (s.completed_at or now) - s.started_at
            out.append(("Duration", human_age(took) + ("" if s.completed_at else " so far")))
        if isinstance(obj, BackupJob):
            out.append(("Application", str(obj.spec.application_ref)))
            out.append(("Class", obj.spec.backup_class_name))
            made = obj.status.backup_ref
            out.append(("Backup", made.name if made is not None else "<none>"))
        else:
            target = obj.spec.target_application_ref
            out.append(("Backup", obj.spec.backup_ref.name))
            out.append(("Target", str(target) if target is not None else "(in place)"))
        out.append(("Message", s.message or "<none>"))
    elif isinstance(obj, Backup):
        art = obj.status.artifact
        out.append(("Phase", obj.status.phase or "<none>"))
        out.append(("Application", str(obj.spec.application_ref)))
        out.append(("Strategy", f"{obj.spec.strategy_ref.kind}/{obj.spec.strategy_ref.name}"))
        out.append(("Taken", _when(obj.spec.taken_at, now)))
        out.append(("Size", human_bytes(art.size_bytes) if art is not None else "<none>"))
        for label, v in (("Verified", obj.status.last_verified), ("Drill", obj.status.last_drill)):
            if v is not None:
                lasted = (
                    f" in {human_age(dt.timedelta(seconds=v.duration_seconds))}"
                    if v.duration_seconds is not None
                    else ""
                )
                out.append((label, f"{v.result} {human_age(now - v.time)} ago{lasted}"))
        described = obj.status.underlying_resources or {}
        for w in described.get("warnings", []):
            out.append(("Warning", str(w.get("message", ""))))
    elif isinstance(obj, Plan):
        out.append(("Application", str(obj.spec.application_ref)))
        out.append(("Class", obj.spec.backup_class_name))
        out.append(("Schedule", obj.spec.schedule.cron or "<none>"))
        out.append(("Last run", _when(obj.status.last_schedule_time, now)))
        out.append(("Next run", _when(obj.status.next_schedule_time, now)))
    if status is not None:
        for c in getattr(status, "conditions", ()):
            out.append(("Condition", f"{c.type}={c.status} ({c.reason})"))
    return out


def _event_age(when: Any, now: dt.datetime) -> str:
    """Events keep their time as RFC 3339 text (or a datetime): its age, else the text."""
    if isinstance(when, str):
        try:
            when = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            return str(when)
    return human_age(now - when) if isinstance(when, dt.datetime) else ""


def describe(obj: Any, events: Sequence[Mapping[str, Any]], now: dt.datetime) -> str:
    meta = obj.metadata
    lines = [("Name", meta.name)]
    if meta.namespace:
        lines.append(("Namespace", meta.namespace))
    lines.append(("Kind", obj.kind))
    labels = _labels(meta.labels)
    lines.append(("Labels", labels[0]))
    lines += [("", more) for more in labels[1:]]
    lines.append(("Created", _when(meta.creation_timestamp, now)))
    lines += _summary(obj, now)
    width = max(len(k) for k, _ in lines) + 2
    text = "".join(f"{(k + ':') if k else '':<{width}}{v}\n" for k, v in lines)
    doc = dump(obj)
    for part in ("spec", "status"):
        if doc.get(part):
            body = yaml.safe_dump(doc[part], sort_keys=False)
            text += f"{part.capitalize()}:\n" + "".join(f"  {line}\n" for line in body.splitlines())
    if not events:
        return text + "Events:  <none>\n"
    rows = [("TYPE", "REASON", "AGE", "MESSAGE")]
    for e in events:
        age = _event_age(e.get("time"), now)
        rows.append(
            (str(e.get("type", "")), str(e.get("reason", "")), age, str(e.get("message", "")))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    text += "Events:\n"
    for r in rows:
        text += "  " + "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True))
        text += f"  {r[3]}\n"
    return text
