"""kill -9 at 155 points (by default) spread over a backup, a restore and a prune, in the
stream format (named) and (backup and prune, whose pass collects garbage) deduplicated
(the built-in location's default), then ``run --once``.

Each run forks a child that runs the real CLI with a line tracer over cozybackup's own
code (and the test driver's); the child SIGKILLs itself when the tracer reaches the
chosen line.  Kill points are stratified over the whole run (measured first), with a
fixed seed, so the same 110 points are tested every time.  After the next ``run --once``:

* no job is left Running;
* every Backup has a committed ArtifactRecord and an artifact that verifies;
* no stored artifact lacks a Backup (no orphaned partial data), no record is half-done;
* a Succeeded BackupJob has its Backup, a Succeeded RestoreJob restored the data;
* deduplicated: every Backup verifies (each chunk read and checked, through the forwards
  of rewritten packs), and no writer marker is left but a committed backup's (one that
  would hold garbage collection back for ever).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import cozybackup_core
from cozybackup_core import Backup, BackupJob, RestoreJob
from cozybackup_core._api.types import ArtifactRecord
from cozybackup_core.testing import LocalPlatform, local_location_yaml

from conftest import FILES_CLASS

NS = "tenant-a"
# 155 kill points in all; nox runs them all on one Python and a fifth on the others.
_POINTS = {
    "backup": 40,
    "restore": 35,
    "prune": 35,
    "dedup-backup": 15,
    "dedup-prune": 10,
    "dedup-gc": 20,  # a prune too, its kill points among garbage collection's own steps
}
_TOTAL = sum(_POINTS.values())
_SCALE = int(os.environ.get("COZYBACKUP_CRASH_RUNS", str(_TOTAL))) / _TOTAL
RUNS = {op: max(3, round(n * _SCALE)) for op, n in _POINTS.items()}
SEED = 20261124
TRACED = (str(Path(cozybackup_core.__file__).parent), str(Path(__file__).parent / "support"))
GC = str(Path(cozybackup_core.__file__).parent / "_storage" / "repo" / "gc.py")
#: What garbage collection changes in storage: a kill before each of these calls (made
#: from gc.py) leaves each state a collection passes through.
GC_STEPS = frozenset(
    {"put_atomic", "write_index", "write_moved", "open_write", "release_writer", "_drop"}
)
ORIGINAL = random.Random(1).randbytes(600_000)
RETAINING_CLASS = FILES_CLASS.replace("spec:\n", "spec:\n  retention: {keepLast: 1}\n", 1)
#: The stream format, named (the built-in location deduplicates: the dedup- operations').
STREAM_LOCATION = local_location_yaml(deduplication=False)


def _day(i: int) -> bytes:
    """Day ``i`` of an application's data, such that once retention keeps only day 3,
    day 0's pack is mostly dead (day 3 shares 2 to 6 of its 16 MiB: chunks are at most
    4 MiB), so it is rewritten, and the packs of days 1 and 2 are all dead."""
    first = random.Random(1).randbytes(16 << 20)
    if i == 0:
        return first
    new = random.Random(100 + i).randbytes(2 << 20)
    return first[: 6 << 20] + new if i == 3 else new


def _job(kind: str, name: str, spec: str) -> str:
    return f"""
apiVersion: backups.cozystack.io/v1alpha1
kind: {kind}
metadata: {{name: {name}, namespace: {NS}}}
spec: {spec}
"""


def _backup_job(name: str) -> str:
    return _job(
        "BackupJob",
        name,
        "{applicationRef: {apiGroup: apps.example.com, kind: Directory, name: app1}, backupClassName: files}",
    )


def _fork_cli(
    home: Path,
    args: list[str],
    kill_at: int = 0,
    count_to: Path | None = None,
    steps: bool = False,
) -> int:
    """Run the CLI in a forked child; return its wait status (negative: killed by signal).
    It counts the lines run in our files, or with ``steps`` garbage collection's steps."""
    assert threading.active_count() == 1, "fork() with live threads could deadlock the child"
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 70
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the child exits
            os.environ["COZYBACKUP_HOME"] = str(home)
            os.environ["COZYBACKUP_PLUGINS"] = "support.drivers"
            lines = 0

            def count() -> None:
                nonlocal lines
                lines += 1
                if lines == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

            def local(frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
                if event == "line":
                    count()
                return local

            def tracer(frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
                if steps:
                    caller = frame.f_back
                    if (
                        frame.f_code.co_name in GC_STEPS
                        and caller
                        and caller.f_code.co_filename == GC
                    ):
                        count()
                    return None
                return local if frame.f_code.co_filename.startswith(TRACED) else None

            sys.settrace(tracer)
            threading.settrace(tracer)
            from cozybackup_core.cli import main

            code = main(args)
            sys.settrace(None)
            if count_to is not None:
                count_to.write_text(str(lines))
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _template(root: Path, op: str) -> Path:
    """A home where ``op`` is about to run: the app, the class, and what it acts on."""
    home = root / "home"
    data = root / "app"
    data.mkdir(parents=True)
    (data / "big.bin").write_bytes(ORIGINAL)
    (data / "small.txt").write_text("x" * 1000)
    plat = LocalPlatform(home)
    plat.apply(FILES_CLASS)
    if not op.startswith("dedup-"):
        plat.apply(STREAM_LOCATION)
    plat.declare_app(NS, "app1", "Directory", {"path": str(data)}, api_group="apps.example.com")
    if op == "backup":
        plat.apply(_backup_job("nightly"))
    elif op == "dedup-backup":
        for i in range(2):  # a repository to deduplicate against
            (data / "big.bin").write_bytes(_day(i))
            plat.apply(_backup_job(f"b{i}"))
            assert _fork_cli(home, ["run", "--once", "-q"]) == 0
        (data / "big.bin").write_bytes(_day(2))
        plat.apply(_backup_job("nightly"))
    elif op == "restore":
        plat.apply(_backup_job("b1"))
        assert _fork_cli(home, ["run", "--once", "-q"]) == 0
        (data / "big.bin").write_bytes(b"damaged")
        plat.apply(_job("RestoreJob", "r1", "{backupRef: {name: b1}}"))
    else:
        for i in range(4):
            if op.startswith("dedup-"):
                (data / "big.bin").write_bytes(_day(i))
            plat.apply(_backup_job(f"b{i}"))
            assert _fork_cli(home, ["run", "--once", "-q"]) == 0
        plat.apply(RETAINING_CLASS)
    return home


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, int]]:
    """Per operation: a template directory and how many traced lines a whole run takes."""
    out = {}
    for op in RUNS:
        root = tmp_path_factory.mktemp(f"template-{op}")
        home = _template(root, op)
        probe = tmp_path_factory.mktemp(f"probe-{op}")
        shutil.copytree(root, probe, dirs_exist_ok=True)
        count = probe / "lines"
        assert _fork_cli(_rehome(probe, root), _args(op), count_to=count, steps=_steps(op)) in (
            0,
            1,
        )
        out[op] = (root, int(count.read_text()))
        assert home.exists()
    return out


