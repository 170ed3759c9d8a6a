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


def _drill(a: AppStanding, now: dt.datetime) -> str:
    """``Passed 3h ago in 1m``: the newest drill, and how long its restore took."""
    drill = a.last_drill
    if drill is None:
        return "-"
    took = drill.duration_seconds
    return f"{drill.result} {_ago(drill.time, now)}" + (
        f" in {human_age(dt.timedelta(seconds=took))}" if took is not None else ""
    )


def _measured(a: AppStanding, now: dt.datetime) -> tuple[str, str]:
    """``(RPO, RTO)`` as measured/target (``4h/26h``), the first Plan's that declares them."""
    rpo = rto = "-"
    for _plan, o in a.objectives():
        if o.rpo is not None and rpo == "-":
            age = human_age(now - o.rpo.since) if o.rpo.since is not None else "none"
            rpo = f"{age}/{o.rpo.target}"
        if o.rto is not None and rto == "-":
            took = o.rto.measured_seconds
            shown = human_age(dt.timedelta(seconds=took)) if took is not None else "unproven"
            rto = f"{shown}/{o.rto.target}"
    return rpo, rto


def standing_row(a: AppStanding, now: dt.datetime) -> dict[str, str]:
    rpo, rto = _measured(a, now)
    return {
        "NAMESPACE": a.namespace,
        "APPLICATION": f"{a.kind}/{a.name}",
        "BACKUPS": str(a.backups),
        "SIZE": human_bytes(a.size_bytes) if a.backups else "-",
        "LAST GOOD": _ago(a.last_good, now),
        "VERIFIED": _ago(a.last_verified, now),
        "DRILL": _drill(a, now),
        "RPO": rpo,
        "RTO": rto,
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
