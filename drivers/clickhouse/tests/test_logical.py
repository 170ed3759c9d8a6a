"""Logical mode end to end, on ClickHouse 18.16 (HTTP) and on chdb 26.x (in-process)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cozybackup_clickhouse import LOGICAL_INDEX_STREAM
from cozybackup_clickhouse.testing import (
    DATASET_DATABASES,
    ODD_TABLE,
    ChdbApp,
    ClickHouseServer,
    Runner,
    fingerprint,
    rows,
    write_dataset,
)

from cozybackup_core.testing import typed_metadata

from conftest import (
    NS,
    ChdbFactory,
    ServerFactory,
    assert_no_secrets,
    class_yaml,
    declare,
    make_platform,
    scratch_databases,
)

App = ClickHouseServer | ChdbApp


@contextlib.contextmanager
def session(app: App) -> Iterator[Runner]:
    if isinstance(app, ClickHouseServer):
        yield app.run
    else:
        with app.session() as run:
            yield run


def make_app(engine: str, clickhouse: ServerFactory, chdb_dir: ChdbFactory, name: str) -> App:
    return clickhouse() if engine == "server" else chdb_dir(name)


def invariants(run: Runner) -> dict[str, list[list[str]]]:
    """What the materialized views must agree on with their sources (no row counted
    twice, none lost), and what the plain view computes from them."""
    return {
        "orders": rows(
            run,
            "SELECT customer, count(), sum(amount) FROM shop.orders GROUP BY customer ORDER BY customer",
        ),
        "totals": rows(
            run,
            "SELECT customer, sum(orders), sum(spent) FROM shop.totals GROUP BY customer ORDER BY customer",
        ),
        "daily": rows(run, "SELECT sum(total), sum(n) FROM shop.daily"),
        "daily_src": rows(run, "SELECT sum(amount), count() FROM shop.orders"),
        "chain": rows(
            run, "SELECT bucket, sum(orders) FROM shop.chain GROUP BY bucket ORDER BY bucket"
        ),
        "chain_src": rows(
            run,
            "SELECT customer % 10 AS b, sum(orders) FROM shop.totals GROUP BY b ORDER BY b"
            if _chain_reads_view(run)
            else "SELECT customer % 10 AS b, sum(n) FROM shop.daily GROUP BY b ORDER BY b",
        ),
    }


def _chain_reads_view(run: Runner) -> bool:
    create = rows(
        run,
        "SELECT create_table_query FROM system.tables WHERE database = 'shop' AND name = 'chain'",
    )
    return "FROM shop.totals" in create[0][0]


def assert_consistent(run: Runner) -> None:
    inv = invariants(run)
    assert inv["orders"] == inv["totals"], "shop.totals disagrees with shop.orders"
    assert inv["daily"] == inv["daily_src"], "shop.daily disagrees with shop.orders"
    assert inv["chain"] == inv["chain_src"], "shop.chain disagrees with its source"


@pytest.mark.parametrize("engine", ["server", "chdb"])
@pytest.mark.parametrize("where", ["in_place", "to_copy"])
def test_every_table_and_view_survives(
    clickhouse: ServerFactory, chdb_dir: ChdbFactory, tmp_path: Path, engine: str, where: str
) -> None:
    plat = make_platform(tmp_path)
    src = make_app(engine, clickhouse, chdb_dir, "src")
    ref = declare(plat, "analytics", src)
    with session(src) as run:
        write_dataset(run, seed=5, memory=engine == "server", chain_from_view=engine == "server")
        expected = fingerprint(run)
        assert_consistent(run)
    engines = {v["engine"] for v in expected.values()}
    assert {"MergeTree", "ReplacingMergeTree", "SummingMergeTree", "CollapsingMergeTree",
            "AggregatingMergeTree", "MaterializedView", "View", "Merge", "TinyLog",
            "StripeLog"} <= engines  # fmt: skip
    assert all(v["rows"] > 0 for k, v in expected.items() if v["engine"] != "View"), expected

    job = plat.backup(NS, ref, "b1", "cozy-default")
    assert job.status.phase == "Succeeded", job.status.message
    meta = typed_metadata(plat.backups(NS)[0].spec.driver_metadata)
    assert meta["mode"] == "logical"
    assert meta["databases"] == sorted([*DATASET_DATABASES, "default"])
    assert meta["materializedViews"] == 3
    assert meta["tables"] == (10 if engine == "server" else 9)

    if where == "in_place":
        with session(src) as run:
            write_dataset(
                run, seed=6, memory=engine == "server", chain_from_view=engine == "server"
            )
            run("CREATE TABLE shop.added_later (x UInt8) ENGINE = TinyLog")
            assert fingerprint(run) != expected
        target, job = src, plat.restore(NS, "b1", "r1")
    else:
        target = make_app(engine, clickhouse, chdb_dir, "copy")
        job = plat.restore(NS, "b1", "r1", target=declare(plat, "analytics-copy", target))
    assert job.status.phase == "Succeeded", job.status.message

    with session(target) as run:
        got = fingerprint(run)
        diff = {k: (expected.get(k), got.get(k)) for k in expected.keys() | got.keys()
                if expected.get(k) != got.get(k)}  # fmt: skip
        assert not diff, f"objects differ after the restore: {diff}"
        assert_consistent(run)
        assert scratch_databases(run) == []
        # The views work on: new rows flow through every materialized view once.
        run(
            "INSERT INTO shop.orders (d, id, customer, amount, note, status, code, at) "
            "SELECT toDate('2024-03-01'), 900000 + number, number % 13, toDecimal64(1.5, 2), "
            "'new', 1, 'abcd', toDateTime('2024-03-01 00:00:00') FROM numbers(1000)"
        )
        assert_consistent(run)
        assert rows(run, "SELECT count() FROM shop.orders WHERE note = 'new'") == [["1000"]]
    if where == "to_copy":
        with session(src) as run:
            assert fingerprint(run) == expected, "a to-copy restore changed the source"
    assert_no_secrets(plat, src, target)


def test_a_server_backup_restores_into_chdb(
    clickhouse: ServerFactory, chdb_dir: ChdbFactory, tmp_path: Path
) -> None:
    """A migration: ClickHouse 18.16's schema and Native rows, read back by 26.x."""
    plat = make_platform(tmp_path)
    src = clickhouse()
    write_dataset(src.run, seed=8, memory=False)  # chdb forgets Memory tables
    expected = fingerprint(src.run)
    assert plat.backup(NS, declare(plat, "old", src), "b1").status.phase == "Succeeded"
    new = chdb_dir("new")
    job = plat.restore(NS, "b1", "r1", target=declare(plat, "new", new))
    assert job.status.phase == "Succeeded", job.status.message
    with new.session() as run:
        run("SET output_format_decimal_trailing_zeros = 1")  # print decimals as 18.16 does
        got = fingerprint(run)
        assert_consistent(run)
    # Definitions are written differently by each release; rows must be the same.
    assert {k: v.get("rows") for k, v in got.items()} == {
        k: v.get("rows") for k, v in expected.items()
    }
    different = [k for k in expected if expected[k].get("sha256") != got[k].get("sha256")]
    assert not different, f"rows differ in {different}"


