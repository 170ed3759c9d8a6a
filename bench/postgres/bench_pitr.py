#!/usr/bin/env python3
"""Benchmark: point-in-time recovery, cozybackup's physical mode against pgBackRest, same run.

    python bench/postgres/bench_pitr.py --scale 70 --traffic 600   # the ~1.1 GB database

Run on demand (not a test).  Needs the Debian packages postgresql, pgbackrest and time,
and ``cozybackup-core`` + ``cozybackup-postgres`` installed in this Python.

One server, the existing benchmark's database (``bench_postgres.make_database``), archived
by both at once: pgBackRest through ``archive_command`` (``archive-push``), cozybackup
through its WAL streamer (the runner's stream host, in this process, on ``pg_receivewal``
and a slot).  Then, each measured as wall time and the peak RSS of the largest process and
of the whole process tree:

    backup   cozybackup physical (``cozybackup run --once`` with a BackupJob)
             pgBackRest full backup (compress-type=zst, process-max=2)
             in ``--backup-rounds`` rounds, the tools alternating: the first into empty
             repositories, then the nightly case (each round a full backup again)
    traffic  ``pgbench -c2 -j2`` for ``--traffic`` seconds after the backups; half way it
             pauses, the data is fingerprinted and the time taken is the recovery target
             (the lag of both archives is sampled every second throughout: the WAL
             streamer's own report, and pgBackRest's ``archive_command`` from
             ``pg_stat_archiver``, the baseline in the same run)
    restore  each into a fresh data directory, to that time, until the server promoted:
             cozybackup (``run --once`` with a RestoreJob, ``options.recoveryTime``), and
             ``pgbackrest restore --type=time`` + start + replay + promote

Both restores are checked against the fingerprint taken at the target time.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from cozybackup_postgres._wal import is_segment, segment_of
from cozybackup_postgres.testing import PostgresServer, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_postgres import DB, cli, cli_env, make_database, timed

from cozybackup_core import Engine, EngineConfig, PluginHost, Runner
from cozybackup_core.hosts.local import LocalHost

NS = "tenant-bench"
AS_PG = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
SEGMENT = 16 << 20


def fingerprint(server: PostgresServer, port: int | None = None) -> str:
    env = {**server.env(), "PGPORT": str(port or server.port)}
    out = subprocess.run(
        [
            str(server.bindir / "psql"),
            "-X",
            "-A",
            "-t",
            "-d",
            DB,
            "-c",
            "SELECT (SELECT count(*) FROM pgbench_history), "
            "(SELECT sum(hashtext(a::text)::bigint) FROM pgbench_accounts a), "
            "(SELECT sum(hashtext(t::text)::bigint) FROM pgbench_tellers t), "
            "(SELECT sum(hashtext(b::text)::bigint) FROM pgbench_branches b)",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def owned_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def pgbackrest(conf: Path, *args: str) -> list[str]:
    return [*AS_PG, "pgbackrest", f"--config={conf}", "--stanza=bench", *args]


def ctl(server: PostgresServer, data: Path, port: int, log: Path) -> tuple[list[str], list[str]]:
    base = [*AS_PG, str(server.bindir / "pg_ctl"), "-D", str(data)]
    opts = f"-p {port} -k {data.parent} -c listen_addresses=127.0.0.1 -c archive_mode=off"
    return [*base, "-l", str(log), "-W", "-o", opts, "start"], [*base, "-m", "fast", "-w", "stop"]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scale", type=int, default=70, help="pgbench scale (70 ~ 1.1 GB)")
    ap.add_argument("--traffic", type=int, default=600, help="seconds of pgbench after the backups")
    ap.add_argument(
        "--backup-rounds",
        type=int,
        default=3,
        help="full backups taken by each tool (the first into empty repositories)",
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--partial-seconds", type=int, default=None, help="the class's walPartialSeconds"
    )
    args = ap.parse_args()

    work = owned_dir(Path(tempfile.mkdtemp(prefix="cozy-pitr-bench-", dir=args.workdir)))
    work.chmod(0o755)
    server = PostgresServer.start(
        settings=["shared_buffers=256MB", "max_wal_size=4GB", "checkpoint_timeout=30min"],
        parent=work,
    )
    conf = work / "pgbackrest.conf"
    conf.write_text(
        f"""[global]
