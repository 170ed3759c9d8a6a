"""Hostile input: every field a tenant writes, with every kind of bad value, is refused
with an error naming that field; tenants cannot reach other namespaces or admin objects;
nothing hostile reaches a storage path."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cozybackup_core import Backup, ValidationError, load
from cozybackup_core._api.types import ArtifactRecord
from cozybackup_core._engine.admission import admit
from cozybackup_core.testing import LocalPlatform

from conftest import FILES_CLASS, SEEDS
from support.cli import cli
from support.drivers import FILES, FilesDriver

HOSTILE_STRINGS = [
    "../etc",
    "/etc/passwd",
    "a/../../b",
    "..",
    ".",
    "x\x00y",
    "x\ny",
    "x\ty",
    "x\x1b[31m",
    "x" * 100_000,
    "\uff50ostgres",  # fullwidth p
    "tenant\u2010a",  # unicode hyphen
    "t\u0435nant",  # Cyrillic e
    "\u202egnp.exe",  # right-to-left override
    " ",
    "%2e%2e%2f",
]
WRONG_TYPES: list[Any] = [7, 1.5, True, [], {}, ["x"]]


def _seed_docs() -> list[dict[str, Any]]:
    docs = []
    for f in sorted(SEEDS.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(f.read_text()) if d)
    return docs


def _leaves(d: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _leaves(v, (*path, i))
    else:
        yield path, d


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def _cases() -> list[tuple[str, tuple[Any, ...], Any]]:
    cases = []
    for doc in _seed_docs():
        for path, _ in _leaves(doc):
            if path[0] in ("apiVersion", "kind"):
                continue
            for value in HOSTILE_STRINGS + WRONG_TYPES:
                cases.append((doc["metadata"]["name"], path, value))
    return cases


def _admit_as_tenant(doc: dict[str, Any], tenant: str) -> None:
    obj = load(doc)
    plat_catalog = _PLATFORM.engine.catalog()
    admit([obj], plat_catalog, _PLATFORM.host.objects.get, tenant=tenant)


_PLATFORM: LocalPlatform


@pytest.fixture(scope="module", autouse=True)
def _platform(tmp_path_factory: pytest.TempPathFactory) -> None:
    global _PLATFORM
    _PLATFORM = LocalPlatform(tmp_path_factory.mktemp("home"))


@pytest.mark.parametrize(("doc_name", "path", "value"), _cases(), ids=repr)
def test_every_tenant_field_refuses_hostile_values_by_name(
    doc_name: str, path: tuple[Any, ...], value: Any
) -> None:
    doc = next(d for d in _seed_docs() if d["metadata"]["name"] == doc_name)
    bad = copy.deepcopy(doc)
    target = bad
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    with pytest.raises(ValidationError) as err:
        _admit_as_tenant(bad, doc["metadata"]["namespace"])
    message = str(err.value)
    field = _dotted(path)
    if path == ("metadata", "namespace") and isinstance(value, str):
        # A well-formed but foreign namespace is refused by admission instead.
        assert message.startswith(("metadata.namespace:",)), message
    else:
        assert message.startswith(f"{field}:"), f"{field} not named first in {message!r}"
    assert len(message) < 600 and "\x00" not in message and "Traceback" not in message


@pytest.mark.parametrize(
    "meta",
    [
        {"labels": {"../x": "y"}},
        {"labels": {"x": "a/b"}},
        {"labels": {"k\x00": "v"}},
        {"labels": {"x" * 64: "v"}},
        {"annotations": {"/abs": "v"}},
        {"annotations": {"k": "v" * 300_000}},
        {"annotations": {"k": 7}},
        {"labels": ["not", "a", "map"]},
    ],
    ids=repr,
)
def test_metadata_maps_are_checked(meta: dict[str, Any]) -> None:
    doc = copy.deepcopy(_seed_docs()[0])
    doc["metadata"].update(meta)
    with pytest.raises(ValidationError) as err:
        load(doc)
    assert str(err.value).startswith(f"metadata.{next(iter(meta))}"), str(err.value)


def test_references_cannot_name_another_namespace() -> None:
    doc = copy.deepcopy(next(d for d in _seed_docs() if d["kind"] == "RestoreJob"))
    doc["spec"]["backupRef"]["namespace"] = "tenant-b"
    with pytest.raises(ValidationError, match=r"^spec\.backupRef\.namespace: unknown field"):
        load(doc)
    doc = copy.deepcopy(next(d for d in _seed_docs() if d["kind"] == "BackupJob"))
    doc["spec"]["applicationRef"]["namespace"] = "tenant-b"
    with pytest.raises(ValidationError, match=r"^spec\.applicationRef\.namespace: unknown field"):
        load(doc)


@pytest.mark.parametrize(
    ("manifest", "expected"),
    [
        (FILES_CLASS, "kind: BackupClass objects are managed by the platform operator"),
        (
            "apiVersion: backups.cozystack.io/v1alpha1\nkind: StorageLocation\n"
            "metadata: {name: mine}\nspec: {bucket: mine, path: /}\n",
            "kind: StorageLocation objects are managed by the platform operator",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s3-creds}\nstringData: {a: b}\n",
            "kind: Secret objects are managed by the platform operator",
        ),
        (
            "apiVersion: backups.cozystack.io/v1alpha1\nkind: BackupJob\n"
            "metadata: {name: j, namespace: tenant-b}\n"
            "spec: {applicationRef: {kind: Postgres, name: db}, backupClassName: cozy-default}\n",
            "metadata.namespace: must be your own namespace 'tenant-a'",
        ),
        (
            "apiVersion: backups.cozystack.io/v1alpha1\nkind: BackupJob\n"
            "metadata: {name: j, namespace: tenant-a, labels: {backups.cozystack.io/plan: nightly}}\n"
            "spec: {applicationRef: {kind: Postgres, name: db}, backupClassName: cozy-default}\n",
            "metadata.labels: 'backups.cozystack.io/plan' is reserved for the platform",
        ),
        (
            "apiVersion: backups.cozystack.io/v1alpha1\nkind: Backup\n"
            "metadata: {name: forged, namespace: tenant-a}\n"
            "spec: {applicationRef: {kind: Postgres, name: db}, strategyRef: {kind: Postgres, name: x}, takenAt: '2026-01-01T00:00:00Z'}\n"
            "status: {phase: Ready, artifact: {uri: 'cozy://backups/some-uid', sizeBytes: 1, checksum: x}}\n",
            "kind: Backup objects are created by the platform, not applied",
        ),
    ],
    ids=["class", "storage", "secret", "other-namespace", "reserved-label", "forged-backup"],
)
def test_a_tenant_cannot_reach_admin_objects_or_other_namespaces(
    tmp_path: Path, manifest: str, expected: str
) -> None:
    out = cli(tmp_path, "apply", "--tenant", "tenant-a", "-f", "-", stdin=manifest)
    assert out.returncode == 2, out.stdout
    assert f"error: {expected}" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "objects").exists() or not any((tmp_path / "objects").rglob("*.yaml"))


def _app(plat: LocalPlatform, tmp_path: Path, ns: str, name: str, data: bytes) -> Any:
    d = tmp_path / f"{ns}-{name}"
    d.mkdir()
    (d / "data.bin").write_bytes(data)
    return plat.declare_app(ns, name, "Directory", {"path": str(d)}, api_group=FILES.api_group)


def test_restores_cannot_cross_namespaces(tmp_path: Path) -> None:
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,))
    plat.apply(FILES_CLASS)
    b_data = os.urandom(10_000)
    b_app = _app(plat, tmp_path, "tenant-b", "app1", b_data)
    _app(plat, tmp_path, "tenant-a", "app1", b"tenant a data")
    assert plat.backup("tenant-b", b_app, "b-secret", "files").status.phase == "Succeeded"

    # By name: tenant-a's RestoreJob looks only in tenant-a.
    job = plat.restore("tenant-a", "b-secret", "steal")
    assert job.status.phase == "Failed"
    assert "does not exist in namespace tenant-a" in (job.status.message or "")

    # Into another tenant's application: the target is looked up in tenant-a only.
    a_ref = _app(plat, tmp_path, "tenant-a", "app2", b"a2")
    assert plat.backup("tenant-a", a_ref, "a-own", "files").status.phase == "Succeeded"
    import attrs

    foreign = attrs.evolve(a_ref, name="app9")  # tenant-b has no app9 either: not found
    job = plat.restore("tenant-a", "a-own", "overwrite", target=foreign)
    assert job.status.phase == "Failed"

    # A forged Backup record (as if a tenant could write one) pointing at tenant-b's
    # artifact is refused: the artifact's namespace must be the Backup's.
    b_backup = plat.host.objects.get(Backup, "tenant-b", "b-secret")
    assert b_backup is not None
    forged = attrs.evolve(
        b_backup, metadata=attrs.evolve(b_backup.metadata, namespace="tenant-a", name="forged")
    )
    plat.host.objects.replace(forged)
    job = plat.restore("tenant-a", "forged", "via-forgery")
    assert job.status.phase == "Failed"
    assert (tmp_path / "tenant-a-app1" / "data.bin").read_bytes() == b"tenant a data"
    assert (tmp_path / "tenant-b-app1" / "data.bin").read_bytes() == b_data

    # Every stored artifact sits under its own tenant's directory, its chunks in its own
    # tenant's repository (``_repos/<tenant>``: the default format), nothing elsewhere.
    bucket = Path(plat.host.local_bucket_path("cozy-backups"))
    stored = [p.relative_to(bucket).parts for p in plat.stored_files()]
    repos = {parts[1] for parts in stored if parts[0] == "_repos"}
    assert repos == {"tenant-a", "tenant-b"}
    tops = {parts[0] for parts in stored if parts[0] != "_repos"}
    assert tops == {"tenant-a", "tenant-b"}
    assert all(r.spec.namespace in tops for r in plat.host.objects.list(ArtifactRecord))
