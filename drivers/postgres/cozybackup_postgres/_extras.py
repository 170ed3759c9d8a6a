"""What ``pg_dump`` does not carry exactly, read from each database at backup time.

- The owner of a multirange type.  ``CREATE TYPE … AS RANGE`` makes a multirange type
  too, owned by whoever runs the restore; ``pg_dump`` then changes the range type's
  owner, which (in PostgreSQL 14 and 15) leaves the multirange's as it is.  The owners
  are recorded here and set again after ``pg_restore`` (:func:`owner_sql`).
- The rows of a materialized view.  ``pg_dump`` keeps only its definition and a restore
  refreshes it, so one that was stale at backup time comes back holding what its query
  gives on the restored tables, not the rows it held.  This cannot be helped; the backup
  says so (:func:`matview_warning`).
- Which partition a row of a hash-partitioned table is in, when the partition key holds
  an enum: an enum hashes by its values' oids, which a restore assigns anew, so
  ``pg_dump`` loads such tables through their root and rows may land in other
  partitions.  The backup says so (:func:`enum_partition_warning`).
- The version of an extension.  ``pg_dump`` writes ``CREATE EXTENSION`` without one, so
  the target installs its default version; the backup says so for each extension that
  is not at its server's default version (:func:`extension_warning`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cozybackup_core import short_list

from ._pg import ident, quoted

#: Multirange types' owners (PostgreSQL 14 made multirange types).
_MULTIRANGE_OWNERS = """(SELECT coalesce(json_agg(json_build_object(
      'schema', n.nspname, 'type', m.typname, 'owner', pg_catalog.pg_get_userbyid(m.typowner))
      ORDER BY n.nspname, m.typname), '[]')
    FROM pg_catalog.pg_range r JOIN pg_catalog.pg_type m ON m.oid = r.rngmultitypid
    JOIN pg_catalog.pg_namespace n ON n.oid = m.typnamespace
    WHERE n.nspname <> 'pg_catalog')"""


#: Hash-partitioned tables with an enum in their partition key (in a domain, array, range
#: or composite type too).  Expression keys are not looked into.
_ENUM_HASH_PARTITIONED = """(SELECT coalesce(json_agg(DISTINCT format('%I.%I', n.nspname, c.relname)), '[]')
    FROM pg_catalog.pg_partitioned_table p
    JOIN pg_catalog.pg_class c ON c.oid = p.partrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_attribute a ON a.attrelid = p.partrelid
      AND a.attnum = ANY (p.partattrs::int2[])
    WHERE p.partstrat = 'h' AND EXISTS (
      WITH RECURSIVE parts(t) AS (
        SELECT a.atttypid
        UNION
        SELECT v.x FROM parts JOIN pg_catalog.pg_type ty ON ty.oid = parts.t,
          LATERAL (SELECT ty.typbasetype UNION ALL SELECT ty.typelem
                   UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r
                             WHERE r.rngtypid = ty.oid
                   UNION ALL SELECT ca.atttypid FROM pg_catalog.pg_attribute ca
                             WHERE ty.typrelid <> 0 AND ca.attrelid = ty.typrelid
                               AND ca.attnum > 0) v(x)
        WHERE v.x <> 0)
      SELECT 1 FROM parts JOIN pg_catalog.pg_type e ON e.oid = parts.t
      WHERE e.typtype = 'e'))"""


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
    WHERE e.extversion IS DISTINCT FROM a.default_version),
  'enumHashPartitioned', {_ENUM_HASH_PARTITIONED});
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
    shown = short_list(found, LISTED)
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
    shown = short_list(found, LISTED)
    return (
        "extensions come back at the version the target server installs by default, not "
        f"the version they have now ({shown})"
    )


def enum_partition_warning(entries: Sequence[dict[str, Any]]) -> str | None:
    """The warning a backup carries when it holds hash-partitioned tables on enums."""
    found = [
        f"{quoted(e['name'])}: {t}" for e in entries for t in e.get("enumHashPartitioned") or []
    ]
    if not found:
        return None
    shown = short_list(found, LISTED)
    return (
        "hash-partitioned tables whose partition key holds an enum keep every row when "
        "restored, but a row may be in another of their partitions than now, as enum values "
        f"hash differently on the restored database ({shown})"
    )