repo1-path={owned_dir(work / "pgbr-repo")}
log-path={owned_dir(work / "pgbr-log")}
lock-path={owned_dir(work / "pgbr-lock")}
spool-path={owned_dir(work / "pgbr-spool")}
compress-type=zst
process-max=2
start-fast=y
log-level-console=warn

[bench]
pg1-path={server.data}
pg1-port={server.port}
pg1-socket-path={server.root}
pg1-user={server.superuser}
"""
    )
    conf.chmod(0o644)
    runner: Runner | None = None
    restored: list[tuple[list[str], Path]] = []
    results: dict[str, Any] = {"scale": args.scale, "trafficSeconds": args.traffic}
    try:
        server.psql(
            f"ALTER SYSTEM SET archive_mode = on; ALTER SYSTEM SET archive_command = "
            f"'pgbackrest --config={conf} --stanza=bench archive-push %p'"
        )
        server.stop()
        server.restart()
        t = time.monotonic()
        make_database(server, args.scale)
        results["databaseBytes"] = int(server.psql(f"SELECT pg_database_size('{DB}')").strip())
        print(f"database: {results['databaseBytes'] / 1e9:.2f} GB in {time.monotonic() - t:.0f} s")
        subprocess.run(pgbackrest(conf, "stanza-create"), check=True, capture_output=True)

        home = work / "home"
        cli(home, "apply", "-f", "-", stdin=_admin(server, args.partial_seconds))
        # The WAL streamer, as `cozybackup run` hosts it (here, so that `run --once`
        # below can take the runner lock for the jobs).
        server.psql("CHECKPOINT")  # the slot reserves WAL from the last checkpoint on
        engine = Engine(LocalHost(home), PluginHost.load(), EngineConfig())
        runner = Runner(engine, streams_dir=home / "streams")
        assert runner.streams is not None
        runner.streams.reconcile()
        _wait(
            lambda: (
                server.psql("SELECT count(*) FROM pg_replication_slots WHERE active").strip() == "1"
            )
        )
        lags: list[dict[str, Any]] = []
        baseline: list[dict[str, Any]] = []
        loads: list[float] = []
        sampling = threading.Event()
        phase = ["backups"]

        def sample() -> None:
            while not sampling.wait(1.0):
                assert runner is not None and runner.streams is not None
                lags.extend({**lag, "phase": phase[0]} for lag in runner.streams.lags().values())
                baseline.append({**_archiver_lag(server), "phase": phase[0]})
                loads.append(float(Path("/proc/loadavg").read_text().split()[0]))
                runner.streams.reconcile()

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        _caught_up(runner, server)  # the backups do not compete with a catching-up streamer
        run_once = [sys.executable, "-m", "cozybackup_core.cli", "run", "--once", "-q"]
        results["backup"] = []
        for n in range(args.backup_rounds):
            # Round 1 writes into empty repositories; later rounds are the nightly case:
            # another full backup each (pgBackRest copies every file again, cozybackup
            # stores only chunks its repository lacks).  The tools alternate going first.
            name = "base" if n == 0 else f"base-{n + 1}"
            cli(home, "apply", "-f", "-", stdin=_job("BackupJob", name, ""))
            methods = [
                (run_once, cli_env(home), "cozybackup physical backup"),
                (pgbackrest(conf, "--type=full", "backup"), None, "pgBackRest full backup"),
            ]
            done = {
                label: timed(argv, env=env, label=label)
                for argv, env, label in (methods if n % 2 == 0 else methods[::-1])
            }
            ours, theirs = done[methods[0][2]], done[methods[1][2]]
            results["backup"] += [{**_row(r), "round": n + 1} for r in (ours, theirs)]
            print(
                f"backup round {n + 1}: cozybackup {ours['seconds']:.1f}s, "
                f"pgBackRest {theirs['seconds']:.1f}s"
            )

        pgbench = [str(server.bindir / "pgbench"), "-c2", "-j2", "-n", DB]
        half = args.traffic // 2
        phase[0] = "traffic"
        subprocess.run([*pgbench, f"-T{half}"], env=server.env(), check=True, capture_output=True)
        target = server.psql("SELECT clock_timestamp()").strip()
        expected = fingerprint(server)
        subprocess.run(
            [*pgbench, f"-T{args.traffic - half}"],
            env=server.env(),
            check=True,
            capture_output=True,
        )
        subprocess.run(
            pgbackrest(conf, "check"), check=True, capture_output=True
        )  # archives the last segment
        end = server.psql("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").strip()
        _wait(
            lambda: lags and lags[-1]["lagBytes"] is not None and lags[-1]["lagBytes"] < 16 << 20,
            300,
        )
        sampling.set()
        sampler.join()
        results["streaming"] = {
            "walBytes": int(end),
            "loadAverage": {"median": statistics.median(loads or [0]), "max": max(loads or [0])},
        }
        for name in ("backups", "traffic"):
            results["streaming"][name] = {
                "cozybackup": _lag_figures(lags, name),
                "pgBackRest archive_command": _lag_figures(baseline, name),
            }
        print(f"streaming: {json.dumps(results['streaming'], indent=1)}")

        # cozybackup: into a fresh data directory declared as an application.
        port = free_port()
        data = owned_dir(work / "ours") / "data"
        start, stop = ctl(server, data, port, work / "ours.log")
        cli(home, "apply", "-f", "-", stdin=_target(server, data, port, start, stop))
        cli(home, "apply", "-f", "-", stdin=_job("RestoreJob", "pitr", target.replace(" ", "T")))
        ours = timed(run_once, env=cli_env(home), label="cozybackup restore to the target time")
        restored.append((stop, data))
        assert fingerprint(server, port) == expected, "cozybackup: restored data differs"
        subprocess.run(stop, check=True, capture_output=True)

        # pgBackRest: restore, start, replay to the same time, promote.
        port2 = free_port()
        data2 = owned_dir(work / "theirs") / "data"
        start2, stop2 = ctl(server, data2, port2, work / "theirs.log")
        restore_argv = pgbackrest(
            conf,
            f"--pg1-path={data2}",
            "--type=time",
            f"--target={target}",
            "--target-action=promote",
            "restore",
        )
        script = (
            f"{shlex.join(restore_argv)} && {shlex.join(start2[:-1])} -w -t 3600 start"
            f" && until [ \"$({server.bindir}/psql -X -A -t -h 127.0.0.1 -p {port2} -d {DB} -c 'SELECT pg_is_in_recovery()')\" = f ]; do sleep 0.2; done"
        )
        theirs = timed(
            ["sh", "-c", script], env=server.env(), label="pgBackRest restore to the target time"
        )
        restored.append((stop2, data2))
        assert fingerprint(server, port2) == expected, "pgBackRest: restored data differs"
        subprocess.run(stop2, check=True, capture_output=True)
        results["restore"] = [_row(ours), _row(theirs)]
        print(f"restore: cozybackup {ours['seconds']:.1f}s, pgBackRest {theirs['seconds']:.1f}s")
        print(json.dumps(results, indent=1))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        if runner is not None:
            runner.close()
        for stop_cmd, d in restored:
            if (d / "postmaster.pid").exists():
                subprocess.run(stop_cmd, check=False, capture_output=True)
        server.destroy()
        # Two restored data directories, two repositories and the home: gigabytes a run.
        shutil.rmtree(work, ignore_errors=True)


def _caught_up(runner: Runner, server: PostgresServer) -> None:
    """Close the current segment, and wait until the streamer holds all but the next."""
    server.psql("SELECT pg_switch_wal()")
    assert runner.streams is not None
    streams = runner.streams

    def behind() -> bool:
        lags = list(streams.lags().values())
        return bool(lags) and lags[0]["lagBytes"] is not None and lags[0]["lagBytes"] < 16 << 20

    _wait(behind, 600)


def _archiver_lag(server: PostgresServer) -> dict[str, Any]:
    """How far ``archive_command`` (pgBackRest) is behind: WAL written past the end of the
    last segment it archived, and seconds since it archived one while WAL waits."""
    row = server.psql(
        "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, coalesce(last_archived_wal, ''), "
        "coalesce(extract(epoch FROM clock_timestamp() - last_archived_time), 0) "
        "FROM pg_stat_archiver"
    ).strip()
    current, wal, seconds = row.split("|")
    if not is_segment(wal[:24]):
        return {"lagBytes": None, "lagSeconds": None}
    upto = (segment_of(wal[:24], SEGMENT)[1] + 1) * SEGMENT
    behind = max(0, int(current) - upto)
    return {"lagBytes": behind, "lagSeconds": round(float(seconds), 1) if behind else 0.0}


def _lag_figures(samples: list[dict[str, Any]], phase: str) -> dict[str, Any]:
    seen = [x for x in samples if x["phase"] == phase and x["lagBytes"] is not None]
    seconds = sorted(x["lagSeconds"] for x in seen) or [0.0]
    return {
        "samples": len(seen),
        "maxLagBytes": max((x["lagBytes"] for x in seen), default=0),
        "medianLagSeconds": statistics.median(seconds),
        "p95LagSeconds": seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))],
        "maxLagSeconds": seconds[-1],
    }


def _row(r: dict[str, Any]) -> dict[str, Any]:
    return {k: round(r[k], 2) for k in ("seconds", "peak_proc_mb", "peak_tree_mb")} | {
        "label": r["label"]
    }


def _wait(check: Any, seconds: float = 60) -> None:
    limit = time.monotonic() + seconds
    while not check():
        if time.monotonic() > limit:
            sys.exit("gave up waiting")
        time.sleep(0.5)


def _admin(server: PostgresServer, partial_seconds: int | None) -> str:
    params = "{mode: physical, walArchiving: true"
    params += f", walPartialSeconds: {partial_seconds}}}" if partial_seconds else "}"
    return f"""\
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {{name: pitr}}
spec:
  strategies:
  - application: {{apiGroup: apps.cozystack.io, kind: Postgres}}
    strategyRef: {{apiGroup: strategy.backups.cozystack.io, kind: Postgres, name: pitr}}
    parameters: {params}
