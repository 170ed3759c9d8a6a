"""Reading a deduplicated stream under glibc's default allocator and under the settings
that keep its resident memory closer to what is alive, in the same run.

    python bench/bench_allocator.py [--mib 512] [--rounds 5]

Writes ``--mib`` of realistic data (the pipeline benchmark's) into a deduplicating local
store once, then reads it back (every pack checked, the stream read to its end) in a child
process per round, the variants interleaved:

  * default: glibc as it comes (its mmap threshold rises to the largest buffer freed, so
    the reader threads' chunk buffers are reused from their arenas);
  * ``MALLOC_ARENA_MAX=2``: the threads share two arenas;
  * ``MALLOC_MMAP_THRESHOLD_=1048576``: every buffer of 1 MiB or more mapped on its own
    and unmapped when freed.

Prints each variant's median seconds and peak RSS, and the ratios to the default.  The
product keeps the default (docs/architecture.md, "Memory"); the others are what an
operator short of memory can set in the environment.  Run on demand; never part of the
test suite's pass/fail.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_pipeline import bench_manifest, make_data

VARIANTS = {
    "default": {},
    "MALLOC_ARENA_MAX=2": {"MALLOC_ARENA_MAX": "2"},
    "MALLOC_MMAP_THRESHOLD_=1048576": {"MALLOC_MMAP_THRESHOLD_": "1048576"},
}


def _store(root: str) -> tuple[Any, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cozybackup_core import ArtifactKey, ArtifactStore

    store = ArtifactStore.local(root)
    store.deduplicate = True
    store.threads = 2
    return store, ArtifactKey(namespace="bench", kind="Bench", application="app", uid="u1")


def child_write(src: str, root: str) -> None:
    store, key = _store(root)
    writer = store.writer(key)
    with writer.open("data") as out, open(src, "rb") as f:
        while piece := f.read(1 << 20):
            out.write(piece)
    writer.commit(bench_manifest(writer, format_version=3))


def child_read(root: str) -> None:
    store, key = _store(root)
    start = time.monotonic()  # the read itself, without interpreter start and imports
    reader = store.reader(key)
    reader.verify_packs()
    with reader.open("data") as stream:
        while stream.read(1 << 20):
            pass
    print(f"{time.monotonic() - start:.4f}", flush=True)


def timed_read(root: str, env: dict[str, str]) -> tuple[float, float]:
    """Seconds of the read and the child's peak RSS (MiB)."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--read", root],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("a read failed")
    return float(out), usage.ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--read", metavar="ROOT", help=argparse.SUPPRESS)
    ap.add_argument("--write", nargs=2, metavar=("SRC", "ROOT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.read:
        child_read(args.read)
        return 0
    if args.write:
        child_write(*args.write)
        return 0
    with tempfile.TemporaryDirectory(prefix="cozy-bench-") as tmp:
        src, root = Path(tmp) / "data", f"{tmp}/bucket"
        print(f"generating and storing {args.mib} MiB ...", flush=True)
        make_data(src, args.mib)
        subprocess.run([sys.executable, __file__, "--write", str(src), root], check=True)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
        for _ in range(args.rounds):
            for name, env in VARIANTS.items():
                runs[name].append(timed_read(root, env))
        base_s = statistics.median(s for s, _ in runs["default"])
        base_rss = statistics.median(r for _, r in runs["default"])
        print(f"{'variant':32} {'read s':>7} {'x':>5} {'peak RSS MiB':>13} {'x':>5}")
        for name, got in runs.items():
            s = statistics.median(t for t, _ in got)
            rss = statistics.median(r for _, r in got)
            print(f"{name:32} {s:7.2f} {s / base_s:5.2f} {rss:13.0f} {rss / base_rss:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
