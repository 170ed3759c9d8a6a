"""What ``pg_dump`` does not carry exactly, read from each database at backup time.

- The owner of a multirange type.  ``CREATE TYPE … AS RANGE`` makes a multirange type
  too, owned by whoever runs the restore; ``pg_dump`` then changes the range type's
  owner, which (in PostgreSQL 14 and 15) leaves the multirange's as it is.  The owners
  are recorded here and set again after ``pg_restore`` (:func:`owner_sql`).
- The rows of a materialized view.  ``pg_dump`` keeps only its definition and a restore
  refreshes it, so one that was stale at backup time comes back holding what its query
  gives on the restored tables, not the rows it held.  This cannot be helped; the backup
  says so (:func:`matview_warning`).
- The version of an extension.  ``pg_dump`` writes ``CREATE EXTENSION`` without one, so
  the target installs its default version; the backup says so for each extension that
  is not at its server's default version (:func:`extension_warning`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._pg import ident, quoted

#: Multirange types' owners (PostgreSQL 14 made multirange types).
_MULTIRANGE_OWNERS = """(SELECT coalesce(json_agg(json_build_object(
      'schema', n.nspname, 'type', m.typname, 'owner', pg_catalog.pg_get_userbyid(m.typowner))
      ORDER BY n.nspname, m.typname), '[]')
    FROM pg_catalog.pg_range r JOIN pg_catalog.pg_type m ON m.oid = r.rngmultitypid
    JOIN pg_catalog.pg_namespace n ON n.oid = m.typnamespace
    WHERE n.nspname <> 'pg_catalog')"""


def read_sql(version_num: int) -> str:
    """One query in each dumped database (``version_num``: the server's
    ``server_version_num``).  Names are schema-qualified and quoted (%I)."""
    multiranges = _MULTIRANGE_OWNERS if version_num >= 140000 else "'[]'::json"
    # Only the two fixed texts above are formatted in.
    return f"""SELECT json_build_object(
  'multirangeOwners', {multiranges},
  'materializedViews', (SELECT coalesce(json_agg(format('%I.%I', schemaname, matviewname)
      ORDER BY schemaname, matviewname), '[]')
    FROM pg_catalog.pg_matviews WHERE ispopulated),
  'extensionVersions', (SELECT coalesce(json_agg(json_build_object(
      'name', e.extname, 'version', e.extversion, 'default', a.default_version)
      ORDER BY e.extname), '[]')
    FROM pg_catalog.pg_extension e
    LEFT JOIN pg_catalog.pg_available_extensions a ON a.name = e.extname
    WHERE e.extversion IS DISTINCT FROM a.default_version));
"""  # noqa: S608


#: Names listed in a warning before "and N more".
LISTED = 10


def owner_sql(entry: dict[str, Any]) -> str:
    """``ALTER TYPE … OWNER TO`` for every multirange type the backup recorded (a no-op
    for one that already has that owner), or ``""``."""
    owners = entry.get("multirangeOwners") or []
    return "".join(
        f"ALTER TYPE {ident(o['schema'])}.{ident(o['type'])} OWNER TO {ident(o['owner'])};\n"
        for o in owners
    )


def matview_warning(entries: Sequence[dict[str, Any]]) -> str | None:
    """The warning a backup carries when it holds populated materialized views."""
    found = [
        f"{quoted(e['name'])}: {mv}" for e in entries for mv in e.get("materializedViews") or []
    ]
    if not found:
        return None
    shown = ", ".join(found[:LISTED])
    if len(found) > LISTED:
        shown += f" and {len(found) - LISTED} more"
    return (
        "materialized views are refreshed when restored: one that was stale when this backup "
        "was made comes back holding what its query gives on the restored tables, not the "
        f"rows it held ({shown})"
    )


def extension_warning(entries: Sequence[dict[str, Any]]) -> str | None:
    """The warning a backup carries when an extension is not at its default version."""
    found = [
        f"{quoted(e['name'])}: {x['name']} {x['version']} "
        + (
            f"(this server's default is {x['default']})"
            if x.get("default")
            else "(this server cannot install it)"
        )
        for e in entries
        for x in e.get("extensionVersions") or []
    ]
    if not found:
        return None
    shown = ", ".join(found[:LISTED])
    if len(found) > LISTED:
        shown += f" and {len(found) - LISTED} more"
    return (
        "extensions come back at the version the target server installs by default, not "
        f"the version they have now ({shown})"
    )
