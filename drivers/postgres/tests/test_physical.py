"""Physical mode against real PostgreSQL 15 servers: base backups, WAL archived through
the platform's storage, restores into a fresh data directory to a moment in time."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from cozybackup_postgres import PostgresDriver
from cozybackup_postgres._wal import (
    best_by_segment,
    expired,
    format_lsn,
    parse_archived,
    parse_lsn,
    partial_name,
    plan,
    segment_name,
    segment_of,
)
from cozybackup_postgres.testing import PostgresServer, ServerPool, free_port, write_dataset

from cozybackup_core import (
    API_VERSION,
    APPS_GROUP,
    ApplicationRef,
    AppLocation,
    Plan,
    RestoreJob,
    Runner,
    load,
)
from cozybackup_core.testing import (
    LocalPlatform,
    cli_ok,
    driver_class_yaml,
    refused_parameters,
    run_cli,
    typed_metadata,
)

from .conftest import BINDIR

NS = "tenant-a"
PHYSICAL = "pg-physical"


@pytest.fixture
def platform(tmp_path: Path) -> LocalPlatform:
    plat = LocalPlatform(tmp_path / "home", drivers=(PostgresDriver,))
    plat.apply(driver_class_yaml(PostgresDriver, PHYSICAL, json.dumps({"mode": "physical"})))
    return plat


class FreshTarget:
    """A data directory that does not exist yet, and the commands that start and stop a
    server on it (as the admin would declare them); :meth:`server` is that server once
    restored (the source's superuser and password: a physical restore brings them)."""

    def __init__(self, source: PostgresServer) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cozy-pg-target-"))
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        self.source = source
        ctl = [str(BINDIR / "pg_ctl"), "-D", str(self.data)]
        as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.start = [*as_pg, *ctl, "-l", str(self.root / "server.log"), "-W", "-o", opts, "start"]
        self.stop = [*as_pg, *ctl, "-m", "fast", "-w", "stop"]

    @property
    def data(self) -> Path:
        return self.root / "data"

    def connection(self, *, commands: bool = True) -> dict[str, Any]:
        conn: dict[str, Any] = {"host": "127.0.0.1", "port": self.port, "dataDir": str(self.data)}
        if commands:
            conn.update(startCommand=self.start, stopCommand=self.stop)
        return conn

    def server(self) -> PostgresServer:
        s = PostgresServer(
            root=self.root,
            port=self.port,
            bindir=BINDIR,
            superuser=self.source.superuser,
            password=self.source.password,
        )
        pid = s.data / "postmaster.pid"
        s.pid = int(pid.read_text().split("\n", 1)[0]) if pid.exists() else None
        return s

    def destroy(self) -> None:
        self.server().destroy()


@pytest.fixture
def fresh_targets() -> Iterator[list[FreshTarget]]:
    made: list[FreshTarget] = []
    try:
        yield made
    finally:
        for t in made:
            t.destroy()


def declare(plat: LocalPlatform, name: str, conn: dict[str, Any], src: PostgresServer) -> Any:
    return plat.declare_app(NS, name, "Postgres", conn, src.credentials())


def ok(job: Any) -> None:
    assert job.status.phase == "Succeeded", f"{job.kind} failed: {job.status.message}"


def restore(
    plat: LocalPlatform,
    backup: str,
    name: str,
    target: ApplicationRef | None,
    options: dict[str, Any] | None = None,
) -> RestoreJob:
    spec: dict[str, Any] = {"backupRef": {"name": backup}, "options": options}
    if target is not None:
        spec["targetApplicationRef"] = {
            "apiGroup": target.api_group,
            "kind": target.kind,
            "name": target.name,
        }
    doc = {
        "apiVersion": API_VERSION,
        "kind": "RestoreJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }
    job: RestoreJob = plat.host.objects.create(load(doc))
    return plat.engine.run_restore(job)


# ---------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"mode": "phsyical"}, "mode: must be one of logical, physical"),
        (
            {"mode": "physical", "databases": ["shop"]},
            "databases: means nothing with mode: physical",
        ),
        ({"walArchiving": True}, "walArchiving: means nothing with mode: logical"),
        ({"mode": "physical", "pitrWindowSeconds": 60}, "pitrWindowSeconds: needs walArchiving"),
        ({"mode": "physical", "walPartialSeconds": 5}, "walPartialSeconds: needs walArchiving"),
        (
            {"mode": "physical", "walArchiving": True, "walPartialSeconds": 0},
            "walPartialSeconds: must be between 1 and 3600",
        ),
    ],
)
def test_mode_parameters_are_checked_naming_the_field(
    parameters: dict[str, Any], expected: str
) -> None:
    assert expected in str(refused_parameters(PostgresDriver, json.dumps(parameters)))


