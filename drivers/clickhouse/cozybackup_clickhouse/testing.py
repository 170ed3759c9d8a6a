"""Helpers for tests, demos and benchmarks: throwaway ClickHouse servers, chdb data
directories, a realistic dataset and its fingerprint.  Nothing here is used by backups
or restores.

:class:`ClickHouseServer` runs the Debian ``clickhouse-server`` (18.16 here) in a private
temp dir on 127.0.0.1, on a free port, and stops it by its PID.  :class:`ChdbApp` is a
chdb data directory (PyPI ``chdb-core``), opened in this process only while a statement
runs.  Both offer ``run(sql) -> bytes`` and the dataset functions use nothing else, so
the same SQL builds the same data on both.
"""

# The dataset's SQL is built from this module's constants and integers, with every name and
# string passed through _id()/_str(): no injection (S608 cannot see that).
# ruff: noqa: S608

from __future__ import annotations

import contextlib
import hashlib
import http.client
import importlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from ._chdb import ENGINE_LOCK

__all__ = [
    "ADMIN_PASSWORD",
    "ADMIN_USER",
    "DATASET_DATABASES",
    "ODD_TABLE",
    "READER_USER",
    "TEXTS",
    "ChdbApp",
    "ClickHouseServer",
    "Runner",
    "checksum",
    "fingerprint",
    "free_port",
    "rows",
    "write_dataset",
]

SERVER = "/usr/sbin/clickhouse-server"
#: The account the platform uses in the tests (a distinct name makes leak checks meaningful).
ADMIN_USER = "cozy_admin"
#: Characters a header, an XML file or a URL could trip on (no line breaks: HTTP headers).
ADMIN_PASSWORD = "p@ss w0rd;'\"<&>%?#" + secrets.token_hex(6)
#: A read-only account (profile ``readonly``: SELECT only, no settings, no DDL).
READER_USER = "cozy_reader"
READER_PASSWORD = "reader-" + secrets.token_hex(6)

Runner = Callable[[str], bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------------- 18.16 server

_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{base}/server.log</log><errorlog>{base}/err.log</errorlog>
    <size>10M</size><count>1</count></logger>
  <http_port>{http_port}</http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{base}/data/</path>
  <tmp_path>{base}/tmp/</tmp_path>
  <user_files_path>{base}/user_files/</user_files_path>
  <format_schema_path>{base}/format_schemas/</format_schema_path>
  <users_config>{base}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>134217728</mark_cache_size>
  <uncompressed_cache_size>134217728</uncompressed_cache_size>
  <max_concurrent_queries>50</max_concurrent_queries>
</yandex>
"""
_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles>
    <default><max_memory_usage>4000000000</max_memory_usage><max_threads>2</max_threads>
      <background_pool_size>4</background_pool_size></default>
    <readonly><readonly>1</readonly><max_threads>2</max_threads></readonly>
  </profiles>
  <users>
    <{admin}><password>{admin_password}</password><networks><ip>127.0.0.1</ip></networks>
      <profile>default</profile><quota>default</quota></{admin}>
    <{reader}><password>{reader_password}</password><networks><ip>127.0.0.1</ip></networks>
      <profile>readonly</profile><quota>default</quota></{reader}>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
    <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
  </interval></default></quotas>
</yandex>
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class ClickHouseServer:
    """One ``clickhouse-server`` in a private temp dir; :meth:`destroy` stops it by PID."""

    def __init__(self, base: Path, http_port: int) -> None:
        self.base = base
        self.http_port = http_port
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, base: Path | None = None, *, timeout: float = 60.0) -> ClickHouseServer:
        if not Path(SERVER).exists():
            raise RuntimeError(f"{SERVER} not found: apt-get install clickhouse-server")
        server = cls(base or Path(tempfile.mkdtemp(prefix="cozy-clickhouse-")), free_port())
        server._write_config()
        server.launch(timeout=timeout)
        return server

    def _write_config(self) -> None:
        (self.base / "config.xml").write_text(
            _CONFIG.format(base=escape(str(self.base)), http_port=self.http_port)
        )
        users = self.base / "users.xml"
        users.write_text(
            _USERS.format(
                admin=ADMIN_USER,
                admin_password=escape(ADMIN_PASSWORD),
                reader=READER_USER,
                reader_password=escape(READER_PASSWORD),
            )
        )
        users.chmod(0o600)

    def launch(self, *, timeout: float = 60.0) -> None:
        """Start (or restart) the server on its data dir and port; wait until it answers."""
        argv = [SERVER, f"--config-file={self.base / 'config.xml'}"]
        # Dies with us even if we are SIGKILLed (Linux applies it per thread: main only).
        setpriv = shutil.which("setpriv")
        if setpriv and threading.current_thread() is threading.main_thread():
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        with (self.base / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.base,
                start_new_session=True,
            )
        end = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > end:
                log = self.log_tail()
                self.stop()
                raise RuntimeError(f"clickhouse-server did not start:\n{log}")
            time.sleep(0.05)

    def answers(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=2)
            try:
                conn.request("GET", "/ping")
                return conn.getresponse().read() == b"Ok.\n"
            finally:
                conn.close()
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after 30 s; returns when the process is gone."""
        proc = self.proc
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 30.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and _alive(self.proc.pid)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self) -> str:
        out = []
        for name in ("stdout.log", "err.log"):
            with contextlib.suppress(OSError):
                out.append((self.base / name).read_bytes()[-3000:].decode(errors="replace"))
        return "\n".join(out)

    # -- what the platform declares

    def connection(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.http_port}

    def credentials(self, password: str = ADMIN_PASSWORD) -> dict[str, str]:
        return {"username": ADMIN_USER, "password": password}

    # -- SQL (an independent, minimal client: the tests do not trust the driver's)

    def run(self, sql: str, *, user: str = ADMIN_USER, password: str = ADMIN_PASSWORD) -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=300)
        try:
            conn.request(
                "POST",
                "/",
                body=sql.encode(),
                headers={"X-ClickHouse-User": user, "X-ClickHouse-Key": password},
            )
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"SQL failed ({resp.status}): {body.decode(errors='replace')}")
        return body


