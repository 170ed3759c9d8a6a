#!/usr/bin/env python3
"""Benchmark: a PostgreSQL "day series", cozybackup's deduplicating format against borg and
restic, and against cozybackup's stream format, all in the same run.

    python bench/bench_dayseries.py --scale 70               # ~1.1 GB database, 7+1 days
    python bench/bench_dayseries.py --scale 7                # ~110 MB, to try it out
    python bench/bench_dayseries.py --scale 210 --rss-only   # ~3 GB: one dedup backup's RSS

Run on demand (not a test).  Needs the Debian packages postgresql, borgbackup, restic and
time, and ``cozybackup-core`` + ``cozybackup-postgres`` installed in this Python.

The database is ``bench_postgres.make_database``'s (pgbench's schema, a filler that
compresses like real data).  Day 1 is a full backup.  Each following day inserts 0.5% new
rows into ``pgbench_accounts``, updates 1% of its rows (a new balance, a word put in front
of the filler), most of them among the newest rows (an updated row's age, the rows
newer than it, is exponential with mean ``--update-age`` of the table, 1% by default: all
but ~1 in 20,000 updates fall on the newest tenth), runs ``VACUUM ANALYZE`` (what
autovacuum would do, at a fixed point so every tool sees the same data), and backs up.
Days 2-7 are that; day 8 is the worst case, the 1% of updates uniformly random.

Each day, one after the other on the same data, in an order that rotates by day:

    cozybackup   the CLI's ``run --once`` with a BackupJob; the location sets
                 ``deduplication: true`` (local bucket, no encryption)
    borg         pg_dump -Fc -Z0 | borg create --compression zstd,3 --stdin-name ... -
                 (repository ``-e none``)
    restic       pg_dump -Fc -Z0 | restic backup --stdin  (compression auto = zstd;
                 restic always encrypts)

Day 1 also measures full-backup throughput against the stream format (the same location
with ``deduplication: false``): ``--repeat`` rounds, A B A B ..., each dedup round into a
fresh repository.  Day 7 is also backed up in the stream format, and after day 8 day 7 is
restored ``--repeat`` times in rotating order: cozybackup dedup and stream (RestoreJob, in
place: verify, replace the database), ``borg extract --stdout | pg_restore`` and
``restic dump | pg_restore`` (into a freshly dropped database, + ANALYZE); each restore is
checked against day 7's fingerprint.

"Stored bytes added" is the growth of the repository's directory (for cozybackup the
bucket: packs, indexes and the manifest).  Peak RSS is of the largest process (GNU time)
and of the whole process tree (sampled), pg_dump included.

The dump-order study (``--no-order-study`` skips it): each day ``pgbench_accounts`` is read
twice, in heap order (``COPY table``, what pg_dump writes) and in primary-key order
(``COPY (SELECT ... ORDER BY aid)``), each cut by cozybackup's own chunker and hashed; the
bytes of chunks not seen on an earlier day are what a deduplicating store must add before
compression.  Next to them, the text size of the rows actually inserted or updated.
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import blake3
from cozybackup_postgres.testing import PostgresServer

sys.path.insert(0, str(Path(__file__).resolve().parent / "postgres"))
from bench_postgres import (
    BACKUPJOB,
    DB,
    RESTOREJOB,
    cli,
    cli_env,
    declare,
    drop_db,
    fingerprint,
    get,
    insert_accounts,
    make_database,
    timed,
    word_sql,
    words_array,
)

from cozybackup_core._storage.repo.chunking import Chunker

LOCATION = """\
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {{name: cozy-backups}}
spec: {{bucket: cozy-backups, deduplication: {dedup}}}
"""
RUN_ONCE = [sys.executable, "-m", "cozybackup_core.cli", "run", "--once", "-q"]
DUMP_NAME = "bench.dump"

LOADS: list[float] = []


def load_now() -> float:
    load = float(Path("/proc/loadavg").read_text().split()[0])
    LOADS.append(load)
    return load


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------- the tools


class Cozy:
    """cozybackup through its CLI, one home (and bucket) of its own, one application."""

    def __init__(self, home: Path, app: str, kind: str, *, dedup: bool) -> None:
        self.home, self.kind = home, kind
        self.label = "cozybackup" if dedup else "cozybackup stream"
        cli(home, "apply", "-f", "-", stdin=LOCATION.format(dedup=str(dedup).lower()) + app)

    @property
    def repo(self) -> Path:
        return self.home / "buckets"

    def backup(self, name: str) -> dict[str, Any]:
        cli(self.home, "apply", "-f", "-", stdin=BACKUPJOB.format(name=name, kind=self.kind))
        before = dir_bytes(self.repo) if self.repo.exists() else 0
        r = timed(RUN_ONCE, env=cli_env(self.home), label=self.label)
        job = get(self.home, "backupjob", name)
        if job["status"]["phase"] != "Succeeded":
            sys.exit(f"{self.label} {name} failed: {job['status'].get('message')}")
        backup = get(self.home, "backup", name)
        r["added_bytes"] = dir_bytes(self.repo) - before
        r["logical_bytes"] = backup["status"]["artifact"]["sizeBytes"]
        return r

    def restore(self, name: str, run: str) -> dict[str, Any]:
        cli(self.home, "apply", "-f", "-", stdin=RESTOREJOB.format(name=run, backup=name))
        r = timed(RUN_ONCE, env=cli_env(self.home), label=self.label)
        phase = get(self.home, "restorejob", run)["status"]["phase"]
        if phase != "Succeeded":
            sys.exit(f"{self.label} restore {run} failed")
        return r


def cozy_postgres(home: Path, server: PostgresServer, *, dedup: bool) -> Cozy:
    cozy = Cozy(home, "", "Postgres", dedup=dedup)
    declare(home, server)
    return cozy


@attrs.frozen
class Feed:
    """What a peer backs up and restores: ``source`` writes the data to stdout, ``sink``
    reads it back from stdin; ``reset`` runs (untimed) before a restore."""

    source: str
    sink: str
    env: dict[str, str]
    reset: Callable[[], None]


class Piped:
    """A peer fed the data on its stdin (``--stdin``), restored from its stdout."""

    def __init__(
        self, label: str, repo: Path, feed: Feed, env: dict[str, str], *, store: str, dump: str
    ) -> None:
        self.label, self.repo, self.feed, self.env = label, repo, feed, {**feed.env, **env}
        self._store, self._dump = store, dump

    def backup(self, name: str) -> dict[str, Any]:
        before = dir_bytes(self.repo)
        cmd = f"set -o pipefail; {self.feed.source} | {self._store.format(name=name)}"
        r = timed(["bash", "-c", cmd], env=self.env, label=self.label)
        r["added_bytes"] = dir_bytes(self.repo) - before
        return r

    def restore(self, name: str, run: str) -> dict[str, Any]:
        self.feed.reset()  # not timed: these restore into a new database or file
        cmd = f"set -o pipefail; {self._dump.format(name=name)} | {self.feed.sink}"
        return timed(["bash", "-c", cmd], env=self.env, label=self.label)


def borg(work: Path, feed: Feed) -> Piped:
    repo = work / "borg-repo"
    env = {
        "BORG_REPO": str(repo),
        "BORG_BASE_DIR": str(work / "borg-base"),
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
    }
    subprocess.run(["borg", "init", "-e", "none"], env={**os.environ, **env}, check=True)
    return Piped(
        "borg",
        repo,
        feed,
        env,
        store=f"borg create --compression zstd,3 --stdin-name {DUMP_NAME} ::{{name}} -",
        dump="borg extract --stdout ::{name}",
    )


def restic(work: Path, feed: Feed) -> Piped:
    repo = work / "restic-repo"
    env = {
        "RESTIC_REPOSITORY": str(repo),
        "RESTIC_PASSWORD": "bench",
        "RESTIC_CACHE_DIR": str(work / "restic-cache"),
    }
    subprocess.run(
        ["restic", "init", "-q", "--repository-version", "2"],
        env={**os.environ, **env},
        check=True,
    )
    return Piped(
        "restic",
        repo,
        feed,
        env,
        store=f"restic backup -q --stdin --stdin-filename {DUMP_NAME} --tag {{name}}",
        dump=f"restic dump -q --tag {{name}} latest {DUMP_NAME}",
    )


def postgres_feed(server: PostgresServer) -> Feed:
    """``pg_dump -Fc -Z0`` out, ``pg_restore`` into a freshly dropped database + ANALYZE."""
    b = server.bindir
    return Feed(
        source=f"{b}/pg_dump -Fc -Z0 -d {DB}",
        sink=f"{b}/pg_restore -C -d template1 && {b}/psql -X -q -d {DB} -c ANALYZE",
        env=server.env(),
        reset=lambda: drop_db(server),
    )


# ---------------------------------------------------------------------------- the days


def change_day(server: PostgresServer, *, rows: int, age: float | None) -> dict[str, int]:
    """One day's writes: 0.5% new rows, 1% updated, VACUUM ANALYZE.  Returns the counts and
    the text size of the rows written (what actually changed)."""
    inserts, updates = rows // 200, rows // 100
    top = int(server.psql("SELECT max(aid) FROM pgbench_accounts", DB))
    # age None: uniform; else the updated rows' age is exponential with mean age * rows.
    pick = (
        f"greatest(1, {top} - floor(-ln(1 - random()) * {age * top}))"
        if age is not None
        else f"1 + random() * {top - 1}"
    )
    out = server.psql(
        f"""
