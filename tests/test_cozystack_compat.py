"""Cozystack's RestoreJob options and Ready conditions (the compatibility audit, items 1
and 6), and what the engine writes held against Cozystack's own CRD schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cozybackup_core import (
    ApplicationRef,
    Backup,
    BackupJob,
    RestoreJob,
    ValidationError,
    dump,
    load_yaml,
)
from cozybackup_core._api.crd import all_crds
from cozybackup_core._api.types import LocalObjectRef, ObjectMeta, RestoreJobSpec
from cozybackup_core.testing import (
    MISSING_CRDS,
    LocalPlatform,
    invalid_under_cozystack,
    shared_reference,
)

from support.cli import cli

NS = "tenant-a"
COZYSTACK_CRDS = shared_reference("cozystack-crds")

RESTORE = """\
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata: {name: r, namespace: tenant-a}
spec:
  backupRef: {name: b1}
"""


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("  options:\n    # only comments: YAML null\n", None),
        ("  options: {}\n", {}),
        ('  options: {restoreTimeoutSeconds: "3600"}\n', {"restoreTimeoutSeconds": "3600"}),
        ("  options: {restoreTimeoutSeconds: 5400}\n", {"restoreTimeoutSeconds": 5400}),
        (
            "  options:\n    recoveryTime: 2026-12-05T09:15:00Z\n",
            {"recoveryTime": "2026-12-05T09:15:00Z"},
        ),
        (
            "  options: {targetNamespace: tenant-a, keepOriginalPVC: true, keepOriginalIpAndMac: false}\n",
            {"targetNamespace": "tenant-a", "keepOriginalPVC": True, "keepOriginalIpAndMac": False},
        ),
    ],
)
def test_every_cozystack_options_variant_loads(options: str, expected: Any) -> None:
    [job] = load_yaml(RESTORE + options)
    assert job.spec.options == expected
    assert load_yaml(yaml.safe_dump(dump(job)))[0] == job  # and survives a round trip


def restore_with(
    plat: LocalPlatform,
    name: str,
    options: dict[str, Any] | None,
    target: ApplicationRef | None = None,
) -> RestoreJob:
    job = plat.host.objects.create(
        RestoreJob(
            metadata=ObjectMeta(name=name, namespace=NS),
            spec=RestoreJobSpec(
                backup_ref=LocalObjectRef(name="b1"), target_application_ref=target, options=options
            ),
        )
    )
    return plat.engine.run_restore(job)


def ready(job: Any) -> tuple[str, str]:
    [cond] = [c for c in job.status.conditions if c.type == "Ready"]
    return cond.status, cond.reason


def test_options_are_honoured_and_unknown_ones_warned(platform: LocalPlatform, files_app) -> None:  # type: ignore[no-untyped-def]
    ref, data = files_app
    assert platform.backup(NS, ref, "b1", "files").status.phase == "Succeeded"
    before = (data / "b.txt").read_bytes()
    (data / "b.txt").write_text("changed")
    job = restore_with(platform, "r1", {"restoreTimeoutSeconds": "3600", "keepOriginalPVC": "true"})
    assert job.status.phase == "Succeeded", job.status.message
    assert (data / "b.txt").read_bytes() == before
    [warning] = [e for e in platform.host.events(NS, "RestoreJob", "r1") if e["type"] == "Warning"]
    assert warning["reason"] == "UnknownRestoreOption"
    assert warning["message"] == (
        "spec.options: keepOriginalPVC not understood by the files strategy; ignored"
    )


@pytest.mark.parametrize(
    ("options", "reason", "says"),
    [
        (
            {"recoveryTime": "2026-12-05T09:15:00Z"},
            "PointInTimeNotSupported",
            "spec.options.recoveryTime: backups made by the files strategy restore to the moment",
        ),
        (
            {"targetNamespace": "tenant-b"},
            "OptionRefused",
            "spec.options.targetNamespace: a restore goes into its own namespace (tenant-a)",
        ),
        (
            {"restoreTimeoutSeconds": "an hour"},
            "InvalidSpec",
            "spec.options.restoreTimeoutSeconds: 'an hour' is not a whole number of seconds > 0",
        ),
        (
            {"recoveryTime": "yesterday"},
            "InvalidSpec",
            "spec.options.recoveryTime: 'yesterday' is not an RFC 3339 time with a zone",
        ),
    ],
)
def test_refused_options_fail_at_once_and_touch_nothing(
    platform: LocalPlatform,
    files_app,  # type: ignore[no-untyped-def]
    options: dict[str, Any],
    reason: str,
    says: str,
) -> None:
    ref, data = files_app
    assert platform.backup(NS, ref, "b1", "files").status.phase == "Succeeded"
    (data / "b.txt").write_text("current")
    job = restore_with(platform, "r1", options)
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == reason
    assert job.status.message is not None and job.status.message.startswith(says)
    assert job.status.started_at is None  # refused before it started
    assert (data / "b.txt").read_text() == "current"
    assert ready(job) == ("False", "RestoreFailed")


def test_ready_condition_on_jobs_success_and_failure(platform: LocalPlatform, files_app) -> None:  # type: ignore[no-untyped-def]
    ref, _ = files_app
    ok = platform.backup(NS, ref, "b1", "files")
    gone = platform.backup(
        NS, ApplicationRef(api_group=ref.api_group, kind=ref.kind, name="gone"), "b2", "files"
    )
    assert (ok.status.phase, ready(ok)) == ("Succeeded", ("True", "BackupCompleted"))
    assert (gone.status.phase, ready(gone)) == ("Failed", ("False", "BackupFailed"))
    restored = platform.restore(NS, "b1", "r1")
    missing = platform.restore(NS, "nope", "r2")
    assert ready(restored) == ("True", "RestoreCompleted")
    assert ready(missing) == ("False", "RestoreFailed")
    # Read as `kubectl wait --for=condition=Ready` does: by type, from the stored object.
    stored = platform.host.objects.get(RestoreJob, NS, "r1")
    assert stored is not None and ready(stored) == ("True", "RestoreCompleted")


# -- what we write, against Cozystack's own CRDs (reference material from ../shared)


@pytest.mark.skipif(COZYSTACK_CRDS is None, reason=MISSING_CRDS)
def test_jobs_we_write_are_valid_cozystack_objects(platform: LocalPlatform, files_app) -> None:  # type: ignore[no-untyped-def]
    ref, _ = files_app
    platform.backup(NS, ref, "b1", "files")
    platform.backup(
        NS, ApplicationRef(api_group=ref.api_group, kind=ref.kind, name="gone"), "b2", "files"
    )
    platform.restore(NS, "b1", "r1")
    restore_with(
        platform, "r2", {"restoreTimeoutSeconds": "60", "recoveryTime": "2026-12-05T09:15:00Z"}
    )
    kinds = {
        o.kind
        for cls in (BackupJob, RestoreJob, Backup)
        for o in platform.host.objects.list(cls, NS)
    }
    assert {"BackupJob", "RestoreJob", "Backup"} <= kinds
    assert invalid_under_cozystack(platform.host.objects) == []


COZYSTACK_CLASS = """\
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {name: cozystack-style}
spec:
  strategies:
  - application: {apiGroup: apps.cozystack.io, kind: Postgres}
    strategyRef: {apiGroup: strategy.backups.cozystack.io, kind: CNPG, name: cozy-default-cnpg}
  - application: {apiGroup: apps.example.com, kind: Other}
    strategyRef: {apiGroup: strategy.example.org, kind: Files, name: theirs}
  - application: {apiGroup: apps.example.com, kind: Directory}
    strategyRef: {kind: Files, name: files}
    parameters: {timeoutSeconds: "7200", verbose: "true", natsUser: admin}
