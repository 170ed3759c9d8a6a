"""Key rotation: re-wrap committed backups' data keys under the active key."""

from __future__ import annotations

from .._api.errors import CozyError
from .._api.types import ArtifactRecord
from .._storage.store import ArtifactKey
from .services import Services


def rekey(svc: Services) -> tuple[int, int, list[str]]:
    """Re-wrap every committed encrypted backup's data key under its location's active
    key, so older keys can be retired.  Only ``keys.json`` objects are rewritten.
    Returns (re-wrapped, already current, problems naming the backups left as they were)."""
    storages = svc.catalog().storages
    changed = current = 0
    problems: list[str] = []
    for record in svc.host.objects.list(ArtifactRecord):
        if record.status.phase != "Committed":
            continue
        loc = storages.get(record.spec.storage_ref.name)
        if loc is None or loc.spec.encryption is None:
            continue
        key = ArtifactKey.of(record)
        try:
            if svc.store_for(loc).rekey(key):
                changed += 1
            else:
                current += 1
        except CozyError as exc:
            problems.append(
                f"{record.spec.namespace}/{record.spec.backup_name}: {exc}"
                + (f" ({exc.admin_detail})" if exc.admin_detail else "")
            )
    return changed, current, problems