---
apiVersion: v1
kind: Secret
metadata: {{name: bench-superuser}}
stringData: {{username: {server.superuser}, password: "{server.password}"}}
---
apiVersion: local.backups.cozystack.io/v1alpha1
kind: Application
metadata: {{name: bench, namespace: {NS}}}
spec:
  kind: Postgres
  connection: {{host: {server.host}, port: {server.port}}}
  credentialsSecretRef: {{name: bench-superuser}}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: Plan
metadata: {{name: nightly, namespace: {NS}}}
spec:
  applicationRef: {{apiGroup: apps.cozystack.io, kind: Postgres, name: bench}}
  backupClassName: pitr
  schedule: {{type: cron, cron: "0 3 1 1 *"}}
"""


def _target(
    server: PostgresServer, data: Path, port: int, start: list[str], stop: list[str]
) -> str:
    return f"""\
apiVersion: local.backups.cozystack.io/v1alpha1
kind: Application
metadata: {{name: bench-pitr, namespace: {NS}}}
spec:
  kind: Postgres
  connection:
    host: 127.0.0.1
    port: {port}
    dataDir: {json.dumps(str(data))}
    startCommand: {json.dumps(start)}
    stopCommand: {json.dumps(stop)}
    serviceTimeoutSeconds: 3600
  credentialsSecretRef: {{name: bench-superuser}}
"""


def _job(kind: str, name: str, recovery_time: str) -> str:
    if kind == "BackupJob":
        spec = "{applicationRef: {apiGroup: apps.cozystack.io, kind: Postgres, name: bench}, backupClassName: pitr}"
    else:
        spec = (
            "{backupRef: {name: base}, targetApplicationRef: {apiGroup: apps.cozystack.io, "
            f'kind: Postgres, name: bench-pitr}}, options: {{recoveryTime: "{recovery_time}"}}}}'
        )
    return f"apiVersion: backups.cozystack.io/v1alpha1\nkind: {kind}\nmetadata: {{name: {name}, namespace: {NS}}}\nspec: {spec}\n"


if __name__ == "__main__":
    main()
