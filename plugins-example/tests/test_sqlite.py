"""Tests of the SQLite driver: the core's conformance kit, then SQLite's own cases."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import random
import shutil
import socket
import sqlite3
import stat
import subprocess
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from cozybackup_core import (
    ApplicationRef,
    AppLocation,
    BackupContext,
    Catalog,
    Deadline,
    DeadlineExceeded,
    DriverError,
    DriverParametersError,
    DriverRegistry,
    EngineConfig,
    PluginHost,
    RestoreContext,
    ServerSideTarget,
    UnsafeLocalPath,
    UnsupportedError,
    ValidationError,
    load_yaml,
)
from cozybackup_core.testing import (
    AppHandle,
    DriverConformance,
    LocalPlatform,
    local_location_yaml,
    typed_metadata,
)
from cozybackup_core.testing import backup_class_yaml as one_strategy_class

from cozybackup_sqlite import DUMP_STREAM, SQLITE_KIND, SQLiteDriver, SQLiteParameters

API_GROUP = SQLITE_KIND.api_group
KIND = SQLITE_KIND.kind
CLASS = "sqlite-standard"
NS = "tenant-a"


DEFAULT_PARAMETERS = "{integrityCheck: true, batchStatements: 500}"


def backup_class_yaml(parameters: str = DEFAULT_PARAMETERS) -> str:
    """The class binding SQLite databases to the driver; ``parameters`` in flow YAML."""
    return one_strategy_class(CLASS, KIND, "SQLite", api_group=API_GROUP, parameters=parameters)


# ---------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def connect(path: Path | str, **kwargs: Any) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, isolation_level=None, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


TEXTS = [
    "plain ascii",
    "Zoë Ångström",
    "Ωμέγα ελληνικά",
    "日本語のテキスト",
    "emoji 🙂🚀🧪",
    "it's 'single' quoted",
    'a "double" quote',
    "line one\nline two;\n-- not a comment\nline four;",
    "crlf\r\nline\rcr only",
    "tab\tseparated\tvalues",
    "unicode separators \u2028 \u2029 \x85 \x0b \x0c \x1c end",
    "ends with a semicolon;",
    "BEGIN TRANSACTION;",
    "COMMIT;",
    "-- cozybackup-sqlite dump complete",
    "first line\n-- cozybackup-sqlite dump complete\n\n-- a comment line;\nlast line",
    "",
    "NUL \x00 inside",
    "x" * 5000,
]

SPECIAL_VALUES = [
    None,
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    0.1,
    1 / 3,
    -0.0,
    1e300,
    5e-324,
    float("inf"),
    float("-inf"),
    0.503242509471235,
    b"",
    b"\x00\x01\xff" * 100,
    "",
    "text",
    "NUL\x00",
]

SCHEMA = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT UNIQUE,             -- a unique constraint: an automatic index; with a ';'
    note TEXT,
    balance REAL,
    avatar BLOB
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    total REAL NOT NULL,
    placed_at TEXT NOT NULL,
    status TEXT CHECK (status IN ('new', 'paid', 'shipped'))
);
CREATE INDEX orders_by_customer ON orders (customer_id, placed_at);
CREATE TABLE audit_log (at TEXT, event TEXT);
CREATE TABLE settings (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE "odd ""name"" table" ("select" INTEGER, "semi;colon" TEXT);
CREATE VIEW customer_totals AS
    SELECT c.id, c.name, count(o.id) AS orders, total(o.total) AS spent
    FROM customers c LEFT JOIN orders o ON o.customer_id = c.id
    GROUP BY c.id;
CREATE TRIGGER orders_audit AFTER INSERT ON orders BEGIN
    INSERT INTO audit_log
    VALUES (NEW.placed_at, 'order ' || NEW.id || ' placed; total ' || NEW.total);
END;
"""


def fill(path: Path, seed: int) -> None:
    """Replace the database's contents with a realistic dataset determined by ``seed``."""
    rng = random.Random(seed)
    with connect(path) as conn:
        drops = [
            f'DROP {kind.upper()} "{name.replace(chr(34), chr(34) * 2)}";'
            for kind, name in conn.execute(
                "SELECT type, name FROM sqlite_master WHERE type IN ('view', 'table') "
                "AND name NOT LIKE 'sqlite_%' ORDER BY type = 'table'"
            )
        ]
        # One transaction: executescript() leaves the one it begins open.
        conn.executescript("BEGIN IMMEDIATE;\n" + "\n".join(drops) + SCHEMA)
        n_customers = 700 + rng.randrange(100)
        conn.executemany(
            "INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)",
            (
                (
                    i,
                    f"{rng.choice(TEXTS[:5])} #{i}",
                    None if rng.random() < 0.1 else f"user{i}.{seed}@example.com",
                    None if rng.random() < 0.3 else rng.choice(TEXTS),
                    None if rng.random() < 0.1 else rng.uniform(-1e6, 1e6),
                    None if rng.random() < 0.2 else rng.randbytes(rng.randrange(0, 2048)),
                )
                for i in range(1, n_customers + 1)
            ),
        )
        start = dt.datetime(2024, 1, 1)
        conn.executemany(
            "INSERT INTO orders (customer_id, total, placed_at, status) VALUES (?, ?, ?, ?)",
            (
                (
                    rng.randrange(1, n_customers + 1),
                    round(rng.uniform(1, 5000), 2),
                    (start + dt.timedelta(minutes=rng.randrange(10**6))).isoformat(),
                    rng.choice(["new", "paid", "shipped", None]),
                )
                for _ in range(2000 + rng.randrange(500))
            ),
        )
        conn.execute("DELETE FROM orders WHERE id % 97 = 0")  # gaps in the ids
        conn.executemany(
            "INSERT INTO settings VALUES (?, ?)",
            ((f"special-{i}", v) for i, v in enumerate(SPECIAL_VALUES)),
        )
        conn.executemany(
            "INSERT INTO settings VALUES (?, ?)",
            ((f"text-{i}", t) for i, t in enumerate(TEXTS)),
        )
        conn.execute("INSERT INTO settings VALUES ('seed', ?)", (seed,))
        conn.executemany(
            'INSERT INTO "odd ""name"" table" VALUES (?, ?)',
            ((rng.randrange(10**9), rng.choice(TEXTS)) for _ in range(50)),
        )
        conn.execute(f"PRAGMA user_version = {seed}")
        conn.execute("COMMIT")


