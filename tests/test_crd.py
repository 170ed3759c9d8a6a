"""The CRDs are generated from the types; objects the engine writes must validate."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from cozybackup_core import all_crds, dump, load_yaml, object_schema
from cozybackup_core.testing import LocalPlatform

from conftest import SEEDS

TENANT_KINDS = ("BackupJob", "Plan", "Backup", "RestoreJob")


def _validate(doc: dict) -> None:  # type: ignore[type-arg]
    jsonschema.validate(doc, object_schema(doc["kind"]))


def test_every_kind_has_a_crd() -> None:
    names = {c["spec"]["names"]["kind"]: c for c in all_crds()}
    for kind in (*TENANT_KINDS, "BackupClass", "StorageLocation"):
        assert kind in names
    assert names["BackupClass"]["spec"]["scope"] == "Cluster"
    assert names["BackupJob"]["spec"]["scope"] == "Namespaced"
    schema = names["Plan"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # As Cozystack's: a Plan without a cron loads (and makes no backups, saying so).
    assert "required" not in schema["properties"]["spec"]["properties"]["schedule"]
    assert schema["properties"]["spec"]["required"] == [
        "applicationRef",
        "backupClassName",
        "schedule",
    ]


@pytest.mark.parametrize("path", sorted(SEEDS.glob("*.yaml")), ids=lambda p: p.name)
def test_seed_manifests_validate_against_crds(path: Path) -> None:
    _validate(yaml.safe_load(path.read_text()))


def test_crd_rejects_what_the_types_reject() -> None:
    doc = yaml.safe_load((SEEDS / "backupjob-oneshot-mariadb.yaml").read_text())
    doc["spec"]["applicationRef"]["name"] = "Not_A_Name"
    with pytest.raises(jsonschema.ValidationError):
        _validate(doc)


def test_engine_output_validates_against_crds(platform: LocalPlatform, files_app) -> None:  # type: ignore[no-untyped-def]
    ref, _ = files_app
    assert platform.backup("tenant-a", ref, "b1", "files").status.phase == "Succeeded"
    platform.backup(
        "tenant-a",
        ref.__class__(api_group=ref.api_group, kind=ref.kind, name="nope"),
        "b2",
        "files",
    )
    platform.restore("tenant-a", "b1", "r1")
    platform.restore("tenant-a", "missing", "r2")
    written = [dump(o) for o in load_yaml(platform.tenant_view("tenant-a").split("\n[", 1)[0])]
    kinds = {d["kind"] for d in written}
    assert {"BackupJob", "Backup", "RestoreJob"} <= kinds
    for doc in written:
        _validate(doc)