# ---------------------------------------------------------------------------- base backups


def test_base_backup_restores_into_a_fresh_data_directory_exactly(
    platform: LocalPlatform, pg_servers: ServerPool, fresh_targets: list[FreshTarget]
) -> None:
    src = pg_servers.start()
    write_dataset(src, seed=3)
    ok(platform.backup(NS, declare(platform, "src", src.connection(), src), "b1", PHYSICAL))
    (backup,) = platform.backups(NS)
    meta = typed_metadata(backup.spec.driver_metadata)
    ident = src.psql("SELECT system_identifier FROM pg_control_system()").strip()
    assert meta["mode"] == "physical"
    assert meta["systemIdentifier"] == ident
    assert meta["serverVersion"] == src.psql("SHOW server_version").strip()
    expected = src.fingerprint()
    src.psql("INSERT INTO public.notes VALUES (-1, 'after the backup')")

    target = FreshTarget(src)
    fresh_targets.append(target)
    copy = declare(platform, "copy", target.connection(), src)
    ok(restore(platform, "b1", "r1", copy))
    restored = target.server()
    assert restored.fingerprint() == expected
    assert restored.psql("SELECT pg_is_in_recovery()").strip() == "f"
    # The recovery settings are gone once it is promoted; the staging directories too.
    assert restored.psql("SHOW restore_command").strip() == ""
    assert sorted(p.name for p in target.root.iterdir() if "cozybackup" in p.name) == []
    view = platform.tenant_view(NS)
    for secret in (str(target.root), src.password, "runuser", "pg_ctl"):
        assert secret not in view


