"""The fidelity corpus: a database using a wide feature set (fidelity_corpus.sql) comes
back exactly, in place and into a copy that already holds conflicting objects.

"Exactly" is checked three ways: every table's and materialized view's rows (md5 in a
total order; the text form keeps -0, NaN, infinities, bytes and whitespace), every large
object, and the catalog definitions and privileges of every object (pg_get_*def, ACLs,
comments, sequences' state, dependencies), read on both sides with the same queries.
"""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path
from typing import Any

import pytest
from cozybackup_postgres import PostgresDriver, _extras
from cozybackup_postgres._pg import literal
from cozybackup_postgres.testing import PostgresServer, ServerPool, roles_catalog

from cozybackup_core.testing import LocalPlatform

NS = "tenant-a"
CORPUS = (Path(__file__).parent / "fidelity_corpus.sql").read_text()
ROLES = """
CREATE ROLE corpus_owner NOLOGIN;
CREATE ROLE corpus_app LOGIN PASSWORD 'corpus-app-pw' CONNECTION LIMIT 10;
CREATE ROLE corpus_ro NOLOGIN IN ROLE corpus_app;
CREATE DATABASE corpus OWNER corpus_owner;
"""

#: Every query yields text lines, compared sorted.  Names, not oids (they differ between
#: servers); psql's default search_path on both sides, so regclass prints the same.
#: ACLs are compared as in effect: no ACL means acldefault(), and pg_dump writes nothing
#: for an explicit ACL equal to it.  Not compared: a column's declared array dimensions
#: (``text[][]`` is ``text[]`` to PostgreSQL, which pg_dump writes; see the README).
#: Columns are compared by position among the live ones: a restore keeps their order,
#: not the gaps dropped columns left in attnum.
#: Options of foreign servers, tables and user mappings are a set (pg_dump writes them in
#: name order), compared sorted.
DEFINITIONS: dict[str, str] = {
    "database": """
SELECT concat_ws(' | ', datname, pg_get_userbyid(datdba), pg_encoding_to_char(encoding),
  datlocprovider, datcollate, datctype, daticulocale, datconnlimit, coalesce(datacl, acldefault('d', datdba))::text,
  shobj_description(oid, 'pg_database'))
FROM pg_database WHERE datname = current_database()""",
    "database settings": """
SELECT concat_ws(' | ', coalesce(r.rolname, '(all)'), s.setconfig::text)
FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
LEFT JOIN pg_roles r ON r.oid = s.setrole WHERE d.datname = current_database()""",
    "namespaces": """
SELECT concat_ws(' | ', nspname, pg_get_userbyid(nspowner),
  coalesce(nspacl, acldefault('n', nspowner))::text,
  obj_description(oid, 'pg_namespace'))
FROM pg_namespace WHERE nspname !~ '^pg_' AND nspname <> 'information_schema'""",
    "extensions": """
SELECT concat_ws(' | ', e.extname, e.extversion, n.nspname, pg_get_userbyid(e.extowner),
  obj_description(e.oid, 'pg_extension'))
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace""",
    "relations": """
SELECT concat_ws(' | ', c.oid::regclass::text, c.relkind, c.relpersistence,
  pg_get_userbyid(c.relowner),
  coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))::text, c.reloptions::text, c.relrowsecurity,
  c.relforcerowsecurity, c.relreplident, c.relispartition, c.relispopulated,
  pg_get_expr(c.relpartbound, c.oid), CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
  am.amname, t.spcname, obj_description(c.oid, 'pg_class'),
  (SELECT i.indexrelid::regclass::text FROM pg_index i
   WHERE i.indrelid = c.oid AND i.indisclustered))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_am am ON am.oid = c.relam LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'""",
    "columns": """
SELECT concat_ws(' | ', a.attrelid::regclass::text,
  row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum), a.attname,
  format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
  a.attidentity, a.attgenerated, co.collname, a.attstattarget, a.attstorage,
  a.attcompression, a.attoptions::text, a.attacl::text,
  col_description(a.attrelid, a.attnum))
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 100
WHERE a.attnum > 0 AND NOT a.attisdropped
  AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'""",
    "views": """
SELECT c.oid::regclass::text || ' | ' || pg_get_viewdef(c.oid, true)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm') AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'""",
    "indexes": """
SELECT concat_ws(' | ', pg_get_indexdef(i.indexrelid), i.indisreplident,
  obj_description(i.indexrelid, 'pg_class'))
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'""",
    "constraints": """
SELECT concat_ws(' | ', conrelid::regclass::text, contypid::regtype::text, conname,
  pg_get_constraintdef(oid), convalidated, condeferrable, condeferred, conislocal,
  obj_description(oid, 'pg_constraint'))
FROM pg_constraint WHERE connamespace::regnamespace::text !~ '^pg_'
  AND connamespace::regnamespace::text <> 'information_schema'""",
    "functions": """
SELECT concat_ws(' | ', p.oid::regprocedure::text, pg_get_userbyid(p.proowner),
  coalesce(p.proacl, acldefault('f', p.proowner))::text, obj_description(p.oid, 'pg_proc'),
  CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) END,
  (SELECT concat_ws(',', a.aggtransfn::regproc::text, a.aggtranstype::regtype::text,
          a.agginitval) FROM pg_aggregate a WHERE a.aggfnoid = p.oid))
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname IN ('app', 'public', 'Odd Schema ✓')""",
    "triggers": """
SELECT concat_ws(' | ', pg_get_triggerdef(oid), tgenabled) FROM pg_trigger
WHERE NOT tgisinternal""",
    "event triggers": """
SELECT concat_ws(' | ', evtname, evtevent, pg_get_userbyid(evtowner), evtfoid::regproc::text,
  evtenabled, evttags::text, obj_description(oid, 'pg_event_trigger'))
FROM pg_event_trigger""",
    "rules": """
SELECT definition FROM pg_rules WHERE schemaname !~ '^pg_'""",
    "policies": """
SELECT concat_ws(' | ', schemaname, tablename, policyname, permissive, roles::text, cmd,
  qual, with_check) FROM pg_policies""",
    "default privileges": """
SELECT concat_ws(' | ', pg_get_userbyid(defaclrole), defaclnamespace::regnamespace::text,
  defaclobjtype, defaclacl::text) FROM pg_default_acl""",
    "types": """
SELECT concat_ws(' | ', t.oid::regtype::text, t.typtype, pg_get_userbyid(t.typowner),
  coalesce(t.typacl, acldefault('T', t.typowner))::text, t.typnotnull, t.typdefault, format_type(t.typbasetype, t.typtypmod),
  obj_description(t.oid, 'pg_type'),
  (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e
   WHERE e.enumtypid = t.oid),
  (SELECT concat_ws(',', r.rngsubtype::regtype::text, r.rngsubdiff::regproc::text)
   FROM pg_range r WHERE r.rngtypid = t.oid))
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname IN ('app', 'public', 'Odd Schema ✓') AND t.typtype <> 'b'""",
    "collations": """
SELECT concat_ws(' | ', c.collname, n.nspname, pg_get_userbyid(c.collowner), c.collprovider,
  c.collisdeterministic, c.collcollate, c.collctype, c.colliculocale,
  obj_description(c.oid, 'pg_collation'))
FROM pg_collation c JOIN pg_namespace n ON n.oid = c.collnamespace
WHERE n.nspname <> 'pg_catalog'""",
    "sequences": """
SELECT concat_ws(' | ', schemaname, sequencename, sequenceowner, data_type, start_value,
  min_value, max_value, increment_by, cycle, cache_size, last_value) FROM pg_sequences""",
    "languages": """
SELECT concat_ws(' | ', lanname, pg_get_userbyid(lanowner),
  coalesce(lanacl, acldefault('l', lanowner))::text) FROM pg_language""",
    "large objects": """
SELECT concat_ws(' | ', oid, pg_get_userbyid(lomowner),
  coalesce(lomacl, acldefault('L', lomowner))::text,
  obj_description(oid, 'pg_largeobject'))
FROM pg_largeobject_metadata""",
    "comments": """
SELECT pg_describe_object(classoid, objoid, objsubid) || ' | ' || description
FROM pg_description WHERE objoid >= 16384""",
    "publications": """
SELECT concat_ws(' | ', p.pubname, pg_get_userbyid(p.pubowner), p.puballtables, p.pubinsert,
  p.pubupdate, p.pubdelete, p.pubtruncate, t.schemaname, t.tablename, t.attnames::text,
  t.rowfilter)
FROM pg_publication p LEFT JOIN pg_publication_tables t ON t.pubname = p.pubname""",
    "foreign data": """
SELECT concat_ws(' | ', 'server', srvname, pg_get_userbyid(srvowner), pg_temp.sorted(srvoptions),
  coalesce(srvacl, acldefault('S', srvowner))::text, obj_description(oid, 'pg_foreign_server'))
FROM pg_foreign_server
UNION ALL SELECT concat_ws(' | ', 'mapping', srvname, usename, pg_temp.sorted(umoptions))
FROM pg_user_mappings
UNION ALL SELECT concat_ws(' | ', 'table', ftrelid::regclass::text, pg_temp.sorted(ftoptions))
FROM pg_foreign_table
UNION ALL SELECT concat_ws(' | ', 'column', attrelid::regclass::text, attname,
  pg_temp.sorted(attfdwoptions)) FROM pg_attribute WHERE attfdwoptions IS NOT NULL""",
    "inheritance": """
SELECT concat_ws(' | ', a.attrelid::regclass::text, a.attname, a.attislocal, a.attinhcount)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relnamespace = 'app'::regnamespace
  AND c.relkind = 'r'
UNION ALL SELECT inhrelid::regclass::text || ' inherits ' || inhparent::regclass::text
  || ' ' || inhseqno FROM pg_inherits""",
    "statistics objects": """
SELECT pg_get_statisticsobjdef(oid) FROM pg_statistic_ext""",
    "casts and operators": """
SELECT pg_describe_object(classid, objid, objsubid) FROM pg_depend
WHERE classid IN ('pg_cast'::regclass, 'pg_operator'::regclass, 'pg_ts_config'::regclass)
  AND objid >= 16384 AND deptype = 'n'""",
    # Every dependency between user objects: what refers to what, and how.
    "dependencies": """
SELECT pg_describe_object(classid, objid, objsubid) || ' -> '
  || pg_describe_object(refclassid, refobjid, refobjsubid) || ' ' || deptype::text
FROM pg_depend WHERE objid >= 16384 AND refobjid >= 16384""",
}


