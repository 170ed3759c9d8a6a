"""``cozybackup status``: each protected application as a row, or as JSON (from
``_engine.standing``, as the metrics collector reads it)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from .._api.units import human_age, human_bytes, parse_duration
from .._engine.standing import AppStanding


def _ago(when: dt.datetime | None, now: dt.datetime) -> str:
    return f"{human_age(now - when)} ago" if when is not None else "never"


def objectives_word(a: AppStanding, now: dt.datetime) -> str:
    """``met``, or what is missed and by how much: ``RPO 30h > 26h``; ``-``: none declared."""
    found = a.objectives()
    if not found:
        return "-"
    missed = []
    for _plan, o in found:
        if o.rpo is not None:
            target = parse_duration(o.rpo.target)
            if o.rpo.since is None:
                missed.append(f"RPO: no good backup (target {o.rpo.target})")
            elif now - o.rpo.since > target:
                missed.append(f"RPO {human_age(now - o.rpo.since)} > {o.rpo.target}")
        if o.rto is not None and not o.rto.met:
            took = o.rto.measured_seconds
            if took is None:
                missed.append(f"RTO unproven (no passed drill; target {o.rto.target})")
            else:
                missed.append(f"RTO {human_age(dt.timedelta(seconds=took))} > {o.rto.target}")
    return "MISSED: " + "; ".join(missed) if missed else "met"


def standing_row(a: AppStanding, now: dt.datetime) -> dict[str, str]:
    drill = a.last_drill
    return {
        "NAMESPACE": a.namespace,
        "APPLICATION": f"{a.kind}/{a.name}",
        "BACKUPS": str(a.backups),
        "SIZE": human_bytes(a.size_bytes) if a.backups else "-",
        "LAST GOOD": _ago(a.last_good, now),
        "VERIFIED": _ago(a.last_verified, now),
        "DRILL": f"{drill.result} {_ago(drill.time, now)}" if drill is not None else "-",
        "OBJECTIVES": objectives_word(a, now),
    }


def standing_json(a: AppStanding, now: dt.datetime) -> dict[str, Any]:
    def iso(t: dt.datetime | None) -> str | None:
        return t.isoformat() if t is not None else None

    return {
        "namespace": a.namespace,
        "applicationRef": {"apiGroup": a.api_group, "kind": a.kind, "name": a.name},
        "backups": a.backups,
        "sizeBytes": a.size_bytes,
        "lastGood": iso(a.last_good),
        "lastVerified": iso(a.last_verified),
        "lastDrill": (
            {"result": a.last_drill.result, "time": iso(a.last_drill.time)}
            if a.last_drill is not None
            else None
        ),
        "plans": [p.metadata.name for p in a.plans],
        "objectivesMet": a.objectives_met(now),
        "objectives": objectives_word(a, now),
    }