def digest(path: Path) -> str:
    """sha256 over settings, schema and every row (rows ordered by all their columns)."""
    h = hashlib.sha256()
    with connect(f"{path.as_uri()}?mode=ro", uri=True) as conn:
        for pragma in ("user_version", "application_id", "encoding", "journal_mode"):
            h.update(repr((pragma, conn.execute(f"PRAGMA {pragma}").fetchone())).encode())
        schema = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        h.update(repr(schema).encode())
        for kind, name, _tbl, _sql in schema:
            if kind != "table":
                continue
            quoted = name.replace('"', '""')
            ncols = len(conn.execute(f'PRAGMA table_info("{quoted}")').fetchall())
            order = ", ".join(str(i) for i in range(1, ncols + 1))
            for row in conn.execute(f'SELECT * FROM "{quoted}" ORDER BY {order}'):
                h.update(repr(row).encode())
    return h.hexdigest()


def sidecars(path: Path) -> list[str]:
    return [s for s in ("-wal", "-shm", "-journal") if path.with_name(path.name + s).exists()]


# A StreamSink / StreamSource in memory, for calling the driver without a platform.


class _Buffer(io.BytesIO):
    def __init__(self, on_write: Callable[[int], None] | None) -> None:
        super().__init__()
        self.on_write = on_write

    def write(self, b: Any) -> int:
        if self.on_write is not None:
            self.on_write(len(b))
        return super().write(b)


class MemorySink:
    def __init__(self, on_write: Callable[[int], None] | None = None) -> None:
        self.streams: dict[str, bytes] = {}
        self.on_write = on_write

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        buf = _Buffer(self.on_write)
        yield buf
        self.streams[name] = buf.getvalue()

    def server_side(self, name: str) -> ServerSideTarget:
        raise UnsupportedError("no server-side storage in memory")


class MemorySource:
    def __init__(self, streams: dict[str, bytes]) -> None:
        self.streams = streams

    def names(self) -> list[str]:
        return list(self.streams)

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        yield io.BytesIO(self.streams[name])

    def server_side(self, name: str) -> ServerSideTarget:
        raise UnsupportedError("no server-side storage in memory")


class Stages:
    def __init__(self) -> None:
        self.names: list[str] = []

    def stage(self, name: str, *, bytes_total: int | None = None) -> None:
        self.names.append(name)

    def advance(self, nbytes: int) -> None:
        pass


def location(path: Path, name: str = "db") -> AppLocation:
    ref = ApplicationRef(api_group=API_GROUP, kind=KIND, name=name)
    return AppLocation(ref=ref, namespace=NS, connection={"path": str(path)})


def backup_ctx(path: Path, sink: MemorySink, seconds: float = 120) -> BackupContext:
    return BackupContext(
        application=location(path),
        parameters=SQLiteParameters(),
        artifact=sink,
        progress=Stages(),
        log=logging.getLogger("test"),
        deadline=Deadline.after(seconds),
    )


def restore_ctx(
    path: Path,
    streams: dict[str, bytes],
    *,
    in_place: bool = True,
    params: SQLiteParameters | None = None,
    seconds: float = 120,
) -> RestoreContext:
    return RestoreContext(
        target=location(path),
        source=location(path).ref,
        in_place=in_place,
        parameters=params or SQLiteParameters(),
        artifact=MemorySource(streams),
        driver_metadata={},
        taken_at=dt.datetime.now(dt.timezone.utc),
        progress=Stages(),
        log=logging.getLogger("test"),
        deadline=Deadline.after(seconds),
    )


def dump_of(path: Path) -> bytes:
    sink = MemorySink()
    SQLiteDriver().backup(backup_ctx(path, sink))
    return sink.streams[DUMP_STREAM]


def new_db(path: Path, journal_mode: str = "delete") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with connect(path) as conn:
        conn.execute(f"PRAGMA journal_mode={journal_mode}")
    return path


def platform_for(tmp_path: Path, **config: Any) -> LocalPlatform:
    cfg = EngineConfig(attempts=1, backoff=0.01, workers=1, **config)
    plat = LocalPlatform(tmp_path / "home", drivers=(SQLiteDriver,), config=cfg)
    plat.apply(backup_class_yaml())
    return plat


def declare(plat: LocalPlatform, name: str, path: Path) -> ApplicationRef:
    return plat.declare_app(NS, name, KIND, {"path": str(path)}, api_group=API_GROUP)


# ---------------------------------------------------------------------------- conformance


