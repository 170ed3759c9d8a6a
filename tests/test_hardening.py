"""The red team's defects (docs/security.md): each test failed before its fix."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import attrs
import pytest
import yaml

from cozybackup_core import BackupJob, Plan
from cozybackup_core._api.errors import ValidationError
from cozybackup_core._api.types import (
    LABEL_VALUE_MAX,
    ApplicationRef,
    BackupJobSpec,
    ObjectMeta,
    PlanSpec,
    Schedule,
)
from cozybackup_core._drivers.contract import AppLocation
from cozybackup_core._engine.admission import admit
from cozybackup_core._engine.plans import slot_job_name
from cozybackup_core._engine.runner import Runner
from cozybackup_core.hosts.local import LocalHost
from cozybackup_core.testing import LocalPlatform

from support.drivers import FILES, FilesDriver
from support.manifests import FILES_CLASS

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 12, 5, 8, 0, 30, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> dt.datetime:
        return self.t


def two_tenants(
    tmp_path: Path, clock: Clock | None = None
) -> tuple[LocalPlatform, dict[str, ApplicationRef]]:
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,), clock=clock)
    plat.apply(FILES_CLASS)
    refs = {}
    for ns in ("tenant-a", "tenant-b"):
        data = tmp_path / ns
        data.mkdir()
        (data / "f.txt").write_text(f"{ns} data\n")
        refs[ns] = plat.declare_app(
            ns, "app", "Directory", {"path": str(data)}, api_group=FILES.api_group
        )
    return plat, refs


def job(ns: str, name: str, ref: ApplicationRef) -> BackupJob:
    return BackupJob(
        metadata=ObjectMeta(name=name, namespace=ns),
        spec=BackupJobSpec(application_ref=ref, backup_class_name="files"),
    )


def plan(ns: str, name: str, ref: ApplicationRef, cron: str = "* * * * *") -> Plan:
    return Plan(
        metadata=ObjectMeta(name=name, namespace=ns),
        spec=PlanSpec(application_ref=ref, backup_class_name="files", schedule=Schedule(cron=cron)),
    )


def b_job_runs(plat: LocalPlatform, refs: dict[str, ApplicationRef]) -> None:
    """tenant-b's ordinary job still runs, and the pass raised nothing."""
    plat.host.objects.create(job("tenant-b", "b-1", refs["tenant-b"]))
    report = Runner(plat.engine).run_pass()
    done = {j.metadata.name: j.status.phase for j in report.finished}
    assert done.get("b-1") == "Succeeded", report


# -- D2 / K2: one Plan stops every tenant's backups


