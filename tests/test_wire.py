"""Manifests: the seed manifests load unchanged; anything else loads or names its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cozybackup_core import BackupJob, Plan, RestoreJob, ValidationError, dump, load, load_yaml

from conftest import SEEDS

SEED_FILES = sorted(SEEDS.glob("*.yaml"))


def test_seed_manifests_exist() -> None:
    assert len(SEED_FILES) >= 4, f"no seed manifests under {SEEDS}"


@pytest.mark.parametrize("path", SEED_FILES, ids=lambda p: p.name)
def test_seed_manifest_loads_and_round_trips(path: Path) -> None:
    text = path.read_text()
    [obj] = load_yaml(text, path.name)
    assert isinstance(obj, (BackupJob, Plan, RestoreJob))
    assert dump(obj) == yaml.safe_load(text)
    assert load(dump(obj)) == obj


def _job(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "backups.cozystack.io/v1alpha1",
        "kind": "BackupJob",
        "metadata": {"name": "j", "namespace": "t"},
        "spec": spec,
    }


def test_empty_api_group_defaults_to_apps() -> None:
    obj = load(_job(applicationRef={"kind": "Postgres", "name": "db"}, backupClassName="c"))
    assert obj.spec.application_ref.api_group == "apps.cozystack.io"


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (_job(backupClassName="c"), "spec.applicationRef: required"),
        (
            _job(applicationRef={"name": "x"}, backupClassName="c"),
            "spec.applicationRef.kind: required",
        ),
        (
            _job(applicationRef={"kind": "Postgres", "name": "../etc"}, backupClassName="c"),
            "spec.applicationRef.name: '../etc' is not a valid name",
        ),
        (
            _job(applicationRef={"kind": "Postgres", "name": "x"}, backupClassname="c"),
            "spec.backupClassname: unknown field",
        ),
        (
            _job(applicationRef={"kind": "Postgres", "name": 7}, backupClassName="c"),
            "spec.applicationRef.name: expected a string",
        ),
        (
            {
                "apiVersion": "backups.cozystack.io/v1alpha1",
                "kind": "Plan",
                "metadata": {"name": "p", "namespace": "t"},
                "spec": {
                    "applicationRef": {"kind": "Postgres", "name": "x"},
                    "backupClassName": "c",
                    "schedule": {"type": "interval", "cron": "* * * * *"},
                },
            },
            "spec.schedule.type: 'interval' is not one of cron",
        ),
        (
            {
                "apiVersion": "backups.cozystack.io/v1alpha1",
                "kind": "BackupClass",
                "metadata": {"name": "c"},
                "spec": {
                    "strategies": [
                        {
                            "application": {"kind": "Postgres"},
                            "strategyRef": {"kind": "pg", "name": "x"},
                        }
                    ]
                },
            },
            "spec.strategies[0].strategyRef.kind: 'pg' is not a valid kind",
        ),
        (
            {
                "apiVersion": "backups.cozystack.io/v1alpha1",
                "kind": "Secretz",
                "metadata": {"name": "c"},
            },
            "kind: ",
        ),
        (
            {
                "apiVersion": "backups.cozystack.io/v1alpha1",
                "kind": "BackupJob",
                "metadata": {"name": "j"},
                "spec": {
                    "applicationRef": {"kind": "Postgres", "name": "x"},
                    "backupClassName": "c",
                },
            },
            "metadata.namespace: required",
        ),
    ],
)
def test_invalid_manifest_names_the_field(doc: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        load(doc)
    assert expected in str(info.value)
    assert "Traceback" not in str(info.value)


def test_multi_document_error_names_the_document() -> None:
    text = (
        Path(SEED_FILES[0]).read_text()
        + "\n---\n"
        + "apiVersion: backups.cozystack.io/v1alpha1\nkind: Plan\n"
    )
    with pytest.raises(ValidationError, match=r"metadata: required.*document 2"):
        load_yaml(text, "x.yaml")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def _mutations(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A seed manifest with one path replaced by an arbitrary JSON value or removed."""
    paths: list[tuple[str, ...]] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append((*path, k))
                walk(v, (*path, k))

    walk(base, ())

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        doc = yaml.safe_load(yaml.safe_dump(base))
        path = draw(st.sampled_from(paths))
        node = doc
        for k in path[:-1]:
            node = node[k]
        if draw(st.booleans()):
            del node[path[-1]]
        else:
            node[path[-1]] = draw(json_values)
        if draw(st.booleans()):
            node[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
        return doc

    return build()


@pytest.mark.parametrize("path", SEED_FILES, ids=lambda p: p.name)
@settings(
    max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(data=st.data())
def test_any_manifest_loads_or_names_a_field(path: Path, data: st.DataObject) -> None:
    doc = data.draw(_mutations(yaml.safe_load(path.read_text())))
    try:
        obj = load(doc)
    except ValidationError as exc:
        assert exc.problems
        for field, message in exc.problems:
            assert message
            assert field or message.startswith("expected"), exc.problems
    else:
        assert load(dump(obj)) == obj