def test_in_place_without_stop_and_start_commands_is_refused_untouched(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    src = pg_servers.start()
    conn = {**src.connection(), "dataDir": str(src.data)}
    ref = declare(platform, "db", conn, src)
    ok(platform.backup(NS, ref, "b1", PHYSICAL))
    src.psql("CREATE TABLE after_backup (x int)")
    before = src.fingerprint()
    job = restore(platform, "b1", "r1", None)
    assert job.status.phase == "Failed"
    assert "cannot stop and start this PostgreSQL server" in job.status.message
    assert src.fingerprint() == before
    assert str(src.data) not in platform.tenant_view(NS)


# ---------------------------------------------------------------------------- WAL archive

PITR = "pg-pitr"
PITR_CLASS = driver_class_yaml(
    PostgresDriver, PITR, json.dumps({"mode": "physical", "walArchiving": True})
)


def archived(plat: LocalPlatform) -> dict[str, dict[str, Any]]:
    """Every archived segment (by archive name) and what was recorded with it, read from
    the local bucket as an operator would."""
    found: dict[str, dict[str, Any]] = {}
    for manifest in (plat.home / "buckets").rglob("_archive/**/manifest.json"):
        doc = json.loads(manifest.read_text())
        found[manifest.parent.name] = doc["driverMetadata"]
    return found


def wait_for(what: str, check: Any, seconds: float = 180) -> Any:
    """Poll ``check`` until it is true (generous bound: the machine may be busy)."""
    limit = time.monotonic() + seconds
    while time.monotonic() < limit:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def switch_and_wait(plat: LocalPlatform, src: PostgresServer) -> str:
    """Close the current WAL segment and wait until the archive holds it; its name."""
    return switch_and_wait_for(lambda: set(archived(plat)), src)


def switch_and_wait_for(names: Callable[[], set[str]], src: PostgresServer) -> str:
    """As :func:`switch_and_wait`, the archive's names read by ``names``."""
    ident = src.psql("SELECT system_identifier FROM pg_control_system()").strip()
    end = parse_lsn(src.psql("SELECT pg_switch_wal()").strip())
    timeline = int(src.psql("SELECT timeline_id FROM pg_control_checkpoint()").strip())
    name = f"{ident}.{segment_name(timeline, (end - 1) // (16 << 20), 16 << 20)}"
    wait_for(f"segment {name} archived", lambda: name in names())
    return name


@attrs.define
class History:
    """A source server streamed into the archive since before its base backup ``b1``,
    then three transactions; ``mid`` is a time between the first and the second."""

    src: PostgresServer
    runner: Runner
    after_first: dict[str, object]
    last: dict[str, object]
    mid: str
    segments: list[str]


@pytest.fixture
def history(platform: LocalPlatform, pg_servers: ServerPool, tmp_path: Path) -> Iterator[History]:
    platform.apply(PITR_CLASS)
    src = pg_servers.start()
    write_dataset(src, seed=5)
    ref = declare(platform, "src", src.connection(), src)
    platform.apply(plan_manifest("nightly", "src", PITR))
    runner = Runner(platform.engine, streams_dir=tmp_path / "streams")
    try:
        assert runner.streams is not None
        assert runner.streams.reconcile() == ["started streaming for tenant-a/src"]
        wait_for(
            "the streamer's slot",
            lambda: (
                src.psql("SELECT count(*) FROM pg_replication_slots WHERE active").strip() == "1"
            ),
        )
        ok(platform.backup(NS, ref, "b1", PITR))
        src.psql("INSERT INTO public.notes VALUES (1001, 'first')")
        mid = src.psql("SELECT clock_timestamp()").strip()
        after_first = src.fingerprint()
        src.psql("INSERT INTO public.notes VALUES (1002, 'second')")
        src.psql("UPDATE public.notes SET body = 'third' WHERE id = 1")
        last = src.fingerprint()
        segments = [switch_and_wait(platform, src)]
        yield History(
            src=src, runner=runner, after_first=after_first, last=last, mid=mid, segments=segments
        )
    finally:
        runner.close()


def test_recovery_time_between_two_transactions_restores_exactly_after_the_first(
    platform: LocalPlatform, history: History, fresh_targets: list[FreshTarget]
) -> None:
    target = FreshTarget(history.src)
    fresh_targets.append(target)
    copy = declare(platform, "copy", target.connection(), history.src)
    ok(restore(platform, "b1", "r1", copy, {"recoveryTime": history.mid.replace(" ", "T")}))
    assert target.server().fingerprint() == history.after_first
    assert target.server().fingerprint() != history.last


def test_without_recovery_time_the_restore_reaches_the_last_archived_transaction(
    platform: LocalPlatform, history: History, fresh_targets: list[FreshTarget]
) -> None:
    target = FreshTarget(history.src)
    fresh_targets.append(target)
    copy = declare(platform, "copy", target.connection(), history.src)
    ok(restore(platform, "b1", "r1", copy))
    assert target.server().fingerprint() == history.last


@pytest.mark.parametrize("when", ["before the backup", "after the archive"])
def test_time_outside_the_window_is_refused_before_anything_is_touched(
    platform: LocalPlatform, history: History, fresh_targets: list[FreshTarget], when: str
) -> None:
    target = FreshTarget(history.src)
    fresh_targets.append(target)
    copy = declare(platform, "copy", target.connection(), history.src)
    (backup,) = platform.backups(NS)
    taken = backup.spec.taken_at
    at = (
        taken - dt.timedelta(hours=1)
        if when == "before the backup"
        else taken + dt.timedelta(days=1)
    )
    job = restore(platform, "b1", "r1", copy, {"recoveryTime": at.isoformat()})
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "RecoveryTargetUnreachable"
    assert "the available window is from " in job.status.message
    assert "up to (not including)" in job.status.message
    assert list(target.root.iterdir()) == []  # not even a staging directory


def test_a_damaged_segment_fails_the_restore_naming_it(
    platform: LocalPlatform, history: History, fresh_targets: list[FreshTarget]
) -> None:
    (name,) = history.segments
    (stream,) = (platform.home / "buckets").rglob(f"_archive/**/{name}/streams/segment.zst")
    data = bytearray(stream.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stream.write_bytes(bytes(data))
    target = FreshTarget(history.src)
    fresh_targets.append(target)
    copy = declare(platform, "copy", target.connection(), history.src)
    job = restore(platform, "b1", "r1", copy)
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "ArtifactCorrupt"
    # Found when the server asked for it: its recovery aborted, the target put back
    # as it was (no data directory), nothing of the restore left beside it.
    assert f"archived WAL segment {name.split('.', 1)[1]} is damaged" in job.status.message
    assert "the previous data was put back" in job.status.message
    assert [p.name for p in target.root.iterdir()] == ["server.log"]


# ---------------------------------------------------------------------------- drills


def test_a_drill_of_a_physical_backup_restores_on_a_scratch_data_directory_and_removes_it(
    platform: LocalPlatform,
    pg_servers: ServerPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = pg_servers.start(superuser="drill_boot")  # a name the scratch server does not use
    write_dataset(src, seed=9)
    before = src.fingerprint()
    tables = 0
    for db in src.databases():
        tables += int(
            src.psql(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN "
                "('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'",
                db,
            ).strip()
        )
    ok(platform.backup(NS, declare(platform, "src", src.connection(), src), "b1", PHYSICAL))
    (backup,) = platform.backups(NS)
    # Where the drill makes its temporary directory (the server's user passes through).
    scratch = Path(tempfile.mkdtemp(prefix="cozy-pg-drills-"))
    scratch.chmod(0o711)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    try:
        checked = platform.engine.verify(backup, drill=True)
        left = list(scratch.iterdir())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    v = checked.status.last_verified
    assert v is not None and (v.method, v.result) == ("RestoreDrill", "Passed"), v
    assert v.message.startswith(f"{len(src.databases())} databases with {tables} tables"), v.message
    assert src.fingerprint() == before, "the drill never touches the application"
    leftovers = subprocess.run(["pgrep", "-f", "cozybackup-drill-"], capture_output=True, text=True)
    assert leftovers.stdout == "", "the scratch server was stopped"
    assert left == [], "and removed"


# ---------------------------------------------------------------------------- partials


def test_commits_after_the_last_completed_segment_are_restored_from_the_stored_partial(
    platform: LocalPlatform,
    pg_servers: ServerPool,
    tmp_path: Path,
    fresh_targets: list[FreshTarget],
) -> None:
    platform.apply(
        driver_class_yaml(
            PostgresDriver,
            "pg-partial",
            json.dumps({"mode": "physical", "walArchiving": True, "walPartialSeconds": 1}),
        )
    )
    src = pg_servers.start()
    write_dataset(src, seed=7)
    ref = declare(platform, "src", src.connection(), src)
    platform.apply(plan_manifest("nightly", "src", "pg-partial"))
    runner = Runner(platform.engine, streams_dir=tmp_path / "streams")
    assert runner.streams is not None
    try:
        runner.streams.reconcile()
        wait_for("the streamer's slot", lambda: slot_active(src))
        ok(platform.backup(NS, ref, "b1", "pg-partial"))
        last_completed = switch_and_wait(platform, src)
        # Two commits in the segment being filled: no segment completes after them.
        src.psql("INSERT INTO public.notes VALUES (3001, 'first after the last segment')")
        mid = src.psql("SELECT clock_timestamp()").strip().replace(" ", "T")
        after_first = src.fingerprint()
        src.psql("UPDATE public.notes SET body = 'second after the last segment' WHERE id = 1")
        last = src.fingerprint()

        def partial_past_mid() -> str | None:
            for name, meta in archived(platform).items():
                item = parse_archived(name)
                commit = meta.get("lastCommit")
                if item and item.partial and commit and commit > mid:
                    return name
            return None

        partial = wait_for("a partial holding the second commit", partial_past_mid)
        completed = sorted(n for n in archived(platform) if not parse_archived(n).partial)  # type: ignore[union-attr]
        assert completed[-1] == last_completed  # no segment completed after the commits
        assert parse_archived(partial).segment > last_completed.split(".", 1)[1]  # type: ignore[union-attr]
        # The streamer keeps running (and storing newer partials) during both restores.
        at_mid = FreshTarget(src)
        fresh_targets.append(at_mid)
        copy = declare(platform, "at-mid", at_mid.connection(), src)
        ok(restore(platform, "b1", "r1", copy, {"recoveryTime": mid}))
        assert at_mid.server().fingerprint() == after_first
        to_end = FreshTarget(src)
        fresh_targets.append(to_end)
        copy = declare(platform, "to-end", to_end.connection(), src)
        ok(restore(platform, "b1", "r2", copy))
        assert to_end.server().fingerprint() == last
        (lag,) = runner.streams.lags().values()
        assert lag["partialsStored"] >= 1
        # What the archive holds: inside the partial's segment, never past the server.
        held = parse_lsn(lag["archivedLsn"])
        server_at = parse_lsn(src.psql("SELECT pg_current_wal_lsn()").strip())
        assert segment_of(parse_archived(partial).segment, 16 << 20)[1] * (16 << 20) < held  # type: ignore[union-attr]
        assert held <= server_at
    finally:
        runner.close()
    # One answer per segment once the streamer has stopped.
    assert best_by_segment(list(archived(platform)))[1] == []


class _Names:
    """An archive's listing and metadata, for the planning functions."""

    def __init__(self, metas: dict[str, dict[str, Any]]) -> None:
        self.metas = metas

    def names(self) -> list[str]:
        return sorted(self.metas)

    def metadata(self, name: str) -> dict[str, Any]:
        return self.metas[name]


def test_the_archive_gives_one_answer_per_segment_and_a_partial_ends_the_replay() -> None:
    size = 16 << 20
    seg = [segment_name(1, n, size) for n in range(12)]
    at = "2026-01-01T00:{:02d}:00+00:00".format
    metas = {f"7.{seg[n]}": {"lastCommit": at(n)} for n in (4, 5, 6)}
    # Segment 6 completed after a partial of it was stored (a kill between the two);
    # two partials of 7, the longer stored last; a partial of 9 after a gap.
    metas[partial_name("7", seg[6], 0x1000)] = {"lastCommit": at(6)}
    metas[partial_name("7", seg[7], 0x2000)] = {"lastCommit": at(7)}
    metas[partial_name("7", seg[7], 0x9000)] = {"lastCommit": at(8)}
    metas[partial_name("7", seg[9], 0x100)] = {"lastCommit": at(9)}
    backup = {**_meta("7", 4, at(0)), "walSegmentSize": size}
    replay = plan(_Names(metas), backup)  # type: ignore[arg-type]
    assert list(replay.segments) == [
        f"7.{seg[4]}",
        f"7.{seg[5]}",
        f"7.{seg[6]}",
        partial_name("7", seg[7], 0x9000),
    ]
    assert replay.end is not None and replay.end.minute == 8
    _, superseded = best_by_segment(list(metas))
    assert sorted(superseded) == sorted(
        [partial_name("7", seg[6], 0x1000), partial_name("7", seg[7], 0x2000)]
    )
    # Retention: superseded partials go even when every segment is kept; the partials
    # before the kept backup's WAL go with the segments.
    gone, _ = expired(list(metas), [backup], None, dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc))
    assert sorted(gone) == sorted(superseded)
    early = {**backup, "endLsn": format_lsn(8 * size + 0x100)}
    gone, _ = expired(list(metas), [early], None, dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc))
    assert sorted(gone) == sorted(n for n in metas if n != partial_name("7", seg[9], 0x100))


# ---------------------------------------------------------------------------- the streamer


def plan_manifest(name: str, app: str, backup_class: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Plan",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "applicationRef": {"apiGroup": APPS_GROUP, "kind": "Postgres", "name": app},
            "backupClassName": backup_class,
            "schedule": {"type": "cron", "cron": "0 3 1 1 *"},
        },
    }


