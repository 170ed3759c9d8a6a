"""The MariaDB driver against the plain tool pipelines, measured in the same run.

    python bench/mariadb/bench_mariadb.py [--mib 1024] [--threads 2] [--no-restore]

Starts a private MariaDB 10.11 server (127.0.0.1, free port, temp dir, stopped by PID),
loads ``--mib`` MiB of table data that compresses like real data (random words,
numbers, e-mail addresses and hex tokens: about 3:1 with zstd), then measures

  * logical backup:  ``mariadb-dump ... | zstd -3 -T<threads> > file``  vs the driver
    (``mode: logical``) through the engine into a local bucket;
  * physical backup: ``mariabackup --backup --stream=xbstream | zstd ... > file`` vs the
    driver (``mode: physical``);
  * and, unless ``--no-restore``, the restores: ``zstd -dc file | mariadb`` into a
    second server vs the driver's restore to a copy, and ``zstd -dc | mbstream -x`` +
    ``mariabackup --prepare`` vs the driver's physical restore into a fresh instance.

Each case runs in its own child process; the time and the CPU seconds (the child and
the tools it ran) are those of the operation inside it (interpreter start-up and
imports excluded for both sides).  "peak RSS" is the largest sum of the
resident memory of the child and every process under it (tools, shells), sampled every
50 ms; "(python)" is the child Python process's own peak.  The driver's restores verify
every checksum before touching the target, so they read the artifact twice.
Run on demand (needs root and the Debian mariadb-server, mariadb-client, mariadb-backup
and zstd packages); never part of the test suite's pass/fail.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "drivers" / "mariadb" / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from benchkit import WORDS, tree_rss  # noqa: E402 - the benchmarks' shared helpers
from mariadb_server import (  # noqa: E402 - the tests' server helper
    ADMIN_PASSWORD,
    ADMIN_USER,
    MariaDBServer,
    chown_tree,
    make_template,
    private_dir,
)

CHUNK = 1 << 20
TABLES = 4
NS = "bench"


# ---------------------------------------------------------------------------- data


def tsv_row(rnd: random.Random, row_id: int) -> str:
    """One row of the benchmark's tables, as LOAD DATA reads it (no newline)."""
    return "\t".join(
        (
            str(row_id),
            " ".join(rnd.choices(WORDS, k=2)).title(),
            f"{rnd.choice(WORDS)}.{rnd.randrange(10**6)}@example.com",
            " ".join(rnd.choices(WORDS, k=10)),
            f"{rnd.randrange(10**7) / 100:.2f}",
            f"2024-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d} "
            f"{rnd.randrange(24):02d}:{rnd.randrange(60):02d}:00",
            rnd.randbytes(12).hex(),
        )
    )


def make_tsv(path: Path, mib: int, seed: int) -> None:
    rnd = random.Random(seed)
    with path.open("w") as f:
        written, row_id = 0, 0
        while written < mib * CHUNK:
            text = "".join(tsv_row(rnd, row_id + i) + "\n" for i in range(1, 2001))
            row_id += 2000
            f.write(text)
            written += len(text)


