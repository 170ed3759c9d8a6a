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

Every ``partial_seconds`` the segment being filled (``pg_receivewal``'s ``.partial``
file) is stored too, as a partial holding the WAL written into it so far, when it holds
more than the last one stored; the longer partial replaces the shorter, and the completed
segment replaces its partials (each deleted only after its successor is committed, so the
archive always has an answer, and a run killed in between leaves superseded names the
next run, and retention, delete).  So the archive is behind the server by at most about
``partial_seconds`` plus the time a store takes, even when a segment takes minutes to
fill.

Fails loudly (:class:`SlotLost`) when the slot it made is gone or the server invalidated
it (``max_slot_wal_keep_size``): WAL may then be missing, and the archive cannot promise
an unbroken history until a new base backup is taken.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
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
from ._wal import (
    archive_name,
    best_by_segment,
    commit_times,
    format_lsn,
    is_segment,
    parse_archived,
    parse_lsn,
    partial_name,
    segment_of,
)

_POLL = 0.5
_WAL_ALIGN = 8
_PARTIAL = ".partial"
#: Default seconds between two stores of the segment being filled.
PARTIAL_SECONDS = 5
_PR_SET_PDEATHSIG = 1


class SlotLost(DriverError):
    """The replication slot the archive depends on is gone or invalidated."""

    reason = "WalSlotLost"


def slot_name(app: AppLocation) -> str:
    digest = hashlib.sha256(f"{app.namespace}/{app.ref.name}".encode()).hexdigest()[:16]
    return f"cozybackup_{digest}"


@attrs.define
class _Progress:
    archived_upto: int | None = None  # LSN just past the newest stored WAL
    read_at: float | None = None  # wall clock when that WAL was read to be stored
    segments: int = 0
    partials: int = 0