class TestSQLiteConformance(DriverConformance):
    driver = SQLiteDriver
    kind = KIND
    api_group = API_GROUP
    backup_class_yaml = backup_class_yaml()
    backup_class = CLASS
    journal_mode = "delete"

    def create_app(self, tmp_path: Path, name: str) -> AppHandle:
        path = new_db(tmp_path / "apps" / f"{name}.sqlite", self.journal_mode)
        ref = ApplicationRef(api_group=API_GROUP, kind=KIND, name=name)
        return AppHandle(ref=ref, connection={"path": str(path)})

    def write_data(self, app: AppHandle, seed: int) -> None:
        fill(Path(app.connection["path"]), seed)

    def checksum(self, app: AppHandle) -> str:
        return digest(Path(app.connection["path"]))

    def break_app(self, app: AppHandle) -> AppHandle:
        path = Path(app.connection["path"])
        bad = path.with_name(f"{path.stem}-not-a-database.sqlite")
        bad.write_bytes(b"this file is not a SQLite database\n" * 200)
        return AppHandle(ref=app.ref, connection={"path": str(bad)})

    def local_paths(self, app: AppHandle) -> list[Path]:
        return [Path(app.connection["path"])]


class TestSQLiteConformanceWAL(TestSQLiteConformance):
    """The whole kit again on databases in WAL mode (the mode must survive a restore)."""

    journal_mode = "wal"


# ---------------------------------------------------------------------------- backups


def test_dataset_round_trips_through_plain_sql(tmp_path: Path) -> None:
    """The dump is plain SQL: the sqlite3 module replays it like the shell would."""
    src = new_db(tmp_path / "src.sqlite")
    fill(src, 11)
    dump = dump_of(src).decode("utf-8")
    copy = tmp_path / "copy.sqlite"
    with connect(copy) as conn:
        conn.executescript(dump)
    assert digest(copy) == digest(src)
    # Triggers are created after the rows: replaying must not fire them again.
    with connect(copy) as a, connect(src) as b:
        count = "SELECT count(*) FROM audit_log"
        assert a.execute(count).fetchone() == b.execute(count).fetchone()


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="no sqlite3 shell on PATH")
def test_dump_replays_through_the_sqlite3_shell(tmp_path: Path) -> None:
    src = new_db(tmp_path / "src.sqlite", "wal")
    fill(src, 12)
    dump = dump_of(src)
    copy = tmp_path / "copy.sqlite"
    subprocess.run(["sqlite3", str(copy)], input=dump, check=True, capture_output=True)
    assert digest(copy) == digest(src)


def test_backup_metadata_is_tenant_safe(tmp_path: Path) -> None:
    plat = platform_for(tmp_path)
    db = new_db(tmp_path / "apps" / "shop.sqlite", "wal")
    fill(db, 3)
    job = plat.backup(NS, declare(plat, "shop", db), "b1", CLASS)
    assert job.status.phase == "Succeeded", job.status.message
    (backup,) = plat.backups(NS)
    meta = typed_metadata(backup.spec.driver_metadata)
    assert meta["tables"] == 5 and meta["views"] == 1 and meta["triggers"] == 1
    assert meta["indexes"] == 1  # ours; SQLite's automatic ones are not counted
    assert meta["journalMode"] == "wal" and meta["userVersion"] == 3
    assert meta["rows"] > 3000
    assert meta["sqliteVersion"] == sqlite3.sqlite_version
    assert str(tmp_path) not in json.dumps(meta)
    (manifest,) = [p for p in plat.stored_files() if p.name == "manifest.json"]
    assert json.loads(manifest.read_text())["toolVersions"] == {"sqlite": sqlite3.sqlite_version}
    assert [s.name for s in plat.manifest(NS, "b1").streams] == ["dump.sql"]


def test_wal_backup_is_consistent_while_a_writer_commits(tmp_path: Path) -> None:
    """WAL: the writer keeps committing during the dump, and the dump is one snapshot."""
    db = new_db(tmp_path / "ledger.sqlite", "wal")
    with connect(db) as conn:
        conn.executescript("""
            CREATE TABLE debit (id INTEGER PRIMARY KEY, amount INTEGER, memo TEXT);
            CREATE TABLE credit (id INTEGER PRIMARY KEY, amount INTEGER, memo TEXT);
        """)
        conn.execute("BEGIN")
        rows = [(i, i % 1000, "padding " * 8) for i in range(1, 30_001)]
        conn.executemany("INSERT INTO debit VALUES (?, ?, ?)", rows)
        conn.executemany("INSERT INTO credit VALUES (?, -?, ?)", rows)
        conn.execute("COMMIT")

    committed = [30_000]
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            with connect(db, timeout=10, check_same_thread=False) as w:
                while not stop.is_set():
                    n = committed[0] + 1
                    w.execute("BEGIN IMMEDIATE")
                    w.execute("INSERT INTO debit VALUES (?, ?, 'live')", (n, n % 1000))
                    w.execute("INSERT INTO credit VALUES (?, ?, 'live')", (n, -(n % 1000)))
                    w.execute("COMMIT")
                    committed[0] = n
        except BaseException as exc:
            failures.append(exc)

    seen: dict[str, int] = {}

    def while_dumping(_n: int) -> None:
        # First write: the snapshot is pinned and the dump is under way.  The writer
        # must get 200 more transactions through before we let the dump continue.
        if "at_first_write" in seen:
            return
        seen["at_first_write"] = committed[0]
        deadline = time.monotonic() + 20
        while committed[0] < seen["at_first_write"] + 200 and time.monotonic() < deadline:
            time.sleep(0.005)
        seen["while_open"] = committed[0]

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.05)
        seen["before"] = committed[0]
        sink = MemorySink(on_write=while_dumping)
        SQLiteDriver().backup(backup_ctx(db, sink))
    finally:
        stop.set()
        thread.join()
    assert not failures, failures
    assert seen["while_open"] >= seen["at_first_write"] + 200, "the writer was blocked by the dump"

    copy = tmp_path / "copy.sqlite"
    SQLiteDriver().restore(restore_ctx(copy, sink.streams, in_place=False))
    with connect(copy) as conn:
        ((debits, d_sum),) = conn.execute("SELECT count(*), sum(amount) FROM debit").fetchall()
        ((credits, c_sum),) = conn.execute("SELECT count(*), sum(amount) FROM credit").fetchall()
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert debits == credits, "the dump saw half a transaction"
    assert d_sum + c_sum == 0
    assert seen["before"] <= debits <= seen["at_first_write"] < committed[0]


