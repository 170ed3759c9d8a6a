#!/usr/bin/env python3
"""Benchmark: the ClickHouse driver's logical mode against plain Native transfers, same run.

    python bench/clickhouse/bench_clickhouse.py                  # 5 million rows
    python bench/clickhouse/bench_clickhouse.py --rows 20000000 --repeat 3

Run on demand (not a test).  Needs the Debian ``clickhouse-server`` (18.16 here), ``curl``
and ``zstd``, and ``cozybackup-core`` + ``cozybackup-clickhouse`` installed in this Python.

Starts a private server (127.0.0.1, free port, temp dir, stopped by PID), loads a table of
``--rows`` rows that compresses like real data (timestamps, ids, an enum, decimals, URLs
and user agents built from words and numbers: about 4:1 under zstd), then measures, in
alternation, ``--repeat`` rounds, medians reported:

    backup    plain      curl ... 'SELECT ... FORMAT Native' > file
              plain+zstd curl ... | zstd -3 -T2 > file          (what the core adds: zstd)
              driver     the engine's BackupJob (logical mode, default class, local bucket):
                         HTTP read, zstd -3 (2 threads), sha256 twice, file write
    restore   plain      curl --data-binary @file '...INSERT ... FORMAT Native' (empty table)
              driver     the engine's RestoreJob in place: verify every stored byte, stage
                         the rows in a scratch database, swap the table in

The driver's cases run in a child process that times only the job (not the interpreter's
start-up); CPU seconds are the child's own plus its children's.  Rows/s and MB/s are
computed on the table's rows and on the size of its Native form (the same bytes every case
moves).  Each restore is checked (row count and ``sum(cityHash64(*))``).
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
from pathlib import Path
from typing import Any

from cozybackup_clickhouse.testing import ADMIN_PASSWORD, ADMIN_USER, ClickHouseServer

COLUMNS = "ts, id, user, kind, amount, url, agent"
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
         "order", "invoice", "paid", "shipped", "pending", "customer", "search", "cart"]  # fmt: skip

DRIVER_CASE = r"""
import json, resource, sys, time
from pathlib import Path
from cozybackup_clickhouse import ClickHouseDriver
from cozybackup_core.testing import LocalPlatform

home, port, password, what, name = sys.argv[1:6]
plat = LocalPlatform(Path(home), drivers=(ClickHouseDriver,))
ref = plat.declare_app("bench", "events", "ClickHouse", {"host": "127.0.0.1", "port": int(port)},
                       {"username": "cozy_admin", "password": password})
started = time.monotonic()
job = plat.backup("bench", ref, name) if what == "backup" else plat.restore("bench", name, name + "-r")
seconds = time.monotonic() - started
if job.status.phase != "Succeeded":
    sys.exit(f"{what} failed: {job.status.message}")
