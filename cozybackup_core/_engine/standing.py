"""Where each protected application stands: its Backups, checks, drills and, where its
Plan's class declares them, its objectives.  Read by ``cozybackup status`` and by the
metrics collector, from the objects as they are (nothing is written)."""

from __future__ import annotations

import datetime as dt

import attrs

from .._api.types import Backup, ObjectivesStatus, Plan, Verification
from .._api.units import parse_duration
from .objectives import good
from .port import Host

AppKey = tuple[str, str, str, str]  # namespace, apiGroup, kind, name


@attrs.frozen(kw_only=True)
class AppStanding:
    namespace: str
    api_group: str
    kind: str
    name: str
    #: Ready Backups kept, and the bytes they hold (before compression).
    backups: int = 0
    size_bytes: int = 0
    #: When the newest good Backup was taken (Ready, its last check did not fail).
    last_good: dt.datetime | None = None
    #: The newest passed check (checksums or drill) of any of its Backups.
    last_verified: dt.datetime | None = None
    #: The newest restore drill, passed or failed.
    last_drill: Verification | None = None
    #: The Plans protecting it, with their objectives' verdicts.
    plans: tuple[Plan, ...] = ()

    @property
    def key(self) -> AppKey:
        return (self.namespace, self.api_group, self.kind, self.name)

    def objectives(self) -> list[tuple[Plan, ObjectivesStatus]]:
        return [(p, p.status.objectives) for p in self.plans if p.status.objectives is not None]

    def objectives_met(self, now: dt.datetime) -> bool | None:
        """False when an objective is missed now, True when all are met, None: none."""
        found = [met for _, o in self.objectives() for met in verdicts(o, now)]
        return all(found) if found else None


def verdicts(o: ObjectivesStatus, now: dt.datetime) -> list[bool]:
    out = []
    if o.rpo is not None:
        # Recomputed from ``since``: the stored verdict may be a pass old.
        since = o.rpo.since
        out.append(since is not None and now - since <= parse_duration(o.rpo.target))
    if o.rto is not None:
        out.append(o.rto.met)
    return out


def standings(host: Host, namespace: str | None = None) -> list[AppStanding]:
    """Every application with a Backup or a Plan (in ``namespace``, or all), sorted."""
    backups: dict[AppKey, list[Backup]] = {}
    for b in host.objects.list(Backup, namespace):
        ref = b.spec.application_ref
        key = (b.metadata.namespace or "", ref.api_group, ref.kind, ref.name)
        backups.setdefault(key, []).append(b)
    plans: dict[AppKey, list[Plan]] = {}
    for p in host.objects.list(Plan, namespace):
        ref = p.spec.application_ref
        key = (p.metadata.namespace or "", ref.api_group, ref.kind, ref.name)
        plans.setdefault(key, []).append(p)
    out = []
    for key in sorted(backups.keys() | plans.keys()):
        mine = backups.get(key, [])
        ready = [b for b in mine if b.status.phase == "Ready"]
        checks = [
            v.time
            for b in mine
            for v in (b.status.last_verified, b.status.last_drill)
            if v is not None and v.result == "Passed"
        ]
        drills = [b.status.last_drill for b in mine if b.status.last_drill is not None]
        out.append(
            AppStanding(
                namespace=key[0],
                api_group=key[1],
                kind=key[2],
                name=key[3],
                backups=len(ready),
                size_bytes=sum(b.status.artifact.size_bytes for b in ready if b.status.artifact),
                last_good=max((b.spec.taken_at for b in mine if good(b)), default=None),
                last_verified=max(checks, default=None),
                last_drill=max(drills, key=lambda v: v.time) if drills else None,
                plans=tuple(sorted(plans.get(key, []), key=lambda p: p.metadata.name)),
            )
        )
    return out