def segment_numbers(plat: LocalPlatform) -> list[int]:
    """The segment numbers the archive answers for (a completed segment or its partial)."""
    best, _ = best_by_segment(list(archived(plat)))
    return sorted(segment_of(segment, 16 << 20)[1] for _, segment in best)


def slot_active(src: PostgresServer) -> bool:
    return src.psql("SELECT count(*) FROM pg_replication_slots WHERE active").strip() == "1"


def test_a_streamer_killed_with_sigkill_and_restarted_leaves_no_gap(
    platform: LocalPlatform, pg_servers: ServerPool, fresh_targets: list[FreshTarget]
) -> None:
    platform.apply(PITR_CLASS)
    src = pg_servers.start()
    # Stored as written (no compression): each batch below is tens of MB of WAL.
    src.psql(
        "CREATE TABLE ticks (n int PRIMARY KEY, filler text);"
        "ALTER TABLE ticks ALTER filler SET STORAGE EXTERNAL"
    )
    declare(platform, "src", src.connection(), src)
    platform.apply(plan_manifest("nightly", "src", PITR))
    env = {**os.environ, "COZYBACKUP_HOME": str(platform.home)}
    argv = [sys.executable, "-m", "cozybackup_core.cli", "run", "--interval", "1"]
    log = (platform.home / "runner.log").open("ab")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=log)

    runner = start()
    try:
        wait_for("the streamer's slot", lambda: slot_active(src))
        platform.apply(
            {
                "apiVersion": API_VERSION,
                "kind": "BackupJob",
                "metadata": {"name": "b1", "namespace": NS},
                "spec": {
                    "applicationRef": {"apiGroup": APPS_GROUP, "kind": "Postgres", "name": "src"},
                    "backupClassName": PITR,
                },
            }
        )
        wait_for("Backup b1", lambda: platform.backups(NS))
        # Enough WAL for a few segments, some archived before the kill and some after.
        filler = "repeat(md5(g::text), 200)"
        src.psql(f"INSERT INTO ticks SELECT g, {filler} FROM generate_series(1, 3000) g")
        switch_and_wait(platform, src)
        src.psql(f"INSERT INTO ticks SELECT g, {filler} FROM generate_series(3001, 9000) g")
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        before_kill = segment_numbers(platform)
        # pg_receivewal dies with it, and the slot keeps the WAL written meanwhile.
        wait_for("the slot released", lambda: not slot_active(src))
        src.psql(f"INSERT INTO ticks SELECT g, {filler} FROM generate_series(9001, 15000) g")
        runner = start()
        wait_for("the streamer's slot again", lambda: slot_active(src))
        src.psql("INSERT INTO ticks VALUES (-1, 'last')")
        expected = src.fingerprint()
        switch_and_wait(platform, src)
    finally:
        runner.send_signal(signal.SIGTERM)
        try:
            runner.wait(timeout=60)
        except subprocess.TimeoutExpired:
            runner.kill()
            runner.wait()
        log.close()
    numbers = segment_numbers(platform)
    log_tail = (platform.home / "runner.log").read_text(errors="replace")[-3000:]
    assert numbers, log_tail
    # WAL written while no streamer ran (two batches' worth) was archived after it.
    assert numbers[-1] > before_kill[-1] + 1, (numbers, before_kill, log_tail)
    assert numbers == list(range(numbers[0], numbers[-1] + 1)), (numbers, log_tail)  # no gap
    # One answer per segment: no partial left beside what superseded it.
    assert best_by_segment(list(archived(platform)))[1] == [], log_tail
    target = FreshTarget(src)
    fresh_targets.append(target)
    copy = declare(platform, "copy", target.connection(), src)
    ok(restore(platform, "b1", "r1", copy))
    assert target.server().fingerprint() == expected