def _args(op: str) -> list[str]:
    return ["prune"] if op.endswith(("prune", "gc")) else ["run", "--once", "-q"]


def _steps(op: str) -> bool:
    return op == "dedup-gc"


def _rehome(copy: Path, template: Path) -> Path:
    """The copied home, with the app's path pointed at the copied app directory."""
    home = copy / "home"
    for f in home.rglob("*.yaml"):
        text = f.read_text()
        if str(template) in text:
            f.write_text(text.replace(str(template), str(copy)))
    return home


def _kill_points() -> list[tuple[str, int, int]]:
    return [(op, i, n) for op, n in RUNS.items() for i in range(n)]


def _stratified(i: int, n: int, total: int) -> int:
    rnd = random.Random(SEED * 1000 + i)
    return 1 + int((i + rnd.random()) * (total - 1) / n)


@pytest.mark.parametrize(("op", "i", "n"), _kill_points(), ids=lambda v: str(v))
def test_kill_9_at_any_point_then_run_once_settles(
    templates: dict[str, tuple[Path, int]], tmp_path: Path, op: str, i: int, n: int
) -> None:
    template, total = templates[op]
    # Steps are few: spread evenly, every one of them once there are as many runs.
    kill_at = 1 + (i * total) // n if _steps(op) else _stratified(i, n, total)
    for _ in range(4):
        shutil.rmtree(tmp_path)
        shutil.copytree(template, tmp_path)
        home = _rehome(tmp_path, template)
        first = _fork_cli(home, _args(op), kill_at=kill_at, steps=_steps(op))
        if first == -signal.SIGKILL or kill_at < total * 0.8:
            break
        kill_at = int(kill_at * 0.95)  # this run was shorter than the measured one
    assert first == -signal.SIGKILL, f"the run ended ({first}) before line {kill_at} of {total}"
    assert _fork_cli(home, ["run", "--once", "-q"]) in (0, 1)

    plat = LocalPlatform(home)
    objs = plat.host.objects
    jobs = [*objs.list(BackupJob, NS), *objs.list(RestoreJob, NS)]
    assert all(j.status.phase in ("Succeeded", "Failed") for j in jobs), [
        (j.metadata.name, j.status.phase) for j in jobs
    ]
    backups = objs.list(Backup, NS)
    records = objs.list(ArtifactRecord)
    assert all(r.status.phase == "Committed" for r in records)
    assert sorted(r.spec.backup_name for r in records) == sorted(b.metadata.name for b in backups)
    bucket = Path(plat.host.local_bucket_path("cozy-backups"))
    # <bucket>/<namespace>/<kind>/<application>/<uid>/...
    stored = [p.relative_to(bucket).parts for p in plat.stored_files()]
    stored_uids = {parts[3] for parts in stored if parts[0] != "_repos"}
    assert stored_uids == {r.metadata.name for r in records}, "orphaned or missing artifact data"
    for b in backups:
        plat.engine.verify_backup(NS, b.metadata.name)
    writers = {parts[-1] for parts in stored if parts[0] == "_repos" and "writers" in parts}
    assert writers <= {r.metadata.name for r in records}, "a marker holds collection back"
    for job in objs.list(BackupJob, NS):
        has_backup = any(b.metadata.name == job.metadata.name for b in backups)
        if job.status.phase == "Succeeded":
            assert has_backup or op.endswith(
                ("prune", "gc")
            )  # retention may delete an older job's Backup
        else:
            assert not has_backup

    if op == "restore":
        (r1,) = objs.list(RestoreJob, NS)
        if r1.status.phase == "Succeeded":
            assert (tmp_path / "app" / "big.bin").read_bytes() == ORIGINAL
    if op.endswith(("prune", "gc")):
        assert [b.metadata.name for b in backups] == ["b3"]
