#!/usr/bin/env python3
"""Benchmark: a MariaDB "day series", cozybackup's deduplicating format against borg and
restic, in the same run.

    python bench/bench_dayseries_mariadb.py --mib 256    # ~256 MiB of table data, 7 days
    python bench/bench_dayseries_mariadb.py --mib 32     # to try it out

Run on demand (not a test).  Needs root, the Debian packages mariadb-server,
mariadb-client, borgbackup, restic and time, and ``cozybackup-core`` +
``cozybackup-mariadb`` installed in this Python.

The server and the data are ``bench/mariadb/bench_mariadb.py``'s: a private MariaDB on
127.0.0.1 (stopped by PID), ``--mib`` MiB of TSV in four InnoDB tables of rows that
compress like real data (words, numbers, e-mail addresses, hex tokens).  Day 1 is a
full backup.  Each following day, in every table, inserts 0.5% new rows and updates 1%
of its rows (a new amount, a word put in front of the note), most of them among the
newest rows: an updated row's age (the rows newer than it) is exponential with mean
``--update-age`` of the table, as in the PostgreSQL series.  InnoDB purges old row
versions by itself, and ``mariadb-dump`` reads each table in primary-key order, so an
updated row stays where it was in the dump.

Each day, one after the other on the same data, in an order that rotates by day:

    cozybackup   the CLI's ``run --once`` with a BackupJob of a MariaDB application
                 (driver's logical mode, the default); location ``deduplication: true``
    borg         mariadb-dump ... | borg create --compression zstd,3 --stdin-name ... -
    restic       mariadb-dump ... | restic backup --stdin  (compression auto = zstd)

The peers are fed the ``mariadb-dump`` command the driver runs (its options, same
databases); the driver also stores the accounts and grants (a few KB).  After day 7,
day 7 is restored ``--repeat`` times in rotating order: cozybackup (a RestoreJob, in
place), ``borg extract --stdout | mariadb`` and ``restic dump | mariadb`` (after an
untimed DROP DATABASE); each restore is checked against day 7's fingerprint (row counts
and ``CHECKSUM TABLE`` of every table).  Bytes added, RSS and load are measured as
``bench_dayseries.py`` measures them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
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
    print_restores,
    restic,
    rotate,
    summary,
)

# bench_mariadb puts the MariaDB tests' server helper (mariadb_server) on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent / "mariadb"))
from bench_mariadb import TABLES, load, tsv_row
from benchkit import WORDS
from cozybackup_mariadb._conn import MAX_PACKET  # the driver's own, so the peers match
from mariadb_server import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    MariaDBServer,
    chown_tree,
    make_template,
    private_dir,
)

DAYS = 7
TABLE_NAMES = [f"bench.t{t}" for t in range(TABLES)]


def app(server: MariaDBServer) -> str:
    creds = json.dumps({"username": ADMIN_USER, "password": ADMIN_PASSWORD})
    return f"""---
apiVersion: v1
kind: Secret
metadata: {{name: bench-admin}}
stringData: {creds}
---
apiVersion: local.backups.cozystack.io/v1alpha1
kind: Application
metadata: {{name: bench, namespace: tenant-bench}}
spec:
  kind: MariaDB
  connection: {{host: 127.0.0.1, port: {server.port}}}
  credentialsSecretRef: {{name: bench-admin}}
"""


def mariadb_feed(server: MariaDBServer, cnf: Path) -> Feed:
    """The driver's ``mariadb-dump`` out (logical mode, all user databases: ``bench``),
    the ``mariadb`` client in."""
    return Feed(
        source=(
            f"mariadb-dump --defaults-file={cnf} --single-transaction --quick --routines"
            " --triggers --events --add-drop-database --default-character-set=utf8mb4"
            f" --max-allowed-packet={MAX_PACKET} --databases -- bench"
        ),
        sink=f"mariadb --defaults-file={cnf} --max-allowed-packet={MAX_PACKET}",
        env=dict(os.environ),
        reset=lambda: server.sql("DROP DATABASE bench;"),
    )


def fingerprint(server: MariaDBServer) -> str:
    counts = " UNION ALL ".join(f"SELECT '{t}', COUNT(*) FROM {t}" for t in TABLE_NAMES)
    return server.sql(f"{counts}; CHECKSUM TABLE {', '.join(TABLE_NAMES)};").stdout


def change_day(
    server: MariaDBServer, work: Path, rnd: random.Random, age: float | None
) -> dict[str, int]:
    """One day's writes in every table: 0.5% new rows, 1% updated (skewed to the newest
    when ``age`` is set, else uniform)."""
    written = 0
    word = "ELT(1 + FLOOR(RAND() * {n}), {w})".format(
        n=len(WORDS), w=", ".join(f"'{w}'" for w in WORDS)
    )
    for table in TABLE_NAMES:
        ((top, count),) = (
            map(int, r) for r in server.rows(f"SELECT MAX(id), COUNT(*) FROM {table}")
        )
        inserts, updates = count // 200, count // 100
        chosen: set[int] = set()
        while len(chosen) < updates:
            newer = rnd.expovariate(1 / (age * top)) if age is not None else rnd.random() * top
            chosen.add(max(1, top - int(newer)))
        tsv = work / "new.tsv"
        tsv.write_text("".join(tsv_row(rnd, top + i) + "\n" for i in range(1, inserts + 1)))
        chown_tree(work)
        server.sql(
            f"""