def test_a_partial_file_left_while_pg_receivewal_padded_it_is_removed_before_resuming(
    tmp_path: Path,
) -> None:
    from cozybackup_postgres._streamer import WalStreamer

    app = AppLocation(
        ref=ApplicationRef(api_group=APPS_GROUP, kind="Postgres", name="src"),
        namespace=NS,
        connection={"host": "127.0.0.1", "port": 5432},
    )
    streamer = WalStreamer(app, None, tmp_path)  # type: ignore[arg-type]
    killed = tmp_path / "000000010000000000000007.partial"
    killed.write_bytes(bytes(441 * 8192))  # pg_receivewal killed while padding it
    whole = tmp_path / "000000010000000000000006.partial"
    whole.write_bytes(b"\1" + bytes((16 << 20) - 1))
    streamer._drop_unpadded()
    assert not killed.exists()
    assert whole.exists()  # a padded one holds WAL: pg_receivewal resumes from it


def test_lag_is_reported_and_a_lost_slot_fails_loudly_on_the_plan(
    platform: LocalPlatform, history: History
) -> None:
    streams = history.runner.streams
    assert streams is not None
    (lag,) = streams.lags().values()
    assert isinstance(lag["lagBytes"], int) and lag["lagBytes"] >= 0
    assert lag["segmentsStored"] >= 1
    streams.reconcile()
    plan = platform.host.objects.get(Plan, NS, "nightly")
    (cond,) = [c for c in plan.status.conditions if c.type == "Archiving"]
    assert (cond.status, cond.reason) == ("True", "Streaming")
    assert "lagBytes" in cond.message

    history.runner.close()
    history.src.psql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
    notes: list[str] = []
    wait_for(
        "the failure reported",
        lambda: notes.extend(streams.reconcile()) or any("failed" in n for n in notes),
    )
    plan = platform.host.objects.get(Plan, NS, "nightly")
    (cond,) = [c for c in plan.status.conditions if c.type == "Archiving"]
    assert (cond.status, cond.reason) == ("False", "WalSlotLost")
    assert "replication slot" in cond.message and "take a new backup" in cond.message
    text = platform.tenant_view(NS)
    assert "WalSlotLost" in text
    for secret in (history.src.password, str(history.src.root)):
        assert secret not in text