def load(server: MariaDBServer, mib: int, work: Path) -> None:
    server.sql("CREATE DATABASE bench CHARACTER SET utf8mb4;")
    for t in range(TABLES):
        tsv = work / f"t{t}.tsv"
        make_tsv(tsv, max(1, mib // TABLES), seed=t)
        chown_tree(work)
        server.sql(
            f"CREATE TABLE bench.t{t} (id BIGINT PRIMARY KEY, name VARCHAR(100), "
            "email VARCHAR(200), note TEXT, amount DECIMAL(12,2), created DATETIME, "
            "token CHAR(24), KEY by_email (email)) ENGINE=InnoDB;"
            f"LOAD DATA INFILE '{tsv}' INTO TABLE bench.t{t};"
        )
        tsv.unlink()


# ---------------------------------------------------------------------------- children


def _platform(home: Path, mode: str) -> Any:
    from cozybackup_mariadb import MariaDBDriver

    from cozybackup_core.testing import LocalPlatform

    plat = LocalPlatform(home, drivers=(MariaDBDriver,))
    params = "{mode: physical}" if mode == "physical" else "{}"
    plat.apply(
        f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {{name: {mode}}}
spec:
  strategies:
  - application: {{apiGroup: apps.cozystack.io, kind: MariaDB}}
    strategyRef: {{kind: MariaDB, name: {mode}}}
    parameters: {params}
"""
    )
    return plat


def _declare(plat: Any, name: str, case: dict[str, Any]) -> Any:
    # The password comes from the parent: the helper makes a new one per process.
    creds = {"username": ADMIN_USER, "password": case["password"]}
    return plat.declare_app(NS, name, "MariaDB", case["conn"], creds)


def child(case: dict[str, Any]) -> dict[str, Any]:
    """One measured operation; returns its seconds and sizes."""
    kind = case["kind"]
    start, cpu0 = time.monotonic(), _cpu()
    out: dict[str, Any] = {}
    if kind == "shell":
        subprocess.run(["bash", "-o", "pipefail", "-c", case["script"]], check=True)
    elif kind == "cozy-backup":
        plat = _platform(Path(case["home"]), case["mode"])
        ref = _declare(plat, "src", case)
        start, cpu0 = time.monotonic(), _cpu()
        job = plat.backup(NS, ref, case["name"], case["mode"])
        if job.status.phase != "Succeeded":
            raise SystemExit(f"backup failed: {job.status.message}")
        backup = next(b for b in plat.backups(NS) if b.metadata.name == case["name"])
        uid = backup.status.artifact.uri.rsplit("/", 1)[1]
        out["stored"] = sum(p.stat().st_size for p in plat.stored_files() if uid in str(p))
        out["raw"] = backup.status.artifact.size_bytes
    elif kind == "cozy-restore":
        plat = _platform(Path(case["home"]), case["mode"])
        target = _declare(plat, "dst-" + case["mode"], case)
        start, cpu0 = time.monotonic(), _cpu()
        job = plat.restore(NS, f"{case['mode']}-0", case["name"], target=target)
        if job.status.phase != "Succeeded":
            raise SystemExit(f"restore failed: {job.status.message}")
    took, cpu = time.monotonic() - start, _cpu() - cpu0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": took, "rss_self": rss, "cpu": cpu, **out}


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the tools) so far."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(case: dict[str, Any]) -> dict[str, Any]:
    """Run one case in a child; sample the whole process tree's RSS while it runs."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(case)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(proc.pid))
            time.sleep(0.05)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{case['kind']} failed:\n{text}")
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    result["rss_tree"] = peak / 2**20
    return result


# ---------------------------------------------------------------------------- main


def median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


class Pairs:
    """Runs (raw, cozybackup) pairs alternately ``repeat`` times; keeps every result."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, list[dict[str, Any]], list[dict[str, Any]]]] = []

    def run(
        self, what: str, raw: tuple[str, Any], cozy: tuple[str, Any], repeat: int
    ) -> list[dict[str, Any]]:
        raws: list[dict[str, Any]] = []
        ours: list[dict[str, Any]] = []
        for i in range(repeat):
            for spec, results in ((raw[1], raws), (cozy[1], ours)):
                spec = spec(i) if callable(spec) else spec
                r = measure({**spec, "password": ADMIN_PASSWORD})
                results.append(r)
            print(
                f"  {what} #{i + 1}: {raw[0]} {raws[-1]['seconds']:.2f}s, "
                f"cozybackup {ours[-1]['seconds']:.2f}s",
                flush=True,
            )
        self.rows.append((what, raw[0], raws, ours))
        return ours

    def print(self, sizes: dict[str, int]) -> None:
        print(
            f"{'case':<46}{'seconds':>8}{'MiB/s':>7}{'CPU s':>7}{'peak RSS':>10}"
            f"{'(python)':>10}{'vs raw':>8}"
        )
        for what, raw_label, raws, ours in self.rows:
            size = sizes["physical" if "physical" in what else "logical"] / 2**20
            base = median([r["seconds"] for r in raws])
            for label, results in ((f"{what}: {raw_label}", raws), (f"{what}: cozybackup", ours)):
                sec = median([r["seconds"] for r in results])
                rss = max(r["rss_tree"] for r in results)
                py = max(r["rss_self"] for r in results)
                cpu = median([r["cpu"] for r in results])
                print(
                    f"{label:<46}{sec:8.2f}{size / sec:7.0f}{cpu:7.1f}{rss:8.0f}MB{py:8.0f}MB"
                    f"{base / sec:8.2f}"
                )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mib", type=int, default=1024, help="table data to load (TSV MiB)")
    ap.add_argument("--threads", type=int, default=2, help="zstd threads of the baseline")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each backup (median)")
    ap.add_argument("--restore-repeat", type=int, default=1, help="runs of each restore")
    ap.add_argument("--no-restore", action="store_true")
    ap.add_argument("--only", choices=["logical", "physical"], help="one mode only")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    if shutil.which("zstd") is None:
        raise SystemExit("zstd is not installed (apt-get install zstd)")

    tmp = private_dir("cozy-bench-mariadb-")
    servers: list[MariaDBServer] = []
    try:
        (tmp / "template").mkdir()
        chown_tree(tmp / "template")
        template = make_template(tmp / "template")

        def server(name: str, *, start: bool = True, data: bool = True) -> MariaDBServer:
            s = MariaDBServer(tmp / name)
            (tmp / name).mkdir()
            # Sized for the data, as a production server would be.
            (tmp / name / "extra-options").write_text("--innodb-buffer-pool-size=1G\n")
            servers.append(s)
            if data:
                shutil.copytree(template, s.datadir, symlinks=True)
            chown_tree(s.base)
            if start:
                s.start()
            return s

        src = server("src")
        print(f"loading {args.mib} MiB of table data ...", flush=True)
        t0 = time.monotonic()
        load(src, args.mib, tmp)
        print(f"  loaded in {time.monotonic() - t0:.0f}s", flush=True)
        cnf = src.option_file(ADMIN_USER, ADMIN_PASSWORD)
        conn = {"host": "127.0.0.1", "port": src.port}
        z = f"zstd -q -3 -T{args.threads}"
        dump = (
            f"mariadb-dump --defaults-file={cnf} --single-transaction --quick --routines "
            "--triggers --events --add-drop-database --databases bench"
        )
        xb = (
            f"mariabackup --defaults-file={cnf} --backup --stream=xbstream "
            f"--target-dir={tmp}/xb --parallel=1 2>/dev/null"
        )
        homes = {m: str(tmp / f"home-{m}") for m in ("logical", "physical")}
        pairs = Pairs()

        def backup(mode: str) -> Any:
            return lambda i: {
                "kind": "cozy-backup",
                "mode": mode,
                "name": f"{mode}-{i}",
                "home": homes[mode],
                "conn": conn,
            }

        print("measuring ...", flush=True)
        sizes: dict[str, int] = {}
        stored: dict[str, tuple[int, int]] = {}
        modes = [args.only] if args.only else ["logical", "physical"]
        if "logical" in modes:
            ours = pairs.run(
                "logical backup",
                ("mariadb-dump | zstd", {"kind": "shell", "script": f"{dump} | {z} > {tmp}/d.zst"}),
                ("cozybackup", backup("logical")),
                args.repeat,
            )
            sizes["logical"] = ours[0]["raw"]
            stored["logical"] = (ours[0]["stored"], (tmp / "d.zst").stat().st_size)
        if "physical" in modes:
            ours = pairs.run(
                "physical backup",
                ("mariabackup | zstd", {"kind": "shell", "script": f"{xb} | {z} > {tmp}/x.zst"}),
                ("cozybackup", backup("physical")),
                args.repeat,
            )
            sizes["physical"] = ours[0]["raw"]
            stored["physical"] = (ours[0]["stored"], (tmp / "x.zst").stat().st_size)
        if not args.no_restore and "logical" in modes:
            dst = server("dst")
            dst_cnf = dst.option_file(ADMIN_USER, ADMIN_PASSWORD)
            pairs.run(
                "logical restore",
                (
                    "zstd -dc | mariadb",
                    {
                        "kind": "shell",
                        "script": f"zstd -dc {tmp}/d.zst | mariadb --defaults-file={dst_cnf}",
                    },
                ),
                (
                    "cozybackup",
                    lambda i: {
                        "kind": "cozy-restore",
                        "mode": "logical",
                        "name": f"r{i}",
                        "home": homes["logical"],
                        "conn": {"host": "127.0.0.1", "port": dst.port},
                    },
                ),
                args.restore_repeat,
            )
        if not args.no_restore and "physical" in modes:
            fresh = server("fresh", start=False, data=False)
            unpacked = tmp / "unpacked"
            pairs.run(
                "physical restore",
                (
                    "mbstream -x + prepare",
                    {
                        "kind": "shell",
                        "script": f"rm -rf {unpacked} && mkdir {unpacked} && zstd -dc {tmp}/x.zst"
                        f" | mbstream -x -C {unpacked} && mariabackup --no-defaults --prepare"
                        f" --target-dir={unpacked} --use-memory=256M 2>/dev/null",
                    },
                ),
                (
                    "cozybackup",
                    lambda i: {
                        "kind": "cozy-restore",
                        "mode": "physical",
                        "name": f"r{i}",
                        "home": homes["physical"],
                        "conn": {
                            "host": "127.0.0.1",
                            "port": fresh.port,
                            "datadir": str(fresh.datadir),
                        },
                    },
                ),
                args.restore_repeat,
            )
        print(
            f"\n{args.mib} MiB of TSV loaded: logical dump {sizes.get('logical', 0) / 2**20:.0f} MiB, "
            f"xbstream {sizes.get('physical', 0) / 2**20:.0f} MiB; baseline compression "
            f"zstd -3 -T{args.threads}; median of {args.repeat} backup runs\n"
        )
        pairs.print(sizes)
        for mode, (cozy, raw) in stored.items():
            print(
                f"stored {mode}: cozybackup {cozy / 2**20:.0f} MiB, raw pipeline {raw / 2**20:.0f} MiB"
            )
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
