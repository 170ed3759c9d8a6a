"""WAL segments: their names, what they hold, and which of them a restore replays.

A segment's file name is ``TTTTTTTTXXXXXXXXYYYYYYYY``: timeline, then the segment number
split in two (``XXXXXXXX`` counts 4 GiB of WAL, ``YYYYYYYY`` segments within it).  The
archive stores each under ``<system identifier>.<file name>``: a server re-created from
scratch (a new ``initdb``) starts a history of its own.

The segment being filled is stored too, as a *partial* (``<system identifier>.<file
name>.partial-<bytes>``, hex, eight digits): the WAL written into it so far, without the
zeros ``pg_receivewal`` pads its ``.partial`` file with, so a restore reaches commits made
seconds ago.  A later partial of the same segment (more bytes) and the completed segment
supersede it; :func:`best_by_segment` gives the one answer the archive holds for each
segment (the completed one, else the partial with the most bytes), and retention deletes
the superseded ones.  A restore pads a partial to the segment size (PostgreSQL wants whole
segments; the zeros end its replay there).

The window a Backup can be restored to: from the moment its base backup was consistent
(``consistentAt``: the server's clock read just after ``pg_basebackup`` ended, so every
WAL record the backup needs is older) up to, not including, the last commit in the
unbroken run of archived segments that follows it.  PostgreSQL stops a recovery to
``recovery_target_time`` at the first commit *after* it, so there has to be one: a time
at or after the last archived commit is refused, and a restore without a time replays to
the end of the run instead.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from cozybackup_core import ArtifactCorruptError, RecoveryTargetUnreachable, SegmentStore

DEFAULT_SEGMENT_SIZE = 16 << 20
_PLAN_TRIES = 3
_NAME = re.compile(r"^[0-9A-F]{24}$")
_COMMIT = re.compile(
    r"desc: (?:COMMIT|ABORT)(?:_PREPARED)? (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC"
)


def is_segment(name: str) -> bool:
    return bool(_NAME.match(name))


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segment_name(timeline: int, segno: int, size: int) -> str:
    per = 0x100000000 // size
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def segment_of(name: str, size: int) -> tuple[int, int]:
    """(timeline, segment number) of a segment's file name."""
    per = 0x100000000 // size
    return int(name[:8], 16), int(name[8:16], 16) * per + int(name[16:24], 16)


def archive_name(system_id: str, segment: str) -> str:
    return f"{system_id}.{segment}"


_PARTIAL = ".partial-"


def partial_name(system_id: str, segment: str, length: int) -> str:
    return f"{system_id}.{segment}{_PARTIAL}{length:08x}"


@attrs.frozen
class Archived:
    """One archive name, parsed: a completed segment (``length`` None) or a partial."""

    name: str
    system_id: str
    segment: str
    length: int | None

    @property
    def partial(self) -> bool:
        return self.length is not None


def parse_archived(name: str) -> Archived | None:
    """The parts of an archive name, or None for a name that is no segment of ours."""
    system_id, _, rest = name.partition(".")
    segment, _, length = rest.partition(_PARTIAL)
    if not is_segment(segment):
        return None
    if not length:
        return Archived(name, system_id, segment, None) if rest == segment else None
    if not re.fullmatch(r"[0-9a-f]{8}", length):
        return None
    return Archived(name, system_id, segment, int(length, 16))


def best_by_segment(names: Sequence[str]) -> tuple[dict[tuple[str, str], Archived], list[str]]:
    """For each (system identifier, segment), the one stored answer: the completed
    segment, else the partial holding the most bytes; and the names they supersede."""
    best: dict[tuple[str, str], Archived] = {}
    for name in names:
        item = parse_archived(name)
        if item is None:
            continue
        key = (item.system_id, item.segment)
        held = best.get(key)
        if held is None or _rank(item) > _rank(held):
            best[key] = item
    chosen = {a.name for a in best.values()}
    superseded = [n for n in names if parse_archived(n) is not None and n not in chosen]
    return best, superseded


def superseding(names: Sequence[str], name: str) -> str | None:
    """What replaced partial ``name`` when it is no longer listed among ``names`` (the
    streamer stored a longer one, or the completed segment, meanwhile), else None."""
    item = parse_archived(name)
    if item is None or not item.partial or name in names:
        return None
    found = best_by_segment(names)[0].get((item.system_id, item.segment))
    return found.name if found is not None else None


def _rank(item: Archived) -> tuple[bool, int]:
    return (not item.partial, item.length or 0)


def commit_times(path: Path, waldump: str) -> tuple[str | None, str | None]:
    """The first and last commit (or abort) time recorded in a segment file, RFC 3339.

    ``pg_waldump`` reads the one file; a record continuing into the next segment ends
    its run with an error, after every record before it was printed, so its exit
    status is not looked at (a file that is no WAL at all yields no times)."""
    proc = subprocess.run(
        [waldump, "--rmgr=Transaction", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "UTC"},
        check=False,
        timeout=300,
    )
    times = _COMMIT.findall(proc.stdout)
    if not times:
        return None, None
    return _rfc3339(times[0]), _rfc3339(times[-1])


def _rfc3339(text: str) -> str:
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc).isoformat()