"""


def test_a_cozystack_class_loads_with_warnings_and_its_jobs_say_why_they_fail(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    out = cli(home, "apply", "-f", "-", stdin=COZYSTACK_CLASS)
    assert out.returncode == 0, out.stderr
    # What is installed varies with the environment; the list always names Files.
    lines = [
        re.sub(r" \(installed: [^)]*Files[^)]*\)$", "", line) for line in out.stderr.splitlines()
    ]
    assert lines == [
        "Warning: backupclass/cozystack-style: spec.strategies[0].strategyRef: no driver "
        "installed on this platform serves the CNPG strategy",
        "Warning: backupclass/cozystack-style: spec.strategies[1].strategyRef: no driver "
        "installed on this platform serves the Files strategy of strategy.example.org",
        "Warning: backupclass/cozystack-style: spec.strategies[2].parameters.natsUser: "
        "not a parameter of the files strategy; ignored",
        "Warning: backupclass/cozystack-style: spec.strategies[2].parameters.timeoutSeconds: "
        "not a parameter of the files strategy; ignored",
        "Warning: backupclass/cozystack-style: spec.strategies[2].parameters.verbose: "
        "not a parameter of the files strategy; ignored",
    ]
    job = (
        "apiVersion: backups.cozystack.io/v1alpha1\nkind: BackupJob\n"
        "metadata: {name: j, namespace: tenant-a}\n"
        "spec: {applicationRef: {apiGroup: apps.example.com, kind: Other, name: d}, "
        "backupClassName: cozystack-style}\n"
    )
    cli(home, "apply", "-f", "-", stdin=job)
    cli(home, "run", "--once", "-q")
    got = json.loads(cli(home, "get", "backupjob", "j", "-n", "tenant-a", "-o", "json").stdout)
    assert got["status"]["phase"] == "Failed"
    assert got["status"]["conditions"][0]["reason"] == "StrategyNotServed"
    assert "Files strategy of strategy.example.org" in got["status"]["message"]


def test_parameters_written_as_cozystack_strings_convert_where_unambiguous() -> None:
    from cozybackup_sqlite import SQLiteDriver

    from cozybackup_core import DriverParametersError
    from cozybackup_core._catalog.catalog import parameters_for

    driver = SQLiteDriver()
    params = parameters_for(
        driver, {"batchStatements": "500", "integrityCheck": "false", "natsUser": "x"}, "p"
    )
    assert (params.batch_statements, params.integrity_check) == (500, False)
    with pytest.raises(DriverParametersError) as err:
        parameters_for(driver, {"batchStatements": "5e2", "integrityCheck": "yes"}, "p")
    assert sorted(err.value.problems) == [
        ("p.batchStatements", "expected an integer, got str"),
        ("p.integrityCheck", "expected true or false, got str"),
    ]


COZYSTACK_BACKUP = """\
apiVersion: backups.cozystack.io/v1alpha1
kind: Backup
metadata: {name: nightly-29803830, namespace: tenant-a}
spec:
  applicationRef: {apiGroup: apps.cozystack.io, kind: Postgres, name: orders}
  planRef: {name: nightly}
  strategyRef: {apiGroup: strategy.backups.cozystack.io, kind: CNPG, name: cozy-default-cnpg}
  takenAt: "2026-12-04T02:00:00Z"
  driverMetadata: {cnpg.io/backup-name: orders-20261204020000}