# ---------------------------------------------------------------------- chdb


class ChdbApp:
    """A chdb data directory.  Each :meth:`run` opens it in this process and closes it
    again (chdb holds one directory per process; the driver's jobs take their turn)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def connection(self) -> dict[str, Any]:
        return {"engine": "chdb", "path": str(self.path)}

    @contextlib.contextmanager
    def session(self) -> Iterator[Runner]:
        with ENGINE_LOCK:
            conn = importlib.import_module("chdb").connect(str(self.path))
            try:

                def run(sql: str) -> bytes:
                    data: bytes = conn.query(sql, "TabSeparated").bytes()
                    return data

                yield run
            finally:
                conn.close()

    def run(self, sql: str) -> bytes:
        with self.session() as run:
            return run(sql)


# ---------------------------------------------------------------------- the dataset

DATASET_DATABASES = ("shop", "metrics", "odd db")
ODD_TABLE = "we`ird\ttab"
#: Values with every character SQL, TSV and the Native stream could trip on; one of them
#: is a ClickHouse 18.16 error message, the HTTP transport's trap.
TEXTS = [
    "plain ascii",
    "Zoë Ångström",
    "日本語のテキスト",
    "emoji 🙂🚀",
    "it's 'quoted'",
    "line one\nline two;\n-- not a comment",
    "back\\slash",
    "tab\tseparated\r\n",
    "nul\0byte",
    "Code: 60, e.displayText() = DB::Exception: not an error, e.what() = DB::Exception\n",
    "",
]


def _str(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\0", "\\0")
    return "'" + escaped.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r") + "'"


def _id(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`").replace("\t", "\\t") + "`"


_TSV = {"b": "\b", "f": "\f", "r": "\r", "n": "\n", "t": "\t", "0": "\0", "'": "'", "\\": "\\"}


def _tsv_value(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: _TSV.get(m.group(1), "\\" + m.group(1)), value)


def rows(run: Runner, sql: str) -> list[list[str]]:
    """A query's rows, TSV values unescaped."""
    out = run(sql + " FORMAT TabSeparated").decode()
    return [[_tsv_value(v) for v in line.split("\t")] for line in out.split("\n") if line]


