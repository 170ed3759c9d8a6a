"""Finished jobs expire (Kubernetes' ``ttlSecondsAfterFinished``), so tenant state stays
bounded: an hourly Plan makes almost 9,000 jobs a year per application, and every pass
reads them all.  The Backups they made stay; retention decides about those."""

from __future__ import annotations

import datetime as dt
import logging

from .._api.errors import CozyError
from .._api.types import BackupJob, RestoreJob
from .services import Services

log = logging.getLogger("cozybackup.engine")


def expire_finished(svc: Services) -> list[str]:
    """Delete every BackupJob and RestoreJob finished longer than the configured time ago;
    ``namespace/name`` of each.  One that cannot be deleted is left for the next pass."""
    ttl = svc.config.finished_job_ttl
    if ttl is None:
        return []
    cutoff = svc.host.now() - dt.timedelta(seconds=ttl)
    expired = []
    jobs: list[BackupJob | RestoreJob] = [
        *svc.host.objects.list(BackupJob),
        *svc.host.objects.list(RestoreJob),
    ]
    for job in jobs:
        done = job.status.completed_at
        if job.status.phase not in ("Succeeded", "Failed") or done is None or done > cutoff:
            continue
        where = f"{job.metadata.namespace}/{job.metadata.name}"
        try:
            svc.host.objects.delete(type(job), job.metadata.namespace, job.metadata.name)
        except CozyError as exc:
            log.warning("could not expire %s %s: %s", job.kind, where, exc)
            continue
        expired.append(where)
    return expired
