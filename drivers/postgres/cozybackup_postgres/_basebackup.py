"""Physical mode's backup: ``pg_basebackup`` over the replication protocol, straight in.

``pg_basebackup -D - -Ft -X fetch`` writes the whole data directory as one tar on its
stdout, with the WAL from the backup's start to its end inside (``pg_wal/``), so the
artifact restores by itself.  The tar goes into the one stream ``base.tar`` as it comes
(the core compresses it); on its way the ``backup_label`` and ``backup_manifest`` are
read out of it (``_tarpeek``) for where the backup's WAL starts and ends.  No temp file,
and nothing of the server's filesystem is needed: the backup runs wherever the
server's port can be reached, with a role that has ``REPLICATION`` (a superuser).

Recorded on the Backup (``driverMetadata``): the server's version and system identifier,
its timeline and WAL segment size, the LSNs where the backup's WAL starts and ends, and
``consistentAt``, the earliest ``recoveryTime`` a restore of it may ask for (``_wal``).
"""

from __future__ import annotations

import json
import re

from cozybackup_core import BackupContext, Deadline, DriverError

from ._params import PostgresParameters
from ._pg import PHYSICAL_TOOLS, Server, find_tools, tool_version
from ._tarpeek import PeekingWriter, TarPeek
from ._wal import parse_lsn, segment_name

BASE_STREAM = "base.tar"
PHYSICAL_FORMAT = 1
_LABEL = "backup_label"
_MANIFEST = "backup_manifest"


def backup(ctx: BackupContext[PostgresParameters], deadline: Deadline) -> None:
    tools = find_tools(PHYSICAL_TOOLS)
    server = Server.from_location(ctx.application, tools)
    ctx.progress.stage("connecting to the database server")
    info = server.query_json(
        """SELECT json_build_object(
             'version', current_setting('server_version'),
             'systemIdentifier', (SELECT system_identifier::text FROM pg_control_system()),
             'segmentSize', (SELECT setting::bigint FROM pg_settings
                             WHERE name = 'wal_segment_size'),
             'tablespaces', (SELECT count(*) FROM pg_tablespace
                             WHERE spcname NOT IN ('pg_default', 'pg_global')),
             'bytes', (SELECT sum(pg_database_size(oid)) FROM pg_database))""",
        deadline=deadline,
        doing="connecting to the database server",
    )
    if int(info["tablespaces"]):
        # pg_basebackup writes one tar per tablespace, and only one can go to stdout.
        raise DriverError(
            "a physical backup cannot be made of a server with tablespaces of its own "
            "(they live outside the data directory); use a BackupClass with mode: logical"
        )
    peek = TarPeek({_LABEL, _MANIFEST})
    ctx.progress.stage("copying the data directory", bytes_total=int(info["bytes"] or 0) or None)
    with ctx.artifact.open(BASE_STREAM) as out:
        server.run(
            "pg_basebackup",
            ["-D", "-", "-Ft", "-X", "fetch", "--checkpoint=fast", "--label=cozybackup"],
            stdout=PeekingWriter(out, peek),  # type: ignore[arg-type]
            deadline=deadline,
            doing="copying the data directory",
        )
    # Read after pg_basebackup ended: every commit the backup holds is older than this.
    consistent_at = server.query_json(
        "SELECT to_json(now())", deadline=deadline, doing="finishing the backup"
    )
    label, wal = _read_peeked(peek)
    timeline = int(label["START TIMELINE"])
    size = int(info["segmentSize"])
    start = label["START WAL LOCATION"].split()[0]
    ctx.metadata.update(
        {
            "mode": "physical",
            "format": PHYSICAL_FORMAT,
            "serverVersion": str(info["version"]),
            "systemIdentifier": str(info["systemIdentifier"]),
            "timeline": timeline,
            "walSegmentSize": size,
            "startLsn": start,
            "startWal": segment_name(timeline, parse_lsn(start) // size, size),
            "endLsn": wal["End-LSN"],
            "consistentAt": str(consistent_at),
        }
    )
    # The whole server: every database, role and setting, byte for byte.
    ctx.resources.update(
        {
            "mode": "physical",
            "serverVersion": str(info["version"]),
            "dataBytes": int(info["bytes"] or 0),
        }
    )
    ctx.tool_versions.update(
        {
            "pg_basebackup": tool_version(tools["pg_basebackup"], deadline),
            "server": str(info["version"]),
        }
    )


def _read_peeked(peek: TarPeek) -> tuple[dict[str, str], dict[str, str]]:
    """The backup label's fields, and the last WAL range of the backup manifest."""
    try:
        text = peek.files[_LABEL].decode()
        label = dict(
            (m.group(1), m.group(2)) for m in re.finditer(r"^([A-Z ]+): (.*)$", text, re.M)
        )
        ranges = json.loads(peek.files[_MANIFEST])["WAL-Ranges"]
        wal = {k: str(v) for k, v in ranges[-1].items()}
        label["START WAL LOCATION"]
        label["START TIMELINE"]
        wal["End-LSN"]
    except (KeyError, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise DriverError(
            "pg_basebackup's output did not hold the backup label and manifest it should; "
            "the backup was not kept",
            admin_detail=repr(exc),
        ) from None
    return label, wal