def _statements(seed: int, n: int, *, memory: bool, chain_from_view: bool) -> list[str]:
    texts = ", ".join(_str(t) for t in TEXTS)
    pick = f"[{texts}][1 + (number * {seed + 11}) % {len(TEXTS)}]"
    # A table of text only cannot have its last row end like an error (see the README).
    safe = ", ".join(_str(t) for t in TEXTS if not t.startswith("Code:"))
    pick_safe = f"[{safe}][1 + number % {len(TEXTS) - 1}]"
    odd = f"`odd db`.{_id(ODD_TABLE)}"
    drops = [f"DROP DATABASE IF EXISTS `{d}`" for d in DATASET_DATABASES]
    return [
        *drops,
        "DROP TABLE IF EXISTS default.notes",
        "CREATE DATABASE shop",
        "CREATE DATABASE metrics",
        "CREATE DATABASE `odd db`",
        # --- shop: the MergeTree family, a materialized view into a table (TO) and two
        # with their own rows (one reading from the other), a view, the Log family.
        "CREATE TABLE shop.customers (id UInt32, name String, email Nullable(String),"
        " version UInt32, tags Array(String)) ENGINE = ReplacingMergeTree(version) ORDER BY id",
        "CREATE TABLE shop.orders (d Date, id UInt64, customer UInt32, amount Decimal(12, 2),"
        " note String, status Enum8('new' = 1, 'paid' = 2, 'shipped' = 3), code FixedString(4),"
        " doubled UInt64 MATERIALIZED id * 2, label String ALIAS concat(note, '!'),"
        " region String DEFAULT 'eu', at DateTime)"
        " ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY (customer, id)",
        "CREATE TABLE shop.daily (d Date, customer UInt32, total Decimal(38, 2), n UInt64)"
        " ENGINE = SummingMergeTree ORDER BY (d, customer)",
        "CREATE MATERIALIZED VIEW shop.daily_mv TO shop.daily AS SELECT d, customer,"
        " sum(amount) AS total, count() AS n FROM shop.orders GROUP BY d, customer",
        "CREATE MATERIALIZED VIEW shop.totals ENGINE = SummingMergeTree ORDER BY customer AS"
        " SELECT customer, count() AS orders, sum(amount) AS spent FROM shop.orders"
        " GROUP BY customer",
        # A materialized view fed by another one: 18.16 feeds a view reading another
        # view's name (its own rows); current releases feed views reading a TO table.
        "CREATE MATERIALIZED VIEW shop.chain ENGINE = SummingMergeTree ORDER BY bucket AS"
        + (
            " SELECT customer % 10 AS bucket, sum(orders) AS orders FROM shop.totals"
            if chain_from_view
            else " SELECT customer % 10 AS bucket, sum(n) AS orders FROM shop.daily"
        )
        + " GROUP BY bucket",
        "CREATE VIEW shop.big_spenders AS SELECT customer, spent FROM shop.totals"
        " WHERE spent > 1000",
        "CREATE TABLE shop.audit (at DateTime, event String) ENGINE = TinyLog",
        *(["CREATE TABLE shop.cache (k UInt32, v String) ENGINE = Memory"] if memory else []),
        # --- metrics: collapsing and aggregating engines, a Merge table, StripeLog
        "CREATE TABLE metrics.events (ts DateTime, host String, value Float64, sign Int8)"
        " ENGINE = CollapsingMergeTree(sign) ORDER BY (host, ts)",
        "CREATE TABLE metrics.uniques (host String, users AggregateFunction(uniq, UInt64))"
        " ENGINE = AggregatingMergeTree ORDER BY host",
        "CREATE TABLE metrics.all_events AS metrics.events ENGINE = Merge(metrics, '^events$')",
        "CREATE TABLE metrics.raw (line String) ENGINE = StripeLog",
        # --- odd names and values
        f"CREATE TABLE {odd}"
        " (`select` UInt8, `semi;colon` String, `tab\\tname` Nullable(String), `n.a` Array(UInt8))"
        " ENGINE = MergeTree ORDER BY tuple()",
        "CREATE TABLE default.notes (id UInt32, body String) ENGINE = MergeTree ORDER BY id",
        # --- rows: several inserts (several parts), then merged (see write_dataset)
        f"INSERT INTO shop.customers SELECT number, concat('customer ', toString(number)),"
        f" if(number % 5 = 0, NULL, concat('c', toString(number), '@example.com')), 1,"
        f" [toString(number % 3), {pick}] FROM numbers({n // 10})",
        f"INSERT INTO shop.customers SELECT number, concat('renamed ', toString(number * {seed})),"
        f" NULL, 2, [] FROM numbers({n // 20})",
        *(
            f"INSERT INTO shop.orders (d, id, customer, amount, note, status, code, at)"
            f" SELECT toDate('2024-01-01') + (number * {seed + 3}) % 300, number + {part * n},"
            f" (number * 7 + {seed}) % 200, toDecimal64(((number * 37 + {seed}) % 100000) / 100, 2),"
            f" {pick}, number % 3 + 1, toFixedString(substring(hex(number), 1, 4), 4),"
            f" toDateTime('2024-01-01 00:00:00') + number * 61"
            f" FROM numbers({n})"
            for part in range(3)
        ),
        f"INSERT INTO shop.audit SELECT toDateTime('2024-05-01 12:00:00') + number, {pick}"
        f" FROM numbers({50 + seed})",
        *(
            [f"INSERT INTO shop.cache SELECT number, {pick} FROM numbers({20 + seed})"]
            if memory
            else []
        ),
        f"INSERT INTO metrics.events SELECT toDateTime('2024-02-01 00:00:00') + number * 10,"
        f" concat('host-', toString(number % 7)), (number * {seed}) / 7, 1"
        f" FROM numbers({n})",
        f"INSERT INTO metrics.events SELECT toDateTime('2024-02-01 00:00:00') + number * 10,"
        f" concat('host-', toString(number % 7)), (number * {seed}) / 7, -1"
        f" FROM numbers({n // 4})",
        f"INSERT INTO metrics.uniques SELECT concat('host-', toString(number % 7)),"
        f" uniqState(toUInt64(number * {seed})) FROM numbers({n})"
        " GROUP BY number % 7",
        f"INSERT INTO metrics.raw SELECT {pick_safe} FROM numbers({30 + seed})",
        f"INSERT INTO {odd}"
        f" SELECT number % 256, {pick}, if(number % 2 = 0, NULL, {pick}), [1, {seed % 256}]"
        f" FROM numbers({40 + seed})",
        f"INSERT INTO default.notes SELECT number, concat('note ', toString(number * {seed}))"
        " FROM numbers(25)",
    ]


