"""WAL for a restored server's ``restore_command``, fetched through cozybackup while the
server asks for it, one segment at a time, each verified.

The server runs ``restore_command`` as its own user, which holds no storage credentials
and may not even be able to run this Python: so the command is a small shell script
(written into a private 0700 directory beside the data directory, owned by the
database's user) that hands the request to the restoring cozybackup process and waits
for the answer.  That process (:meth:`WalFeed.serve`, called while it waits for the
server to promote) fetches the segment from the platform's storage, verifying both
digests as it reads, pads a partial to a whole segment, and puts it where the script
copies it from; then it fetches the next one the restore replays, so the server rarely
waits.  Three answers, in files the script polls:

``ready/<name>``
    the segment: the script copies it to ``%p`` and exits 0.
``missing/<name>``
    not in what this restore replays (past the end, a timeline history): exit 1, which
    PostgreSQL takes as the end of the archive.
``failed``
    a segment was damaged: exit 255, which makes PostgreSQL abort the recovery (it
    would take any other status as the archive's end and promote at the damage); the
    restore fails naming the segment and puts the previous data back.

At most two segments are on the target's disk at a time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import attrs

from cozybackup_core import ArtifactCorruptError, SegmentStore

from ._wal import superseding

SCRIPT = "restore_command.sh"
_REQUEST = "request"
_FAILED = "failed"

# Waits up to about 10 minutes for one answer (the restore's own deadline applies too).
_SCRIPT_TEXT = """\
#!/bin/sh
# Written by cozybackup for one restore, removed after it: asks the restoring process
# for WAL file $1 (fetched and verified from the platform's storage) and copies it to $2.
d=$(dirname "$0")
printf '%s\\n' "$1" > "$d/request.tmp" && mv -f "$d/request.tmp" "$d/request" || exit 255
n=0
while [ "$n" -lt 60000 ]; do
  if [ -f "$d/ready/$1" ]; then
    cp "$d/ready/$1" "$2" && rm -f "$d/ready/$1" && exit 0
    exit 255
  fi
  if [ -f "$d/missing/$1" ]; then rm -f "$d/missing/$1"; exit 1; fi
  if [ -f "$d/failed" ]; then exit 255; fi
  sleep 0.01
  n=$((n + 1))
done
exit 255
"""


@attrs.define
class WalFeed:
    """Answers one restored server's requests for WAL from ``wanted`` (segment file name
    → archive name, in WAL order)."""

    archive: SegmentStore | None
    wanted: Mapping[str, str]
    directory: Path  # the private directory (through the parent held open)
    segment_size: int
    owner: tuple[int, int]
    served: int = 0

    def prepare(self) -> None:
        """The script and the answer directories, owned by the database's user."""
        for sub in ("ready", "missing"):
            (self.directory / sub).mkdir(mode=0o700)
        (self.directory / SCRIPT).write_text(_SCRIPT_TEXT)
        for path in (self.directory, *self.directory.iterdir()):
            self._own(path)

    def serve(self) -> None:
        """Answer the pending request, if any, and fetch the segment after it."""
        request = self.directory / _REQUEST
        try:
            name = request.read_text().strip()
            request.unlink()
        except FileNotFoundError:
            return
        if name not in self.wanted:
            self._answer(self.directory / "missing" / name, None)
            return
        self._place(name)
        order = list(self.wanted)
        after = order.index(name) + 1
        if after < len(order):
            self._place(order[after])  # while the server replays this one

    def _place(self, segment: str) -> None:
        # Fetched again when asked again once consumed: PostgreSQL may read a segment
        # twice (the last one, when it ends the recovery).
        if (self.directory / "ready" / segment).exists():
            return
        assert self.archive is not None  # something is wanted only from an archive
        name: str | None = self.wanted[segment]
        tmp = self.directory / "ready" / f".{segment}.tmp"
        while name is not None:
            try:
                with self.archive.open(name) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                    if out.tell() < self.segment_size:
                        out.truncate(self.segment_size)  # a partial: zeros end the replay
                break
            except ArtifactCorruptError as exc:
                # A partial the running streamer superseded while this restore ran: take
                # what replaced it (the same WAL, and more).
                newer = superseding(self.archive.names(), name)
                if newer is None:
                    tmp.unlink(missing_ok=True)
                    self._answer(self.directory / _FAILED, None)
                    raise ArtifactCorruptError(
                        f"archived WAL segment {segment} is damaged; the restore stopped",
                        admin_detail=f"{exc.message} ({exc.admin_detail})",
                    ) from None
                name = newer
        self._answer(self.directory / "ready" / segment, tmp)
        self.served += 1

    def _answer(self, path: Path, source: Path | None) -> None:
        if source is None:
            source = path.with_name(f".{path.name}.tmp")
            source.touch()
        self._own(source)
        source.rename(path)

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:  # else the worker is the database's user
            os.chown(path, *self.owner)

    def close(self) -> None:
        """Make any script still waiting give up (the directory is removed after)."""
        with contextlib.suppress(OSError):
            self._answer(self.directory / _FAILED, None)