@pytest.mark.parametrize("cron", ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *"])
def test_d2_never_firing_cron_is_refused_at_apply(tmp_path: Path, cron: str) -> None:
    plat, refs = two_tenants(tmp_path)
    with pytest.raises(ValidationError) as err:
        admit(
            [plan("tenant-a", "p", refs["tenant-a"], cron)],
            plat.engine.catalog(),
            plat.host.objects.get,
            "tenant-a",
        )
    assert err.value.problems[0][0] == "spec.schedule.cron"
    assert "never fires" in err.value.problems[0][1]


def test_d2_a_stored_never_firing_cron_does_not_stop_the_pass(tmp_path: Path) -> None:
    plat, refs = two_tenants(tmp_path)
    plat.host.objects.replace(
        plan("tenant-a", "p", refs["tenant-a"], "0 0 30 2 *")
    )  # past admission
    b_job_runs(plat, refs)
    stored = plat.host.objects.get(Plan, "tenant-a", "p")
    assert stored is not None and stored.status.conditions[0].status == "False"


@pytest.mark.parametrize("name", ["p" * 240, "p" * 253, "a" * 239 + ".b" + "c" * 12])
def test_d2_long_plan_names_fire_and_the_pass_goes_on(tmp_path: Path, name: str) -> None:
    clock = Clock()
    plat, refs = two_tenants(tmp_path, clock)
    plat.host.objects.create(plan("tenant-a", name, refs["tenant-a"]))
    clock.t = T0 + dt.timedelta(minutes=1)
    b_job_runs(plat, refs)
    jobs = [j for j in plat.host.objects.list(BackupJob, "tenant-a")]
    assert len(jobs) == 1 and jobs[0].status.phase == "Succeeded"
    # K1: every label value fits Kubernetes' 63 characters
    for obj in [*jobs, *plat.backups("tenant-a")]:
        assert all(len(v) <= LABEL_VALUE_MAX for v in obj.metadata.labels.values()), (
            obj.metadata.labels
        )


def test_d2_slot_name_of_a_dot_at_the_cut_is_valid() -> None:
    name = slot_job_name("a" * 239 + "." + "b" * 5, T0)
    BackupJob(
        metadata=ObjectMeta(name=name, namespace="n"),
        spec=BackupJobSpec(
            application_ref=ApplicationRef(api_group="g.io", kind="K", name="x"),
            backup_class_name="c",
        ),
    )


def test_d12_names_at_the_length_limit_are_stored(tmp_path: Path) -> None:
    plat, refs = two_tenants(tmp_path)
    for n in (246, 250, 253):
        plat.host.objects.create(job("tenant-a", "j" * n, refs["tenant-a"]))
        assert plat.host.objects.get(BackupJob, "tenant-a", "j" * n) is not None
    assert not [p for p in (plat.home / "state").rglob("*") if p.name.startswith(".tmp-")]


def test_k2_an_unexpected_error_in_a_stage_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plat, refs = two_tenants(tmp_path)

    def boom() -> list[object]:
        raise RuntimeError("not a CozyError")

    monkeypatch.setattr(plat.engine, "run_due_drills", boom)
    plat.host.objects.create(job("tenant-b", "b-1", refs["tenant-b"]))
    report = Runner(plat.engine).run_pass()
    assert [j.status.phase for j in report.finished] == ["Succeeded"]
    assert report.error is not None and "internal error in drills" in report.error


def test_one_job_raising_anything_fails_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plat, refs = two_tenants(tmp_path)
    real = LocalHost.locate

    def locate(self: LocalHost, ns: str, ref: ApplicationRef) -> AppLocation:
        if ns == "tenant-a":
            raise OverflowError("boom")
        return real(self, ns, ref)

    monkeypatch.setattr(LocalHost, "locate", locate)
    plat.host.objects.create(job("tenant-a", "a-1", refs["tenant-a"]))
    b_job_runs(plat, refs)
    a = plat.host.objects.get(BackupJob, "tenant-a", "a-1")
    assert a is not None and a.status.phase == "Failed"


# -- D3: a job never adopts what it did not make


def test_d3_a_recreated_job_name_does_not_adopt_the_old_backup(tmp_path: Path) -> None:
    plat, refs = two_tenants(tmp_path)
    other = plat.declare_app(
        "tenant-a",
        "other",
        "Directory",
        {"path": str(tmp_path / "tenant-b")},
        api_group=FILES.api_group,
    )
    first = plat.engine.run_backup(
        plat.host.objects.create(job("tenant-a", "a-1", refs["tenant-a"]))
    )
    assert first.status.phase == "Succeeded"
    plat.host.objects.delete(BackupJob, "tenant-a", "a-1")
    again = plat.engine.run_backup(plat.host.objects.create(job("tenant-a", "a-1", other)))
    assert again.status.phase == "Failed"
    assert again.status.conditions[0].reason == "Conflict"
    assert again.status.backup_ref is None


def test_d3_a_retry_of_the_same_job_still_finds_its_own_backup(tmp_path: Path) -> None:
    plat, refs = two_tenants(tmp_path)
    j = plat.host.objects.create(job("tenant-a", "a-1", refs["tenant-a"]))
    done = plat.engine.run_backup(j)
    assert done.status.phase == "Succeeded"
    retried = plat.engine.run_backup(j)  # e.g. the status write was lost
    assert retried.status.phase == "Succeeded"
    [backup] = plat.backups("tenant-a")
    assert backup.metadata.annotations["backups.cozystack.io/backup-job-uid"] == j.metadata.uid


# -- D4: files are private


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}


def test_d4_home_state_events_locks_and_buckets_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        home = tmp_path / "home"
        home.mkdir(mode=0o755)  # an existing home, as an older version left it
        plat = LocalPlatform(home, drivers=(FilesDriver,))
        plat.apply(
            FILES_CLASS,
            "apiVersion: v1\nkind: Secret\nmetadata: {name: k}\nstringData: {password: pw}\n",
        )
        data = tmp_path / "data"
        data.mkdir()
        (data / "f.txt").write_text("x\n")
        ref = plat.declare_app(
            "tenant-a", "app", "Directory", {"path": str(data)}, api_group=FILES.api_group
        )
        assert plat.backup("tenant-a", ref, "a-1", "files").status.phase == "Succeeded"
        with plat.host.runner_lock():
            pass
    finally:
        os.umask(old)
    assert (home.stat().st_mode & 0o777) == 0o700
    modes = _modes(home)
    # nothing below the home is reachable by others, and what holds secrets is 0600
    for rel in ("state.lock", "run.lock", "events/tenant-a.jsonl", "state/Secret/_cluster/k.yaml"):
        assert modes[rel] == 0o600, (rel, oct(modes[rel]))
    for rel, mode in modes.items():
        if rel.startswith(("state", "events")) and (home / rel).is_dir():
            assert mode == 0o700, (rel, oct(mode))
    [bucket] = (home / "buckets").iterdir()
    assert (bucket.stat().st_mode & 0o777) == 0o700