# ---------------------------------------------------------------------------- retention


def _meta(system_id: str, end_segno: int, at: str) -> dict[str, Any]:
    size = 16 << 20
    return {
        "mode": "physical",
        "systemIdentifier": system_id,
        "timeline": 1,
        "walSegmentSize": size,
        "endLsn": format_lsn(end_segno * size + 0x100),
        "consistentAt": at,
    }


def test_archive_expiry_keeps_what_the_oldest_kept_backup_or_the_window_needs() -> None:
    names = [f"7.{segment_name(1, n, 16 << 20)}" for n in range(1, 11)]
    names += [f"6.{segment_name(1, 3, 16 << 20)}", f"7.{segment_name(2, 2, 16 << 20)}"]
    kept = [_meta("7", 4, "2026-01-01T00:00:00+00:00"), _meta("7", 8, "2026-01-05T00:00:00+00:00")]
    now = dt.datetime(2026, 1, 10, tzinfo=dt.timezone.utc)
    gone, why = expired(names, kept, None, now)
    # Before the oldest kept backup's end segment (4), and another server's segment.
    assert sorted(gone) == sorted([*names[:3], f"6.{segment_name(1, 3, 16 << 20)}"])
    assert "from 000000010000000000000004 on" in why
    # A 3-day window starts after the second backup, which anchors it; a 7-day one
    # starts before it, so the first one still does.
    assert expired(names, kept, 7 * 86400, now)[0] == gone
    gone, why = expired(names, kept, 3 * 86400, now)
    assert sorted(gone) == sorted([*names[:7], f"6.{segment_name(1, 3, 16 << 20)}"])
    assert "recovery window" in why
    assert expired(names, [], None, now)[0] == []  # nothing to continue from: keep all


