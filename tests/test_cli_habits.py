"""kubectl's habits in the CLI, one test a habit: ``-o wide|name|jsonpath``, ``-l`` on
``get`` and ``delete``, ``--dry-run``, empty results as kubectl says them, a closed pipe
and Ctrl-C without a traceback, shell completion, and ``get -w`` following a job."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from support.cli import TESTS, cli
from support.manifests import directory_class

NS = "tenant-a"
ADMIN = directory_class("tool", "Tool", "t") + (
    "---\napiVersion: local.backups.cozystack.io/v1alpha1\nkind: Application\n"
    f"metadata: {{name: app1, namespace: {NS}}}\n"
    "spec: {apiGroup: apps.example.com, kind: Directory, connection: {script: 'echo dumped'}}\n"
)


def job(name: str, labels: str = "{}") -> str:
    return (
        "---\napiVersion: backups.cozystack.io/v1alpha1\nkind: BackupJob\n"
        f"metadata: {{name: {name}, namespace: {NS}, labels: {labels}}}\n"
        "spec: {applicationRef: {apiGroup: apps.example.com, kind: Directory, name: app1}, "
        "backupClassName: tool}\n"
    )


def env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "COZYBACKUP_HOME": str(home),
        "COZYBACKUP_PLUGINS": "support.drivers",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }


def home_with_jobs(tmp_path: Path, run: bool = True) -> Path:
    home = tmp_path / "home"
    jobs = job("nightly-1", "{tier: db, team: shop}") + job("nightly-2", "{tier: cache}")
    assert cli(home, "apply", "-f", "-", stdin=ADMIN + jobs).returncode == 0
    if run:
        assert cli(home, "run", "--once", "-q").returncode == 0
    return home


def test_output_wide_name_and_jsonpath(tmp_path: Path) -> None:
    home = home_with_jobs(tmp_path)
    wide = cli(home, "get", "bj", "-n", NS, "-o", "wide")
    assert wide.returncode == 0, wide.stderr
    header, *rows = wide.stdout.splitlines()
    assert header.split()[:6] == ["NAME", "PHASE", "DURATION", "APPLICATION", "CLASS", "BACKUP"]
    assert rows[0].split()[:2] == ["nightly-1", "Succeeded"]
    assert rows[0].split()[3:5] == ["Directory/app1", "tool"]
    names = cli(home, "get", "backupjobs", "-n", NS, "-o", "name")
    assert names.stdout == "backupjob/nightly-1\nbackupjob/nightly-2\n"
    path = cli(home, "get", "bj", "-n", NS, "-o", "jsonpath={.items[*].metadata.name}")
    assert path.stdout == "nightly-1 nightly-2"
    loop = 'jsonpath={range .items[*]}{.metadata.name}{"\\t"}{.status.phase}{"\\n"}{end}'
    ranged = cli(home, "get", "bj", "-n", NS, "-o", loop)
    assert ranged.stdout == "nightly-1\tSucceeded\nnightly-2\tSucceeded\n"
    one = cli(home, "get", "bj", "nightly-1", "-n", NS, "-o", "jsonpath={.status.phase}")
    assert one.stdout == "Succeeded"
    bad = cli(home, "get", "bj", "-n", NS, "-o", "jsonpath={.items[}")
    assert bad.returncode == 2 and "error: --output: jsonpath" in bad.stderr
    assert "Traceback" not in bad.stderr
    unknown = cli(home, "get", "bj", "-o", "xml")
    assert unknown.returncode == 2 and "'xml' is not an output format" in unknown.stderr


def test_human_units_in_tables_exact_numbers_in_documents(tmp_path: Path) -> None:
    home = home_with_jobs(tmp_path, run=False)
    ran = cli(home, "run", "--once")  # progress lines on stderr
    assert ran.returncode == 0 and "Traceback" not in ran.stderr, ran.stderr
    progress = [line for line in ran.stderr.splitlines() if line.startswith("BackupJob ")]
    assert progress and all(re.search(r" [0-9.]+ (B|KiB|MiB)\b", line) for line in progress)
    table = cli(home, "get", "backups", "-n", NS).stdout
    assert "SIZE" in table and " B" in table  # a size in units, never bare bytes
    doc = json.loads(cli(home, "get", "backups", "-n", NS, "-o", "json").stdout)
    sizes = [b["status"]["artifact"]["sizeBytes"] for b in doc["items"]]
    assert all(isinstance(s, int) for s in sizes)


def test_label_selectors_on_get_and_delete_with_dry_run(tmp_path: Path) -> None:
    home = home_with_jobs(tmp_path, run=False)
    got = cli(home, "get", "bj", "-n", NS, "-l", "tier=db", "-o", "name")
    assert got.stdout == "backupjob/nightly-1\n"
    assert cli(
        home, "get", "bj", "-n", NS, "-l", "tier in (db, cache),!team", "-o", "name"
    ).stdout == ("backupjob/nightly-2\n")
    assert cli(home, "get", "bj", "-n", NS, "-l", "tier!=db", "-o", "name").stdout == (
        "backupjob/nightly-2\n"
    )
    bad = cli(home, "get", "bj", "-n", NS, "-l", "a b")
    assert bad.returncode == 2 and "--selector" in bad.stderr
    dry = cli(home, "delete", "bj", "-n", NS, "-l", "tier", "--dry-run")
    assert dry.stdout.splitlines() == [
        "backupjob/nightly-1 deleted (dry run)",
        "backupjob/nightly-2 deleted (dry run)",
    ]
    assert cli(home, "get", "bj", "-n", NS, "-o", "name").stdout.count("\n") == 2
    gone = cli(home, "delete", "bj", "-n", NS, "-l", "team=shop")
    assert gone.stdout == "backupjob/nightly-1 deleted\n"
    assert cli(home, "get", "bj", "-n", NS, "-o", "name").stdout == "backupjob/nightly-2\n"
    both = cli(home, "delete", "bj", "nightly-2", "-n", NS, "-l", "tier")
    assert both.returncode == 2 and "give a name or -l SELECTOR" in both.stderr


def test_apply_dry_run_validates_and_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert cli(home, "apply", "-f", "-", stdin=ADMIN).returncode == 0
    dry = cli(home, "apply", "--dry-run", "-f", "-", stdin=job("j1"))
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == "backupjob/j1 created (dry run)\n"
    assert cli(home, "get", "bj", "-n", NS, "-o", "name").stdout == ""
    bad = cli(home, "apply", "--dry-run", "-f", "-", stdin=job("j1").replace("tool", "Bad Name"))
    assert bad.returncode == 2 and "backupClassName" in bad.stderr


def test_empty_results_are_said_as_kubectl_says_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = cli(home, "get", "backups", "-n", "tenant-x")
    assert (out.returncode, out.stdout) == (0, "")
    assert out.stderr == "No resources found in tenant-x namespace.\n"
    missing = cli(home, "get", "bj", "nope", "-n", "tenant-x")
    assert missing.returncode == 1
    assert missing.stderr == 'Error from server (NotFound): BackupJob "nope" not found\n'
    # Documents of nothing are still documents: an empty List.
    listed = json.loads(cli(home, "get", "backups", "-n", "tenant-x", "-o", "json").stdout)
    assert listed == {"apiVersion": "v1", "kind": "List", "items": []}


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """More output than a pipe holds, read by ``head``: the writer meets a closed pipe."""
    home = tmp_path / "home"
    many = "".join(job(f"job-{i:03d}") for i in range(300))
    assert cli(home, "apply", "-f", "-", stdin=ADMIN + many).returncode == 0
    command = f"{sys.executable} -m cozybackup_core.cli get bj -A -o json | head -c 10 >/dev/null"
    done = subprocess.run(
        ["bash", "-c", command + '; echo "writer exit ${PIPESTATUS[0]}" >&2'],
        env=env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert len(cli(home, "get", "bj", "-A", "-o", "json").stdout) > 128 * 1024  # > a pipe
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] in ("writer exit 141", "writer exit 0")


def test_get_w_follows_a_job_until_it_ends_and_ctrl_c_is_quiet(tmp_path: Path) -> None:
    home = home_with_jobs(tmp_path, run=False)
    base = [sys.executable, "-m", "cozybackup_core.cli"]
    watcher = subprocess.Popen(
        [*base, "get", "bj", "nightly-1", "-n", NS, "-w"],
        env=env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().split()[:2] == ["NAME", "PHASE"]
        assert watcher.stdout.readline().split()[:2] == ["nightly-1", "Pending"]
        assert cli(home, "run", "--once", "-q").returncode == 0
        out, err = watcher.communicate(timeout=60)
    finally:
        watcher.kill()
        watcher.wait()
    assert watcher.returncode == 0, err
    assert out.splitlines()[-1].split()[:2] == ["nightly-1", "Succeeded"]

    # Ctrl-C while watching everything (it never ends by itself): exit 130, no traceback.
    # SIGINT at its default in the child, as in a terminal: a shell running this suite in
    # the background has it ignored, and Python then never turns it into Ctrl-C.
    everything = subprocess.Popen(
        [*base, "get", "bj", "-n", NS, "-w"],
        env=env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert everything.stdout is not None
        everything.stdout.readline()
        everything.send_signal(signal.SIGINT)
        _, err = everything.communicate(timeout=30)
    finally:
        everything.kill()
        everything.wait()
    assert everything.returncode == 130
    assert "Traceback" not in err


def test_completion_scripts_and_object_names(tmp_path: Path) -> None:
    home = home_with_jobs(tmp_path, run=False)
    for shell in ("bash", "zsh"):
        script = cli(home, "completion", shell)
        assert script.returncode == 0 and "cozybackup" in script.stdout
    assert "_python_argcomplete" in cli(home, "completion", "bash").stdout

    def complete(line: str) -> list[str]:
        out = tmp_path / "completions"
        done = subprocess.run(
            [sys.executable, "-m", "cozybackup_core.cli"],
            env={
                **env(home),
                "_ARGCOMPLETE": "1",
                "_ARGCOMPLETE_IFS": "\n",
                "COMP_LINE": line,
                "COMP_POINT": str(len(line)),
                "_ARGCOMPLETE_STDOUT_FILENAME": str(out),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return sorted(c.strip() for c in out.read_text().split("\n"))

    assert "describe" in complete("cozybackup des")
    assert complete("cozybackup get backupj") == ["backupjob", "backupjobs"]
    # -n before the kind: argparse has taken the optional NAME by the time it reads a
    # later -n, so completion cannot offer names there (said in docs/cli.md).
    assert complete(f"cozybackup get -n {NS} backupjob night") == ["nightly-1", "nightly-2"]
    assert complete(f"cozybackup describe -n {NS} bj nightly-") == ["nightly-1", "nightly-2"]


def test_worker_resources_are_checked_as_quantities(tmp_path: Path) -> None:
    bad = cli(tmp_path / "home", "controller", "--worker-limits", "memory=lots")
    assert bad.returncode == 2
    assert "--worker-limits: 'lots' is not a quantity" in bad.stderr
    wrong = cli(tmp_path / "home", "controller", "--worker-requests", "gpu=1")
    assert wrong.returncode == 2 and "not RESOURCE=QUANTITY" in wrong.stderr


def test_describe_reads_as_kubectl_describe(tmp_path: Path) -> None:
    """A summary in human units first, the stored spec and status as they are, then events
    with their ages."""
    home = home_with_jobs(tmp_path)
    job = cli(home, "describe", "bj", "nightly-1", "-n", NS)
    assert job.returncode == 0, job.stderr
    head, rest = job.stdout.split("\nSpec:\n", 1)
    fields = dict(line.split(":", 1) for line in head.splitlines() if not line.startswith(" "))
    assert fields["Name"].strip() == "nightly-1" and fields["Kind"].strip() == "BackupJob"
    assert fields["Phase"].strip() == "Succeeded"
    assert fields["Backup"].strip() == "nightly-1"
    assert re.fullmatch(r" *\d+s", fields["Duration"])
    assert "Ready=True (BackupCompleted)" in head
    assert "Status:\n  phase: Succeeded\n" in rest
    events = rest.split("Events:\n", 1)[1].splitlines()
    assert events[0].split() == ["TYPE", "REASON", "AGE", "MESSAGE"]
    assert [e.split()[:2] for e in events[1:]] == [["Normal", "Started"], ["Normal", "Completed"]]
    backup = cli(home, "describe", "backup", "nightly-1", "-n", NS).stdout
    assert re.search(r"^Size: +[0-9.]+ (B|KiB|MiB)$", backup, re.M), backup
    assert re.search(r"^  artifact:\n    uri: .*\n    sizeBytes: \d+$", backup, re.M), backup


def test_start_up_loads_the_jsonpath_parser_and_prometheus_only_when_asked() -> None:
    """Every command pays its imports at start-up (a worker Pod, a shell completion):
    the two that weigh most and serve one option each are loaded for that option only."""
    probe = (
        "import sys, cozybackup_core.cli\n"
        "print(sorted(m for m in ('jsonpath_ng', 'prometheus_client') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