def test_d4_an_explicit_bucket_path_is_owner_only(tmp_path: Path) -> None:
    from cozybackup_core._storage.store import ArtifactStore

    old = os.umask(0o022)
    try:
        ArtifactStore.local(str(tmp_path / "bk"))
    finally:
        os.umask(old)
    assert ((tmp_path / "bk").stat().st_mode & 0o777) == 0o700


# -- the class: one object never stops a pass (property test, runs in CI)

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_CRONS = ["* * * * *", "0 0 30 2 *", "0 0 31 4 *", "*/7 * * * *", "0 25 * * *", "@hourly"]
_AGES = ["1d", "999999d", "999999w", "1s"]
_LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=1)


@st.composite
def _names(draw: st.DrawFn) -> str:
    n = draw(st.sampled_from([1, 50, 51, 63, 64, 233, 240, 245, 246, 250, 252, 253]))
    body = draw(_LABEL) * n
    if n > 241 and draw(st.booleans()):
        body = body[:239] + "." + body[240:]
    return body


@st.composite
def _hostile(draw: st.DrawFn) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["plan", "job", "restore", "class", "secret"]))
        name = draw(_names())
        if kind == "plan":
            out.append({"kind": "plan", "name": name, "cron": draw(st.sampled_from(_CRONS))})
        elif kind == "job":
            out.append({"kind": "job", "name": name, "app": draw(st.sampled_from(["app", "gone"]))})
        elif kind == "restore":
            out.append(
                {"kind": "restore", "name": name, "backup": draw(st.sampled_from(["gone", name]))}
            )
        elif kind == "class":
            out.append({"kind": "class", "age": draw(st.sampled_from(_AGES))})
        else:
            out.append(
                {"kind": "secret", "data": draw(st.sampled_from(["//79", "not base64!", "AAAA"]))}
            )
    return out


def store_raw(plat: LocalPlatform, text: str) -> None:
    """An object as an older version, or a hand edit, may have left it in the state:
    written past today's validation."""
    doc = yaml.safe_load(text)
    meta = doc["metadata"]
    path = plat.home / "state" / doc["kind"] / meta.get("namespace", "_cluster")
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{meta['name']}.yaml").write_text(yaml.safe_dump(doc))


@seed(17)
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(objs=_hostile())
def test_hostile_objects_never_stop_a_pass(
    tmp_path_factory: pytest.TempPathFactory, objs: list[dict[str, object]]
) -> None:
    from cozybackup_core._api.types import RestoreJob

    tmp = tmp_path_factory.mktemp("hostile")
    clock = Clock()
    plat, refs = two_tenants(tmp, clock)
    store = plat.host.objects
    for o in objs:  # written past admission: what a host without a webhook may hold
        name = str(o["name"]) if "name" in o else "x"
        if o["kind"] == "plan":
            store.replace(plan("tenant-a", name, refs["tenant-a"], str(o["cron"])))
        elif o["kind"] == "job":
            ref = (
                refs["tenant-a"]
                if o["app"] == "app"
                else attrs.evolve(refs["tenant-a"], name="gone")
            )
            store.replace(job("tenant-a", name, ref))
        elif o["kind"] == "restore":
            plat.apply(
                f"apiVersion: backups.cozystack.io/v1alpha1\nkind: RestoreJob\n"
                f"metadata: {{name: '{name}', namespace: tenant-a}}\nspec: {{backupRef: {{name: '{o['backup']}'}}}}\n"
            )
        elif o["kind"] == "class":
            store_raw(
                plat,
                FILES_CLASS.replace("spec:\n", f"spec:\n  retention: {{maxAge: {o['age']}}}\n"),
            )
        else:
            store_raw(
                plat,
                f"apiVersion: v1\nkind: Secret\nmetadata: {{name: app-tenant-a-app}}\ndata: {{password: '{o['data']}'}}\n",
            )
    runner = Runner(plat.engine)
    runner.recover()
    for minute in (1, 2):
        clock.t = T0 + dt.timedelta(minutes=minute)
        store.create(job("tenant-b", f"b-{minute}", refs["tenant-b"]))
        report = runner.run_pass()
        phases = {j.metadata.name: j.status.phase for j in report.finished}
        assert phases.get(f"b-{minute}") == "Succeeded", (objs, report)
    for rj in store.list(RestoreJob, "tenant-a"):
        assert rj.status.phase in ("Failed", "Succeeded", "Pending", None)


@pytest.mark.parametrize("cut", [200, 235, 236, 237])
def test_k3_event_names_of_the_longest_objects_are_valid(cut: int) -> None:
    import re

    from cozybackup_core.hosts.kube import event_name

    name = ("a" * 252 + "b")[:cut] + "." + "c" * (252 - cut)  # a dot at or near the cut
    assert len(name) == 253
    got = event_name(name, "0123456789abcdef")
    assert len(got) <= 253
    label = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
    assert re.fullmatch(rf"{label}(\.{label})*", got), got
    assert got.endswith(".0123456789abcdef")
