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

Each case runs in its own child process; the time is that of the operation inside it
(interpreter start-up excluded for both sides).  "peak RSS" is the largest sum of the
resident memory of the child and every process under it (tools, shells), sampled every
50 ms; "(python)" is the child Python process's own peak.  The driver's restores verify
every checksum before touching the target, so they read the artifact twice.
Run on demand (needs root and the Debian mariadb-server, mariadb-client, mariadb-backup
and zstd packages); never part of the test suite's pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
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

from mariadb_server import (  # noqa: E402 - the tests' server helper
    ADMIN_PASSWORD,
    ADMIN_USER,
    MariaDBServer,
    chown_tree,
    make_template,
    private_dir,
)

CHUNK = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
TABLES = 4
WORDS = [
    *(
        [
            "select",
            "insert",
            "update",
            "order",
            "customer",
            "invoice",
            "payment",
            "shipped",
            "pending",
            "delivered",
        ]
    ),
    *(
        [
            "alpha",
            "bravo",
            "charlie",
            "delta",
            "echo",
            "foxtrot",
            "golf",
            "hotel",
            "india",
            "juliet",
            "kilo",
            "lima",
            "mike",
        ]
    ),
    *(
        [
            "november",
            "oscar",
            "papa",
            "quebec",
            "romeo",
            "sierra",
            "tango",
            "uniform",
            "victor",
            "whiskey",
            "xray",
        ]
    ),
]
NS = "bench"


# ---------------------------------------------------------------------------- data


def make_tsv(path: Path, mib: int, seed: int) -> None:
    rnd = random.Random(seed)
    with path.open("w") as f:
        written, row_id = 0, 0
        while written < mib * CHUNK:
            rows = []
            for _ in range(2000):
                row_id += 1
                rows.append(
                    "\t".join(
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
                )
            text = "\n".join(rows) + "\n"
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
    start = time.monotonic()
    out: dict[str, Any] = {}
    if kind == "shell":
        subprocess.run(["bash", "-o", "pipefail", "-c", case["script"]], check=True)
    elif kind == "cozy-backup":
        plat = _platform(Path(case["home"]), case["mode"])
        ref = _declare(plat, "src", case)
        start = time.monotonic()
        job = plat.backup(NS, ref, case["mode"], case["mode"])
        if job.status.phase != "Succeeded":
            raise SystemExit(f"backup failed: {job.status.message}")
        out["stored"] = sum(p.stat().st_size for p in plat.stored_files())
        out["raw"] = plat.backups(NS)[0].status.artifact.size_bytes
    elif kind == "cozy-restore":
        plat = _platform(Path(case["home"]), case["mode"])
        target = _declare(plat, "dst-" + case["mode"], case)
        start = time.monotonic()
        job = plat.restore(NS, case["mode"], f"r-{case['mode']}", target=target)
        if job.status.phase != "Succeeded":
            raise SystemExit(f"restore failed: {job.status.message}")
    took = time.monotonic() - start
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": took, "rss_self": me, **out}


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants right now."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == pid and p not in tree]
        tree.update(kids)
        frontier.extend(kids)
    total = 0
    for pid in tree:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


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
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.05)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{case['kind']} failed:\n{text}")
    result: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    result["rss_tree"] = peak / 2**20
    return result


# ---------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mib", type=int, default=1024, help="table data to load (TSV MiB)")
    ap.add_argument("--threads", type=int, default=2, help="zstd threads of the baseline")
    ap.add_argument("--no-restore", action="store_true")
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
        home = tmp / "home"
        rows: list[tuple[str, dict[str, Any], float | None]] = []

        def case(label: str, spec: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
            r = measure({**spec, "password": ADMIN_PASSWORD})
            rows.append((label, r, base["seconds"] / r["seconds"] if base else None))
            print(f"  {label}: {r['seconds']:.2f}s", flush=True)
            return r

        print("measuring ...", flush=True)
        raw_dump = case(
            "logical: mariadb-dump | zstd",
            {"kind": "shell", "script": f"{dump} | {z} > {tmp}/dump.sql.zst"},
            None,
        )
        cozy_dump = case(
            "logical: cozybackup",
            {"kind": "cozy-backup", "mode": "logical", "home": f"{home}-logical", "conn": conn},
            raw_dump,
        )
        raw_xb = case(
            "physical: mariabackup | zstd",
            {"kind": "shell", "script": f"{xb} | {z} > {tmp}/datadir.xb.zst"},
            None,
        )
        cozy_xb = case(
            "physical: cozybackup",
            {"kind": "cozy-backup", "mode": "physical", "home": f"{home}-physical", "conn": conn},
            raw_xb,
        )
        if not args.no_restore:
            dst = server("dst")
            dst_cnf = dst.option_file(ADMIN_USER, ADMIN_PASSWORD)
            raw = case(
                "logical restore: zstd -dc | mariadb",
                {
                    "kind": "shell",
                    "script": f"zstd -dc {tmp}/dump.sql.zst | mariadb --defaults-file={dst_cnf}",
                },
                None,
            )
            case(
                "logical restore: cozybackup",
                {
                    "kind": "cozy-restore",
                    "mode": "logical",
                    "home": f"{home}-logical",
                    "conn": {"host": "127.0.0.1", "port": dst.port},
                },
                raw,
            )
            (tmp / "unpacked").mkdir()
            raw = case(
                "physical restore: unpack + prepare",
                {
                    "kind": "shell",
                    "script": f"zstd -dc {tmp}/datadir.xb.zst | mbstream -x -C {tmp}/unpacked"
                    f" && mariabackup --no-defaults --prepare --target-dir={tmp}/unpacked"
                    " --use-memory=256M 2>/dev/null",
                },
                None,
            )
            fresh = server("fresh", start=False, data=False)
            case(
                "physical restore: cozybackup",
                {
                    "kind": "cozy-restore",
                    "mode": "physical",
                    "home": f"{home}-physical",
                    "conn": {
                        "host": "127.0.0.1",
                        "port": fresh.port,
                        "datadir": str(fresh.datadir),
                    },
                },
                raw,
            )

        dump_size = cozy_dump["raw"]
        xb_size = cozy_xb["raw"]
        print(
            f"\n{args.mib} MiB loaded; logical dump {dump_size / 2**20:.0f} MiB, "
            f"xbstream {xb_size / 2**20:.0f} MiB; zstd -3 -T{args.threads}\n"
        )
        print(
            f"{'case':<38}{'seconds':>8}{'MiB/s':>8}{'peak RSS':>10}{'(python)':>10}{'vs raw':>8}"
        )
        for label, r, ratio in rows:
            size = dump_size if label.startswith("logical") else xb_size
            ratio_text = f"{ratio:8.2f}" if ratio is not None else f"{'1.00':>8}"
            print(
                f"{label:<38}{r['seconds']:8.2f}{size / 2**20 / r['seconds']:8.0f}"
                f"{r['rss_tree']:8.0f}MB{r['rss_self']:8.0f}MB{ratio_text}"
            )
        raw_sizes = {
            "logical": (tmp / "dump.sql.zst").stat().st_size,
            "physical": (tmp / "datadir.xb.zst").stat().st_size,
        }
        print(
            f"\nstored: logical raw {raw_sizes['logical'] / 2**20:.0f} MiB vs cozybackup "
            f"{cozy_dump['stored'] / 2**20:.0f} MiB; physical raw "
            f"{raw_sizes['physical'] / 2**20:.0f} MiB vs cozybackup "
            f"{cozy_xb['stored'] / 2**20:.0f} MiB"
        )
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