@pytest.mark.parametrize("engine", ["server", "chdb"])
def test_named_databases_only_are_backed_up_and_replaced(
    clickhouse: ServerFactory, chdb_dir: ChdbFactory, tmp_path: Path, engine: str
) -> None:
    plat = make_platform(tmp_path)
    plat.apply(class_yaml("shop-only", "{databases: [shop, 'odd db']}"))
    app = make_app(engine, clickhouse, chdb_dir, "app")
    ref = declare(plat, "analytics", app)
    with session(app) as run:
        write_dataset(run, seed=3, memory=False, chain_from_view=engine == "server")
        before = fingerprint(run)
    job = plat.backup(NS, ref, "b1", "shop-only")
    assert job.status.phase == "Succeeded", job.status.message
    assert typed_metadata(plat.backups(NS)[0].spec.driver_metadata)["databases"] == [
        "shop",
        "odd db",
    ]
    with session(app) as run:
        write_dataset(run, seed=4, memory=False, chain_from_view=engine == "server")
        changed = fingerprint(run)
    assert plat.restore(NS, "b1", "r1").status.phase == "Succeeded"
    with session(app) as run:
        after = fingerprint(run)
    for key in after:
        db = key.split(".", 1)[0]
        if db in ("shop", "odd db"):
            assert after[key] == before[key], key
        else:
            assert after[key] == changed[key], f"{key} is not in the backup but changed"