def test_rollback_journal_backup_holds_writers_off(tmp_path: Path) -> None:
    """Rollback-journal mode: consistency comes from the SHARED lock; writers wait."""
    db = new_db(tmp_path / "db.sqlite", "delete")
    with connect(db) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, pad TEXT)")
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t VALUES (?, ?)", ((i, "p" * 100) for i in range(20_000)))
        conn.execute("COMMIT")
    outcome: list[str] = []

    def try_to_write(_n: int) -> None:
        if outcome:
            return
        with connect(db, timeout=0.2) as w:
            try:
                w.execute("BEGIN IMMEDIATE")
                w.execute("INSERT INTO t VALUES (-1, 'during the dump')")
                w.execute("COMMIT")
                outcome.append("committed")
            except sqlite3.OperationalError as exc:
                outcome.append(str(exc))
                w.execute("ROLLBACK")

    sink = MemorySink(on_write=try_to_write)
    SQLiteDriver().backup(backup_ctx(db, sink))
    assert outcome == ["database is locked"]
    assert b"during the dump" not in sink.streams[DUMP_STREAM]


def test_failures_are_tenant_safe(tmp_path: Path) -> None:
    plat = platform_for(tmp_path, backup_timeout=1.0)
    missing = tmp_path / "secret-dir" / "missing.sqlite"
    locked = new_db(tmp_path / "secret-dir" / "locked.sqlite", "delete")
    with connect(locked) as conn:
        conn.execute("CREATE TABLE t (a)")
    cases = {
        "missing": (missing, "database file does not exist"),
        "locked": (locked, "locked by another process until the job's deadline"),
        "no-path": (None, "connection settings are incomplete"),
    }
    with connect(locked) as holder:
        holder.execute("BEGIN EXCLUSIVE")
        for name, (path, expected) in cases.items():
            connection = {"path": str(path)} if path else {"file": "x"}
            ref = plat.declare_app(NS, name, KIND, connection, api_group=API_GROUP)
            job = plat.backup(NS, ref, f"b-{name}", CLASS)
            assert job.status.phase == "Failed"
            assert job.status.conditions[0].reason == "DriverFailed"
            assert expected in (job.status.message or "")
        holder.execute("ROLLBACK")
    view = plat.tenant_view(NS)
    assert str(tmp_path) not in view and "secret-dir" not in view
    assert plat.leftovers() == []


# ---------------------------------------------------------------------------- restores


def test_failed_replay_leaves_the_target_untouched(tmp_path: Path) -> None:
    target = new_db(tmp_path / "t" / "db.sqlite", "wal")
    fill(target, 1)
    before = target.read_bytes()
    header = b"-- cozybackup-sqlite dump format 1\n"
    trailer = b"-- cozybackup-sqlite dump complete\n"
    bad = {
        "rejected statement": header + b"BEGIN TRANSACTION;\nCREATE TABLE x(a);\n"
        b"INSERT INTO nope VALUES(1);\nCOMMIT;\n" + trailer,
        "no trailer": header + b"BEGIN TRANSACTION;\nCREATE TABLE x(a);\nCOMMIT;\n",
        "never committed": header + b"BEGIN TRANSACTION;\nCREATE TABLE x(a);\n" + trailer,
        "not ours": b"CREATE TABLE x(a);\n",
        "attach": header + b"ATTACH DATABASE 'elsewhere.db' AS other;\n" + trailer,
        "bad utf-8": header + b"SELECT '\xff\xfe';\n" + trailer,
    }
    messages = {}
    for case, data in bad.items():
        with pytest.raises(DriverError) as info:
            SQLiteDriver().restore(restore_ctx(target, {DUMP_STREAM: data}))
        messages[case] = info.value.message
        assert target.read_bytes() == before, case
        assert sorted(p.name for p in target.parent.iterdir()) == ["db.sqlite"], case
        assert str(tmp_path) not in info.value.message
    assert "rejected statement 3" in messages["rejected statement"]
    assert "incomplete" in messages["no trailer"] and "incomplete" in messages["never committed"]
    assert "compatible version" in messages["not ours"]
    assert "SQLITE_AUTH" in messages["attach"] or "rejected" in messages["attach"]
    assert not (tmp_path / "t" / "elsewhere.db").exists()


def test_restore_stops_at_the_deadline_and_leaves_the_target(tmp_path: Path) -> None:
    db = new_db(tmp_path / "t" / "db.sqlite")
    fill(db, 81)
    dump = dump_of(db)
    fill(db, 82)
    before = db.read_bytes()
    with pytest.raises(DeadlineExceeded):
        SQLiteDriver().restore(restore_ctx(db, {DUMP_STREAM: dump}, seconds=0))
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["db.sqlite"]


