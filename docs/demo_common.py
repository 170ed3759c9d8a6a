"""What the two demos (``demo.py``, ``demo_sqlite.py``) share: the CLI as a user types
it, timed ``run --once`` passes, and the before/after comparison that decides the exit."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def cli(home: Path, *args: str, stdin: str | None = None) -> None:
    """``cozybackup ARGS`` on ``home``, echoed first; its output goes to the terminal."""
    print(f"$ cozybackup {' '.join(args)}", flush=True)
    cmd = [sys.executable, "-m", "cozybackup_core.cli", "--home", str(home), *args]
    subprocess.run(cmd, input=stdin, text=True, check=True)


def timed_run(home: Path) -> float:
    """``run --once``: the seconds it took (CLI start included)."""
    t = time.monotonic()
    cli(home, "run", "--once")
    return time.monotonic() - t


def stored_mib(home: Path) -> float:
    """MiB the local buckets hold."""
    return sum(p.stat().st_size for p in (home / "buckets").rglob("*") if p.is_file()) / 2**20


def compare(
    before: dict[str, str], after: dict[str, str], *, width: int, digits: int | None = None
) -> None:
    """One line a table: its checksum before the backup and after the restore."""
    for table in sorted(before):
        mark = "ok" if before[table] == after.get(table) else "MISMATCH"
        was, now = before[table][:digits], after.get(table, "-")[:digits]
        print(f"   {table:<{width}} {was}  {now:<{digits or 16}}  {mark}")


def verdict(before: dict[str, str], after: dict[str, str], ok: str) -> int:
    """The exit status: 0 (saying ``ok``) when every table is back, else 1."""
    if before != after:
        print("FAILED: the restored data differs", file=sys.stderr)
        return 1
    print(f"OK: {ok}")
    return 0
