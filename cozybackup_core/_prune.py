"""Applying retention: find what each policy releases and delete it crash-safely.

Order of a deletion: Backup -> phase Deleting (no restore can start from it), record ->
Deleting, artifact deleted, record deleted, Backup deleted.  A crash anywhere leaves a
Deleting Backup or record that the next pass (or ``recover()``) finishes; a Backup is never
left pointing at missing data while claiming to be Ready.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING

import attrs

from ._errors import CozyError
from ._retention import Candidate, decide
from ._storage import ArtifactKey
from ._types import (
    ANNOTATION_PINNED,
    LABEL_CLASS,
    URI_PREFIX,
    ArtifactRecord,
    Backup,
    Condition,
    Retention,
)

if TYPE_CHECKING:
    from ._classes import Catalog
    from ._engine import Engine

log = logging.getLogger("cozybackup.prune")


@attrs.frozen(kw_only=True)
class PruneAction:
    namespace: str
    backup: str
    application: str
    taken_at: str
    delete: bool
    reason: str


def _policy(catalog: Catalog, backup: Backup) -> Retention | None:
    class_name = backup.metadata.labels.get(LABEL_CLASS)
    bc = catalog.classes.get(class_name or "")
    if bc is None:
        return None
    for binding in bc.spec.strategies:
        if binding.application == backup.spec.application_ref.group_kind:
            return binding.retention or bc.spec.retention
    return bc.spec.retention


def plan(engine: Engine) -> list[PruneAction]:
    """What retention would do now, for every Backup under a policy."""
    groups: dict[tuple[str, str, str], list[Backup]] = defaultdict(list)
    for b in engine.host.objects.list(Backup):
        if b.status.phase == "Ready":
            ref = b.spec.application_ref
            key = (
                b.metadata.namespace or "",
                b.metadata.labels.get(LABEL_CLASS, ""),
                f"{ref.api_group}/{ref.kind}/{ref.name}",
            )
            groups[key].append(b)
    now = engine.host.now()
    catalog = engine.catalog()
    actions: list[PruneAction] = []
    for (ns, _cls, app), backups in sorted(groups.items()):
        policy = _policy(catalog, backups[0])
        if policy is None:
            continue
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


def prune(engine: Engine, dry_run: bool = False) -> list[PruneAction]:
    actions = plan(engine)
    if not dry_run:
        for a in actions:
            if a.delete:
                backup = engine.host.objects.get(Backup, a.namespace, a.backup)
                if backup is not None:
                    delete_backup(engine, backup, a.reason)
        finish_deletions(engine)
    return actions


def delete_backup(engine: Engine, backup: Backup, reason: str) -> None:
    now = engine.host.now()
    cond = Condition(
        type="Deleting",
        status="True",
        reason="RetentionPolicy",
        message=reason,
        last_transition_time=now,
    )
    backup = engine.host.objects.update_status(
        attrs.evolve(
            backup, status=attrs.evolve(backup.status, phase="Deleting", conditions=(cond,))
        )
    )
    engine.host.event(backup, "Normal", "Pruned", f"deleted by the retention policy: {reason}")
    _finish(engine, backup)


def finish_deletions(engine: Engine) -> list[str]:
    """Complete every deletion a crash interrupted."""
    done = []
    for backup in engine.host.objects.list(Backup):
        if backup.status.phase == "Deleting":
            _finish(engine, backup)
            done.append(
                f"Backup {backup.metadata.namespace}/{backup.metadata.name}: deletion finished"
            )
    for record in engine.host.objects.list(ArtifactRecord):
        if record.status.phase == "Deleting":
            _delete_record(engine, record)
            done.append(f"artifact {record.metadata.name}: deletion finished")
    return done


def _finish(engine: Engine, backup: Backup) -> None:
    art = backup.status.artifact
    if art is not None and art.uri.startswith(URI_PREFIX):
        record = engine.host.objects.get(ArtifactRecord, None, art.uri[len(URI_PREFIX) :])
        if record is not None:
            if record.status.phase != "Deleting":
                record = engine.host.objects.update_status(
                    attrs.evolve(record, status=attrs.evolve(record.status, phase="Deleting"))
                )
            _delete_record(engine, record)
    engine.host.objects.delete(Backup, backup.metadata.namespace, backup.metadata.name)


def _delete_record(engine: Engine, record: ArtifactRecord) -> None:
    spec = record.spec
    storage = engine.catalog().storages.get(spec.storage_ref.name)
    if storage is None:
        raise CozyError(
            f"artifact {record.metadata.name}: its storage location is gone; left for the operator"
        )
    key = ArtifactKey(
        namespace=spec.namespace,
        kind=spec.application_kind,
        application=spec.application_name,
        uid=record.metadata.name,
    )
    engine.store_for(storage).delete(key)
    engine.host.objects.delete(ArtifactRecord, None, record.metadata.name)