def test_restore_replaces_stale_sidecars(tmp_path: Path) -> None:
    """A target left with a hot WAL (a crashed writer) is replaced whole, WAL included."""
    src = new_db(tmp_path / "src.sqlite", "wal")
    fill(src, 21)
    want = digest(src)
    dump = dump_of(src)

    target = tmp_path / "crashed" / "db.sqlite"
    target.parent.mkdir()
    live = new_db(tmp_path / "live.sqlite", "wal")
    with connect(live) as conn:
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TABLE junk (a)")
        conn.executemany("INSERT INTO junk VALUES (?)", ((i,) for i in range(1000)))
        for suffix in ("", "-wal", "-shm"):  # copy the files as a crash would leave them
            shutil.copyfile(f"{live}{suffix}", f"{target}{suffix}")
    assert Path(f"{target}-wal").stat().st_size > 0

    SQLiteDriver().restore(restore_ctx(target, {DUMP_STREAM: dump}))
    assert sidecars(target) == []
    assert digest(target) == want

    # A database file deleted by hand, its hot WAL left behind: SQLite would replay
    # that WAL into whatever file appears under the name next.
    for leftover in ("garbage", "deleted"):
        path = tmp_path / leftover / "db.sqlite"
        path.parent.mkdir()
        if leftover == "garbage":
            path.write_bytes(b"garbage" * 1000)
        with connect(live) as conn:
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.executemany("INSERT INTO junk VALUES (?)", ((i,) for i in range(1000)))
            for suffix in ("-wal", "-shm"):
                shutil.copyfile(f"{live}{suffix}", f"{path}{suffix}")
        SQLiteDriver().restore(restore_ctx(path, {DUMP_STREAM: dump}, in_place=False))
        assert sidecars(path) == [], leftover
        assert digest(path) == want, leftover


def test_restore_refuses_a_database_still_in_use(tmp_path: Path) -> None:
    plat = platform_for(tmp_path, restore_timeout=3.0)
    db = new_db(tmp_path / "apps" / "db.sqlite", "wal")
    fill(db, 31)
    assert plat.backup(NS, declare(plat, "db", db), "b1", CLASS).status.phase == "Succeeded"
    fill(db, 32)
    after = digest(db)
    with connect(db) as app:  # the application still has the file open
        app.execute("SELECT count(*) FROM orders").fetchone()
        job = plat.restore(NS, "b1", "r1")
        assert job.status.phase == "Failed"
        assert "still open in another process" in (job.status.message or "")
        assert [p.name for p in db.parent.iterdir() if "restore" in p.name] == []
    assert digest(db) == after
    # Once the application is stopped, the same restore goes through.
    assert plat.restore(NS, "b1", "r2").status.phase == "Succeeded"


# ---------------------------------------------------------------------------- hostile files
#
# The red team's D1: the application's directory is the tenant's (SQLite writes its
# journals there), so the tenant decides what sits at the database's name.  The worker
# runs as a more privileged user and must act on the declared file only.


TENANT_A, TENANT_B = 2001, 2002  # the application users of the red team's report


def as_tenant(uid: int, cwd: Path, *argv: str) -> None:
    """Run a command in ``cwd`` as the tenant's application user (when we are root)."""
    if os.geteuid() == 0:  # chdir happens before the uid changes: pytest's tmp is 0700
        subprocess.run(argv, check=True, cwd=cwd, user=uid, group=uid, extra_groups=[])
    else:
        subprocess.run(argv, check=True, cwd=cwd)


