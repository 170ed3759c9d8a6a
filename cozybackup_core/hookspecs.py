"""Hook specifications of cozybackup.

Plugins implement these with ``@cozybackup_core.hookimpl`` and are found through the
``cozybackup.drivers`` entry-point group (or registered in-process by a host).  Each
plugin's hooks are called in isolation: one that raises is reported as broken and the
others keep working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ._drivers.registry import DriverRegistry
    from ._storage.providers import StorageProviders

hookspec = pluggy.HookspecMarker("cozybackup")
hookimpl = pluggy.HookimplMarker("cozybackup")


@hookspec
def cozybackup_register_drivers(registry: DriverRegistry) -> None:
    """Register driver classes.

    :param registry: call ``registry.add(MyDriver)`` for each driver class the plugin
        provides.  A name or strategy kind already taken is an error, and the plugin is
        reported as broken.

    Called once when the plugin host loads, after every plugin is imported.
    """


@hookspec
def cozybackup_register_storage(providers: StorageProviders) -> None:
    """Register storage providers (backends for ``StorageLocation.spec.provider``).

    :param providers: call ``providers.add(StorageProvider(name=..., open=..., sensitive=...))``
        for each backend the plugin provides; ``open(spec, env)`` returns an
        ``ArtifactStore`` (``ArtifactStore(fsspec_filesystem, root)`` for anything fsspec
        speaks) and ``sensitive(spec, env)`` lists the values a tenant must never read.
        ``Local`` and ``S3`` are built in; a name already taken is an error and the plugin
        is reported as broken.

    Called once per plugin when the plugin host loads it, like
    :func:`cozybackup_register_drivers`; all or nothing per plugin.
    """


@hookspec
def cozybackup_job_stage(kind: str, namespace: str, name: str, stage: str) -> None:
    """Observe a job moving through its stages (metrics, notifications, fault injection).

    :param kind: ``"BackupJob"`` or ``"RestoreJob"``.
    :param namespace: the job's namespace.
    :param name: the job's name.
    :param stage: one of ``"started"``, ``"writing"``, ``"committed"``, ``"recorded"``,
        ``"verified"``, ``"restoring"``, ``"finished"``.

    Called synchronously by the engine at each transition.  Errors are logged and
    ignored: an observer never fails a job.
    """
