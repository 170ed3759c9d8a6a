"""A deduplicating writer's memory as its tenant's repository grows.

Before its first chunk a writer loads the id of every indexed chunk of the repository, to
reference instead of store again.  This measures the peak RSS of a process that loads
them for repositories of growing size (synthetic indexes of 25 chunks of 1 MiB a pack,
as a 32 MiB pack holds), two ways in the same run: the writer's ``known_chunks`` (a
temporary SQLite file behind a 4 MiB page cache) and, as the baseline, a dict of every
chunk, what the writer kept before.  Each figure is the median of ``--runs`` child
processes, sizes interleaved.

Run:  python bench/bench_known.py [--chunks 1000,40000,160000] [--runs 3]
"""

from __future__ import annotations

import argparse
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile

from cozybackup_core import ArtifactStore
from cozybackup_core._storage.repo.known import known_chunks
from cozybackup_core._storage.repo.repository import ChunkRef

PER_PACK = 25


def _repository(path: str, chunks: int) -> None:
    repo = ArtifactStore.local(path).repository("tenant-a", sealed=False)
    for _ in range(chunks // PER_PACK):
        pack = repo.new_pack_id()
        refs = [
            ChunkRef(
                id=secrets.token_hex(32), size=1 << 20, pack=pack, offset=i << 20, length=1 << 20
            )
            for i in range(PER_PACK)
        ]
        repo.write_index(pack, refs, "0" * 64)


def _child(path: str, how: str) -> None:
    repo = ArtifactStore.local(path).repository("tenant-a", sealed=False, create=False)
    if how == "sqlite":
        known = known_chunks(repo)
        assert len(known) > 0
    else:
        held = {r.id: r for pack in repo.names("index") for r in repo.read_index(pack)}
        assert held
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", default="1000,40000,160000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--child", nargs=2, metavar=("PATH", "HOW"))
    args = ap.parse_args()
    if args.child:
        _child(*args.child)
        return
    sizes = [int(n) for n in args.chunks.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {n: f"{tmp}/{n}" for n in sizes}
        for n, path in paths.items():
            _repository(path, n)
        peaks: dict[tuple[int, str], list[int]] = {}
        for _ in range(args.runs):
            for n in sizes:
                for how in ("sqlite", "dict"):
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", paths[n], how],
                        check=True,
                        capture_output=True,
                        text=True,
                    ).stdout
                    peaks.setdefault((n, how), []).append(int(out.split()[-1]))
    print(f"{'chunks':>8} {'data':>8} {'known_chunks MiB':>17} {'dict MiB':>9}")
    for n in sizes:
        sq = statistics.median(peaks[(n, "sqlite")])
        dc = statistics.median(peaks[(n, "dict")])
        print(f"{n:>8} {n * 1.25 / 1024:>6.0f}Gi {sq:>17.0f} {dc:>9.0f}")


if __name__ == "__main__":
    main()
