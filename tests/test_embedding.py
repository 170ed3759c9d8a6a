"""The embedding example (examples/custom-controller) runs: a controller with its own host
adapter over SQL backs up and restores a real SQLite database through the public API only."""

from __future__ import annotations

import ast
import contextlib
import sqlite3
import subprocess
import sys
from pathlib import Path

from cozybackup_core.testing import backup_class_yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom-controller" / "sqlcontroller.py"

CLASS = backup_class_yaml(
    "files", "SQLiteDatabase", "SQLite", "sqlite", api_group="apps.example.com"
)
JOB = """
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata: {name: nightly-1, namespace: tenant-a}
spec:
  applicationRef: {apiGroup: apps.example.com, kind: SQLiteDatabase, name: shop}
  backupClassName: files
"""
RESTORE = """
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata: {name: rollback-1, namespace: tenant-a}
spec:
  backupRef: {name: nightly-1}
"""


def _controller(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(EXAMPLE), "--db", str(tmp / "platform.db")]
    cmd += ["--buckets", str(tmp / "buckets"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def _ok(tmp: Path, *args: str) -> str:
    run = _controller(tmp, *args)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def _rows(db: Path) -> list[tuple[object, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as c, c:
        return c.execute("SELECT id, name, price, blob FROM items ORDER BY id").fetchall()


def test_a_custom_controller_backs_up_and_restores(tmp_path: Path) -> None:
    app = tmp_path / "apps" / "shop.sqlite"
    app.parent.mkdir()
    with contextlib.closing(sqlite3.connect(app)) as c, c:
        c.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, blob BLOB)")
        c.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?)",
            [(i, f"item {i} ✓", i / 3, bytes(range(i % 256))) for i in range(500)],
        )
    before = _rows(app)
    for name, text in (("class.yaml", CLASS), ("job.yaml", JOB), ("restore.yaml", RESTORE)):
        (tmp_path / name).write_text(text)
    _ok(tmp_path, "app", "tenant-a", "shop", "SQLiteDatabase", "apps.example.com",
        f'{{"path": "{app}"}}')  # fmt: skip
    _ok(tmp_path, "apply", str(tmp_path / "class.yaml"))
    _ok(tmp_path, "apply", str(tmp_path / "job.yaml"))
    out = _ok(tmp_path, "serve", "--once")
    assert "BackupJob/nightly-1: Succeeded" in out
    assert "phase: Ready" in _ok(tmp_path, "get", "backups")

    with contextlib.closing(sqlite3.connect(app)) as c, c:
        c.execute("DELETE FROM items WHERE id % 2 = 0")
    assert _rows(app) != before
    _ok(tmp_path, "apply", str(tmp_path / "restore.yaml"))
    out = _ok(tmp_path, "serve", "--once")
    assert "RestoreJob/rollback-1: Succeeded" in out
    assert _rows(app) == before


def test_a_failure_is_the_jobs_and_the_exit_status_says_so(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(JOB)  # no class "files", no application
    _ok(tmp_path, "apply", str(tmp_path / "job.yaml"))
    run = _controller(tmp_path, "serve", "--once")
    assert run.returncode == 1
    assert "BackupJob/nightly-1: Failed: BackupClass 'files' does not exist" in run.stdout
    assert "Traceback" not in run.stderr


def test_the_example_uses_only_the_public_api() -> None:
    tree = ast.parse(EXAMPLE.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert not node.module.startswith("cozybackup_core."), node.module
        if isinstance(node, ast.Import):
            for a in node.names:
                assert a.name == "cozybackup_core" or not a.name.startswith("cozybackup"), a.name
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "cb":
            assert not node.attr.startswith("_"), node.attr
