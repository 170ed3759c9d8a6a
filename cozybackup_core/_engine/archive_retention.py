"""Retention of continuous archives (WAL): what the Backups retention keeps decides what
of each application's archive is kept.

For every application with Ready Backups by a driver that restores to a moment, the
driver is shown the Backups that stay (those retention does not delete this time) and the
archive's segments, and names the segments nothing needs any more
(``Driver.archive_expired``).  ``prune --dry-run`` reports the same without deleting.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import attrs

from .._api.types import Backup
from .._storage.archive import SegmentArchive
from .prune import PruneAction
from .services import Services

log = logging.getLogger("cozybackup.prune")


@attrs.frozen(kw_only=True)
class ArchiveAction:
    namespace: str
    application: str
    #: Segments deleted (or, in a dry run, that would be).
    expired: tuple[str, ...]
    kept: int
    reason: str


def prune_archives(
    svc: Services, actions: Sequence[PruneAction], dry_run: bool = False
) -> list[ArchiveAction]:
    """Expire what no kept Backup needs in each archive; ``actions`` are the Backups'
    retention decisions of this pass (their deletions count as done)."""
    deleted = {(a.namespace, a.backup) for a in actions if a.delete}
    out: list[ArchiveAction] = []
    for (ns, _, app), backups in sorted(svc.ready_backups_by_application().items()):
        kept = [b for b in backups if (ns, b.metadata.name) not in deleted]
        newest = max(backups, key=lambda b: b.spec.taken_at)
        try:
            action = _one(svc, ns, app, newest, kept, dry_run)
        except Exception:
            log.exception("retention of the archive of %s/%s failed; it is kept", ns, app)
            continue
        if action is not None:
            out.append(action)
    return out


def _one(
    svc: Services,
    ns: str,
    app: str,
    newest: Backup,
    kept: list[Backup],
    dry_run: bool,
) -> ArchiveAction | None:
    driver = svc.plugins.registry.for_strategy(
        newest.spec.strategy_ref.kind, newest.spec.strategy_ref.api_group
    )
    if not driver.capabilities.point_in_time:
        return None
    store, key, _ = svc.artifact_of(newest)
    archive = SegmentArchive.of(store, key, driver.name)
    names = archive.names()
    if not names:
        return None
    reader = svc.open_backup(newest)
    params = svc.restore_parameters(newest, driver, reader.manifest)
    kept_meta = [svc.open_backup(b).manifest.driver_metadata for b in kept]
    expired, reason = driver.archive_expired(params, kept_meta, names, svc.host.now())
    expired = [n for n in expired if n in set(names)]
    if not dry_run:
        for name in expired:
            archive.delete(name)
    return ArchiveAction(
        namespace=ns,
        application=app.split("/", 1)[1],
        expired=tuple(expired),
        kept=len(names) - len(expired),
        reason=reason,
    )
