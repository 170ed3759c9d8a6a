"""Manifests the core's tests declare again and again."""

from __future__ import annotations

from cozybackup_core.testing import backup_class_yaml

from .drivers import FILES


def directory_class(
    name: str, strategy_kind: str, strategy_name: str | None = None, *, storage: str | None = None
) -> str:
    """A BackupClass sending ``apps.example.com/Directory`` applications to one strategy."""
    return backup_class_yaml(
        name, "Directory", strategy_kind, strategy_name, api_group=FILES.api_group, storage=storage
    )


#: The class binding ``Directory`` applications to the Files test driver.
FILES_CLASS = directory_class("files", "Files")