@pytest.fixture
def srv(tmp_path: Path) -> Path:
    """``$SRV`` of the report: tenant-a and tenant-b each own a 0700 directory with a
    50-row ``shop.sqlite``; tenant-b's is 0600."""
    root = tmp_path / "srv"
    for tenant, uid, prefix in (("tenant-a", TENANT_A, "alpha-private-row"),
                                ("tenant-b", TENANT_B, "bravo-TOPSECRET-row")):  # fmt: skip
        d = root / tenant
        d.mkdir(parents=True)
        with connect(d / "shop.sqlite") as conn:
            conn.execute("create table items(id integer primary key, v text)")
            conn.executemany(
                "insert into items(v) values (?)", [(f"{prefix}-{i}",) for i in range(50)]
            )
        (d / "shop.sqlite").chmod(0o600)
        d.chmod(0o700)
        if os.geteuid() == 0:
            os.chown(d / "shop.sqlite", uid, uid)
            os.chown(d, uid, uid)
    (tmp_path / "fake-etc").mkdir()
    (tmp_path / "fake-etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    return root


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def rows(path: Path) -> list[str]:
    with connect(f"{path.as_uri()}?mode=ro", uri=True) as conn:
        return [r[0] for r in conn.execute("select v from items order by id")]


def snapshot(path: Path) -> tuple[bytes, int, int, int]:
    st = path.stat()
    return path.read_bytes(), st.st_mode, st.st_uid, st.st_gid


def test_d1_backup_through_a_link_to_another_tenants_database_is_refused(
    tmp_path: Path, srv: Path
) -> None:
    """Cross-tenant read: tenant-a links its shop.sqlite to tenant-b's, then backs up
    'shop' and restores it into its own copy."""
    plat = platform_for(tmp_path)
    shop = declare(plat, "shop", srv / "tenant-a" / "shop.sqlite")
    copy = declare(plat, "shop-copy", srv / "tenant-a" / "copy.sqlite")
    victim = srv / "tenant-b" / "shop.sqlite"
    before = snapshot(victim)
    as_tenant(TENANT_A, srv / "tenant-a", "ln", "-sf", str(victim), "shop.sqlite")

    job = plat.backup(NS, shop, "steal", CLASS)
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "UnsafeApplicationPath"
    assert "database file is a symbolic link" in (job.status.message or "")
    assert plat.backups(NS) == [] and plat.leftovers() == []
    assert plat.restore(NS, "steal", "steal-into-copy", target=copy).status.phase == "Failed"
    assert not (srv / "tenant-a" / "copy.sqlite").exists()
    assert snapshot(victim) == before
    view = plat.tenant_view(NS)
    assert str(tmp_path) not in view and "TOPSECRET" not in view


@pytest.mark.parametrize(
    "target",
    ["tenant-b's database", "a system file", "a file that does not exist"],
)
def test_d1_in_place_restore_through_a_link_writes_nothing(
    tmp_path: Path, srv: Path, target: str
) -> None:
    """Cross-tenant write and arbitrary file replace/create: tenant-a backs up its own
    database (one row OWNED-BY-TENANT-A) as 'payload', links shop.sqlite elsewhere and
    restores 'payload' in place."""
    plat = platform_for(tmp_path)
    own = srv / "tenant-a" / "shop.sqlite"
    with connect(own) as conn:
        conn.execute("delete from items")
        conn.execute("insert into items(v) values ('OWNED-BY-TENANT-A')")
    shop = declare(plat, "shop", own)
    assert plat.backup(NS, shop, "payload", CLASS).status.phase == "Succeeded"
    victim = {
        "tenant-b's database": srv / "tenant-b" / "shop.sqlite",
        "a system file": tmp_path / "fake-etc" / "passwd",
        "a file that does not exist": tmp_path / "fake-etc" / "cron.d-new-file",
    }[target]
    before = snapshot(victim) if victim.exists() else None
    own.unlink()
    as_tenant(TENANT_A, own.parent, "ln", "-s", str(victim), own.name)

    job = plat.restore(NS, "payload", "overwrite")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "UnsafeApplicationPath"
    assert "database file is a symbolic link" in (job.status.message or "")
    if before is None:
        assert not victim.exists()
    else:
        assert snapshot(victim) == before
    if victim.name == "shop.sqlite":
        assert rows(victim)[0] == "bravo-TOPSECRET-row-0"
    assert own.is_symlink() and own.readlink() == victim
    assert listing(srv / "tenant-a") == ["shop.sqlite"]


def test_d1_a_link_on_the_way_to_the_database_is_refused(tmp_path: Path, srv: Path) -> None:
    """The declared directory is a link (to tenant-b's): refused on backup and restore."""
    plat = platform_for(tmp_path)
    sub = srv / "tenant-a" / "sub"
    sub.mkdir()
    new_db(sub / "shop.sqlite")
    shop = declare(plat, "shop", sub / "shop.sqlite")
    assert plat.backup(NS, shop, "b1", CLASS).status.phase == "Succeeded"
    shutil.rmtree(sub)
    sub.symlink_to(srv / "tenant-b")
    before = snapshot(srv / "tenant-b" / "shop.sqlite")
    for job in (plat.backup(NS, shop, "b2", CLASS), plat.restore(NS, "b1", "r1")):
        assert job.status.phase == "Failed"
        assert job.status.conditions[0].reason == "UnsafeApplicationPath"
        assert "a directory on the path" in (job.status.message or "")
    assert snapshot(srv / "tenant-b" / "shop.sqlite") == before


@pytest.mark.parametrize("kind", ["fifo", "directory", "socket", "hard link"])
def test_special_files_at_the_database_path_are_refused(tmp_path: Path, kind: str) -> None:
    db = new_db(tmp_path / "app" / "db.sqlite")
    fill(db, 91)
    dump = dump_of(db)
    db.unlink()
    if kind == "fifo":
        os.mkfifo(db)
    elif kind == "directory":
        db.mkdir()
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(db))
        sock.close()
    else:
        other = new_db(tmp_path / "other.sqlite")
        os.link(other, db)
    expected = {
        "fifo": "is a FIFO",
        "directory": "is a directory",
        "socket": "is a socket",
        "hard link": "has 2 hard links",
    }[kind]
    with pytest.raises(UnsafeLocalPath, match=expected) as info:
        SQLiteDriver().backup(backup_ctx(db, MemorySink()))
    assert str(tmp_path) not in info.value.message
    with pytest.raises(UnsafeLocalPath, match=expected):
        SQLiteDriver().restore(restore_ctx(db, {DUMP_STREAM: dump}))
    assert listing(db.parent) == ["db.sqlite"]


