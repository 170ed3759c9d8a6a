#!/usr/bin/env python3
"""Benchmark: a VM-disk "day series", cozybackup's deduplicating format against borg and
restic (and the stream format), in the same run.

    python bench/bench_dayseries_vm.py --size-mib 1024     # a 1 GiB qcow2, 7 days

Run on demand (not a test).  Needs qemu-utils, borgbackup, restic and time, and
``cozybackup-core`` + ``cozybackup-kubevirt`` installed in this Python.

The disk is a fully written qcow2 (``qemu-img convert`` of a raw master) whose 64 KiB
blocks are hex text of random bytes: it compresses about 2:1, like real data, and no
block repeats another.  Each day from day 2 rewrites 2% of the blocks, picked uniformly,
with new such content (in the master; the qcow2 is converted again, untimed: a fully
allocated qcow2 rewritten in place keeps its layout, which is what conversion gives too).
Each day, in an order rotating by day: cozybackup (the CLI's ``run --once``, a VMDisk
through the kubevirt driver's local path, location ``deduplication: true``), and
``cat image | borg create --stdin-name`` (zstd,3) and ``cat image | restic backup --stdin``:
the peers store the qcow2 file as their users' scripts do.  Day 1 and day 7 are also
backed up in the stream format.  Then day 7 is restored ``--repeat`` times, rotating:
cozybackup dedup and stream (RestoreJob, in place), ``borg extract --stdout > image`` and
``restic dump > image``, each compared with a copy of day 7's image (``qemu-img compare``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_dayseries import (
    LOADS,
    Cozy,
    Feed,
    Piped,
    borg,
    dir_bytes,
    load_now,
    mb,
    print_days,
    restic,
    rotate,
    summary,
)

BLOCK = 64 << 10
DAYS = 7
SHARE = 0.02  # of the blocks rewritten a day


def app(image: Path) -> str:
    return f"""---
apiVersion: local.backups.cozystack.io/v1alpha1
kind: Application
metadata: {{name: bench, namespace: tenant-bench}}
spec:
  kind: VMDisk
  connection: {{path: "{image}", format: qcow2}}
"""


def block() -> bytes:
    return os.urandom(BLOCK // 2).hex().encode()


def qcow2(master: Path, image: Path) -> None:
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(master), str(image)], check=True
    )


def same(a: Path, b: Path) -> bool:
    out = subprocess.run(["qemu-img", "compare", "-q", str(a), str(b)], check=False)
    return out.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3, help="rounds of the day-7 restores")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cozy-vmdays-", dir=args.workdir))
    try:
        res = series(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


def series(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    master, image, kept = work / "master.raw", work / "disk.qcow2", work / "day7.qcow2"
    blocks = (args.size_mib << 20) // BLOCK
    with master.open("wb") as f:
        for _ in range(blocks):
            f.write(block())
    cozy = Cozy(work / "home-dedup", app(image), "VMDisk", dedup=True)
    stream = Cozy(work / "home-stream", app(image), "VMDisk", dedup=False)
    feed = Feed(
        source=f'cat "{image}"',
        sink=f'cat > "{image}"',
        env=dict(os.environ),
        reset=lambda: image.unlink(missing_ok=True),
    )
    peers: list[Piped] = [borg(work, feed), restic(work, feed)]
    rng = random.Random(7)
    days = []
    for day in range(1, DAYS + 1):
        load = load_now()
        if day > 1:
            fd = os.open(master, os.O_WRONLY)
            try:
                for i in rng.sample(range(blocks), int(blocks * SHARE)):
                    os.pwrite(fd, block(), i * BLOCK)
            finally:
                os.close(fd)
        qcow2(master, image)
        tools: list[Cozy | Piped] = [cozy, *peers, *([stream] if day in (1, 7) else [])]
        results = {t.label: t.backup(f"day{day}") for t in rotate(tools, day)}
        if day == DAYS:
            shutil.copyfile(image, kept)
        info = {
            "day": day,
            "load": load,
            "order_run": list(results),
            "tools": {
                k: {x: r[x] for x in ("seconds", "added_bytes", "peak_proc_mb", "peak_tree_mb")}
                for k, r in results.items()
            },
        }
        days.append(info)
        print(
            f"day {day} (load {load:.2f}): "
            + ", ".join(
                f"{k} {v['seconds']:.1f}s +{mb(v['added_bytes'])}MB"
                for k, v in info["tools"].items()
            ),
            flush=True,
        )
    runs: dict[str, list[dict[str, Any]]] = {}
    restorers: list[Cozy | Piped] = [cozy, stream, *peers]
    for i in range(args.repeat):
        load_now()
        for tool in rotate(restorers, i):
            runs.setdefault(tool.label, []).append(tool.restore(f"day{DAYS}", f"r{i}"))
            if not same(image, kept):
                sys.exit(f"{tool.label}: the restored disk differs from day {DAYS}'s")
    return {
        "size_bytes": blocks * BLOCK,
        "image_bytes": kept.stat().st_size,
        "days": days,
        "restore": {k: summary(v) for k, v in runs.items()},
        "repo_bytes": {t.label: dir_bytes(t.repo) for t in restorers},
        "load": [min(LOADS), max(LOADS)],
    }


def report(res: dict[str, Any]) -> None:
    print(
        f"\ndisk {mb(res['size_bytes'])} MB (qcow2 {mb(res['image_bytes'])} MB); load average"
        f" {res['load'][0]:.2f}-{res['load'][1]:.2f}"
    )
    print_days(res["days"], res["repo_bytes"])
    for k, v in res["restore"].items():
        print(f"restore day 7 {k:18} {v['seconds']:6.1f}s {v['all']} RSS {v['peak_proc_mb']:.0f}MB")


if __name__ == "__main__":
    main()
