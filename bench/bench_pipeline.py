"""The core's storage pipeline against the plain tool, measured in the same run.

    python bench/bench_pipeline.py [--mib 1024] [--threads 2]

Feeds the same realistic data (random words, numbers and some random bytes: it
compresses about 3:1, like table dumps) through

  * baseline: ``zstd -3 -T<threads>`` reading a pipe, writing a file;
  * cozybackup: ``ArtifactStore.local`` writer (zstd + two sha256 + manifest), then a
    full verifying read;
  * cozybackup with client-side encryption (AES-256-GCM segments, keyed digest);

in child processes, and prints throughput, peak RSS and the ratio to the baseline.
Run on demand; never part of the test suite's pass/fail.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchkit import WORDS as TEXT_WORDS

CHUNK = 1 << 20
WORDS = [w.encode() for w in TEXT_WORDS]


def make_data(path: Path, mib: int) -> None:
    rnd = random.Random(7)
    with path.open("wb") as f:
        for _ in range(mib):
            parts = []
            size = 0
            while size < CHUNK:
                row = (
                    b"\t".join(
                        (
                            str(rnd.randrange(10**9)).encode(),
                            b" ".join(rnd.choices(WORDS, k=8)),
                            rnd.randbytes(12).hex().encode(),
                            f"{rnd.random():.6f}".encode(),
                        )
                    )
                    + b"\n"
                )
                parts.append(row)
                size += len(row)
            f.write(b"".join(parts)[:CHUNK])


def bench_manifest(writer: Any, format_version: int) -> Any:
    """The manifest of the benchmark's one-stream backup ``u1`` that ``writer`` wrote."""
    from cozybackup_core._storage.store import Manifest

    return Manifest(
        format_version=format_version,
        backup_uid="u1",
        namespace="bench",
        application={},
        driver={},
        strategy_ref={},
        parameters={},
        taken_at="2026-01-01T00:00:00Z",
        streams=tuple(writer.streams),
        encryption=writer.encryption,
    )


def child_cozy(src: str, dest: str, threads: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cozybackup_core import ArtifactKey, ArtifactStore

    store = ArtifactStore.local(dest)
    store.threads = threads
    if os.environ.get("BENCH_ENCRYPT") == "1":
        from cozybackup_core._storage.crypto import KeyRing

        store.keyring = KeyRing(keys=(("k1", os.urandom(32)),), active="k1")
    key = ArtifactKey(namespace="bench", kind="Bench", application="app", uid="u1")
    writer = store.writer(key)
    start = time.monotonic()  # the stream itself, without interpreter start and imports
    with writer.open("data") as out, open(src, "rb") as f:
        while chunk := f.read(CHUNK):
            out.write(chunk)
    writer.commit(bench_manifest(writer, format_version=1))
    if os.environ.get("BENCH_VERIFY") == "1":
        store.reader(key).verify()
    print(f"{time.monotonic() - start:.4f}", flush=True)


def timed(
    argv: list[str], stdin_path: str | None = None, env: dict[str, str] | None = None
) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and stdout of one child (wait4 gives its own rusage)."""
    start = time.monotonic()
    with open(stdin_path or os.devnull, "rb") as stdin:
        proc = subprocess.Popen(
            argv, stdin=stdin, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )
        assert proc.stdout is not None
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    took = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed with {proc.returncode}")
    return took, usage.ru_maxrss / 1024, out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("SRC", "DEST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # the measured process
        child_cozy(args.child[0], args.child[1], args.threads)
        return 0
    with tempfile.TemporaryDirectory(prefix="cozy-bench-") as tmp:
        src = Path(tmp) / "data"
        print(f"generating {args.mib} MiB ...", flush=True)
        make_data(src, args.mib)
        subprocess.run(["cat", str(src)], stdout=subprocess.DEVNULL, check=True)  # warm the cache
        base_s, base_rss, _ = timed(
            ["sh", "-c", f"exec zstd -q -3 -T{args.threads} -c > {tmp}/base.zst"], str(src)
        )
        child = [
            sys.executable,
            __file__,
            "--threads",
            str(args.threads),
            "--child",
            str(src),
            f"{tmp}/bucket",
        ]
        cozy_s, cozy_rss, inner = timed(child)
        ver_s, ver_rss, _ = timed(child, env={"BENCH_VERIFY": "1"})
        inner_s = float(inner.strip())
        shutil.rmtree(f"{tmp}/bucket")
        enc_s, enc_rss, enc_inner = timed(child, env={"BENCH_ENCRYPT": "1"})
        enc_inner_s = float(enc_inner.strip())
        stored = sum(p.stat().st_size for p in Path(tmp, "bucket").rglob("*.zst"))
        base_size = Path(tmp, "base.zst").stat().st_size
        mib = args.mib
        print(f"\n{'':<28}{'seconds':>9}{'MiB/s':>9}{'peak RSS':>11}{'ratio':>8}")
        print(
            f"{'zstd -3 -T' + str(args.threads) + ' (baseline)':<28}{base_s:9.2f}{mib / base_s:9.0f}{base_rss:9.0f} MB{1.0:8.2f}"
        )
        print(
            f"{'cozybackup write':<28}{cozy_s:9.2f}{mib / cozy_s:9.0f}{cozy_rss:9.0f} MB{base_s / cozy_s:8.2f}"
        )
        print(
            f"{'  the stream alone':<28}{inner_s:9.2f}{mib / inner_s:9.0f}{'':>11}{base_s / inner_s:8.2f}"
        )
        print(
            f"{'cozybackup write, encrypted':<28}{enc_s:9.2f}{mib / enc_s:9.0f}{enc_rss:9.0f} MB{base_s / enc_s:8.2f}"
        )
        print(
            f"{'  the stream alone':<28}{enc_inner_s:9.2f}{mib / enc_inner_s:9.0f}{'':>11}{base_s / enc_inner_s:8.2f}"
        )
        print(
            f"{'cozybackup write + verify':<28}{ver_s:9.2f}{mib / ver_s:9.0f}{ver_rss:9.0f} MB{base_s / ver_s:8.2f}"
        )
        print(
            f"\ncompressed: baseline {base_size / 2**20:.0f} MiB, cozybackup {stored / 2**20:.0f} MiB "
            f"(from {mib} MiB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