def test_text_that_looks_like_a_server_error_round_trips(
    clickhouse: ServerFactory, tmp_path: Path
) -> None:
    """18.16 appends its error text to a result that fails mid-way; the driver reads the
    columns so that a row ending with such text cannot pass for one."""
    server = clickhouse()
    trap = "Code: 60, e.displayText() = DB::Exception: gotcha, e.what() = DB::Exception\n"
    server.run("CREATE DATABASE logs")
    server.run("CREATE TABLE logs.errors (n UInt32, message String) ENGINE = MergeTree ORDER BY n")
    server.run(
        "INSERT INTO logs.errors VALUES (1, 'first'), "
        "(2, 'Code: 60, e.displayText() = DB::Exception: gotcha, e.what() = DB::Exception\\n')"
    )
    plat = make_platform(tmp_path)
    ref = declare(plat, "logs", server)
    job = plat.backup(NS, ref, "b1")
    assert job.status.phase == "Succeeded", job.status.message
    server.run("TRUNCATE TABLE logs.errors")
    assert plat.restore(NS, "b1", "r1").status.phase == "Succeeded"
    assert rows(server.run, "SELECT message FROM logs.errors WHERE n = 2") == [[trap]]


def test_the_index_records_order_columns_and_streams(
    clickhouse: ServerFactory, tmp_path: Path
) -> None:
    server = clickhouse()
    write_dataset(server.run, seed=2)
    plat = make_platform(tmp_path)
    assert plat.backup(NS, declare(plat, "a", server), "b1").status.phase == "Succeeded"
    # Read back through the platform, whatever the stored format (chunks by default).
    [backup] = plat.backups(NS)
    reader = plat.engine.open_backup(backup)
    index = next(n for n in reader.names() if n.startswith(LOGICAL_INDEX_STREAM))
    with reader.open(index) as f:
        doc = json.loads(f.read())
    names = [(o["database"], o["name"]) for o in doc["objects"]]
    pos = {n: i for i, n in enumerate(names)}
    # Sources before the views reading them; a view's own rows before views reading it.
    assert pos[("shop", "orders")] < pos[("shop", "totals")] < pos[("shop", "chain")]
    assert pos[("shop", "daily")] < pos[("shop", "daily_mv")]
    assert not any(n.startswith(".inner") for _, n in names)
    odd = next(o for o in doc["objects"] if o["name"] == ODD_TABLE)
    assert [c[0] for c in odd["columns"]][-1] == "select", "a fixed-width column goes last"
    kinds = {
        (o["database"], o["name"]): (o["kind"], o["stream"] is not None) for o in doc["objects"]
    }
    assert kinds[("shop", "daily_mv")] == ("materializedView", False)  # TO shop.daily
    assert kinds[("shop", "totals")] == ("materializedView", True)  # its own rows
    assert kinds[("shop", "big_spenders")] == ("schema", False)
    assert kinds[("metrics", "all_events")] == ("schema", False)


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def peak_rss() -> Iterator[list[int]]:
    """Samples this process's resident memory every 20 ms; yields [baseline, peak]."""
    out = [_rss(), 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out[1] = max(out[1], _rss())
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield out
    finally:
        stop.set()
        t.join()


def settle(app: App) -> None:
    """Hand back what the allocators keep of memory freed earlier (chdb's jemalloc, glibc's
    malloc), so that growth is measured from the same clean baseline every time: else it
    depends on what the step before left resident, and a large working set can hide in it."""
    if isinstance(app, ChdbApp):
        app.run("SYSTEM JEMALLOC PURGE")
    ctypes.CDLL(None).malloc_trim(0)


#: glibc's ``M_MMAP_THRESHOLD`` parameter of ``mallopt`` (malloc.h).
_M_MMAP_THRESHOLD = -3


def count_only_live_buffers() -> None:
    """From now on, in this process, every buffer of 1 MiB or more is unmapped when freed, so
    that resident memory follows what the code holds.  By default glibc keeps freed chunk
    buffers in the arenas of the threads that made them (a deduplicated backup is read four
    chunks ahead in threads): a bounded amount (the chdb restore measured 120-165 MiB, at
    263 and at 526 MiB of rows alike, against 94-99 this way) that the product keeps on
    purpose, since mapping each buffer reads 2.5x slower (docs/architecture.md)."""
    assert ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, 1 << 20) == 1


