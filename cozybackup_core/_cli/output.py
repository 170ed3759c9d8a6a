"""How ``get`` prints objects, as kubectl does: a table (``-o wide``: more columns),
``-o name`` (``kind/name``), ``-o yaml|json`` (one object by name, else a ``v1`` List, which
``apply`` reads back) and ``-o jsonpath=TEMPLATE``.  People read human units and ages;
``yaml``/``json`` keep exact numbers and times."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import yaml

from .._api.types import Backup, BackupClass, BackupJob, Plan, RestoreJob
from .._api.units import human_age, human_bytes
from .._api.wire import dump
from ..hosts._local_types import Application

FORMATS = ("table", "wide", "name", "yaml", "json")


def output_format(text: str) -> str:
    """``-o``'s value, checked by argparse: one of ``FORMATS`` or ``jsonpath=...``."""
    import argparse

    if text in FORMATS or (text.startswith("jsonpath=") and len(text) > len("jsonpath=")):
        return text
    raise argparse.ArgumentTypeError(
        f"{text!r} is not an output format ({', '.join(FORMATS)}, jsonpath=TEMPLATE)"
    )


def render_objects(
    items: list[Any], fmt: str, *, single: bool, with_ns: bool, now: dt.datetime
) -> str:
    """The text ``get`` prints (``items`` is not empty unless ``fmt`` is a document form)."""
    if fmt == "name":
        return "".join(f"{i.kind.lower()}/{i.metadata.name}\n" for i in items)
    if fmt in ("yaml", "json") or fmt.startswith("jsonpath="):
        docs = [dump(i) for i in items]
        doc = docs[0] if single else {"apiVersion": "v1", "kind": "List", "items": docs}
        if fmt == "yaml":
            return str(yaml.safe_dump(doc, sort_keys=False))
        if fmt == "json":
            return json.dumps(doc, indent=2) + "\n"
        # Imported when asked for: its parser is a tenth of every command's start-up.
        from .jsonpath import render

        return render(fmt.removeprefix("jsonpath="), doc)
    return table([row(i, with_ns, now, wide=fmt == "wide") for i in items])


def table(rows: list[dict[str, str]]) -> str:
    """Columns padded to their widest cell, as kubectl prints them."""
    header = list(rows[0].keys())
    widths = [max(len(h), *(len(str(r[h])) for r in rows)) for h in header]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() + "\n"

    return line(header) + "".join(line([str(r[h]) for h in header]) for r in rows)


def _ago(when: dt.datetime | None, now: dt.datetime) -> str:
    return human_age(now - when) if when is not None else ""


def _took(start: dt.datetime | None, end: dt.datetime | None, now: dt.datetime) -> str:
    if start is None:
        return ""
    return human_age((end or now) - start)


def row(obj: Any, with_ns: bool, now: dt.datetime, *, wide: bool = False) -> dict[str, str]:
    """One table row; ``wide`` adds what a person needs to follow a reference."""
    out = {"NAMESPACE": obj.metadata.namespace or ""} if with_ns else {}
    out["NAME"] = obj.metadata.name
    if isinstance(obj, (BackupJob, RestoreJob)):
        out["PHASE"] = obj.status.phase or "Pending"
        out["DURATION"] = _took(obj.status.started_at, obj.status.completed_at, now)
        if wide and isinstance(obj, BackupJob):
            out["APPLICATION"] = str(obj.spec.application_ref)
            out["CLASS"] = obj.spec.backup_class_name
            out["BACKUP"] = obj.status.backup_ref.name if obj.status.backup_ref else ""
        elif wide and isinstance(obj, RestoreJob):
            out["BACKUP"] = obj.spec.backup_ref.name
            target = obj.spec.target_application_ref
            out["TARGET"] = str(target) if target is not None else "(in place)"
        message = obj.status.message or ""
        out["MESSAGE"] = message if wide else message[:90]
    elif isinstance(obj, Backup):
        art = obj.status.artifact
        out["PHASE"] = obj.status.phase or ""
        out["APPLICATION"] = str(obj.spec.application_ref)
        out["TAKEN"] = _ago(obj.spec.taken_at, now)
        out["SIZE"] = human_bytes(art.size_bytes) if art and art.size_bytes is not None else ""
        if wide:
            out["TAKEN AT"] = obj.spec.taken_at.isoformat(timespec="seconds")
            out["STRATEGY"] = f"{obj.spec.strategy_ref.kind}/{obj.spec.strategy_ref.name}"
            checked = obj.status.last_drill or obj.status.last_verified
            out["CHECKED"] = f"{checked.result} {_ago(checked.time, now)}" if checked else ""
    elif isinstance(obj, Plan):
        out["SCHEDULE"] = obj.spec.schedule.cron
        out["LAST"] = _ago(obj.status.last_schedule_time, now)
        if wide:
            out["APPLICATION"] = str(obj.spec.application_ref)
            out["CLASS"] = obj.spec.backup_class_name
            nxt = obj.status.next_schedule_time
            out["NEXT"] = nxt.isoformat(timespec="seconds") if nxt is not None else ""
            out["SUSPENDED"] = "true" if obj.spec.suspend else "false"
    elif isinstance(obj, BackupClass):
        out["KINDS"] = ",".join(s.application.kind for s in obj.spec.strategies)
        if wide:
            out["STRATEGIES"] = ",".join(
                f"{s.strategy_ref.kind}/{s.strategy_ref.name}" for s in obj.spec.strategies
            )
    elif isinstance(obj, Application):
        out["KIND"] = obj.spec.kind
    out["AGE"] = _ago(obj.metadata.creation_timestamp, now)
    return out