CREATE TEMPORARY TABLE bench.chosen (id BIGINT PRIMARY KEY);
INSERT INTO bench.chosen VALUES {", ".join(f"({i})" for i in sorted(chosen))};
UPDATE {table} a JOIN bench.chosen c USING (id)
   SET a.amount = a.amount + FLOOR(RAND() * 1000) - 500,
       a.note = CONCAT({word}, ' ', SUBSTRING_INDEX(a.note, ' ', 9));
DROP TEMPORARY TABLE bench.chosen;
LOAD DATA INFILE '{tsv}' INTO TABLE {table};
"""
        )
        tsv.unlink()
        written += inserts + len(chosen)
    return {"rows_written": written}


def series(args: argparse.Namespace, server: MariaDBServer, work: Path) -> dict[str, Any]:
    cnf = server.option_file(ADMIN_USER, ADMIN_PASSWORD)
    cozy = Cozy(work / "home-dedup", app(server), "MariaDB", dedup=True)
    feed = mariadb_feed(server, cnf)
    peers = [borg(work, feed), restic(work, feed)]
    tools: list[Cozy | Piped] = [cozy, *peers]
    rnd = random.Random(18)
    days: list[dict[str, Any]] = []
    expected = ""
    for day in range(1, DAYS + 1):
        info: dict[str, Any] = {"day": day, "load_before": load_now()}
        if day > 1:
            info.update(change_day(server, work, rnd, args.update_age))
        expected = fingerprint(server)
        results = {t.label: t.backup(f"day{day}") for t in rotate(tools, day)}
        info["order_run"] = list(results)
        info["tools"] = {
            label: {k: r[k] for k in ("seconds", "added_bytes", "peak_proc_mb", "peak_tree_mb")}
            for label, r in results.items()
        }
        info["logical_bytes"] = results["cozybackup"]["logical_bytes"]
        info["load_after"] = load_now()
        days.append(info)
        print(
            f"day {day} (load {info['load_before']:.2f}): "
            + ", ".join(
                f"{k} {v['seconds']:.1f}s +{mb(v['added_bytes'])}MB rss {v['peak_proc_mb']:.0f}MB"
                for k, v in info["tools"].items()
            ),
            flush=True,
        )
    runs: dict[str, list[dict[str, Any]]] = {t.label: [] for t in tools}
    for i in range(args.repeat):
        load_now()
        for tool in rotate(tools, i):
            runs[tool.label].append(tool.restore(f"day{DAYS}", f"r{i}"))
            if fingerprint(server) != expected:
                sys.exit(f"{tool.label}: the restore of day {DAYS} differs from day {DAYS}")
        print(
            f"restore round {i + 1}: "
            + ", ".join(f"{k} {v[-1]['seconds']:.1f}s" for k, v in runs.items()),
            flush=True,
        )
    return {
        "days": days,
        "restore": {k: summary(v) for k, v in runs.items()},
        "repo_bytes": {t.label: dir_bytes(t.repo) for t in tools},
    }


def report(res: dict[str, Any]) -> None:
    print(
        f"\n{res['mib']} MiB of table data loaded; day-1 dump {mb(res['days'][0]['logical_bytes'])}"
        f" MB, day-7 dump {mb(res['days'][-1]['logical_bytes'])} MB; load average (1 min)"
        f" {res['load'][0]:.2f}-{res['load'][1]:.2f}"
    )
    print_days(res["days"], res["repo_bytes"])
    print_restores(res["restore"])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mib", type=int, default=256, help="table data to load (TSV MiB)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of the day-7 restores")
    ap.add_argument(
        "--update-age",
        type=float,
        default=0.01,
        help="mean age of an updated row (rows newer than it), as a share of the table",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    for tool in ("borg", "restic", "/usr/bin/time"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed: apt-get install borgbackup restic time")

    work = private_dir("cozy-mariadb-days-")
    server = MariaDBServer(work / "src")
    try:
        (work / "template").mkdir()
        chown_tree(work / "template")
        template = make_template(work / "template")
        (work / "src").mkdir()
        (work / "src" / "extra-options").write_text("--innodb-buffer-pool-size=512M\n")
        shutil.copytree(template, server.datadir, symlinks=True)
        chown_tree(server.base)
        server.start()
        load_now()
        print(f"loading {args.mib} MiB of table data ...", flush=True)
        load(server, args.mib, work)
        res = {"mib": args.mib, **series(args, server, work)}
        res["load"] = [min(LOADS), max(LOADS)]
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    os.environ.pop("COZYBACKUP_PLUGINS", None)
    main()
