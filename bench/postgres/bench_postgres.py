#!/usr/bin/env python3
"""Benchmark: cozybackup's PostgreSQL backup/restore against the plain tools, same run.

    python bench/postgres/bench_postgres.py --scale 70     # ~1 GB database
    python bench/postgres/bench_postgres.py --scale 210    # ~3 GB database

Run on demand (not a test).  Needs the Debian PostgreSQL binaries, ``zstd``, and the
packages ``cozybackup-core`` and ``cozybackup-postgres`` installed in this Python.

The database is ``pgbench -i``'s schema at ``--scale``, with the ``filler`` column of
``pgbench_accounts`` (blank by default, which compresses 170:1) replaced by text that
compresses like real data (words, ids and hex).  Then, in the same run, each measured
as wall time, the peak RSS of the largest process, and the peak RSS of the whole process
tree (sampled every 20 ms):

    backup    cozybackup (CLI ``run --once``, default class, local bucket)
              pg_dump -Fc > file                      (pg_dump's own zlib)
              pg_dump -Fc -Z0 | zstd -T2 > file
    restore   cozybackup (CLI ``run --once``, RestoreJob in place: verify every stream,
              then replace the database, ANALYZE)
              pg_restore of the -Fc file, single job    + ANALYZE
              pg_restore -j2 of the -Fc file            + ANALYZE
              zstd -dc file | pg_restore, single job    + ANALYZE

Restores of the plain tools go into a freshly dropped database; each restore is checked
against the original (row count and an order-independent hash of every row).  Before
each timed method the server checkpoints and the kernel writes back (``settle``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cozybackup_postgres.testing import PostgresServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchkit import NATO, process_tree, rss_bytes

DB = "bench"
#: The benchmark server's settings (the scripts beside this one start theirs alike).
SERVER_SETTINGS = [
    "shared_buffers=256MB",
    "maintenance_work_mem=512MB",
    "max_wal_size=8GB",
    "checkpoint_timeout=30min",
    "autovacuum=off",
    "wal_level=minimal",
    "max_wal_senders=0",
]
WORDS = [*NATO, "order", "invoice", "paid", "shipped", "pending", "customer"]


# ---------------------------------------------------------------------------- measuring


def measure(argv: list[str], *, env: dict[str, str] | None = None, label: str) -> dict[str, Any]:
    """Run a command: wall time and the peak RSS of its whole process tree (sampled)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak_tree = 0
    done = threading.Event()

    def sample() -> None:
        # Cheap on purpose (2 cores are shared with what is measured): the tree is
        # rebuilt from /proc every 0.5 s, the RSS of its processes read every 0.1 s.
        nonlocal peak_tree
        pids: list[int] = []
        tick = 0
        while not done.is_set():
            if tick % 5 == 0:
                pids = process_tree(proc.pid)
            tick += 1
            peak_tree = max(peak_tree, sum(rss_bytes(p) for p in pids) // 1024)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    elapsed = time.monotonic() - started
    done.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(
            f"{label} failed ({proc.returncode}):\n{out.decode()[-2000:]}\n{err.decode()[-4000:]}"
        )
    return {"label": label, "seconds": elapsed, "peak_tree_mb": peak_tree / 1024, "stdout": out}


def timed(argv: list[str], *, env: dict[str, str] | None = None, label: str) -> dict[str, Any]:
    """Like :func:`measure`, plus the largest process's peak RSS from GNU time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        r = measure(["/usr/bin/time", "-f", "%M", "-o", tf.name, *argv], env=env, label=label)
        r["peak_proc_mb"] = int(tf.read().strip().splitlines()[-1]) / 1024
    return r


# ---------------------------------------------------------------------------- the dataset


def words_array() -> str:
    """SQL for the array of ``WORDS``."""
    return "ARRAY[" + ",".join(f"'{w}'" for w in WORDS) + "]"


def word_sql() -> str:
    """SQL for one random word of ``WORDS``, from the array ``w`` in scope."""
    return f"w[1 + (random() * {len(WORDS) - 1})::int]"


def insert_accounts(ids: str) -> str:
    """SQL inserting one ``pgbench_accounts`` row per id of the set-returning ``ids``,
    with a filler that compresses like real data (words, a number and hex)."""
    w = word_sql()
    return f"""
INSERT INTO pgbench_accounts (aid, bid, abalance, filler)
  SELECT g, (g - 1) / 100000 + 1, (random() * 20000)::int - 10000,
         left({w} || ' ' || {w} || ' #' || (random() * 100000)::int || ' '
              || substr(md5(random()::text), 1, 24) || ' ' || {w} || ' ' || {w} || ' ' || {w}, 84)
  FROM {ids} g, (SELECT {words_array()} AS w) v;"""


def make_database(server: PostgresServer, scale: int) -> None:
    pgbench = str(server.bindir / "pgbench")
    env = server.env()
    server.psql(f"CREATE DATABASE {DB}")
    subprocess.run(
        [pgbench, "-i", "-q", "-I", "dt", "-s", str(scale), DB],
        env=env,
        check=True,
        capture_output=True,
    )
    server.psql(
        f"""
INSERT INTO pgbench_branches (bid, bbalance) SELECT g, 0 FROM generate_series(1, {scale}) g;
INSERT INTO pgbench_tellers (tid, bid, tbalance) SELECT g, (g - 1) / 10 + 1, 0
  FROM generate_series(1, {scale * 10}) g;
{insert_accounts("generate_series(1, " + str(scale * 100000) + ")")}
""",
        DB,
    )
    subprocess.run(
        [pgbench, "-i", "-q", "-I", "vp", "-s", str(scale), DB],
        env=env,
        check=True,
        capture_output=True,
    )


def fingerprint(server: PostgresServer) -> str:
    return server.psql(
        "SELECT count(*), sum(hashtext(a::text)::bigint) FROM pgbench_accounts a;"
        "SELECT count(*), sum(hashtext(t::text)::bigint) FROM pgbench_tellers t;",
        DB,
    ).strip()


# ---------------------------------------------------------------------------- cozybackup


def cli_env(home: Path) -> dict[str, str]:
    env = {**os.environ, "COZYBACKUP_HOME": str(home)}
    env.pop("COZYBACKUP_PLUGINS", None)
    # As installed (a wheel, an image), the CLI runs from compiled bytecode: a shell that
    # forbids writing it would make every run compile its modules again (~1 s).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def cli(home: Path, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "cozybackup_core.cli", *args],
        env=cli_env(home),
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        sys.exit(f"cozybackup {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def declare(home: Path, server: PostgresServer) -> None:
    cli(
        home,
        "apply",
        "-f",
        "-",
        stdin=f"""\
apiVersion: v1
kind: Secret
metadata: {{name: bench-superuser}}
stringData: {{username: {server.superuser}, password: "{server.password}"}}
---
apiVersion: local.backups.cozystack.io/v1alpha1
kind: Application
metadata: {{name: bench, namespace: tenant-bench}}
spec:
  kind: Postgres
  connection: {{host: {server.host}, port: {server.port}}}
  credentialsSecretRef: {{name: bench-superuser}}
""",
    )


BACKUPJOB = """\
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupJob
metadata: {{name: {name}, namespace: tenant-bench}}
spec:
  applicationRef: {{apiGroup: apps.cozystack.io, kind: {kind}, name: bench}}
  backupClassName: cozy-default
"""

RESTOREJOB = """\
apiVersion: backups.cozystack.io/v1alpha1
kind: RestoreJob
metadata: {{name: {name}, namespace: tenant-bench}}
spec: {{backupRef: {{name: {backup}}}}}
"""


def get(home: Path, kind: str, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        cli(home, "get", kind, name, "-n", "tenant-bench", "-o", "json")
    )
    return doc


def bucket_bytes(home: Path) -> int:
    """Bytes in the local buckets: packs, indexes and manifests (deduplicated, a
    Backup's data is in shared packs, not under its own folder)."""
    return sum(p.stat().st_size for p in (home / "buckets").rglob("*") if p.is_file())


def summarize(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per method: median and best time over the rounds, the highest RSS seen."""
    out = []
    for label, rs in runs.items():
        times = sorted(r["seconds"] for r in rs)
        out.append(
            {
                "label": label,
                "seconds": statistics.median(times),
                "best": times[0],
                "all": [round(t, 2) for t in times],
                "peak_proc_mb": max(r["peak_proc_mb"] for r in rs),
                "peak_tree_mb": max(r["peak_tree_mb"] for r in rs),
                "output_bytes": rs[0].get("output_bytes"),
            }
        )
    return out


# ---------------------------------------------------------------------------- main


def drop_db(server: PostgresServer) -> None:
    server.psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")


def settle(server: PostgresServer) -> None:
    """Start every method from the same state: no dirty buffers in the server, none in
    the kernel.  Otherwise a method pays for the writes of the one before it (after an
    in-place restore, the previous copy's gigabyte is still being written back), and a
    method that drops a database first throws those writes away: measured, that moved
    the same restore by up to 25% and made an in-place restore look slower than it is."""
    server.psql("CHECKPOINT")
    os.sync()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", type=int, default=70, help="pgbench scale (70 ~ 1 GB, 210 ~ 3 GB)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    ap.add_argument(
        "--backup-repeat", type=int, default=None, help="backup rounds (default: --repeat)"
    )
    ap.add_argument("--workdir", type=Path, default=None, help="where dumps and the bucket go")
    ap.add_argument("--skip-restore", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if not shutil.which("zstd"):
        sys.exit("zstd is needed: apt-get install zstd")

    work = Path(tempfile.mkdtemp(prefix="cozy-bench-", dir=args.workdir))
    server = PostgresServer.start(settings=SERVER_SETTINGS)
    results: dict[str, Any] = {"scale": args.scale, "repeat": args.repeat, "loadavg": []}
    try:
        t = time.monotonic()
        make_database(server, args.scale)
        size = int(server.psql(f"SELECT pg_database_size('{DB}')").strip())
        results["database_bytes"] = size
        print(
            f"database: scale {args.scale}, {size / 1e9:.2f} GB, made in {time.monotonic() - t:.0f} s"
        )
        expected = fingerprint(server)
        env = server.env()
        b = str(server.bindir)
        fc, zst = work / "dump.fc", work / "dump.zst"
        home = work / "home"
        declare(home, server)
        run_once = [sys.executable, "-m", "cozybackup_core.cli", "run", "--once", "-q"]

        # Rounds interleave the methods, so a noisy neighbour slows them all alike.
        backups: dict[str, list[dict[str, Any]]] = {}
        for i in range(args.repeat if args.backup_repeat is None else args.backup_repeat):
            cli(home, "apply", "-f", "-", stdin=BACKUPJOB.format(name=f"b{i}", kind="Postgres"))
            methods: list[tuple[str, list[str], dict[str, str]]] = [
                ("cozybackup backup", run_once, cli_env(home)),
                ("pg_dump -Fc > file", ["sh", "-c", f'exec {b}/pg_dump -Fc -d {DB} > "{fc}"'], env),
                (
                    "pg_dump -Fc -Z0 | zstd -T2 > file",
                    ["sh", "-c", f'{b}/pg_dump -Fc -Z0 -d {DB} | zstd -q -T2 > "{zst}"'],
                    env,
                ),
            ]
            # Each round starts with a different method: no method always runs first.
            order = methods[i % 3 :] + methods[: i % 3]
            stored_before = bucket_bytes(home) if (home / "buckets").is_dir() else 0
            done_ = {}
            for label, argv, e in order:
                settle(server)
                done_[label] = timed(argv, env=e, label=label)
            rnd = [done_[label] for label, _, _ in methods]
            job = get(home, "backupjob", f"b{i}")
            if job["status"]["phase"] != "Succeeded":
                sys.exit(f"backup failed: {job['status'].get('message')}")
            artifact = get(home, "backup", f"b{i}")["status"]["artifact"]
            results["dump_bytes"] = artifact["sizeBytes"]
            # What this backup added to the bucket: the first round stores everything,
            # later rounds only what changed (nothing, here), so the summary keeps round 1's.
            rnd[0]["output_bytes"] = bucket_bytes(home) - stored_before
            rnd[1]["output_bytes"] = fc.stat().st_size
            rnd[2]["output_bytes"] = zst.stat().st_size
            for r in rnd:
                backups.setdefault(r["label"], []).append(r)
            print(f"backup round {i + 1}: " + ", ".join(f"{r['seconds']:.1f}s" for r in rnd))
        results["backup"] = summarize(backups)

        restores: dict[str, list[dict[str, Any]]] = {}
        if not args.skip_restore:
            analyze = f"{b}/psql -X -q -d {DB} -c ANALYZE"
            baselines = [
                ("pg_restore file (1 job)", f'{b}/pg_restore -C -d template1 "{fc}" && {analyze}'),
                ("pg_restore -j2 file", f'{b}/pg_restore -j2 -C -d template1 "{fc}" && {analyze}'),
                (
                    "zstd -dc | pg_restore (1 job)",
                    f'zstd -q -dc "{zst}" | {b}/pg_restore -C -d template1 && {analyze}',
                ),
            ]
            for i in range(args.repeat):
                cli(home, "apply", "-f", "-", stdin=RESTOREJOB.format(name=f"r{i}", backup="b0"))
                server.psql("UPDATE pgbench_tellers SET tbalance = 1 WHERE tid < 5", DB)  # damage
                methods = [
                    ("cozybackup restore (in place)", run_once, cli_env(home)),
                    *[(label, ["sh", "-c", cmd], env) for label, cmd in baselines],
                ]
                order = methods[i % len(methods) :] + methods[: i % len(methods)]
                done_ = {}
                for label, argv, e in order:
                    if label.startswith("cozybackup"):
                        settle(server)
                        done_[label] = timed(argv, env=e, label=label)
                        phase = get(home, "restorejob", f"r{i}")["status"]["phase"]
                        if phase != "Succeeded":
                            sys.exit("restore failed")
                    else:
                        drop_db(server)  # not timed: these restore into a new database
                        settle(server)
                        done_[label] = timed(argv, env=e, label=label)
                    assert fingerprint(server) == expected, f"{label}: restore differs"
                rnd = [done_[label] for label, _, _ in methods]
                for r in rnd:
                    restores.setdefault(r["label"], []).append(r)
                load = Path("/proc/loadavg").read_text().split()[0]
                results["loadavg"].append(float(load))
                print(
                    f"restore round {i + 1}: "
                    + ", ".join(f"{r['seconds']:.1f}s" for r in rnd)
                    + f" (load average {load})"
                )
        results["restore"] = summarize(restores)
    finally:
        server.destroy()
        shutil.rmtree(work, ignore_errors=True)

    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(results: dict[str, Any]) -> None:
    raw = results["dump_bytes"]
    dbsize = results["database_bytes"]
    print(
        f"\nscale {results['scale']}: database {dbsize / 1e9:.2f} GB, dump (pg_dump -Z0) "
        f"{raw / 1e6:.0f} MB; median of {results['repeat']} rounds; MB/s = dump MB / median s"
    )
    if results.get("loadavg"):
        print(f"load average after each restore round: {results['loadavg']}")
    head = (
        f"{'':38} {'median':>7} {'best':>7} {'MB/s':>6} {'output':>8} {'ratio':>6} "
        f"{'RSS max':>8} {'RSS tree':>9}"
    )
    for group in ("backup", "restore"):
        rows = results.get(group) or []
        if not rows:
            continue
        print(f"\n{group}\n{head}")
        for r in rows:
            out = r.get("output_bytes")
            ratio = f"{raw / out:5.1f}x" if out else ""
            outs = f"{out / 1e6:6.0f}MB" if out else ""
            print(
                f"{r['label']:38} {r['seconds']:6.1f}s {r['best']:6.1f}s "
                f"{raw / 1e6 / r['seconds']:6.0f} {outs:>8} {ratio:>6} "
                f"{r['peak_proc_mb']:6.0f}MB {r['peak_tree_mb']:7.0f}MB"
            )
        base, best = rows[0]["seconds"], rows[0]["best"]
        for r in rows[1:]:
            print(
                f"  cozybackup vs {r['label']}: {r['seconds'] / base:.2f}x the throughput "
                f"(best vs best: {r['best'] / best:.2f}x)"
            )


if __name__ == "__main__":
    main()