def test_prune_dry_run_says_which_segments_retention_expires_and_prune_keeps_what_restores(
    platform: LocalPlatform,
    pg_servers: ServerPool,
    tmp_path: Path,
    fresh_targets: list[FreshTarget],
) -> None:
    (doc,) = yaml.safe_load_all(
        driver_class_yaml(
            PostgresDriver, "pg-keep1", json.dumps({"mode": "physical", "walArchiving": True})
        )
    )
    doc["spec"]["retention"] = {"keepLast": 1}
    platform.apply(doc)
    src = pg_servers.start()
    ref = declare(platform, "src", src.connection(), src)
    platform.apply(plan_manifest("nightly", "src", "pg-keep1"))
    runner = Runner(platform.engine, streams_dir=tmp_path / "streams")
    assert runner.streams is not None
    try:
        runner.streams.reconcile()
        wait_for("the streamer's slot", lambda: slot_active(src))
        src.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        switch_and_wait(platform, src)
        ok(platform.backup(NS, ref, "b1", "pg-keep1"))
        src.psql("INSERT INTO t VALUES (2)")
        switch_and_wait(platform, src)
        ok(platform.backup(NS, ref, "b2", "pg-keep1"))
        src.psql("INSERT INTO t VALUES (3)")
        expected = src.fingerprint()
        switch_and_wait(platform, src)
    finally:
        runner.close()
    b2 = next(b for b in platform.backups(NS) if b.metadata.name == "b2")
    end = parse_lsn(typed_metadata(b2.spec.driver_metadata)["endLsn"])
    before = sorted(archived(platform))
    older = [
        n for n in before if segment_of(n.split(".", 1)[1], 16 << 20)[1] < (end - 1) // (16 << 20)
    ]
    assert older  # the segments of b1's time

    out = cli_ok(run_cli(platform.home, "prune", "--dry-run"))
    assert (
        f"archive {NS}/Postgres/src: would delete {len(older)} segment(s), {len(before) - len(older)} kept"
        in out
    )
    assert "would delete" in out and "b1" in out
    assert sorted(archived(platform)) == before  # a dry run deletes nothing

    cli_ok(run_cli(platform.home, "prune"))
    assert sorted(archived(platform)) == sorted(set(before) - set(older))
    assert [b.metadata.name for b in platform.backups(NS)] == ["b2"]
    target = FreshTarget(src)
    fresh_targets.append(target)
    ok(restore(platform, "b2", "r1", declare(platform, "copy", target.connection(), src)))
    assert target.server().fingerprint() == expected


