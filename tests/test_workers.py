"""Jobs whose data moves in workers, with an in-process executor: the runner's side
(dispatch, caps, reconcile, adoption by recovery) and the worker's (WorkerServices: no
tenant-visible write).  tests/kube runs the same with real worker Jobs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cozybackup_core import (
    ApplicationRef,
    ArtifactRecord,
    Backup,
    BackupJob,
    EngineConfig,
    RestoreJob,
)
from cozybackup_core._api.types import (
    ANNOTATION_JOB_UID,
    ArtifactRecordSpec,
    LocalObjectRef,
    ObjectMeta,
    ObjectRef,
)
from cozybackup_core._drivers.contract import AppLocation
from cozybackup_core._engine.executor import Outcome, WorkerState
from cozybackup_core._engine.runner import Runner
from cozybackup_core._engine.workers import WorkerServices, run_in_worker
from cozybackup_core.testing import LocalPlatform

from support.drivers import FilesDriver
from support.manifests import FILES_CLASS, directory_app

NS = "tenant-a"


class InProcessWorkers:
    """Workers that run when the test says so, reporting into this object."""

    def __init__(self, plat: LocalPlatform) -> None:
        self.plat = plat
        self.launched: dict[str, tuple[Any, AppLocation]] = {}
        self.reports: dict[str, dict[str, Any]] = {}
        self.ended: set[str] = set()
        self.released: list[str] = []

    def launch(self, job: Any, app: AppLocation, timeout_seconds: float, tool: Any = None) -> None:
        self.launched.setdefault(job.metadata.name, (job, app))

    def run(self, name: str) -> None:
        job, _app = self.launched[name]
        reports = self.reports.setdefault(name, {})

        def report(what: str, payload: Mapping[str, Any]) -> None:
            reports[what] = dict(payload)

        svc = WorkerServices(self.plat.host, self.plat.engine.plugins, report=report)
        run_in_worker(svc, self.plat.host.objects.get(type(job), NS, name))
        self.ended.add(name)

    def killed(self, name: str) -> None:
        """The worker died after creating its record, before any report."""
        job, app = self.launched[name]
        self.plat.host.objects.create(
            ArtifactRecord(
                metadata=ObjectMeta(
                    name=f"partial-{name}", annotations={ANNOTATION_JOB_UID: job.metadata.uid}
                ),
                spec=ArtifactRecordSpec(
                    storage_ref=LocalObjectRef(name="cozy-backups"),
                    namespace=NS,
                    application_kind=app.ref.kind,
                    application_name=app.ref.name,
                    job_ref=ObjectRef(kind="BackupJob", namespace=NS, name=name),
                    backup_name=name,
                ),
            )
        )
        self.ended.add(name)

    def state(self, job: Any) -> WorkerState | None:
        name = job.metadata.name
        if name not in self.launched:
            return None
        reports = self.reports.get(name, {})
        outcome = reports.get("outcome")
        return WorkerState(
            active=name not in self.ended,
            outcome=Outcome(**outcome) if outcome else None,
            detail="killed",
            progress=reports.get("progress"),
        )

    def release(self, job: Any) -> None:
        self.released.append(job.metadata.name)

    def cancel_strays(self, running: Any) -> list[str]:
        wanted = {j.metadata.name for j in running}
        strays = [n for n in self.launched if n not in wanted and n not in self.ended]
        self.ended.update(strays)
        return strays


def setup(tmp_path: Path, **config: Any) -> tuple[LocalPlatform, InProcessWorkers, ApplicationRef]:
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,), config=EngineConfig(**config))
    plat.apply(FILES_CLASS)
    ref = directory_app(plat, tmp_path / "app", b"d" * 5000)
    workers = InProcessWorkers(plat)
    plat.engine.executor = workers
    return plat, workers, ref


def submit(plat: LocalPlatform, ref: ApplicationRef, name: str) -> None:
    plat.apply(
        f"""
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata: {{name: {name}, namespace: {NS}}}
spec:
  applicationRef: {{apiGroup: {ref.api_group}, kind: {ref.kind}, name: {ref.name}}}
  backupClassName: files