CREATE TEMP TABLE chosen AS
  SELECT DISTINCT ({pick})::int AS aid FROM generate_series(1, {updates * 3}) LIMIT {updates};
UPDATE pgbench_accounts a SET abalance = a.abalance + (random() * 1000)::int - 500,
       filler = left({word_sql()} || ' ' || a.filler, 84)
  FROM chosen c, (SELECT {words_array()} AS w) v WHERE a.aid = c.aid;
{insert_accounts(f"generate_series({top + 1}, {top + inserts})")}
SELECT count(*), coalesce(sum(octet_length(a::text)), 0)
  FROM pgbench_accounts a WHERE a.aid IN (SELECT aid FROM chosen) OR a.aid > {top};
VACUUM ANALYZE pgbench_accounts;
""",
        DB,
    )
    count, size = (int(x) for x in out.strip().splitlines()[-1].split("|"))
    return {"rows_written": count, "rows_written_bytes": size}


class OrderStudy:
    """New chunk bytes per day of ``pgbench_accounts`` read in heap and in key order."""

    ORDERS = {
        "heap": "COPY pgbench_accounts TO STDOUT",
        "key": "COPY (SELECT * FROM pgbench_accounts ORDER BY aid) TO STDOUT",
    }

    def __init__(self) -> None:
        self.seen: dict[str, set[bytes]] = {k: set() for k in self.ORDERS}

    def day(self, server: PostgresServer) -> dict[str, int]:
        out: dict[str, int] = {}
        for order, sql in self.ORDERS.items():
            seen, new, total = self.seen[order], [0], [0]

            def emit(
                chunk: bytes,
                seen: set[bytes] = seen,
                new: list[int] = new,
                total: list[int] = total,
            ) -> None:
                digest = blake3.blake3(chunk).digest()
                total[0] += len(chunk)
                if digest not in seen:
                    seen.add(digest)
                    new[0] += len(chunk)

            chunker = Chunker(emit)
            proc = subprocess.Popen(
                [str(server.bindir / "psql"), "-X", "-q", "-d", DB, "-c", sql],
                env=server.env(),
                stdout=subprocess.PIPE,
            )
            assert proc.stdout is not None
            while block := proc.stdout.read(1 << 20):
                chunker.write(memoryview(block))
            chunker.finish()
            if proc.wait() != 0:
                sys.exit(f"COPY for the order study failed ({proc.returncode})")
            out[f"{order}_new_bytes"], out[f"{order}_bytes"] = new[0], total[0]
        return out


def rotate(items: list[Any], by: int) -> list[Any]:
    by %= len(items)
    return items[by:] + items[:by]


def run_series(args: argparse.Namespace, server: PostgresServer, work: Path) -> dict[str, Any]:
    rows = int(server.psql("SELECT count(*) FROM pgbench_accounts", DB))
    cozy = cozy_postgres(work / "home-dedup", server, dedup=True)
    stream = cozy_postgres(work / "home-stream", server, dedup=False)
    feed = postgres_feed(server)
    peers = [borg(work, feed), restic(work, feed)]
    study = OrderStudy() if args.order_study else None
    days: list[dict[str, Any]] = []
    full: dict[str, list[dict[str, Any]]] = {"cozybackup": [], "cozybackup stream": []}
    fingerprints: dict[int, str] = {}

    for day in range(1, 9):
        info: dict[str, Any] = {"day": day, "load_before": load_now()}
        if day > 1:
            t = time.monotonic()
            info.update(change_day(server, rows=rows, age=args.update_age if day < 8 else None))
            info["change_seconds"] = time.monotonic() - t
        fingerprints[day] = fingerprint(server)
        if study is not None:
            info["order"] = study.day(server)
        name = f"day{day}"
        tools: list[Cozy | Piped] = [cozy, *peers, *([stream] if day == 7 else [])]
        results = {t.label: t.backup(name) for t in rotate(tools, day)}
        info["order_run"] = list(results)
        if day == 1:
            # Full-backup throughput: dedup (each round a fresh repository) against the
            # stream format, alternating; the series' own day-1 backup is round 1.
            full["cozybackup"].append(results["cozybackup"])
            for i in range(args.repeat):
                fresh = [cozy_postgres(work / f"home-full{i}", server, dedup=True)] if i else []
                for tool in rotate([stream, *fresh], i):
                    full[tool.label].append(tool.backup(f"full{i}" if tool is stream else name))
            for i in range(1, args.repeat):
                shutil.rmtree(work / f"home-full{i}", ignore_errors=True)
        info["tools"] = {
            label: {k: r[k] for k in ("seconds", "added_bytes", "peak_proc_mb", "peak_tree_mb")}
            | ({"logical_bytes": r["logical_bytes"]} if "logical_bytes" in r else {})
            for label, r in results.items()
        }
        info["load_after"] = load_now()
        days.append(info)
        print_day(info)

    out: dict[str, Any] = {"rows": rows, "update_age": args.update_age, "days": days}
    out["full"] = {label: summary(rs) for label, rs in full.items()}
    out["restore"] = restore_day7(args, server, [cozy, stream, *peers], fingerprints[7])
    out["repo_bytes"] = {
        "cozybackup": dir_bytes(cozy.repo),
        **{p.label: dir_bytes(p.repo) for p in peers},
    }
    return out


def restore_day7(
    args: argparse.Namespace, server: PostgresServer, tools: list[Cozy | Piped], expected: str
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {t.label: [] for t in tools}
    for i in range(args.repeat):
        load_now()
        for tool in rotate(tools, i):
            runs[tool.label].append(tool.restore("day7", f"r{i}"))
            if fingerprint(server) != expected:
                sys.exit(f"{tool.label}: the restore of day 7 differs from day 7")
        print(
            f"restore round {i + 1}: "
            + ", ".join(f"{k} {v[-1]['seconds']:.1f}s" for k, v in runs.items()),
            flush=True,
        )
    return {label: summary(rs) for label, rs in runs.items()}


def summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median time over the rounds, the highest RSS seen."""
    return {
        "seconds": statistics.median(r["seconds"] for r in rs),
        "all": [round(r["seconds"], 2) for r in rs],
        "peak_proc_mb": max(r["peak_proc_mb"] for r in rs),
        "peak_tree_mb": max(r["peak_tree_mb"] for r in rs),
    }