#: Tables whose engine merges rows: merged once the data is written, so that a part
#: count difference after a restore cannot change what a plain SELECT returns.
_MERGED = ("shop.customers", "shop.daily", "shop.totals", "shop.chain", "metrics.events",
           "metrics.uniques")  # fmt: skip


def write_dataset(
    run: Runner,
    seed: int,
    *,
    rows_per_table: int = 2000,
    memory: bool = True,
    chain_from_view: bool = True,
) -> None:
    """Replace the dataset's databases (and ``default.notes``) with data made from ``seed``.

    The same SQL on ClickHouse 18.16 and on chdb 26.x, but for two options chdb needs
    off: ``memory`` (a Memory table; a chdb directory closed between statements forgets
    it) and ``chain_from_view`` (``shop.chain`` reads the materialized view
    ``shop.totals``, which only 18.16 feeds; off, it reads the table ``shop.daily``).
    """
    statements = _statements(seed, rows_per_table, memory=memory, chain_from_view=chain_from_view)
    for stmt in statements:
        run(stmt)
    for table in _MERGED:
        run(f"OPTIMIZE TABLE {table} FINAL")


def fingerprint(
    run: Runner, databases: tuple[str, ...] = (*DATASET_DATABASES, "default")
) -> dict[str, Any]:
    """Every object (name, engine, definition) and every readable object's rows (sorted),
    as row counts and digests; views are read too, so they must work, not just exist."""
    names = ", ".join(_str(d) for d in databases)
    objects = rows(
        run,
        "SELECT database, name, engine, create_table_query FROM system.tables"
        f" WHERE database IN ({names}) AND name NOT LIKE '.inner%' ORDER BY database, name",
    )
    out: dict[str, Any] = {}
    for db, name, engine, create in objects:
        entry: dict[str, Any] = {"engine": engine, "create": create}
        if engine not in ("Set", "Join"):
            q = f"{_id(db)}.{_id(name)}"
            lines = sorted(run(f"SELECT * FROM {q} FORMAT TabSeparated").splitlines())
            entry["rows"] = len(lines)
            entry["sha256"] = hashlib.sha256(b"\n".join(lines)).hexdigest()
        out[f"{db}.{name}"] = entry
    return out


def checksum(run: Runner, **kw: Any) -> str:
    return hashlib.sha256(json.dumps(fingerprint(run, **kw), sort_keys=True).encode()).hexdigest()