def test_a_link_swapped_in_while_sqlite_opens_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is checked, then SQLite opens it by name: a link planted in between is
    seen before anything is read, and before the old file is touched on restore."""
    import cozybackup_sqlite._connection as mod

    db = new_db(tmp_path / "app" / "db.sqlite")
    fill(db, 93)
    dump = dump_of(db)
    victim = new_db(tmp_path / "victim" / "db.sqlite", "wal")
    fill(victim, 94)
    want = digest(victim)
    real_connect = mod.connect

    def racing_connect(path: Path, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if path == db and not db.is_symlink():
            db.rename(db.with_name("moved"))
            db.symlink_to(victim)
        return real_connect(path, *args, **kwargs)

    monkeypatch.setattr(mod, "connect", racing_connect)
    with pytest.raises(UnsafeLocalPath, match="changed while it was opened"):
        SQLiteDriver().backup(backup_ctx(db, MemorySink()))
    db.unlink()
    db.with_name("moved").rename(db)
    with pytest.raises(UnsafeLocalPath, match="changed while it was opened"):
        SQLiteDriver().restore(restore_ctx(db, {DUMP_STREAM: dump}))
    assert digest(victim) == want
    assert listing(db.parent) == ["db.sqlite", "moved"]


def test_d10_restore_files_are_owner_only_and_never_left_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replayed copy is private while it is built; a stale copy left by a killed
    restore is removed by the next one; a new copy target gets the directory's owner."""
    scratch = tmp_path / "worker-tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    src = new_db(tmp_path / "src.sqlite")
    fill(src, 95)
    dump = dump_of(src)
    target = new_db(tmp_path / "app" / "db.sqlite")
    target.chmod(0o600)
    stale = target.with_name(".db.sqlite.cozybackup-restore-0123456789ab")
    stale.write_bytes(b"a copy a killed restore left")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    seen: list[tuple[str, int]] = []

    class Watching(Stages):
        def stage(self, name: str, *, bytes_total: int | None = None) -> None:
            super().stage(name, bytes_total=bytes_total)
            for p in [*scratch.rglob("*"), *target.parent.iterdir()]:
                seen.append((p.name, stat.S_IMODE(p.lstat().st_mode)))

    ctx = restore_ctx(target, {DUMP_STREAM: dump})
    ctx.progress = Watching()
    SQLiteDriver().restore(ctx)
    assert digest(target) == digest(src)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not stale.exists()
    assert any(name.endswith(".sqlite") for name, _ in seen if name != "db.sqlite")
    loose = [(n, m) for n, m in seen if n != "db.sqlite" and m & 0o077]
    assert loose == [], "a copy of the database was readable by others while it was built"
    assert list(scratch.iterdir()) == []
    assert listing(target.parent) == ["db.sqlite"]

    # A new copy target: owner-only, and the directory's owner where we may chown.
    new_dir = tmp_path / "copy"
    new_dir.mkdir()
    if os.geteuid() == 0:
        os.chown(new_dir, TENANT_A, TENANT_A)
    copy = new_dir / "copy.sqlite"
    SQLiteDriver().restore(restore_ctx(copy, {DUMP_STREAM: dump}, in_place=False))
    st = copy.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (new_dir.stat().st_uid, new_dir.stat().st_gid)
    assert list(scratch.iterdir()) == []


def test_restore_keeps_the_file_mode(tmp_path: Path) -> None:
    db = new_db(tmp_path / "db.sqlite")
    fill(db, 51)
    db.chmod(0o640)
    SQLiteDriver().restore(restore_ctx(db, {DUMP_STREAM: dump_of(db)}))
    assert db.stat().st_mode & 0o777 == 0o640


def test_restore_into_a_new_file(tmp_path: Path) -> None:
    src = new_db(tmp_path / "src.sqlite")
    fill(src, 61)
    target = tmp_path / "new" / "copy.sqlite"
    target.parent.mkdir()
    SQLiteDriver().restore(restore_ctx(target, {DUMP_STREAM: dump_of(src)}, in_place=False))
    assert digest(target) == digest(src)
    with pytest.raises(DriverError, match=r"directory of the application's database file does not"):
        SQLiteDriver().restore(
            restore_ctx(
                tmp_path / "nowhere" / "x.sqlite", {DUMP_STREAM: dump_of(src)}, in_place=False
            )
        )


def test_floats_read_back_bit_for_bit(tmp_path: Path) -> None:
    """SQLite's text-to-double parser is not correctly rounded: the dump must allow for it."""
    rng = random.Random(5)
    values = [rng.random() for _ in range(20_000)]
    values += [rng.lognormvariate(0, 60) for _ in range(20_000)]
    src = new_db(tmp_path / "src.sqlite")
    with connect(src) as conn:
        conn.execute("CREATE TABLE f (id INTEGER PRIMARY KEY, v REAL, w)")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO f VALUES (?, ?, ?)", ((i, v, -v) for i, v in enumerate(values))
        )
        conn.execute("COMMIT")
    target = tmp_path / "copy.sqlite"
    SQLiteDriver().restore(restore_ctx(target, {DUMP_STREAM: dump_of(src)}, in_place=False))
    with connect(target) as conn:
        got = conn.execute("SELECT v, w FROM f ORDER BY id").fetchall()
    assert got == [(v, -v) for v in values]


def test_page_size_and_settings_survive(tmp_path: Path) -> None:
    src = tmp_path / "src.sqlite"
    with connect(src) as conn:
        conn.execute("PRAGMA page_size=8192")
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA application_id=1234567")
        conn.execute("CREATE TABLE t (a)")
    target = tmp_path / "copy.sqlite"
    SQLiteDriver().restore(restore_ctx(target, {DUMP_STREAM: dump_of(src)}, in_place=False))
    with connect(target) as conn:
        got = [
            conn.execute(f"PRAGMA {p}").fetchone()[0]
            for p in ("page_size", "auto_vacuum", "application_id", "journal_mode")
        ]
    assert got == [8192, 2, 1234567, "delete"]


# ---------------------------------------------------------------------------- parameters