# ---------------------------------------------------------------------------- reporting


def mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def print_day(info: dict[str, Any]) -> None:
    tools = ", ".join(
        f"{k} {v['seconds']:.1f}s +{mb(v['added_bytes'])}MB rss {v['peak_proc_mb']:.0f}MB"
        for k, v in info["tools"].items()
    )
    extra = ""
    if "rows_written" in info:
        extra = f" rows {info['rows_written']} ({mb(info['rows_written_bytes'])}MB text)"
    if "order" in info:
        o = info["order"]
        extra += f" new chunks heap {mb(o['heap_new_bytes'])}MB key {mb(o['key_new_bytes'])}MB"
    print(f"day {info['day']} (load {info['load_before']:.2f}):{extra}\n  {tools}", flush=True)


LABELS = ["cozybackup", "borg", "restic"]


def print_restores(restores: dict[str, dict[str, Any]]) -> None:
    """Day 7's restore by each tool: median seconds, every round, peak RSS (MB)."""
    print("restore day 7 (median s, all rounds, largest process MB, tree MB):")
    for k, v in restores.items():
        print(
            f"  {k:18} {v['seconds']:6.1f}s {v['all']} {v['peak_proc_mb']:5.0f} {v['peak_tree_mb']:5.0f}"
        )


def print_days(days: list[dict[str, Any]], repo_bytes: dict[str, int]) -> None:
    """The per-day table (seconds, MB added), days 2-7's sum and the repositories' size."""
    print(f"{'day':>3} " + " ".join(f"{lb + ' s':>12} {lb + ' +MB':>14}" for lb in LABELS))
    for d in days:
        t = d["tools"]
        print(
            f"{d['day']:>3} "
            + " ".join(f"{t[lb]['seconds']:12.1f} {mb(t[lb]['added_bytes']):>14}" for lb in LABELS)
        )
    week = {lb: sum(d["tools"][lb]["added_bytes"] for d in days[1:7]) for lb in LABELS}
    print("added days 2-7: " + ", ".join(f"{k} {mb(v)} MB" for k, v in week.items()))
    print("repository: " + ", ".join(f"{k} {mb(v)} MB" for k, v in repo_bytes.items()))
    print("peak RSS over the series (largest process / tree, MB):")
    for lb in LABELS:
        proc = max(d["tools"][lb]["peak_proc_mb"] for d in days)
        tree = max(d["tools"][lb]["peak_tree_mb"] for d in days)
        print(f"  {lb:18} {proc:5.0f} {tree:5.0f}")