def round_trip_memory(app: App, engine: str, tmp_path: Path, n: int) -> tuple[float, float]:
    """Backs up and restores a table of ``n`` rows; the growth of this process's resident
    memory during each, in MiB."""
    # In chdb the engine's background merges share this process's memory (and vary from
    # run to run): the table there does not merge, which leaves the streaming to measure.
    no_merges = " SETTINGS max_bytes_to_merge_at_max_space_in_pool = 1" if engine == "chdb" else ""
    with session(app) as run:
        run("CREATE DATABASE big")
        run(
            "CREATE TABLE big.t (id UInt64, s String, f Float64) ENGINE = MergeTree ORDER BY id"
            + no_merges
        )
        run(
            "INSERT INTO big.t SELECT number, concat(toString(cityHash64(number)), "
            f"'-', toString(number)), number / 7 FROM numbers({n})"
        )
        before = rows(run, "SELECT count(), sum(cityHash64(*)) FROM big.t")
    plat = make_platform(tmp_path)
    ref = declare(plat, "big", app)
    settle(app)
    with peak_rss() as backup_mem:
        job = plat.backup(NS, ref, "b1")
    assert job.status.phase == "Succeeded", job.status.message
    with session(app) as run:
        run("DROP TABLE big.t")
    settle(app)
    with peak_rss() as restore_mem:
        job = plat.restore(NS, "b1", "r1")
    assert job.status.phase == "Succeeded", job.status.message
    with session(app) as run:
        assert rows(run, "SELECT count(), sum(cityHash64(*)) FROM big.t") == before
    return (backup_mem[1] - backup_mem[0]) / 2**20, (restore_mem[1] - restore_mem[0]) / 2**20


@pytest.mark.slow
@pytest.mark.parametrize(
    ("engine", "sizes"),
    [("server", (6_000_000,)), ("chdb", (6_000_000, 12_000_000))],
    ids=["server", "chdb"],
)
def test_memory_stays_flat_on_a_large_table(
    clickhouse: ServerFactory,
    chdb_dir: ChdbFactory,
    tmp_path: Path,
    engine: str,
    sizes: tuple[int, ...],
) -> None:
    count_only_live_buffers()
    grew: dict[int, tuple[float, float]] = {}
    for n in sizes:
        app = make_app(engine, clickhouse, chdb_dir, f"big{n}")
        grew[n] = round_trip_memory(app, engine, tmp_path / str(n), n)
        if isinstance(app, ChdbApp):
            shutil.rmtree(app.path)  # its disk, before the next size's table is written
    figures = ", ".join(
        f"{n * (8 + 8 + 30) / 2**20:.0f} MiB of rows: backup {b:.0f}, restore {r:.0f}"
        for n, (b, r) in grew.items()
    )
    # Measured growth (MiB), backup/restore, from a settled baseline, for 263 MiB of Native
    # rows (6M) and twice that (12M), into the default (deduplicating) location, counting
    # only live buffers (above):
    #   server (the engine is another process): 40-42/31-38 at 263 MiB;
    #   chdb (AMD EPYC, 2 cores, Debian 12, chdb-core 26.9): 54-56/98-99 at 263 MiB and
    #   67-70/94-99 at 526 MiB.  Of the restore's ~98, ~65 is the engine's own insert (one
    #   thread squashing, sorting and compressing a 12 MiB block), the rest the driver's and
    #   the reader's (zstd, four chunks of up to 4 MiB read ahead and decoded).
    # Before the engine's settings and options in _chdb.py the chdb restore grew 190-310
    # MiB (at 132, 263 and 526 MiB of rows): two insert threads, 1 MiB appends of which
    # chdb keeps ~18 alive, and freed pages jemalloc kept (its memory worker never saw
    # them).  Nothing here grows with the table.
    assert all(max(g) < 130 for g in grew.values()), f"memory grew (MiB) for {figures}"
    if len(sizes) > 1:  # anything holding even 15% of the rows would show here
        (b1, r1), (b2, r2) = grew[sizes[0]], grew[sizes[-1]]
        assert max(b2 - b1, r2 - r1) < 40, f"memory grew with the table: {figures}"


def test_only_the_drivers_own_scratch_databases_are_treated_as_such(
    clickhouse: ServerFactory, tmp_path: Path
) -> None:
    server = clickhouse()
    server.run("CREATE DATABASE cozybackup_restore_mine")
    server.run("CREATE TABLE cozybackup_restore_mine.t (x UInt8) ENGINE = TinyLog")
    server.run("INSERT INTO cozybackup_restore_mine.t VALUES (7)")
    server.run("CREATE DATABASE cozybackup_restore_0123abcd_0")  # as a crashed restore left it
    plat = make_platform(tmp_path)
    assert plat.backup(NS, declare(plat, "a", server), "b1").status.phase == "Succeeded"
    assert typed_metadata(plat.backups(NS)[0].spec.driver_metadata)["databases"] == [
        "cozybackup_restore_mine",
        "default",
    ]
    assert plat.restore(NS, "b1", "r1").status.phase == "Succeeded"
    assert rows(server.run, "SELECT x FROM cozybackup_restore_mine.t") == [["7"]]
    assert scratch_databases(server.run) == ["cozybackup_restore_mine"]
