"""Applying retention: find what each policy releases and delete it (``deletion.py``)."""

from __future__ import annotations

import datetime as dt
import logging

import attrs

from .._api.errors import CozyError
from .._api.types import ANNOTATION_PINNED, Backup, artifact_uid
from .._api.units import human_bytes
from .._catalog.catalog import Catalog
from .._policy.retention import Candidate, decide
from .._storage.repo.gc import Collected
from .deletion import delete_backup, finish_deletions
from .services import Services

log = logging.getLogger("cozybackup.prune")


@attrs.frozen(kw_only=True)
class PruneAction:
    namespace: str
    backup: str
    application: str
    taken_at: str
    delete: bool
    reason: str


def retention_actions(svc: Services) -> list[PruneAction]:
    """What retention would do now, for every Backup under a policy."""
    groups = svc.ready_backups_by_application()
    now = svc.host.now()
    catalog = svc.catalog()
    actions: list[PruneAction] = []
    for (ns, cls, app), backups in sorted(groups.items()):
        try:
            actions.extend(_group_actions(catalog, ns, app, backups, now))
        except Exception:
            log.exception(
                "retention of %s/%s (class %s) failed; its Backups are kept", ns, app, cls
            )
    return actions


def _group_actions(
    catalog: Catalog, ns: str, app: str, backups: list[Backup], now: dt.datetime
) -> list[PruneAction]:
    actions: list[PruneAction] = []
    policy = catalog.retention_for(backups[0])
    if policy is None:
        return actions
    cands = [
        Candidate(
            b.metadata.name,
            b.spec.taken_at,
            b.metadata.annotations.get(ANNOTATION_PINNED) == "true",
        )
        for b in backups
    ]
    keep, delete = decide(cands, policy, now)
    for b in sorted(backups, key=lambda b: b.spec.taken_at):
        name = b.metadata.name
        actions.append(
            PruneAction(
                namespace=ns,
                backup=name,
                application=app.split("/", 1)[1],
                taken_at=b.spec.taken_at.isoformat(),
                delete=name in delete,
                reason=delete.get(name) or ", ".join(keep.get(name, [])),
            )
        )
    return actions


@attrs.frozen(kw_only=True)
class Frees:
    """What retention's deletions would free in storage."""

    #: ``(namespace, backup)`` -> the stored bytes that Backup alone holds.
    alone: dict[tuple[str, str], int]
    #: All of them together (chunks shared only among them included).
    total: int


def frees(svc: Services, actions: list[PruneAction]) -> Frees:
    """Measure (``_storage/usage.py``) what deleting the Backups ``actions`` delete
    would free, from the committed manifests as they are now."""
    doomed = {(a.namespace, a.backup) for a in actions if a.delete}
    uid_of = {}
    for b in svc.host.objects.list(Backup):
        key = (b.metadata.namespace or "", b.metadata.name)
        uid = artifact_uid(b.status.artifact.uri if b.status.artifact else None)
        if key in doomed and uid is not None:
            uid_of[uid] = key
    alone: dict[tuple[str, str], int] = {}
    total = 0
    for _, usage in svc.usages():
        mine = {b.uid: b for b in usage.backups if b.uid in uid_of}
        for uid, measured in mine.items():
            alone[uid_of[uid]] = measured.unique_bytes
        total += usage.freed_by(mine)
    return Frees(alone=alone, total=total)


def prune(svc: Services, dry_run: bool = False) -> list[PruneAction]:
    actions = retention_actions(svc)
    if not dry_run:
        for a in actions:
            if a.delete:
                try:
                    backup = svc.host.objects.get(Backup, a.namespace, a.backup)
                    if backup is not None:
                        delete_backup(svc, backup, a.reason)
                except Exception:
                    log.exception("could not delete Backup %s/%s", a.namespace, a.backup)
        for note in finish_deletions(svc):
            if "not finished" in note or "failed" in note:
                log.warning("%s", note)
    return actions


def collect_garbage(svc: Services) -> dict[str, Collected]:
    """Collect the chunks no committed backup references, in every deduplicating
    repository of every location (``_storage/repo/gc.py``); run after the deletions, so
    what they released goes in the same pass.  By ``<location>/<namespace>/<plain|sealed>``."""
    out: dict[str, Collected] = {}
    for name, loc in svc.locations_in_use().items():
        try:
            done = svc.store_for(loc).collect_garbage()
        except CozyError as exc:
            log.warning("storage %s not collected: %s (%s)", name, exc, exc.admin_detail)
            continue
        for repo, what in done.items():
            out[f"{name}/{repo}"] = what
            if what.deleted_packs or what.rewritten_packs:
                log.info(
                    "collected %s/%s: %d pack(s) deleted, %d rewritten, %s freed",
                    name,
                    repo,
                    what.deleted_packs,
                    what.rewritten_packs,
                    human_bytes(what.freed_bytes),
                )
            if what.waiting:
                log.info("collection of %s/%s waits for %d backup(s)", name, repo, what.waiting)
    return out