#: A helper function, in pg_temp so that it is not part of what is compared.
SORTED = """CREATE FUNCTION pg_temp.sorted(text[]) RETURNS text LANGUAGE sql
  AS 'SELECT array_agg(o ORDER BY o)::text FROM unnest($1) o';
"""


def definitions(server: PostgresServer, db: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for what, query in DEFINITIONS.items():
        text = server.psql(
            "SET TimeZone = 'UTC';\n"
            + SORTED
            + "SELECT coalesce(json_agg(x), '[]') FROM ("
            + query
            + ") q(x);",
            db,
        )
        lines = sorted(str(v) for v in json.loads(text))
        # The names of toast tables and of constraints' internal triggers hold oids;
        # pg_temp holds the helper.
        out[what] = [
            line
            for line in lines
            if not any(s in line for s in ("pg_toast", "_ConstraintTrigger_", "pg_temp"))
        ]
    return out


def contents(server: PostgresServer, db: str) -> dict[str, str]:
    """Rows of every table and materialized view, large objects, sequences' state."""
    sums = server.checksum(db)
    mviews = server.psql(
        "SELECT format('%I.%I', schemaname, matviewname) FROM pg_matviews WHERE ispopulated",
        db,
    ).split()
    for mv in mviews:
        # mv comes from format('%I.%I'): quoted identifiers.
        sums[mv] = server.psql(
            f"SELECT md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) FROM {mv} x",
            db,
        ).strip()
    seqs = server.psql(
        "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences", db
    ).split()
    for seq in seqs:
        sums[seq] = server.psql(f"SELECT last_value, is_called FROM {seq}", db).strip()
    return sums


def snapshot(server: PostgresServer) -> dict[str, Any]:
    return {"definitions": definitions(server, "corpus"), "contents": contents(server, "corpus")}


def as_restored(server: PostgresServer, snap: dict[str, Any]) -> dict[str, Any]:
    """``snap`` with each materialized view holding what a restore's refresh gives: its
    query's rows on the tables (pg_dump keeps no rows of materialized views)."""
    out = deepcopy(snap)
    mviews = server.psql(
        "SELECT format('%I.%I', schemaname, matviewname) FROM pg_matviews WHERE ispopulated",
        "corpus",
    ).split()
    for mv in mviews:
        query = server.psql(f"SELECT pg_get_viewdef({literal(mv)}::regclass)", "corpus")
        out["contents"][mv] = server.psql(
            f"SELECT md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) "
            f"FROM ({query.strip().rstrip(';')}) x",
            "corpus",
        ).strip()
    return out


def warnings_of(plat: LocalPlatform) -> list[str]:
    (backup,) = plat.backups(NS)
    return [w["message"] for w in (backup.status.underlying_resources or {})["warnings"]]


#: The partitions of a table hash-partitioned on an enum: a restore may place its rows in
#: other ones (the backup warns; the table itself, all rows, is compared).
REPLACED_ROWS = {"app.by_mood_0", "app.by_mood_1", "app.by_mood_2"}


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What differs, readably (an assertion message)."""
    out = []
    for part in ("definitions", "contents"):
        for key in sorted((set(before[part]) | set(after[part])) - REPLACED_ROWS):
            b, a = before[part].get(key), after[part].get(key)
            if b != a:
                if isinstance(b, list) and isinstance(a, list):
                    out.append(
                        f"{key}: lost {sorted(set(b) - set(a))}, got {sorted(set(a) - set(b))}"
                    )
                else:
                    out.append(f"{key}: {b!r} -> {a!r}")
    return out


def ok(job: Any) -> None:
    assert job.status.phase == "Succeeded", f"{job.kind} failed: {job.status.message}"


def declare(plat: LocalPlatform, name: str, server: PostgresServer) -> Any:
    return plat.declare_app(NS, name, "Postgres", server.connection(), server.credentials())


@pytest.fixture
def corpus(pg_servers: ServerPool) -> PostgresServer:
    server = pg_servers.start()
    server.psql(ROLES)
    server.psql(CORPUS, "corpus")
    return server


def test_the_corpus_is_what_it_claims(corpus: PostgresServer) -> None:
    """The comparison sees the features (a corpus that silently lost them proves nothing)."""
    snap = snapshot(corpus)
    defs = snap["definitions"]
    assert len(defs["views"]) == 6 and len(defs["policies"]) == 2
    assert any("SECURITY DEFINER" in f for f in defs["functions"])
    assert any("GENERATED ALWAYS AS" in c or " | s | " in c for c in defs["columns"])
    assert any(d.startswith("corpus_owner | app | r | ") for d in defs["default privileges"])
    assert any("corpus_ro=r/" in c for c in defs["columns"]), "column grants"
    assert len(snap["contents"]["large objects"].split("/")[1]) > 0
    assert snap["contents"]["large objects"].endswith("/3")
    # 99, 96, 93 handed out, and 5 values cached: the sequence itself is at 87.
    assert snap["contents"]["app.counter"] == "87|t"
    assert snap["contents"]["app.set_not_called"] == "500|f"


@pytest.fixture
def platform(tmp_path: Path) -> LocalPlatform:
    return LocalPlatform(tmp_path / "home", drivers=(PostgresDriver,))


#: After the backup: data, sequences, definitions, privileges, comments, settings change.
CHANGES = r"""
SET search_path = app, ext, public;
UPDATE edge SET f8 = 0, n = 1, b = '\xdead' WHERE id IN (3, 6);
DELETE FROM people WHERE id % 7 = 0;
INSERT INTO rooms VALUES (99, 'new room');
SELECT nextval('counter'), nextval('unused_seq'), nextval('set_not_called');
DROP VIEW v_counts;
CREATE OR REPLACE FUNCTION app.add(a int, b int DEFAULT 1, VARIADIC rest int[] DEFAULT '{}')
  RETURNS int LANGUAGE sql IMMUTABLE STRICT RETURN 0;
DROP POLICY people_own ON people;
ALTER TABLE people NO FORCE ROW LEVEL SECURITY;
GRANT ALL ON people TO corpus_ro;
REVOKE SELECT (id, first, mood) ON people FROM corpus_ro;
ALTER DEFAULT PRIVILEGES FOR ROLE corpus_owner IN SCHEMA app REVOKE SELECT ON TABLES FROM corpus_ro;
COMMENT ON TABLE edge IS 'changed';
COMMENT ON COLUMN edge.n IS NULL;
SELECT lo_unlink(424243);
SELECT lo_from_bytea(999999, 'new');
ALTER DATABASE corpus SET work_mem = '1MB';
ALTER ROLE corpus_ro IN DATABASE corpus SET work_mem = '2MB';
ALTER TABLE people ENABLE TRIGGER people_touch;
ALTER EVENT TRIGGER corpus_ddl ENABLE;
ALTER TYPE mood ADD VALUE 'ecstatic';
ALTER TABLE rooms ADD COLUMN extra int;
REFRESH MATERIALIZED VIEW mv_empty;
GRANT USAGE ON LANGUAGE plpgsql TO PUBLIC;
"""

#: A copy that already holds objects of the same names, different.
CONFLICTS = """
CREATE ROLE corpus_owner SUPERUSER LOGIN PASSWORD 'other' VALID UNTIL '2001-01-01';
CREATE ROLE corpus_app NOLOGIN CONNECTION LIMIT 0;
CREATE ROLE corpus_ro CREATEDB;
GRANT corpus_owner TO corpus_ro WITH ADMIN OPTION;
CREATE DATABASE corpus OWNER corpus_app;
"""
CONFLICTS_IN_DB = """
CREATE SCHEMA app;
CREATE TABLE app.people (id int PRIMARY KEY, x text);
INSERT INTO app.people VALUES (1, 'not from the backup');
CREATE TYPE app.mood AS ENUM ('other');
CREATE COLLATION app.german_icu (provider = icu, locale = 'fr-FR');
CREATE EXTENSION hstore;
SELECT lo_from_bytea(424242, 'conflicting large object');
CREATE SEQUENCE app.counter START 5;
"""


def test_the_corpus_comes_back_exactly_in_place(
    platform: LocalPlatform, corpus: PostgresServer
) -> None:
    stored = snapshot(corpus)
    before = as_restored(corpus, stored)
    # The one thing that cannot come back as it was: a stale materialized view.
    assert diff(stored, before) == [
        f"app.mv_stale: {stored['contents']['app.mv_stale']!r} -> "
        f"{before['contents']['app.mv_stale']!r}"
    ]
    roles = roles_catalog(corpus)
    ok(platform.backup(NS, declare(platform, "db", corpus), "b1"))
    (warning,) = [w for w in warnings_of(platform) if "materialized views" in w]
    assert '"corpus": app.mv_events, "corpus": app.mv_stale' in warning
    (warning,) = [w for w in warnings_of(platform) if "hash-partitioned" in w]
    assert warning.endswith('("corpus": app.by_mood)')
    assert stored["contents"]["app.by_mood"].endswith("/40")
    corpus.psql(CHANGES, "corpus")
    assert diff(before, snapshot(corpus)), "the changes are visible to the comparison"
    ok(platform.restore(NS, "b1", "r1"))
    problems = diff(before, snapshot(corpus))
    assert problems == [], "\n".join(problems)
    assert roles_catalog(corpus) == roles


def test_the_corpus_comes_back_exactly_into_a_copy_with_conflicting_objects(
    platform: LocalPlatform, corpus: PostgresServer, pg_servers: ServerPool
) -> None:
    copy = pg_servers.start()
    copy.psql(CONFLICTS)
    copy.psql(CONFLICTS_IN_DB, "corpus")
    before = as_restored(corpus, snapshot(corpus))
    ok(platform.backup(NS, declare(platform, "src", corpus), "b1"))
    ok(platform.restore(NS, "b1", "r1", target=declare(platform, "copy", copy)))
    problems = diff(before, snapshot(copy))
    assert problems == [], "\n".join(problems)
    assert roles_catalog(copy) == roles_catalog(corpus)


def test_an_extension_not_at_its_default_version_is_warned_about(
    platform: LocalPlatform, pg_servers: ServerPool
) -> None:
    """pg_dump writes CREATE EXTENSION without a version: the backup says so."""
    server = pg_servers.start()
    server.psql("CREATE DATABASE geo")
    server.psql("CREATE EXTENSION cube VERSION '1.4'; CREATE EXTENSION seg", "geo")
    ok(platform.backup(NS, declare(platform, "db", server), "b1"))
    (warning,) = [w for w in warnings_of(platform) if "extensions" in w]
    assert warning.endswith('("geo": cube 1.4 (this server\'s default is 1.5))')
    ok(platform.restore(NS, "b1", "r1"))
    versions = server.psql("SELECT extname, extversion FROM pg_extension ORDER BY 1", "geo")
    assert versions.split() == ["cube|1.5", "plpgsql|1.0", "seg|1.4"], "as the warning said"


def test_the_per_database_query_suits_servers_without_multiranges(
    corpus: PostgresServer,
) -> None:
    """Before PostgreSQL 14 there are no multirange types (nor pg_range.rngmultitypid):
    the query for such a server leaves them out and still runs.  And it finds the enums
    in hash partition keys however they are wrapped."""
    old = json.loads(corpus.psql(_extras.read_sql(130000), "corpus"))
    new = json.loads(corpus.psql(_extras.read_sql(150000), "corpus"))
    assert "rngmultitypid" not in _extras.read_sql(130000)
    assert old["multirangeOwners"] == []
    assert new["multirangeOwners"] == [
        {"schema": "app", "type": "floatmultirange", "owner": "corpus_owner"}
    ]
    assert (
        old["materializedViews"]
        == new["materializedViews"]
        == [
            "app.mv_events",
            "app.mv_stale",
        ]
    )
    # Enums in a hash partition key are found through domains and arrays too.
    corpus.psql(
        """CREATE DOMAIN app.mood_d AS app.mood;
        CREATE TABLE app.hd (m app.mood_d) PARTITION BY HASH (m);
        CREATE TABLE app.ha (m app.mood[], n int) PARTITION BY HASH (n, m);
        CREATE TABLE app.hn (m int) PARTITION BY HASH (m);
        CREATE TABLE app.lm (m app.mood) PARTITION BY LIST (m);""",
        "corpus",
    )
    found = json.loads(corpus.psql(_extras.read_sql(150000), "corpus"))["enumHashPartitioned"]
    assert found == ["app.by_mood", "app.ha", "app.hd"]
