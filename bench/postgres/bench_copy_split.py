#!/usr/bin/env python3
"""Experiment: would loading one large table over several connections restore faster?

    python bench/postgres/bench_copy_split.py --scale 70 --repeat 3

``pg_restore`` loads each table with one ``COPY``.  The benchmark database's data is one
large table (``pgbench_accounts``), so the only way to load it over several connections
is to split its rows.  This script measures that idea before anything is built on it,
with the same archive and the same server, interleaved rounds, each from a settled server
(as ``bench_postgres.py``), the old database set aside and dropped after the clock stops
(as an in-place restore does):

    one COPY      zstd -dc | pg_restore --section=pre-data --section=data, then
                  pg_restore -j2 --section=post-data from the file (the driver's split)
    split N       pg_restore --section=pre-data from the file; zstd -dc | pg_restore
                  --section=data -f - (the data as COPY text), each COPY's rows dealt in
                  1 MiB runs of whole lines to N ``psql`` connections; post-data as above

Every restored database is checked against the original's fingerprint.
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

import bench_postgres as bp
from cozybackup_postgres.testing import PostgresServer

RUN = 1 << 20


def deal(source: subprocess.Popen[bytes], psql: list[str], n: int, env: dict[str, str]) -> None:
    """Read ``pg_restore -f -`` output: every ``COPY ... FROM stdin;`` block's rows go in
    runs of whole lines to ``n`` connections; everything else to one ``psql``."""
    assert source.stdout is not None
    src = source.stdout
    rest = subprocess.Popen(
        [*psql, "-q"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env
    )
    assert rest.stdin is not None
    settings: list[str] = []
    pending = b""
    while True:
        nl = pending.find(b"\n")
        if nl < 0:
            more = src.read(RUN)
            if not more:
                break
            pending += more
            continue
        line, pending = pending[: nl + 1], pending[nl + 1 :]
        if not (line.startswith(b"COPY ") and line.rstrip().endswith(b"FROM stdin;")):
            if line.startswith((b"SET ", b"SELECT pg_catalog.set_config")):
                settings.append(line.decode())
            rest.stdin.write(line)
            continue
        copy = [
            subprocess.Popen(
                [*psql, "-c", "".join(settings), "-c", line.decode().strip()],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                env=env,
            )
            for _ in range(n)
        ]
        turn, buf = 0, pending
        while True:
            ended = buf.startswith(b"\\.\n")  # the terminator line, at a line start
            end = 0 if ended else buf.find(b"\n\\.\n") + 1
            if ended or end:
                copy[turn % n].stdin.write(buf[:end])  # type: ignore[union-attr]
                pending = buf[end + 3 :]
                break
            cut = buf.rfind(b"\n") + 1
            if cut and len(buf) >= RUN:
                copy[turn % n].stdin.write(buf[:cut])  # type: ignore[union-attr]
                turn, buf = turn + 1, buf[cut:]
            more = src.read(RUN)
            if not more:
                sys.exit("the archive ended inside a COPY block")
            buf += more
        for p in copy:
            p.stdin.close()  # type: ignore[union-attr]
        if any(p.wait() for p in copy):
            sys.exit("a COPY connection failed")
    rest.stdin.close()
    if rest.wait() or source.wait():
        sys.exit("pg_restore or psql failed")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", type=int, default=70)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--split", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    server = PostgresServer.start(settings=bp.SERVER_SETTINGS)
    try:
        with tempfile.TemporaryDirectory(prefix="cozy-bench-split-") as tmp:
            run(server, Path(tmp), args)
    finally:
        server.destroy()


def run(server: PostgresServer, work: Path, args: argparse.Namespace) -> None:
    bp.make_database(server, args.scale)
    want = bp.fingerprint(server)
    env = {**os.environ, **server.env()}
    tool = {t: str(server.bindir / t) for t in ("pg_dump", "pg_restore", "psql")}
    dump, packed = work / "db.dump", work / "db.dump.zst"
    with dump.open("wb") as f:
        subprocess.run([tool["pg_dump"], "-Fc", "-Z0", "-d", bp.DB], stdout=f, env=env, check=True)
    subprocess.run(["zstd", "-q", "-3", "-T2", str(dump), "-o", str(packed)], check=True)
    psql = [tool["psql"], "-X", "-v", "ON_ERROR_STOP=1", "-d", bp.DB]
    restore = [tool["pg_restore"], "-w", "--exit-on-error"]
    post = [*restore, "--section=post-data", "-j2", "-d", bp.DB, str(dump)]

    def unpacked() -> subprocess.Popen[bytes]:
        return subprocess.Popen(["zstd", "-dc", str(packed)], stdout=subprocess.PIPE)

    def one_copy() -> None:
        z = unpacked()
        pre_data = [*restore, "-C", "--section=pre-data", "--section=data", "-d", "postgres"]
        subprocess.run(pre_data, stdin=z.stdout, env=env, check=True)
        z.wait()

    def split(n: int) -> None:
        pre = [*restore, "-C", "--section=pre-data", "-d", "postgres", str(dump)]
        subprocess.run(pre, env=env, check=True)
        z = unpacked()
        data = subprocess.Popen(
            [tool["pg_restore"], "--section=data", "-f", "-"],
            stdin=z.stdout,
            stdout=subprocess.PIPE,
            env=env,
        )
        deal(data, psql, n, env)
        z.wait()

    methods = {"one COPY": one_copy} | {f"split {n}": (lambda n=n: split(n)) for n in args.split}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(args.repeat):
        for name, load in methods.items():
            bp.settle(server)
            server.psql(f"ALTER DATABASE {bp.DB} RENAME TO {bp.DB}_old")
            started = time.monotonic()
            load()
            subprocess.run(post, env=env, check=True)
            times[name].append(time.monotonic() - started)
            server.psql(f"DROP DATABASE {bp.DB}_old WITH (FORCE)")
            if bp.fingerprint(server) != want:
                sys.exit(f"{name}: the restored database differs from the original")
            print(f"round {r + 1}: {name} {times[name][-1]:.2f} s", flush=True)
    base = statistics.median(times["one COPY"])
    print("\nmethod      median   rounds                 vs one COPY")
    for name, ts in times.items():
        med = statistics.median(ts)
        rounds = ", ".join(f"{t:.2f}" for t in ts)
        print(f"{name:<10} {med:6.2f} s  {rounds:<22} {base / med:.2f}x")


if __name__ == "__main__":
    main()