def _time(value: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(str(value)) if value else None


@attrs.frozen(kw_only=True)
class Replay:
    """What a restore replays: archived segments by file name (to stage), and the window."""

    #: Archive name → segment file name, in WAL order (the last may be a partial).
    segments: Mapping[str, str]
    segment_size: int
    start: dt.datetime
    #: The last archived commit (exclusive bound of ``recoveryTime``); None: none after the
    #: base backup, so only the base backup's own moment can be restored.
    end: dt.datetime | None

    def window(self) -> str:
        start = self.start.isoformat().replace("+00:00", "Z")
        if self.end is None:
            return f"only the base backup's own moment ({start}): no WAL is archived after it"
        end = self.end.isoformat().replace("+00:00", "Z")
        return f"from {start} up to (not including) {end}"

    def to_replay(self, archive: SegmentStore, target: dt.datetime | None) -> dict[str, str]:
        """The segments a restore to ``target`` replays: all without one; with one, up to
        the first that holds a commit after it (where recovery stops)."""
        if target is None:
            return dict(self.segments)
        out: dict[str, str] = {}
        for name, segment in self.segments.items():
            out[name] = segment
            if len(out) == len(self.segments):
                break  # the last (maybe a partial the streamer has superseded since)
            last = _time(archive.metadata(name).get("lastCommit"))
            if last is not None and last > target:
                break
        return out

    def check(self, target: dt.datetime | None) -> None:
        """Refuse a recovery time the base backup and the archive cannot reach."""
        if target is None:
            return
        if target < self.start or self.end is None or target >= self.end:
            when = target.isoformat().replace("+00:00", "Z")
            raise RecoveryTargetUnreachable(
                f"spec.options.recoveryTime: {when} cannot be reached from this Backup; "
                f"the available window is {self.window()}. Nothing was changed"
            )


def plan(archive: SegmentStore | None, meta: Mapping[str, Any]) -> Replay:
    """The archived segments a restore of the base backup described by ``meta`` (its
    driverMetadata) can replay: the segment holding its end, then every one after it
    while none is missing.  Planned again when a partial it listed was superseded (and
    deleted) by the running streamer before its metadata was read."""
    for _ in range(_PLAN_TRIES - 1):
        try:
            return _plan(archive, meta)
        except ArtifactCorruptError:
            continue
    return _plan(archive, meta)


def _plan(archive: SegmentStore | None, meta: Mapping[str, Any]) -> Replay:
    size = int(meta.get("walSegmentSize") or DEFAULT_SEGMENT_SIZE)
    timeline = int(meta["timeline"])
    system_id = str(meta["systemIdentifier"])
    start = _time(meta["consistentAt"])
    assert start is not None
    end_lsn = parse_lsn(str(meta["endLsn"]))
    first = max(end_lsn - 1, 0) // size  # the segment holding the backup's last record
    best, _ = best_by_segment(archive.names() if archive is not None else [])
    by_segno: dict[int, Archived] = {}
    for (sid, segment), item in best.items():
        tli, segno = segment_of(segment, size)
        if sid == system_id and tli == timeline and segno >= first:
            by_segno[segno] = item
    chain: dict[str, str] = {}
    segno = first
    while segno in by_segno:
        chain[by_segno[segno].name] = by_segno[segno].segment
        if by_segno[segno].partial:
            break  # the WAL written so far ends in it
        segno += 1
    last: dt.datetime | None = None
    for name in reversed(chain):  # the newest segment with a commit in it
        assert archive is not None  # a chain comes from one
        last = _time(archive.metadata(name).get("lastCommit"))
        if last is not None:
            break
    end = last if last is not None and last > start else None
    return Replay(segments=chain, segment_size=size, start=start, end=end)


def expired(
    names: Sequence[str],
    kept: Sequence[Mapping[str, Any]],
    window_seconds: int | None,
    now: dt.datetime,
) -> tuple[list[str], str]:
    """The archived segments no kept base backup needs to roll forward (and partials a
    completed segment or a longer partial supersedes): everything before
    the one where the oldest kept physical Backup's WAL continues, or, with a recovery
    window, the newest kept one that is consistent before the window starts (older Backups
    still restore to their own moment: their WAL is inside them).  Segments of another
    server (an earlier ``initdb``) go too; other timelines stay."""
    physical = [m for m in kept if m.get("mode") == "physical" and m.get("consistentAt")]
    if not physical:
        return [], "kept: no physical Backup is kept for the archive to continue from"
    by_time = sorted(physical, key=lambda m: _time(m["consistentAt"]) or now)
    anchor = by_time[0]
    if window_seconds is not None:
        start = now - dt.timedelta(seconds=window_seconds)
        older = [m for m in by_time if (_time(m["consistentAt"]) or now) <= start]
        anchor = older[-1] if older else anchor
    size = int(anchor.get("walSegmentSize") or DEFAULT_SEGMENT_SIZE)
    timeline = int(anchor["timeline"])
    first = max(parse_lsn(str(anchor["endLsn"])) - 1, 0) // size
    servers = {str(m["systemIdentifier"]) for m in physical}
    best, out = best_by_segment(names)  # superseded partials go in any case
    for item in best.values():
        tli, segno = segment_of(item.segment, size)
        if item.system_id not in servers or (
            item.system_id == str(anchor["systemIdentifier"]) and tli == timeline and segno < first
        ):
            out.append(item.name)
    out.sort()
    why = "the recovery window's start" if window_seconds is not None else "the oldest kept"
    return out, (
        f"kept: WAL from {segment_name(timeline, first, size)} on, where {why} base backup "
        f"(consistent at {anchor['consistentAt']}) continues"
    )