def test_in_place_with_stop_and_start_commands_replaces_the_running_server(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    src = pg_servers.start()
    write_dataset(src, seed=4)
    ctl = [str(BINDIR / "pg_ctl"), "-D", str(src.data)]
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    opts = f"-p {src.port} -k {src.root} -c listen_addresses=127.0.0.1 -c fsync=off"
    conn = {
        **src.connection(),
        "dataDir": str(src.data),
        "startCommand": [*as_pg, *ctl, "-l", str(src.log_path), "-W", "-o", opts, "start"],
        "stopCommand": [*as_pg, *ctl, "-m", "fast", "-w", "stop"],
    }
    ok(platform.backup(NS, declare(platform, "db", conn, src), "b1", PHYSICAL))
    expected = src.fingerprint()
    src.psql("DROP DATABASE shop WITH (FORCE)")
    src.psql("CREATE TABLE public.after (x int)")
    ok(restore(platform, "b1", "r1", None))
    assert src.fingerprint() == expected
    assert sorted(p.name for p in src.root.iterdir() if "cozybackup" in p.name) == []


def test_a_restored_server_that_does_not_start_is_rolled_back(
    platform: LocalPlatform, pg_servers: ServerPool, fresh_targets: list[FreshTarget]
) -> None:
    src = pg_servers.start()
    ok(platform.backup(NS, declare(platform, "src", src.connection(), src), "b1", PHYSICAL))
    target = FreshTarget(src)
    fresh_targets.append(target)
    target.data.mkdir()
    (target.data / "was-here").write_text("the previous data")
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(target.data, pw.pw_uid, pw.pw_gid)
    conn = {**target.connection(), "startCommand": ["false"]}
    job = restore(platform, "b1", "r1", declare(platform, "copy", conn, src))
    assert job.status.phase == "Failed"
    assert "starting the restored server failed" in job.status.message
    assert "the previous data was put back" in job.status.message
    assert [p.name for p in target.root.iterdir()] == ["data"]
    assert [p.name for p in target.data.iterdir()] == ["was-here"]
