"""The product brief's MariaDB manifests, unchanged, through the real CLI.

An admin declares two local MariaDB applications (``mariadbinstance`` and
``mariadbinstance-drill`` in ``tenant-user1``) with an ``Application`` manifest and a
``v1`` Secret; the tenant then applies every file of ``examples/seed-manifests/`` (the brief's) as
it is, and ``cozybackup run --once`` does the work.  The driver comes in through its
``cozybackup.drivers`` entry point, as it would for a user who pip-installed it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from mariadb_server import ADMIN_PASSWORD, ADMIN_USER, MariaDBServer

from cozybackup_core import ApplicationRef, fire_due_plans
from cozybackup_core.testing import (
    AppHandle,
    Cli,
    LocalPlatform,
    app_manifests,
    run_cli,
    tenant_visible_text,
)

from conftest import ServerFactory, checksum, class_yaml, connection, credentials, write_data

SEEDS = Path(__file__).resolve().parents[3] / "examples" / "seed-manifests"
NS = "tenant-user1"
PHYSICAL_DEFAULT = class_yaml("cozy-default", "{mode: physical}")


def admin_manifest(apps: dict[str, MariaDBServer], *, physical: bool) -> list[Any]:
    handles = [
        AppHandle(
            ref=ApplicationRef(kind="MariaDB", name=name),
            connection=connection(server, control=physical),
            credentials=credentials(),
        )
        for name, server in apps.items()
    ]
    docs: list[Any] = [doc for app in handles for doc in app_manifests(app)]
    return [docs, PHYSICAL_DEFAULT] if physical else [docs]


def seed(name: str) -> str:
    path = SEEDS / name
    assert path.exists(), f"seed manifest {path} is missing"
    return str(path)


def test_every_seed_manifest_is_covered() -> None:
    assert sorted(p.name for p in SEEDS.glob("*.yaml")) == [
        "backupjob-oneshot-mariadb.yaml",
        "plan-maria-nightly.yaml",
        "restorejob-in-place.yaml",
        "restorejob-to-copy.yaml",
    ]


@pytest.mark.parametrize("mode", ["logical", "physical"])
def test_seed_manifests_end_to_end(mariadb: ServerFactory, tmp_path: Path, mode: str) -> None:
    physical = mode == "physical"
    home = tmp_path / "home"
    cli = Cli(home)
    src, drill = mariadb(), mariadb()
    apps = {"mariadbinstance": src, "mariadbinstance-drill": drill}
    cli.apply(*admin_manifest(apps, physical=physical))
    assert "mariadb" in cli.ok("drivers")
    write_data(src, seed=1)
    write_data(drill, seed=9)
    before = checksum(src)

    # The one-off backup.
    cli.ok("apply", "-f", seed("backupjob-oneshot-mariadb.yaml"))
    cli.run_once("backupjob/oneshot-mariadb")
    backup = cli.get("backup", "oneshot-mariadb")
    assert backup["status"]["phase"] == "Ready"
    assert backup["spec"]["driverMetadata"]["mode"] == mode
    assert backup["spec"]["strategyRef"]["kind"] == "MariaDB"
    cli.ok("verify", "backup", "oneshot-mariadb", "-n", NS)  # exit 0: checksums match

    # Rollback in place.
    write_data(src, seed=2)
    assert checksum(src) != before
    cli.ok("apply", "-f", seed("restorejob-in-place.yaml"))
    cli.run_once("restorejob/rollback-mariadb")
    assert checksum(src) == before

    # DR drill into the other application.
    cli.ok("apply", "-f", seed("restorejob-to-copy.yaml"))
    cli.run_once("restorejob/drill-mariadb")
    assert checksum(drill) == before
    assert checksum(src) == before
    restore = cli.get("restorejob", "drill-mariadb")
    assert "into MariaDB mariadbinstance-drill" in restore["status"]["message"]

    # The nightly Plan: it fires once the clock is past 02:00, once per slot.
    cli.ok("apply", "-f", seed("plan-maria-nightly.yaml"))
    created = dt.datetime.fromisoformat(
        cli.get("plan", "maria-nightly-backups")["metadata"]["creationTimestamp"].replace(
            "Z", "+00:00"
        )
    )
    slot = created.replace(hour=2, minute=0, second=0, microsecond=0)
    if slot <= created:
        slot += dt.timedelta(days=1)
    now = [slot - dt.timedelta(minutes=1)]
    plat = LocalPlatform(home, entry_points=True, clock=lambda: now[0])
    assert fire_due_plans(plat.host) == [], "fired before 02:00"
    now[0] = slot + dt.timedelta(minutes=5)
    (job,) = fire_due_plans(plat.host)
    assert job.metadata.name == f"maria-nightly-backups-{slot:%Y%m%d}0200"
    assert fire_due_plans(plat.host) == [], "fired twice for one slot"
    write_data(src, seed=3)
    cli.run_once(f"backupjob/{job.metadata.name}")
    nightly = cli.get("backup", job.metadata.name)
    assert nightly["spec"]["planRef"]["name"] == "maria-nightly-backups"
    table = cli.ok("get", "backups", "-n", NS)
    assert "oneshot-mariadb" in table and job.metadata.name in table

    # Nothing the tenant can read names a credential, an address or a path.
    view = tenant_visible_text(plat.host, NS)
    for secret in (ADMIN_PASSWORD, ADMIN_USER, "127.0.0.1", str(home), str(src.base)):
        assert secret not in view


def test_cli_refuses_a_bad_mariadb_class_with_the_field_path(tmp_path: Path) -> None:
    bad = PHYSICAL_DEFAULT.replace("{mode: physical}", "{mode: snapshot, parallel: 0}")
    out = run_cli(tmp_path / "home", "apply", "-f", "-", stdin=bad)
    assert out.returncode == 2
    assert (
        "error: spec.strategies[0].parameters.mode: 'snapshot' is not a mode; "
        'use "logical" or "physical"' in out.stderr
    )
    assert "Traceback" not in out.stderr