def test_parameters_are_validated_by_the_catalog() -> None:
    registry = DriverRegistry()
    registry.add(SQLiteDriver)
    app = ApplicationRef(api_group=API_GROUP, kind=KIND, name="db")

    (good,) = load_yaml(backup_class_yaml("{integrityCheck: false, batchStatements: 50}"))
    resolved = Catalog.build(registry, [good]).resolve(CLASS, app)
    assert resolved.parameters == SQLiteParameters(integrity_check=False, batch_statements=50)
    (defaults,) = load_yaml(backup_class_yaml("{}"))
    assert Catalog.build(registry, [defaults]).resolve(CLASS, app).parameters == SQLiteParameters()

    (zero,) = load_yaml(backup_class_yaml("{batchStatements: 0}"))
    catalog = Catalog.build(registry, [zero])
    for check in (lambda: catalog.validate(zero), lambda: catalog.resolve(CLASS, app)):
        with pytest.raises(DriverParametersError) as info:
            check()
        # The driver names the field; the core prefixes the class's path.
        assert info.value.problems == [
            ("spec.strategies[0].parameters.batchStatements", "must be greater than 0, got 0"),
        ]

    for params, path, message in [
        (
            "{integrityCheck: maybe}",
            "spec.strategies[0].parameters.integrityCheck",
            "true or false",
        ),
    ]:
        (bc,) = load_yaml(backup_class_yaml(params))
        with pytest.raises(ValidationError) as vinfo:
            Catalog.build(registry, [bc]).validate(bc)
        assert [p for p, _ in vinfo.value.problems] == [path]
        assert message in vinfo.value.problems[0][1]


def test_invalid_parameters_fail_the_job_before_any_work(tmp_path: Path) -> None:
    plat = platform_for(tmp_path)
    plat.apply(backup_class_yaml("{batchStatements: -5}"))
    db = new_db(tmp_path / "apps" / "db.sqlite")
    job = plat.backup(NS, declare(plat, "db", db), "b1", CLASS)
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "InvalidParameters"
    assert "parameters.batchStatements: must be greater than 0" in (job.status.message or "")
    assert plat.leftovers() == []


# ---------------------------------------------------------------------------- scale


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dedup", "bound"),
    # The stream format holds a few 1 MiB blocks; the default's chunker a 16 MiB window
    # and four chunks in flight each way (tests/test_dedup.py in the core measures it).
    [(False, 24 << 20), (True, 64 << 20)],
    ids=["streams", "chunks"],
)
def test_large_database_round_trip_with_flat_memory(
    tmp_path: Path, dedup: bool, bound: int
) -> None:
    db = new_db(tmp_path / "apps" / "big.sqlite", "wal")
    rng = random.Random(7)
    with connect(db) as conn:
        conn.execute("CREATE TABLE files (id INTEGER PRIMARY KEY, name TEXT, body BLOB)")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO files VALUES (?, ?, ?)",
            ((i, f"file-{i}", rng.randbytes(1 << 20)) for i in range(52)),
        )
        conn.execute("COMMIT")
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, at REAL, what TEXT)")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO events VALUES (?, ?, ?)",
            ((i, rng.random(), f"event {i} 日本") for i in range(100_000)),
        )
        conn.execute("COMMIT")
    assert db.stat().st_size > 50 << 20
    want = digest(db)

    plat = platform_for(tmp_path)
    plat.apply(local_location_yaml(deduplication=dedup))
    ref = declare(plat, "big", db)
    tracemalloc.start()
    try:
        job = plat.backup(NS, ref, "b1", CLASS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert job.status.phase == "Succeeded", job.status.message
    (backup,) = plat.backups(NS)
    assert backup.status.artifact is not None
    assert backup.status.artifact.size_bytes > 100 << 20  # hex BLOBs: the dump is ~2x the file
    assert plat.manifest(NS, "b1").deduplicated == dedup
    assert peak < bound, f"backup peaked at {peak >> 20} MiB of Python memory"

    with connect(db) as conn:
        conn.execute("DELETE FROM files WHERE id % 2 = 0")
    tracemalloc.start()
    try:
        restore = plat.restore(NS, "b1", "r1")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert restore.status.phase == "Succeeded", restore.status.message
    assert peak < bound, f"restore peaked at {peak >> 20} MiB of Python memory"
    assert digest(db) == want


# ---------------------------------------------------------------------------- packaging


def _installed() -> bool:
    try:
        importlib.metadata.distribution("cozybackup-sqlite")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _installed(), reason="cozybackup-sqlite is not installed")
def test_entry_point_is_discovered(tmp_path: Path) -> None:
    eps = importlib.metadata.entry_points(group="cozybackup.drivers", name="sqlite")
    assert [ep.value for ep in eps] == ["cozybackup_sqlite.plugin"]
    host = PluginHost.load()
    assert "sqlite" in [d.name for d in host.registry]
    assert host.registry.origin("sqlite") == "sqlite"
    assert type(host.registry.for_strategy("SQLite")) is SQLiteDriver
    assert not [b for b in host.broken if b.name == "sqlite"]

    # And a platform that knows drivers only from entry points can use it.
    plat = LocalPlatform(tmp_path / "home", entry_points=True)
    plat.apply(backup_class_yaml())
    db = new_db(tmp_path / "apps" / "db.sqlite")
    fill(db, 71)
    want = digest(db)
    assert plat.backup(NS, declare(plat, "db", db), "b1", CLASS).status.phase == "Succeeded"
    fill(db, 72)
    assert plat.restore(NS, "b1", "r1").status.phase == "Succeeded"
    assert digest(db) == want


def test_public_surface() -> None:
    import cozybackup_sqlite

    assert sorted(cozybackup_sqlite.__all__) == sorted(
        ["DUMP_STREAM", "SQLITE_KIND", "SQLiteDriver", "SQLiteParameters", "__version__"]
    )
    assert SQLiteDriver.name == "sqlite" and SQLiteDriver.strategy_kind == "SQLite"
    assert SQLiteDriver.kinds == (SQLITE_KIND,)
    assert Path(cozybackup_sqlite.__file__).with_name("py.typed").exists()
