"""chdb: the ClickHouse engine inside this process (PyPI ``chdb-core``), no server.

The same statements as over HTTP; results and inserts stream through chdb's own
``send_query`` / ``send_insert`` in the Native format.

chdb runs one embedded engine per process, bound to one data directory at a time: a
process-wide lock serialises the jobs that use it, and every job closes its session
(which releases the directory) when it ends.  ``chdb-core`` is an optional dependency
(the ``chdb`` extra): it is imported only when an application declares ``engine: chdb``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cozybackup_core import Deadline, DeadlineExceeded

from ._client import ChdbTarget, misconfigured, parse_tsv, server_error

#: One embedded engine per process (chdb refuses a second data directory while one is open).
ENGINE_LOCK = threading.Lock()


#: Settings of every chdb session (kept modest: the engine shares the worker's memory).
#: An INSERT gathers at most 32 MiB (262,144 rows) before writing a part, where a server
#: gathers 256 MiB; and it writes one part at a time: each insert thread holds about five
#: times its block while it forms a part from it (measured on 26.9: 155 MiB tracked
#: with the default two threads, 80 MiB with one).
LOCAL_SETTINGS = {
    "min_insert_block_size_bytes": str(32 << 20),
    "min_insert_block_size_rows": str(1 << 18),
    "max_insert_threads": "1",
}

#: Bytes handed to chdb per ``append`` of a streaming insert.  The engine keeps about
#: eighteen appended pieces alive at once (measured on 26.9: 1 MiB pieces cost 18 MiB
#: more than 64 KiB ones, 4 MiB pieces 70 MiB more), so the pieces are kept small.
APPEND_BYTES = 64 << 10

#: Freed memory the engine's allocator (jemalloc) may keep before it gives it back to the
#: system.  By default it keeps freed ("dirty") pages for seconds, up to a fifth of the
#: machine's memory: an insert of 12 MiB blocks left 100-170 MiB more resident than it
#: used.  The engine's memory worker purges them once they pass this much; it looks every
#: ``MEMORY_WORKER_PERIOD_MS`` (at its default, 100 ms, an insert churned through 30 MiB
#: more in between).
DIRTY_PAGES_BYTES = 16 << 20
MEMORY_WORKER_PERIOD_MS = 20


def engine_options() -> str:
    """Startup options of the embedded engine, in chdb's connection-string form.

    The memory worker reads this process's memory from jemalloc, not from the cgroup:
    with the cgroup as its source it never refreshes jemalloc's counters (a server's
    asynchronous metrics do that; chdb has none), so its count of dirty pages never moved
    and it purged nothing.
    jemalloc is also the right measure here: the cgroup holds the worker, not only the
    engine.  The purge threshold is a ratio of the memory the engine may use (about 90%
    of the machine's, less under a cgroup limit: then it purges sooner, not later).
    """
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    ratio = max(DIRTY_PAGES_BYTES / ram, 1e-9)
    return (
        "?memory_worker_use_cgroup=0"
        f"&memory_worker_purge_dirty_pages_threshold_ratio={ratio:.3g}"
        f"&memory_worker_period_ms={MEMORY_WORKER_PERIOD_MS}"
    )


def _chdb() -> Any:
    return importlib.import_module("chdb")


def _literal(value: str) -> str:
    if value.isdigit():
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ChdbClient:
    """A session on one chdb data directory; holds :data:`ENGINE_LOCK` until closed."""

    transport = "chdb"

    def __init__(self, target: ChdbTarget, deadline: Deadline) -> None:
        if not Path(target.path).is_dir():
            raise misconfigured(target.ref, f"chdb path {target.path!r} is not a directory")
        try:
            chdb = _chdb()
        except ImportError:
            raise misconfigured(
                target.ref, "engine chdb needs the chdb-core package on the backup worker"
            ) from None
        self.deadline = deadline
        if not ENGINE_LOCK.acquire(timeout=max(deadline.remaining(), 0.01)):
            raise DeadlineExceeded(
                "the job waited for the embedded ClickHouse engine until its deadline"
            )
        self._holds_lock = True
        self._conn: Any = None
        try:
            try:
                # The options apply when this session starts the engine (chdb ignores them
                # while another connection of the process holds it open).
                self._conn = chdb.connect(target.path + engine_options())
            except Exception as exc:  # noqa: BLE001 - chdb raises plain RuntimeErrors
                raise server_error(str(exc)) from None
            self.version = self.rows("SELECT version()")[0][0]
            self.use_settings(LOCAL_SETTINGS)
        except BaseException:
            self.close()
            raise

    def use_settings(self, settings: Mapping[str, str]) -> None:
        for name, value in settings.items():
            self.execute(f"SET {name} = {_literal(value)}")

    def rows(self, sql: str) -> list[tuple[str, ...]]:
        self.deadline.check()
        try:
            result = self._conn.query(sql, "TabSeparated")
        except Exception as exc:  # noqa: BLE001
            raise server_error(str(exc)) from None
        return parse_tsv(result.bytes())

    def execute(self, sql: str) -> None:
        self.rows(sql)

    @contextlib.contextmanager
    def select_native(self, sql: str) -> Iterator[Iterator[bytes]]:
        self.deadline.check()
        try:
            stream = self._conn.send_query(sql, "Native")
        except Exception as exc:  # noqa: BLE001
            raise server_error(str(exc)) from None
        try:
            yield self._chunks(stream)
        finally:
            with contextlib.suppress(Exception):
                stream.close()  # cancels a query that was not read to its end

    def _chunks(self, stream: Any) -> Iterator[bytes]:
        while True:
            try:
                result = stream.fetch()
            except Exception as exc:  # noqa: BLE001
                raise server_error(str(exc)) from None
            if result is None:
                return
            self.deadline.check()
            yield result.bytes()

    def insert_native(self, insert: str, chunks: Iterable[bytes]) -> None:
        self.deadline.check()
        try:
            inserter = self._conn.send_insert(insert, "Native")
        except Exception as exc:  # noqa: BLE001
            raise server_error(str(exc)) from None
        try:
            for chunk in chunks:  # errors of the source (the artifact) pass unchanged
                self.deadline.check()
                try:
                    for at in range(0, len(chunk), APPEND_BYTES):
                        inserter.append(chunk[at : at + APPEND_BYTES])
                except Exception as exc:  # noqa: BLE001
                    raise server_error(str(exc)) from None
            try:
                inserter.finish()
            except Exception as exc:  # noqa: BLE001
                raise server_error(str(exc)) from None
        finally:
            with contextlib.suppress(Exception):
                inserter.cancel()  # no-op once finished

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        if self._holds_lock:
            self._holds_lock = False
            ENGINE_LOCK.release()
