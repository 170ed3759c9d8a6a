"""Scheduling and retention at scale: one Plan tick and one retention pass.

    python bench/bench_scheduling.py [--plans 10000] [--backups 100000]

Runs the engine's own code (``fire_due_plans``, ``Engine.prune(dry_run=True)``) over an
in-memory host at the full size and at a tenth of it, in the same run, and prints the
time of each and the growth factor (about 10 means linear).  On demand only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cozybackup_core import Engine, PluginHost, fire_due_plans, load_yaml
from cozybackup_core._api.types import (
    LABEL_CLASS,
    ApplicationRef,
    Artifact,
    Backup,
    BackupSpec,
    BackupStatus,
    ObjectMeta,
    Plan,
    PlanSpec,
    Schedule,
    StrategyRef,
)
from cozybackup_core.hosts.memory import MemoryHost

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 24, 12, 0, 30, tzinfo=UTC)
CRONS = ["0 2 * * *", "*/15 * * * *", "0 * * * *", "30 3 * * 0", "@daily", "5 4 1 * *"]
CLASS = """
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {name: bench}
spec:
  retention: {keepLast: 3, keepDaily: 7, keepWeekly: 4, maxAge: 60d}
  strategies:
  - application: {kind: Postgres}
    strategyRef: {kind: Postgres, name: pg}
"""


def build(plans: int, backups: int, tmp: str, now: list[dt.datetime]) -> tuple[MemoryHost, Engine]:
    rnd = random.Random(1)
    host = MemoryHost(bucket_root=tmp, clock=lambda: now[0])
    engine = Engine(host, PluginHost.load(entry_points=False))
    [bc] = load_yaml(CLASS)
    host.objects.create(bc)
    for i in range(plans):
        ns = f"tenant-{i % 500}"
        host.objects.create(
            Plan(
                metadata=ObjectMeta(
                    name=f"plan-{i}", namespace=ns, creation_timestamp=NOW - dt.timedelta(days=1)
                ),
                spec=PlanSpec(
                    application_ref=ApplicationRef(kind="Postgres", name=f"db-{i}"),
                    backup_class_name="bench",
                    schedule=Schedule(cron=rnd.choice(CRONS)),
                ),
            )
        )
    apps = max(1, plans)
    for j in range(backups):
        app = j % apps
        taken = NOW - dt.timedelta(hours=rnd.randrange(24 * 120))
        host.objects.create(
            Backup(
                metadata=ObjectMeta(
                    name=f"b-{j}", namespace=f"tenant-{app % 500}", labels={LABEL_CLASS: "bench"}
                ),
                spec=BackupSpec(
                    application_ref=ApplicationRef(kind="Postgres", name=f"db-{app}"),
                    strategy_ref=StrategyRef(kind="Postgres", name="pg"),
                    taken_at=taken,
                ),
                status=BackupStatus(
                    phase="Ready", artifact=Artifact(uri=f"cozy://backups/{j}", size_bytes=1)
                ),
            )
        )
    return host, engine


def measure(plans: int, backups: int) -> tuple[float, float, float, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        now = [NOW]
        host, engine = build(plans, backups, tmp, now)
        t = time.perf_counter()
        fire_due_plans(host)  # catching up: plans created a day ago, never ticked
        catch_up = time.perf_counter() - t
        now[0] += dt.timedelta(minutes=15)  # steady state: the next tick
        t = time.perf_counter()
        created = fire_due_plans(host)
        tick = time.perf_counter() - t
        t = time.perf_counter()
        actions = engine.prune(dry_run=True)
        prune = time.perf_counter() - t
        return catch_up, tick, prune, len(created), sum(a.delete for a in actions)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--plans", type=int, default=10_000)
    ap.add_argument("--backups", type=int, default=100_000)
    args = ap.parse_args()
    small = measure(args.plans // 10, args.backups // 10)
    full = measure(args.plans, args.backups)
    print(
        f"{'':<6}{'plans':>7}{'backups':>9}{'catch-up tick':>15}{'next tick':>11}{'new jobs':>10}"
        f"{'retention':>11}{'to delete':>11}   (seconds)"
    )
    rows = [
        ("tenth", args.plans // 10, args.backups // 10, small),
        ("full", args.plans, args.backups, full),
    ]
    for label, p, b, (cu, tick, prune, jobs, dels) in rows:
        print(f"{label:<6}{p:>7}{b:>9}{cu:>15.2f}{tick:>11.2f}{jobs:>10}{prune:>11.2f}{dels:>11}")
    growth = [f / s for f, s in zip(full[:3], small[:3], strict=True)]
    print(
        f"growth for 10x the objects: catch-up {growth[0]:.1f}x, next tick {growth[1]:.1f}x, "
        f"retention {growth[2]:.1f}x (10x = linear)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