ru = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
cpu = sum(r.ru_utime + r.ru_stime for r in ru)
print(json.dumps({"seconds": seconds, "cpu": cpu, "maxrss_mb": ru[0].ru_maxrss / 1024}))
"""


def make_table(server: ClickHouseServer, rows: int) -> None:
    words = "[" + ",".join(f"'{w}'" for w in WORDS) + "]"
    n = len(WORDS)
    server.run("CREATE DATABASE bench")
    server.run(
        "CREATE TABLE bench.events (ts DateTime, id UInt64, user UInt32,"
        " kind Enum8('view' = 1, 'click' = 2, 'buy' = 3), amount Decimal(12, 2),"
        " url String, agent String) ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY (user, ts)"
    )
    step = 5_000_000
    for start in range(0, rows, step):
        count = min(step, rows - start)
        server.run(
            f"INSERT INTO bench.events SELECT toDateTime('2024-01-01 00:00:00') + intDiv(number, 3),"
            f" number, cityHash64(number) % 100000, 1 + cityHash64(number, 1) % 3,"
            f" toDecimal64((cityHash64(number, 2) % 100000) / 100, 2),"
            f" concat('https://shop.example.com/', {words}[1 + cityHash64(number, 3) % {n}], '/',"
            f" {words}[1 + cityHash64(number, 4) % {n}], '?item=', toString(cityHash64(number, 5) % 50000)),"
            f" concat('Mozilla/5.0 (', {words}[1 + cityHash64(number, 6) % {n}], '; rv:',"
            f" toString(cityHash64(number, 7) % 120), ') ', {words}[1 + cityHash64(number, 8) % {n}])"
            f" FROM numbers({start}, {count})"
        )
    server.run("OPTIMIZE TABLE bench.events FINAL")


def fingerprint(server: ClickHouseServer, table: str = "bench.events") -> str:
    # 18.16's cityHash64 takes no Decimal: hash its text.
    cols = COLUMNS.replace("amount", "toString(amount)")
    return server.run(f"SELECT count(), sum(cityHash64({cols})) FROM {table}").decode().strip()


def curl(server: ClickHouseServer, *args: str) -> list[str]:
    return [
        "curl", "-sS", "--fail", "-H", f"X-ClickHouse-User: {ADMIN_USER}",
        "-H", f"X-ClickHouse-Key: {ADMIN_PASSWORD}", *args,
    ]  # fmt: skip


def timed_shell(cmd: str) -> dict[str, float]:
    before = os.times()
    started = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
    seconds = time.monotonic() - started
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return {"seconds": seconds, "cpu": cpu}


def quote(args: list[str]) -> str:
    return " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)


def plain_backup(server: ClickHouseServer, out: Path, *, zstd: bool) -> dict[str, float]:
    url = f"http://127.0.0.1:{server.http_port}/"
    query = f"SELECT {COLUMNS} FROM bench.events FORMAT Native"
    get = quote(curl(server, "--data-binary", query, url))
    if zstd:
        return timed_shell(f"{get} | zstd -q -3 -T2 -f -o {quote([str(out)])}")
    return timed_shell(f"{get} > {quote([str(out)])}")


def plain_restore(server: ClickHouseServer, native: Path) -> dict[str, float]:
    server.run("DROP TABLE IF EXISTS bench.events")
    server.run(
        "CREATE TABLE bench.events (ts DateTime, id UInt64, user UInt32,"
        " kind Enum8('view' = 1, 'click' = 2, 'buy' = 3), amount Decimal(12, 2),"
        " url String, agent String) ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY (user, ts)"
    )
    url = f"http://127.0.0.1:{server.http_port}/?query=" + (
        f"INSERT%20INTO%20bench.events%20({COLUMNS.replace(' ', '')})%20FORMAT%20Native"
    )
    return timed_shell(quote(curl(server, "-T", str(native), "-X", "POST", url)) + " > /dev/null")


def driver_case(server: ClickHouseServer, home: Path, what: str, name: str) -> dict[str, float]:
    script = home.parent / "driver_case.py"
    script.write_text(DRIVER_CASE)
    out = subprocess.run(
        [sys.executable, str(script), str(home), str(server.http_port), ADMIN_PASSWORD, what, name],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def stored(home: Path, name: str) -> int:
    root = home / "buckets"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and name in str(p))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    for tool in ("curl", "zstd"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed")
    work = Path(tempfile.mkdtemp(prefix="bench-clickhouse-", dir=args.workdir))
    server = ClickHouseServer.start()
    try:
        t = time.monotonic()
        make_table(server, args.rows)
        print(f"loaded {args.rows:,} rows in {time.monotonic() - t:.1f} s", flush=True)
        expected = fingerprint(server)
        native = work / "events.native"
        runs: dict[str, list[dict[str, float]]] = {}
        home = work / "home"
        for r in range(args.repeat):
            runs.setdefault("backup plain", []).append(plain_backup(server, native, zstd=False))
            runs.setdefault("backup plain+zstd", []).append(
                plain_backup(server, work / "events.native.zst", zstd=True)
            )
            runs.setdefault("backup driver", []).append(
                driver_case(server, home, "backup", f"b{r}")
            )
            runs.setdefault("restore plain", []).append(plain_restore(server, native))
            assert fingerprint(server) == expected, "plain restore differs"
            runs.setdefault("restore driver", []).append(
                driver_case(server, home, "restore", f"b{r}")
            )
            assert fingerprint(server) == expected, "driver restore differs"
            print(f"round {r + 1}/{args.repeat} done", flush=True)
        size = native.stat().st_size
        results = {
            "rows": args.rows,
            "native_bytes": size,
            "plain_zstd_bytes": (work / "events.native.zst").stat().st_size,
            "artifact_bytes": stored(home, "") // max(args.repeat, 1),
            "server": server.run("SELECT version()").decode().strip(),
            "loadavg": os.getloadavg(),
            "cases": {
                k: {m: statistics.median(x[m] for x in v) for m in ("seconds", "cpu")}
                for k, v in runs.items()
            },
        }
    finally:
        server.destroy()
        shutil.rmtree(work, ignore_errors=True)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def report(res: dict[str, Any]) -> None:
    rows, size = res["rows"], res["native_bytes"]
    print(
        f"\nClickHouse {res['server']}: {rows:,} rows, {size / 2**20:.0f} MiB in Native form "
        f"(plain zstd -3: {res['plain_zstd_bytes'] / 2**20:.0f} MiB; the driver's artifact: "
        f"{res['artifact_bytes'] / 2**20:.0f} MiB); load average at the end "
        f"{', '.join(f'{x:.1f}' for x in res['loadavg'])}\n"
    )
    print(f"{'case':<20}{'seconds':>9}{'CPU s':>8}{'rows/s':>14}{'MB/s':>9}{'vs plain':>10}")
    cases = res["cases"]
    for name, c in cases.items():
        base = cases[name.split()[0] + " plain"]["seconds"]
        print(
            f"{name:<20}{c['seconds']:>9.2f}{c['cpu']:>8.2f}{rows / c['seconds']:>14,.0f}"
            f"{size / c['seconds'] / 1e6:>9.1f}{base / c['seconds']:>9.2f}x"
        )


if __name__ == "__main__":
    main()