def report(res: dict[str, Any]) -> None:
    print(f"\ndatabase {mb(res['database_bytes'])} MB, {res['rows']} accounts rows")
    print(f"load average (1 min) during the run: {min(LOADS):.2f}-{max(LOADS):.2f}")
    print()
    print_days(res["days"], res["repo_bytes"])
    if res["days"][0].get("order"):
        print("\norder study (new chunk MB before compression; rows written MB as text)")
        for d in res["days"][1:]:
            o = d["order"]
            print(
                f"  day {d['day']}: heap {mb(o['heap_new_bytes'])} key {mb(o['key_new_bytes'])}"
                f" written {mb(d['rows_written_bytes'])}"
            )
    f = res["full"]
    ratio = f["cozybackup stream"]["seconds"] / f["cozybackup"]["seconds"]
    print(
        f"\nfull backup: dedup {f['cozybackup']['all']} stream {f['cozybackup stream']['all']}"
        f" -> dedup throughput {ratio:.2f}x the stream format's (medians)"
    )
    print_restores(res["restore"])


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", type=int, default=70, help="pgbench scale (70 ~ 1.1 GB)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of full backups and restores")
    ap.add_argument("--workdir", type=Path, default=None, help="where the repositories go")
    ap.add_argument(
        "--update-age",
        type=float,
        default=0.01,
        help="mean age of an updated row (rows newer than it), as a share of the table",
    )
    ap.add_argument("--no-order-study", dest="order_study", action="store_false")
    ap.add_argument("--rss-only", action="store_true", help="one dedup backup: time and RSS")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    for tool in ("borg", "restic", "/usr/bin/time"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed: apt-get install borgbackup restic time")

    work = Path(tempfile.mkdtemp(prefix="cozy-days-", dir=args.workdir))
    server = PostgresServer.start(
        settings=[
            "shared_buffers=256MB",
            "maintenance_work_mem=512MB",
            "max_wal_size=8GB",
            "checkpoint_timeout=30min",
            "autovacuum=off",  # VACUUM runs at a fixed point of each day instead
            "wal_level=minimal",
            "max_wal_senders=0",
        ]
    )
    try:
        load_now()
        t = time.monotonic()
        make_database(server, args.scale)
        size = int(server.psql(f"SELECT pg_database_size('{DB}')").strip())
        print(f"database: {size / 1e9:.2f} GB, made in {time.monotonic() - t:.0f} s", flush=True)
        if args.rss_only:
            r = cozy_postgres(work / "home", server, dedup=True).backup("day1")
            res: dict[str, Any] = {"database_bytes": size, "backup": r}
            del r["stdout"]
            print(
                f"dedup backup {r['seconds']:.1f}s, {mb(r['logical_bytes'])} MB dump, "
                f"+{mb(r['added_bytes'])} MB stored, RSS largest {r['peak_proc_mb']:.0f} MB, "
                f"tree {r['peak_tree_mb']:.0f} MB, load {load_now():.2f}"
            )
        else:
            res = {"database_bytes": size, **run_series(args, server, work)}
            report(res)
        res["load"] = [min(LOADS), max(LOADS)]
    finally:
        server.destroy()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    os.environ.pop("COZYBACKUP_PLUGINS", None)
    main()
