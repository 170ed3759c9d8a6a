"""Cozystack's own CRDs as a test oracle: what the engine writes must be valid under them.

They are reference material from outside the project (``../shared/cozystack-crds`` beside
the clone, or ``$COZYBACKUP_SHARED/cozystack-crds``), never copied into it; where they are
absent, checks that need them skip with one line naming what is missing.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import yaml

from .._api.types import Backup, BackupJob, Plan, RestoreJob
from .._api.wire import dump

#: The skip reason of a check that needs Cozystack's CRDs.
MISSING_CRDS = "needs ../shared/cozystack-crds (Cozystack's CRDs)"


def shared_reference(name: str) -> Path | None:
    """The directory ``shared/<name>`` beside the clone (looked for above the working
    directory and above this package), or under ``$COZYBACKUP_SHARED``; None if absent."""
    if env := os.environ.get("COZYBACKUP_SHARED"):
        given = Path(env) / name
        return given if given.is_dir() else None
    for start in (Path.cwd(), Path(__file__).resolve()):
        for parent in (start, *start.parents):
            candidate = parent / "shared" / name
            if candidate.is_dir():
                return candidate
    return None


@functools.cache
def cozystack_schemas() -> dict[str, dict[str, Any]] | None:
    """Kind → openAPIV3Schema of Cozystack's CRDs, or None where they are absent."""
    crds = shared_reference("cozystack-crds")
    if crds is None:
        return None
    schemas: dict[str, dict[str, Any]] = {}
    for path in sorted(crds.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        schemas[crd["spec"]["names"]["kind"]] = crd["spec"]["versions"][0]["schema"][
            "openAPIV3Schema"
        ]
    return schemas


def invalid_under_cozystack(objects: Any) -> list[str]:
    """Every tenant object in ``objects`` (a host's object store) that Cozystack's CRDs
    would refuse, with why; empty when all are valid (or the CRDs are absent)."""
    import jsonschema  # type: ignore[import-untyped, import-not-found, unused-ignore]

    schemas = cozystack_schemas()
    if schemas is None:
        return []
    problems = []
    for cls in (BackupJob, RestoreJob, Backup, Plan):
        for obj in objects.list(cls):
            doc = dump(obj)
            for error in jsonschema.Draft7Validator(schemas[cls.kind]).iter_errors(doc):
                where = ".".join(str(p) for p in error.absolute_path)
                problems.append(f"{cls.kind} {obj.metadata.name}: {where}: {error.message}")
    return problems