status:
  phase: Pending
  artifact: {uri: "cnpg://orders/orders-20261204020000"}
  underlyingResources:
    apiVersion: postgresql.cnpg.io/v1
    kind: Backup
    databases: [orders, billing]
"""


def test_a_backup_cozystack_made_is_listed_kept_and_refused_for_restore_clearly(
    tmp_path: Path,
) -> None:
    """Written by Cozystack's own controller (a migration keeps it): it loads as it is,
    every pass leaves it alone, and a restore of it says which strategy it needs."""
    from cozybackup_core._engine.runner import Runner

    [backup] = load_yaml(COZYSTACK_BACKUP)
    assert backup.status.underlying_resources["databases"] == ["orders", "billing"]
    assert load_yaml(yaml.safe_dump(dump(backup)))[0] == backup
    plat = LocalPlatform(tmp_path / "home")
    plat.host.objects.create(backup)
    plat.host.objects.create(
        RestoreJob(
            metadata=ObjectMeta(name="r1", namespace=NS),
            spec=RestoreJobSpec(backup_ref=LocalObjectRef(name="nightly-29803830")),
        )
    )
    report = Runner(plat.engine).run_pass()
    assert report.error is None
    [done] = report.finished
    assert done.metadata.name == "r1" and done.status.phase == "Failed"
    assert done.status.conditions[0].reason == "StrategyNotServed"
    assert "CNPG strategy" in (done.status.message or "")
    kept = plat.host.objects.get(Backup, NS, "nightly-29803830")
    assert kept is not None and dump(kept)["status"] == dump(backup)["status"]


PLAN_WITHOUT_NAMESPACE = """\
apiVersion: backups.cozystack.io/v1alpha1
kind: Plan
metadata: {name: nightly}
spec:
  applicationRef: {kind: Postgres, name: orders}
  backupClassName: cozy-default
  schedule: {type: "", cron: "0 2 * * *"}
