"""Continuous WAL streaming: ``pg_receivewal`` on a replication slot, each completed
segment stored in the application's archive.

The slot (``cozybackup_<digest of namespace/name>``) is created by the first run,
reserving WAL at once, and dropped by :meth:`WalStreamer.release`.  The server keeps
every segment the slot has not confirmed, and ``pg_receivewal`` confirms a position only
after writing it to the streamer's own directory, where a segment stays until it is
stored: a streamer that is killed (even with SIGKILL) and started again stores what it
left there first, then ``pg_receivewal`` resumes from its partial segment or the slot.
So no segment is skipped, and one stored twice is the same bytes under the same name.
The streamer's directory must outlive it (on the embedded host it is under the data
directory).

Each stored segment records its first and last commit time (``pg_waldump``), which the
recovery window is computed from (``_wal``).

Fails loudly (:class:`SlotLost`) when the slot it made is gone or the server invalidated
it (``max_slot_wal_keep_size``): WAL may then be missing, and the archive cannot promise
an unbroken history until a new base backup is taken.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from cozybackup_core import AppLocation, Deadline, DriverError, SegmentStore

from ._pg import PHYSICAL_TOOLS, Server, find_tools, literal
from ._wal import archive_name, commit_times, is_segment, parse_lsn, segment_of

_POLL = 0.5
_PR_SET_PDEATHSIG = 1


class SlotLost(DriverError):
    """The replication slot the archive depends on is gone or invalidated."""

    reason = "WalSlotLost"


def slot_name(app: AppLocation) -> str:
    digest = hashlib.sha256(f"{app.namespace}/{app.ref.name}".encode()).hexdigest()[:16]
    return f"cozybackup_{digest}"


@attrs.define
class _Progress:
    archived_upto: int | None = None  # LSN just past the newest stored segment
    stored_at: float | None = None  # wall clock of the newest store
    segments: int = 0


class WalStreamer:
    """Streams one application's WAL into its archive until told to stop."""

    def __init__(
        self,
        app: AppLocation,
        archive: SegmentStore,
        workdir: Path,
        log: logging.Logger | None = None,
    ) -> None:
        self.tools = find_tools(PHYSICAL_TOOLS)
        self.server = Server.from_location(app, self.tools)
        self.archive = archive
        self.workdir = workdir
        self.slot = slot_name(app)
        self.log = log or logging.getLogger("cozybackup.driver.postgres.wal")
        self._progress = _Progress()
        self._system_id = ""
        self._segment_size = 16 << 20

    # -- the loop

    def run(self, stop: threading.Event) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._prepare_slot()
        self.store_completed()  # what a killed run left behind
        proc = self._receive()
        try:
            while not stop.is_set():
                self.store_completed()
                if proc.poll() is not None:
                    self._failed(proc)
                stop.wait(_POLL)
        finally:
            self._end(proc)
        self.store_completed()

    def _prepare_slot(self) -> None:
        info = self._query(
            f"""SELECT json_build_object(
                 'systemIdentifier', (SELECT system_identifier::text FROM pg_control_system()),
                 'segmentSize', (SELECT setting::bigint FROM pg_settings
                                 WHERE name = 'wal_segment_size'),
                 'slot', (SELECT json_build_object('restartLsn', restart_lsn::text,
                                                   'walStatus', wal_status,
                                                   'activePid', active_pid)
                          FROM pg_replication_slots WHERE slot_name = {literal(self.slot)}))""",  # noqa: S608 - our slot name, quoted
            "reading the replication slot",
        )
        self._system_id = str(info["systemIdentifier"])
        self._segment_size = int(info["segmentSize"])
        slot = info["slot"]
        stored = self._stored()
        if slot is None:
            if stored:
                raise SlotLost(
                    "WAL archiving stopped: the replication slot that keeps the server's WAL "
                    "for the archive is gone, so some WAL may be missing; take a new backup",
                    admin_detail=f"slot {self.slot} missing; {len(stored)} segments archived",
                )
            self._query(
                f"SELECT to_json(true) FROM pg_create_physical_replication_slot("  # noqa: S608 - the slot name is ours (hex), quoted
                f"{literal(self.slot)}, true)",
                "creating the replication slot",
            )
            return
        if slot["walStatus"] == "lost":
            raise SlotLost(
                "WAL archiving stopped: the server removed WAL the archive had not stored "
                "(its replication slot was invalidated); take a new backup",
                admin_detail=f"slot {self.slot} wal_status lost",
            )
        if slot["activePid"] is not None:
            # A killed streamer's pg_receivewal (or its connection) still holds the slot.
            self._query(
                f"SELECT to_json(pg_terminate_backend({int(slot['activePid'])}))",
                "releasing the replication slot",
            )
            self._wait_released()
        restart = parse_lsn(str(slot["restartLsn"])) if slot["restartLsn"] else None
        if stored and restart is not None:
            newest = max(segment_of(n.split(".", 1)[1], self._segment_size)[1] for n in stored)
            first_kept = restart // self._segment_size
            if first_kept > newest + 1 and not self._local_segments():
                raise SlotLost(
                    "WAL archiving found a gap: the server no longer holds WAL the archive "
                    "has not stored; take a new backup",
                    admin_detail=f"slot {self.slot} restart {slot['restartLsn']}, newest "
                    f"archived segment number {newest}",
                )

    def _wait_released(self) -> None:
        limit = Deadline.after(30)
        while not limit.expired:
            active = self._query(
                f"SELECT to_json(active) FROM pg_replication_slots "  # noqa: S608 - the slot name is ours (hex), quoted
                f"WHERE slot_name = {literal(self.slot)}",
                "releasing the replication slot",
            )
            if not active:
                return
            time.sleep(0.2)

    def _receive(self) -> subprocess.Popen[bytes]:
        argv = [
            self.tools["pg_receivewal"],
            "-D",
            str(self.workdir),
            f"--slot={self.slot}",
            "--no-loop",
            "--status-interval=1",
        ]
        return subprocess.Popen(
            argv,
            env={**os.environ, **self.server.env()},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Dies with the streamer's process, even on SIGKILL: the slot is then free
            # for the next run.
            preexec_fn=_die_with_parent,
        )

    def _failed(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace")
        if "does not exist" in err and "slot" in err:
            raise SlotLost(
                "WAL archiving stopped: the replication slot that keeps the server's WAL "
                "for the archive is gone, so some WAL may be missing; take a new backup",
                admin_detail=err[-2000:],
            )
        raise DriverError(
            "WAL streaming stopped (pg_receivewal exited); it is started again",
            admin_detail=err[-2000:],
        )

    @staticmethod
    def _end(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # pg_receivewal flushes and exits
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    # -- storing

    def _local_segments(self) -> list[Path]:
        return sorted(p for p in self.workdir.iterdir() if is_segment(p.name))

    def store_completed(self) -> int:
        """Store every completed segment in the streamer's directory, oldest first, and
        remove it there; returns how many."""
        done = 0
        for path in self._local_segments():
            first, last = commit_times(path, self.tools["pg_waldump"])
            timeline, segno = segment_of(path.name, self._segment_size)
            meta: Mapping[str, Any] = {
                "systemIdentifier": self._system_id,
                "timeline": timeline,
                "firstCommit": first,
                "lastCommit": last,
            }
            with open(path, "rb") as src:
                self.archive.put(archive_name(self._system_id, path.name), src, meta)
            path.unlink()
            self._progress.archived_upto = (segno + 1) * self._segment_size
            self._progress.stored_at = time.time()
            self._progress.segments += 1
            done += 1
        for history in self.workdir.glob("*.history"):
            history.unlink()  # restores follow the Backup's own timeline
        return done

    def _stored(self) -> list[str]:
        prefix = f"{self._system_id}."
        return [n for n in self.archive.names() if n.startswith(prefix)]

    # -- status and teardown

    def lag(self) -> dict[str, Any]:
        """Bytes of WAL the server wrote that the archive does not hold yet, and seconds
        since the archive last stored a segment while some was waiting (0 when none)."""
        current = parse_lsn(
            str(
                self._query(
                    "SELECT to_json(pg_current_wal_lsn()::text)", "reading the WAL position"
                )
            )
        )
        upto = self._progress.archived_upto
        behind = max(0, current - upto) if upto is not None else None
        seconds = 0.0
        if behind and self._progress.stored_at is not None:
            seconds = max(0.0, time.time() - self._progress.stored_at)
        return {
            "lagBytes": behind,
            "lagSeconds": round(seconds, 1),
            "segmentsStored": self._progress.segments,
        }

    def release(self) -> None:
        """Drop the replication slot (when no class asks for archiving any more)."""
        with contextlib.suppress(DriverError):
            self._query(
                f"SELECT to_json(true) FROM pg_drop_replication_slot({literal(self.slot)})",  # noqa: S608 - the slot name is ours (hex), quoted
                "dropping the replication slot",
            )

    def _query(self, sql: str, doing: str) -> Any:
        return self.server.query_json(sql, deadline=Deadline.after(60), doing=doing)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