class WalStreamer:
    """Streams one application's WAL into its archive until told to stop."""

    def __init__(
        self,
        app: AppLocation,
        archive: SegmentStore,
        workdir: Path,
        log: logging.Logger | None = None,
        partial_seconds: float = PARTIAL_SECONDS,
    ) -> None:
        self.tools = find_tools(PHYSICAL_TOOLS)
        self.server = Server.from_location(app, self.tools)
        self.archive = archive
        self.workdir = workdir
        self.slot = slot_name(app)
        self.log = log or logging.getLogger("cozybackup.driver.postgres.wal")
        self.partial_seconds = partial_seconds
        self._progress = _Progress()
        #: Segment file name → the names of its partials in the archive.
        self._partials: dict[str, list[str]] = {}
        self._system_id = ""
        self._segment_size = 16 << 20

    # -- the loop

    def run(self, stop: threading.Event) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._prepare_slot()
        self.store_completed()  # what a killed run left behind
        self._drop_unpadded()
        proc = self._receive()
        next_partial = time.monotonic() + self.partial_seconds
        try:
            while not stop.is_set():
                self.store_completed()
                if time.monotonic() >= next_partial:
                    next_partial = time.monotonic() + self.partial_seconds
                    self.store_partial()
                if proc.poll() is not None:
                    self._failed(proc)
                stop.wait(_POLL)
        finally:
            self._end(proc)
        self.store_completed()
        self.store_partial()

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
        self._note_partials(stored)
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
            newest = max(
                segment_of(a.segment, self._segment_size)[1]
                for a in map(parse_archived, stored)
                if a is not None
            )
            first_kept = restart // self._segment_size
            if first_kept > newest + 1 and not self._local_segments():
                raise SlotLost(
                    "WAL archiving found a gap: the server no longer holds WAL the archive "
                    "has not stored; take a new backup",
                    admin_detail=f"slot {self.slot} restart {slot['restartLsn']}, newest "
                    f"archived segment number {newest}",
                )

    def _drop_unpadded(self) -> None:
        """Remove a ``.partial`` file a killed ``pg_receivewal`` left while padding it:
        it pads a new file with zeros to the segment's size before writing any WAL
        into it, so one of another size holds none, and it would refuse to resume
        ("should be 0 or 16777216 bytes") forever; the slot still holds that WAL."""
        for path in self.workdir.glob(f"*{_PARTIAL}"):
            size = path.stat().st_size
            if size not in (0, self._segment_size):
                self.log.warning("removing %s: %d bytes, padding interrupted", path.name, size)
                path.unlink()

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
            read_at = time.time()
            with open(path, "rb") as src:
                self.archive.put(
                    archive_name(self._system_id, path.name), src, self._meta(path.name, path)
                )
            self._drop_partials(path.name, keep=None)  # superseded by the segment
            path.unlink()
            self._stored_upto(path.name, self._segment_size, read_at)  # all of it
            self._progress.segments += 1
            done += 1
        for history in self.workdir.glob("*.history"):
            history.unlink()  # restores follow the Backup's own timeline
        return done

    def store_partial(self) -> bool:
        """Store the WAL written so far into the segment being filled, when it holds more
        than the last partial of it stored; True when one was stored."""
        filling = sorted(
            p
            for p in self.workdir.glob(f"*{_PARTIAL}")
            if is_segment(p.name.removesuffix(_PARTIAL))
        )
        if not filling:
            return False
        path = filling[-1]
        segment = path.name.removesuffix(_PARTIAL)
        read_at = time.time()
        try:
            # At most one segment in memory; pg_receivewal pads the file with zeros, and
            # writes in WAL order, so what precedes them is the WAL received so far.
            written = path.read_bytes()[: self._segment_size].rstrip(b"\0")
        except FileNotFoundError:
            return False  # completed (renamed) meanwhile: the next pass stores it
        stored = [parse_archived(n) for n in self._partials.get(segment, [])]
        if not written or any(a is not None and (a.length or 0) >= len(written) for a in stored):
            if written and self._partials.get(segment):
                # Nothing new: the archive holds what pg_receivewal has, as of now.
                self._stored_upto(segment, _aligned(len(written)), read_at)
            return False
        name = partial_name(self._system_id, segment, len(written))
        snapshot = self.workdir / ".partial-snapshot"
        snapshot.mkdir(exist_ok=True, mode=0o700)
        copy = snapshot / segment  # pg_waldump reads a file named as the segment
        try:
            with open(copy, "wb") as out:
                out.write(written)
                out.truncate(self._segment_size)
            meta = {**self._meta(segment, copy), "walBytes": len(written)}
        finally:
            copy.unlink(missing_ok=True)
        self.archive.put(name, io.BytesIO(written), meta)
        self._drop_partials(segment, keep=name)
        self._partials[segment] = [name]
        self._stored_upto(segment, _aligned(len(written)), read_at)
        self._progress.partials += 1
        return True

    def _meta(self, segment: str, path: Path) -> Mapping[str, Any]:
        first, last = commit_times(path, self.tools["pg_waldump"])
        return {
            "systemIdentifier": self._system_id,
            "timeline": segment_of(segment, self._segment_size)[0],
            "firstCommit": first,
            "lastCommit": last,
        }

    def _stored_upto(self, segment: str, length: int, read_at: float) -> None:
        """The archive now holds WAL up to ``length`` bytes into ``segment``, as the
        streamer's directory held it at ``read_at``."""
        upto = segment_of(segment, self._segment_size)[1] * self._segment_size + length
        if self._progress.archived_upto is None or upto > self._progress.archived_upto:
            self._progress.archived_upto = upto
        self._progress.read_at = read_at

    def _drop_partials(self, segment: str, keep: str | None) -> None:
        """Delete the partials of ``segment`` but ``keep`` (after what supersedes them
        is committed)."""
        for name in self._partials.pop(segment, []):
            if name != keep:
                self.archive.delete(name)

    def _note_partials(self, stored: list[str]) -> None:
        """Learn the archive's partials; delete those a killed run left superseded."""
        best, superseded = best_by_segment(stored)
        for name in superseded:
            self.archive.delete(name)
        self._partials = {
            a.segment: [a.name]
            for (sid, _), a in best.items()
            if a.partial and sid == self._system_id
        }

    def _stored(self) -> list[str]:
        prefix = f"{self._system_id}."
        return [n for n in self.archive.names() if n.startswith(prefix)]

    # -- status and teardown

    def lag(self) -> dict[str, Any]:
        """Bytes of WAL the server wrote that the archive does not hold yet, and, while
        there are some, the seconds since the WAL the archive holds was read from the
        streamer's directory (0 when nothing is waiting)."""
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
        if behind and self._progress.read_at is not None:
            seconds = max(0.0, time.time() - self._progress.read_at)
        return {
            "archivedLsn": format_lsn(upto) if upto is not None else None,
            "lagBytes": behind,
            "lagSeconds": round(seconds, 1),
            "segmentsStored": self._progress.segments,
            "partialsStored": self._progress.partials,
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


def _aligned(length: int) -> int:
    """Where the WAL in a partial's first ``length`` bytes ends: records end on 8-byte
    boundaries (MAXALIGN), and the zeros cut off before them were theirs."""
    return -(-length // _WAL_ALIGN) * _WAL_ALIGN


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