"""


def test_apply_n_places_namespace_less_manifests_as_kubectl_does(tmp_path: Path) -> None:
    home = tmp_path / "home"
    refused = cli(home, "apply", "-f", "-", stdin=PLAN_WITHOUT_NAMESPACE)
    assert refused.returncode == 2 and "metadata.namespace: required for Plan" in refused.stderr
    out = cli(home, "apply", "-n", "tenant-a", "-f", "-", stdin=PLAN_WITHOUT_NAMESPACE)
    assert out.returncode == 0 and out.stdout == "plan/nightly created\n", out.stderr
    got = json.loads(cli(home, "get", "plan", "nightly", "-n", "tenant-a", "-o", "json").stdout)
    assert got["metadata"]["namespace"] == "tenant-a" and got["spec"]["schedule"]["type"] == ""
    other = PLAN_WITHOUT_NAMESPACE.replace("{name: nightly}", "{name: nightly, namespace: b}")
    clash = cli(home, "apply", "-n", "tenant-a", "-f", "-", stdin=other)
    assert clash.returncode == 2
    assert "metadata.namespace: 'b' does not match -n tenant-a" in clash.stderr


@pytest.mark.skipif(COZYSTACK_CRDS is None, reason=MISSING_CRDS)
def test_our_crds_have_cozystacks_subresources() -> None:
    """A status subresource changes how an object is written (a Backup with its status in
    one call, as Cozystack's controller writes it): ours must match theirs kind by kind."""
    ours = {c["spec"]["names"]["kind"]: c for c in all_crds()}
    compared = 0
    for path in sorted(COZYSTACK_CRDS.glob("*.yaml")):
        theirs = yaml.safe_load(path.read_text())
        kind = theirs["spec"]["names"]["kind"]
        mine = ours[kind]["spec"]["versions"][0].get("subresources", {})
        assert mine == theirs["spec"]["versions"][0].get("subresources", {}), kind
        compared += 1
    assert compared == 5


@pytest.mark.parametrize(
    "value",
    [
        "5e54634226373932",  # an etcd cluster id in hex that reads as a float
        "7",
        "true",
        "null",
        '"quoted"',
        "[1]",
        "plain text",
        "",
        7,
        2.5,
        True,
        None,
        ["shop", "crm"],
        {"a": [1, {"b": None}]},
    ],
)
def test_driver_metadata_strings_round_trip_exactly(value: Any) -> None:
    from cozybackup_core._api.wire import metadata_strings, metadata_values

    written = metadata_strings({"k": value})
    assert isinstance(written["k"], str)
    assert metadata_values(written) == {"k": value}


def test_coexisting_jobs_of_strategies_nobody_here_serves_are_left_untouched(
    tmp_path: Path,
) -> None:
    """Beside Cozystack's own controller (CNPG, Velero...), ours claims only what its
    drivers serve: the others stay exactly as written, for their controller."""
    from cozybackup_core import EngineConfig

    from support.drivers import FilesDriver

    plat = LocalPlatform(
        tmp_path / "home", drivers=(FilesDriver,), config=EngineConfig(leave_unserved=True)
    )
    plat.apply(COZYSTACK_CLASS)
    for name, kind in (("theirs", "Other"), ("ours", "Directory")):
        plat.apply(
            "apiVersion: backups.cozystack.io/v1alpha1\nkind: BackupJob\n"
            f"metadata: {{name: {name}, namespace: tenant-a}}\n"
            f"spec: {{applicationRef: {{apiGroup: apps.example.com, kind: {kind}, name: d}}, "
            "backupClassName: cozystack-style}\n"
        )
    before = plat.host.objects.get(BackupJob, NS, "theirs")
    plat.engine.run_once()
    after = plat.host.objects.get(BackupJob, NS, "theirs")
    assert after == before  # not a single write
    ours = plat.host.objects.get(BackupJob, NS, "ours")
    assert ours is not None and ours.status.phase == "Failed"  # ours: reported (no such app)


def test_drivers_describe_what_they_backed_up_and_warn_before_anyone_needs_it(
    platform: LocalPlatform, files_app: Any
) -> None:
    """``underlyingResources`` is Cozystack's self-typed record of what a backup holds; a
    driver's warning (what it cannot bring back exactly) is an event and stays on it."""
    ref, data = files_app
    (data / "c.lossy").write_text("approximately\n")
    job = platform.backup(NS, ref, "b1", "files")
    assert job.status.phase == "Succeeded", job.status.message
    backup = platform.host.objects.get(Backup, NS, "b1")
    described = backup.status.underlying_resources
    assert described["apiVersion"] == "strategy.backups.cozystack.io/v1alpha1"
    assert described["kind"] == "Files"
    assert described["files"] == ["a.bin", "b.txt", "c.lossy"]
    [warning] = described["warnings"]
    assert warning["reason"] == "BackupNotExact"
    assert warning["message"].endswith("c.lossy is not kept exactly; a physical mode would keep it")
    assert str(data) not in warning["message"]  # the platform's path is not the tenant's
    events = [e for e in platform.host.events(NS, "BackupJob", "b1") if e["type"] == "Warning"]
    assert [(e["reason"], e["message"]) for e in events] == [("BackupNotExact", warning["message"])]
    assert load_yaml(yaml.safe_dump(dump(backup)))[0] == backup


def _schema_gaps(theirs: dict[str, Any], ours: dict[str, Any], path: str) -> list[str]:
    """Where our schema is not a superset of theirs: a field of theirs we lack or type
    differently, a CEL rule of theirs we lack, a field we require and they do not."""
    gaps: list[str] = []
    if ours.get("x-kubernetes-preserve-unknown-fields"):
        return gaps  # ours keeps whatever is written there
    if theirs.get("type") != ours.get("type"):
        gaps.append(f"{path}: type {theirs.get('type')} here, {ours.get('type')} in ours")
        return gaps
    for rule in theirs.get("x-kubernetes-validations", []):
        if rule not in ours.get("x-kubernetes-validations", []):
            gaps.append(f"{path}: no CEL rule {rule['rule']!r}")
    extra_required = set(ours.get("required", [])) - set(theirs.get("required", []))
    gaps += [f"{path}.{r}: required in ours only" for r in sorted(extra_required)]
    mine = ours.get("properties", {})
    for key, sub in theirs.get("properties", {}).items():
        if path == "" and key == "metadata":
            continue
        if key not in mine:
            gaps.append(f"{path}.{key}: missing")
            continue
        gaps += _schema_gaps(sub, mine[key], f"{path}.{key}")
    if "items" in theirs:
        gaps += _schema_gaps(theirs["items"], ours.get("items", {}), f"{path}[]")
    return gaps


@pytest.mark.skipif(COZYSTACK_CRDS is None, reason=MISSING_CRDS)
def test_our_crds_are_a_strict_superset_of_cozystacks() -> None:
    """Every field, CEL rule, printer column, selectable field and console annotation of
    Cozystack v1.6.2's CRDs is in ours; nothing we add is required."""
    ours = {c["spec"]["names"]["kind"]: c for c in all_crds()}
    gaps: list[str] = []
    for path in sorted(COZYSTACK_CRDS.glob("*.yaml")):
        theirs = yaml.safe_load(path.read_text())
        kind = theirs["spec"]["names"]["kind"]
        mine = ours[kind]
        their_v, my_v = theirs["spec"]["versions"][0], mine["spec"]["versions"][0]
        gaps += [
            f"{kind}{p}"
            for p in _schema_gaps(
                their_v["schema"]["openAPIV3Schema"], my_v["schema"]["openAPIV3Schema"], ""
            )
        ]
        for key, value in theirs["metadata"].get("annotations", {}).items():
            mine_value = mine["metadata"].get("annotations", {}).get(key)
            if key.startswith("options.cozystack.io/") and mine_value != value:
                gaps.append(f"{kind}: annotation {key}")
        for field in their_v.get("selectableFields", []):
            if field not in my_v.get("selectableFields", []):
                gaps.append(f"{kind}: selectable field {field['jsonPath']}")
        my_columns = {(c["name"], c["jsonPath"]) for c in my_v.get("additionalPrinterColumns", [])}
        for col in their_v.get("additionalPrinterColumns", []):
            if (col["name"], col["jsonPath"]) not in my_columns:
                gaps.append(f"{kind}: printer column {col['name']}")
        assert mine["spec"]["scope"] == theirs["spec"]["scope"], kind
        assert mine["spec"]["names"] == theirs["spec"]["names"], kind
    assert gaps == []


EMPTY_REFS = """\
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata: {name: manual, namespace: tenant-a}
spec:
  applicationRef: {apiGroup: example.com, kind: Directory, name: app1}
  backupClassName: files
  planRef: {}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata: {name: unnamed, namespace: tenant-a}
spec:
  backupRef: {}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: Plan
metadata: {name: unscheduled, namespace: tenant-a}
spec:
  applicationRef: {apiGroup: example.com, kind: Directory, name: app1}
  backupClassName: files
  schedule: {type: ""}
"""


def test_references_and_schedules_cozystack_leaves_empty_load_and_say_what_they_mean(
    tmp_path: Path,
) -> None:
    """Cozystack's schema lets ``planRef: {}`` (no plan), ``backupRef: {}`` and a Plan
    without ``schedule.cron`` through; here they load too, and each means the same:
    no plan, a restore that fails at once naming the field, a Plan that never runs."""
    job, restore, plan = load_yaml(EMPTY_REFS)
    assert job.spec.plan_ref is None
    assert restore.spec.backup_ref == LocalObjectRef(name="")
    assert plan.spec.schedule.cron == ""
    home = tmp_path / "home"
    applied = cli(home, "apply", "-f", "-", stdin=EMPTY_REFS)
    assert applied.returncode == 0, applied.stderr
    assert (
        "Warning: plan/unscheduled: spec.schedule.cron: empty: the Plan makes no backups "
        "until it has a schedule" in applied.stderr
    )
    cli(home, "run", "--once")
    failed = json.loads(cli(home, "get", "restorejob", "unnamed", "-n", NS, "-o", "json").stdout)
    assert failed["status"]["phase"] == "Failed"
    assert "spec.backupRef.name: empty: name the Backup to restore" in failed["status"]["message"]
    got = json.loads(cli(home, "get", "plan", "unscheduled", "-n", NS, "-o", "json").stdout)
    [ready] = [c for c in got["status"]["conditions"] if c["type"] == "Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "NoSchedule")
    assert "nextScheduleTime" not in got["status"]


GENERATED = """\
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata: {generateName: orders-manual-, namespace: tenant-a}
spec:
  applicationRef: {apiGroup: example.com, kind: Directory, name: app1}
  backupClassName: files
"""


def test_generate_name_makes_a_new_object_each_time_as_the_api_server_does(
    tmp_path: Path,
) -> None:
    [job] = load_yaml(GENERATED)
    assert re.fullmatch(r"orders-manual-[bcdfghjklmnpqrstvwxz2456789]{5}", job.metadata.name)
    assert job.metadata.generate_name == "orders-manual-"
    home = tmp_path / "home"
    made = [cli(home, "apply", "-f", "-", stdin=GENERATED) for _ in range(2)]
    assert [m.returncode for m in made] == [0, 0], [m.stderr for m in made]
    names = [re.fullmatch(r"backupjob/(\S+) created\n", m.stdout) for m in made]
    assert all(names) and names[0][1] != names[1][1]  # type: ignore[index]
    listed = json.loads(cli(home, "get", "backupjobs", "-n", NS, "-o", "json").stdout)
    items = listed.get("items", [listed])
    assert sorted(i["metadata"]["name"] for i in items) == sorted(n[1] for n in names)  # type: ignore[index]
    with pytest.raises(ValidationError) as err:
        load_yaml(GENERATED.replace("orders-manual-", "Orders_"))
    assert err.value.problems[0][0] == "metadata.name"


def test_another_controllers_condition_types_load() -> None:
    """``metav1.Condition`` types may carry a domain (a Cozystack-made Backup, another
    controller's status): they load and round-trip."""
    doc = COZYSTACK_BACKUP + (
        "  conditions:\n"
        "  - {type: snapshot.example.com/Verified, status: 'True', reason: Checked,\n"
        "     message: '', lastTransitionTime: '2026-12-04T02:10:00Z'}\n"
    )
    [backup] = load_yaml(doc)
    assert backup.status.conditions[0].type == "snapshot.example.com/Verified"
    assert load_yaml(yaml.safe_dump(dump(backup)))[0] == backup
    with pytest.raises(ValidationError) as err:
        load_yaml(doc.replace("snapshot.example.com/Verified", "not a type"))
    assert err.value.problems[0][0] == "status.conditions[0].type"
