"""Storage accounting on the Backups: what each one alone holds, measured each prune pass.

``backups.cozystack.io/unique-bytes`` changes as other Backups come and go (deleting the
only other Backup that shared a chunk makes it this one's alone), so it is rewritten when
it differs; ``stored-bytes`` (what a Backup added when it was made) is written with it.
"""

from __future__ import annotations

import logging

import attrs

from .._api.errors import CozyError
from .._api.types import ANNOTATION_STORED_BYTES, ANNOTATION_UNIQUE_BYTES, Backup, artifact_uid
from .services import Services

log = logging.getLogger("cozybackup.usage")


def record_usage(svc: Services) -> int:
    """Bring every Backup's accounting annotations up to date; how many changed."""
    by_uid = {}
    for b in svc.host.objects.list(Backup):
        uid = artifact_uid(b.status.artifact.uri if b.status.artifact else None)
        if uid is not None and b.status.phase == "Ready":
            by_uid[uid] = b
    changed = 0
    for _, usage in svc.usages():
        for measured in usage.backups:
            backup = by_uid.get(measured.uid)
            if backup is None:
                continue
            notes = dict(backup.metadata.annotations)
            notes.setdefault(ANNOTATION_STORED_BYTES, str(measured.new_bytes))
            notes[ANNOTATION_UNIQUE_BYTES] = str(measured.unique_bytes)
            if notes == backup.metadata.annotations:
                continue
            try:
                svc.host.objects.set_metadata(
                    attrs.evolve(backup, metadata=attrs.evolve(backup.metadata, annotations=notes))
                )
                changed += 1
            except CozyError as exc:
                log.warning("accounting of Backup %s not recorded: %s", backup.metadata.name, exc)
    return changed