"""
    )


def phase(plat: LocalPlatform, name: str) -> str | None:
    job = plat.host.objects.get(BackupJob, NS, name)
    assert job is not None
    return job.status.phase


def test_a_backup_in_a_worker_is_recorded_by_the_runner(tmp_path: Path) -> None:
    plat, workers, ref = setup(tmp_path)
    submit(plat, ref, "b1")
    runner = Runner(plat.engine, drills=False)
    assert runner.run_pass().finished == ()
    assert phase(plat, "b1") == "Running" and "b1" in workers.launched
    events_before = {e["reason"] for e in plat.host.events(NS, name="b1")}
    # A running worker's progress is copied onto its job by the runner.
    workers.reports["b1"] = {"progress": {"stage": "copying", "bytesDone": 7, "bytesTotal": 9}}
    runner.run_pass()
    running = plat.host.objects.get(BackupJob, NS, "b1")
    assert running is not None and running.status.progress is not None
    assert (running.status.progress.stage, running.status.progress.bytes_done) == ("copying", 7)
    workers.run("b1")
    assert workers.reports["b1"]["progress"]["stage"] != "copying"  # the worker's own
    # The worker wrote the artifact and its record, and nothing a tenant reads.
    assert phase(plat, "b1") == "Running"
    assert plat.host.objects.get(Backup, NS, "b1") is None
    assert {e["reason"] for e in plat.host.events(NS, name="b1")} == events_before == {"Started"}
    assert workers.reports["b1"]["outcome"]["ok"] is True
    (done,) = runner.run_pass().finished
    assert done.status.phase == "Succeeded" and done.status.message.startswith("Backup b1 is ready")
    backup = plat.host.objects.get(Backup, NS, "b1")
    assert backup is not None and backup.status.phase == "Ready"
    assert workers.released == ["b1"]
    # Its restore goes to a worker too, and is recorded the same way.
    assert plat.restore(NS, "b1", "r1").status.phase == "Running" and "r1" in workers.launched
    workers.run("r1")
    (restored,) = runner.run_pass().finished
    assert restored.kind == "RestoreJob" and restored.status.phase == "Succeeded"


def test_a_killed_worker_fails_its_job_and_its_partial_record_goes(tmp_path: Path) -> None:
    plat, workers, ref = setup(tmp_path)
    submit(plat, ref, "k1")
    runner = Runner(plat.engine, drills=False)
    runner.run_pass()
    workers.killed("k1")
    (done,) = runner.run_pass().finished
    assert done.status.phase == "Failed"
    assert done.status.conditions[0].reason == "WorkerFailed"
    assert plat.host.objects.list(ArtifactRecord) == []


def test_recovery_adopts_running_workers_and_settles_the_others(tmp_path: Path) -> None:
    plat, workers, ref = setup(tmp_path, workers=4)
    ref2 = directory_app(plat, tmp_path / "app2", b"e" * 10, name="app2")
    submit(plat, ref, "alive")
    submit(plat, ref2, "lost")
    Runner(plat.engine, drills=False).run_pass()
    assert phase(plat, "alive") == phase(plat, "lost") == "Running"
    del workers.launched["lost"]  # its worker vanished with the old runner
    notes = plat.engine.recover()
    assert any("lost" in n and "interrupted" in n for n in notes), notes
    assert (phase(plat, "alive"), phase(plat, "lost")) == ("Running", "Failed")
    workers.run("alive")
    Runner(plat.engine, drills=False).run_pass()
    assert phase(plat, "alive") == "Succeeded"


def test_one_job_per_application_and_the_caps(tmp_path: Path) -> None:
    plat, workers, ref = setup(tmp_path, workers=3, workers_per_tenant=2)
    ref2 = directory_app(plat, tmp_path / "app2", b"e", name="app2")
    ref3 = directory_app(plat, tmp_path / "app3", b"f", name="app3")
    for name, r in (("a1", ref), ("a2", ref), ("b1", ref2), ("c1", ref3)):
        submit(plat, r, name)
    runner = Runner(plat.engine, drills=False)
    runner.run_pass()
    # a2 waits for a1 (same application); c1 for the tenant's cap of 2.
    assert sorted(workers.launched) == ["a1", "b1"]
    workers.run("a1")
    runner.run_pass()
    assert sorted(workers.launched) == ["a1", "a2", "b1"]
    assert phase(plat, "c1") in (None, "Pending")


def test_deleting_a_running_job_stops_its_worker(tmp_path: Path) -> None:
    plat, workers, ref = setup(tmp_path)
    submit(plat, ref, "gone")
    runner = Runner(plat.engine, drills=False)
    runner.run_pass()
    assert "gone" not in workers.ended
    plat.host.objects.delete(BackupJob, NS, "gone")
    runner.run_pass()
    assert "gone" in workers.ended  # stopped


@pytest.mark.parametrize("in_worker", [False, True])
def test_a_restores_warnings_reach_the_tenant_redacted(tmp_path: Path, in_worker: bool) -> None:
    """``RestoreContext.warn``: a Warning event a warning, and the message counts them;
    inline and through a worker's report alike; the platform's path never shown."""
    plat, workers, ref = setup(tmp_path)
    (tmp_path / "app" / "y.lossy").write_bytes(b"approximately")
    if not in_worker:
        plat.engine.executor = None
    runner = Runner(plat.engine, drills=False)
    submit(plat, ref, "b1")
    runner.run_pass()
    if in_worker:
        workers.run("b1")
        runner.run_pass()
    assert phase(plat, "b1") == "Succeeded"
    plat.restore(NS, "b1", "r1")
    if in_worker:
        workers.run("r1")
        runner.run_pass()
    job = plat.host.objects.get(RestoreJob, NS, "r1")
    assert job is not None and job.status.phase == "Succeeded"
    assert (job.status.message or "").endswith("(1 warning: see the events)")
    [warning] = [e for e in plat.host.events(NS, name="r1") if e["type"] == "Warning"]
    assert warning["reason"] == "RestoreNotExact"
    assert "y.lossy came back changed by the server" in warning["message"]
    assert str(tmp_path) not in warning["message"]
