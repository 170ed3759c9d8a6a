-- A database using a wide feature set, for test_fidelity.py.  Run as the superuser in a
-- fresh database "corpus" owned by corpus_owner (roles created by the test first).

-- ------------------------------------------------------------------ database level
COMMENT ON DATABASE corpus IS 'the fidelity corpus ✓';
ALTER DATABASE corpus SET work_mem = '7MB';
ALTER DATABASE corpus SET search_path = "$user", app, public;
ALTER ROLE corpus_app IN DATABASE corpus SET statement_timeout = '30s';
REVOKE CONNECT, TEMPORARY ON DATABASE corpus FROM PUBLIC;
GRANT CONNECT ON DATABASE corpus TO corpus_app, corpus_ro;
GRANT CREATE ON DATABASE corpus TO corpus_app WITH GRANT OPTION;

-- ------------------------------------------------------------------ extensions
CREATE SCHEMA ext;
CREATE EXTENSION hstore SCHEMA ext;
CREATE EXTENSION citext SCHEMA ext;
CREATE EXTENSION pgcrypto SCHEMA ext;
CREATE EXTENSION btree_gist SCHEMA ext;
CREATE EXTENSION "uuid-ossp" SCHEMA ext VERSION '1.1';
COMMENT ON EXTENSION hstore IS 'key/value pairs, commented by us';
GRANT USAGE ON SCHEMA ext TO PUBLIC;

-- ------------------------------------------------------------------ schemas, types
CREATE SCHEMA app AUTHORIZATION corpus_owner;
COMMENT ON SCHEMA app IS 'application schema';
CREATE SCHEMA "Odd Schema ✓";
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO corpus_ro;
SET search_path = app, ext, public;
SET ROLE corpus_owner;

CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
ALTER TYPE mood ADD VALUE 'meh' BEFORE 'ok';  -- an odd enumsortorder
CREATE DOMAIN positive AS numeric(12, 3) CHECK (VALUE > 0) DEFAULT 1;
CREATE DOMAIN email AS ext.citext CONSTRAINT has_at CHECK (VALUE LIKE '%@%');
CREATE TYPE address AS (street text, zip varchar(10), geo point);
CREATE TYPE floatrange AS RANGE (subtype = float8, subtype_diff = float8mi);
COMMENT ON TYPE mood IS 'how it went';
COMMENT ON DOMAIN positive IS 'above zero';
REVOKE USAGE ON TYPE mood FROM PUBLIC;
GRANT USAGE ON TYPE mood TO corpus_app;

RESET ROLE;
CREATE COLLATION app.german_icu (provider = icu, locale = 'de-DE');
CREATE COLLATION app.numeric_icu (provider = icu, locale = 'en-u-kn-true', deterministic = false);
CREATE COLLATION app.plain_c (provider = libc, locale = 'C');
ALTER COLLATION app.german_icu OWNER TO corpus_owner;
COMMENT ON COLLATION app.numeric_icu IS 'numbers sort as numbers';
SET ROLE corpus_owner;

-- ------------------------------------------------------------------ edge values
CREATE TABLE edge (
  id int PRIMARY KEY,
  n numeric, f8 float8, f4 float4, ts timestamp, tstz timestamptz, d date,
  t time, ttz timetz, iv interval, arr int[], arr2 text[][], j jsonb, js json,
  b bytea, txt text COLLATE app.german_icu, r int4range, tr tstzrange,
  mr int4multirange, m mood, p positive, a address, u uuid, ip inet, net cidr,
  mac macaddr, bits bit(5), vb varbit, x xml, tsv tsvector, h ext.hstore,
  em email, fr floatrange, money_v money, box_v box, poly polygon, c char(3),
  oid_v oid, ci ext.citext COLLATE app.numeric_icu
);
COMMENT ON TABLE edge IS 'every edge value we could think of';
COMMENT ON COLUMN edge.n IS 'numeric, NaN and infinities';
INSERT INTO edge VALUES
 (1, 'NaN', 'NaN', 'NaN', 'infinity', 'infinity', 'infinity', '24:00:00',
  '24:00:00+15:59', '178000000 years', '{}', '{{a,b},{NULL,"q\"x"}}',
  '{"a": [1, 2.50, {"b": null}], "u": "\u00e9\ud83d\ude00", "big": 1e400}',
  '{"dup": 1, "dup": 2,   "ws" : true}', '\x00', 'z', 'empty', '[,)', '{}', 'sad',
  0.001, ROW('', '', '(0,0)'), '00000000-0000-0000-0000-000000000000', '::1',
  '10.0.0.0/8', '00:00:00:00:00:00', B'00000', B'', '<a x="1">t</a>', 'a:1 b:2',
  '"k"=>NULL, "a b"=>"c"', 'A@B', '[-Infinity,Infinity]', '-92233720368547758.08',
  '((0,0),(0,0))', '((0,0),(1,1),(1,0))', '', 0, 'a10'),
 (2, 'Infinity', 'Infinity', '-Infinity', '-infinity', '-infinity', '-infinity',
  '00:00:00', '00:00:00-15:59', '-178000000 years', '{NULL}', NULL,
  '[]', 'null', NULL, 'Ölmühle', '[-2147483648,2147483647)', '(,)', '{[1,3),[5,7)}',
  'meh', 999999999.999, NULL, 'ffffffff-ffff-ffff-ffff-ffffffffffff', '255.255.255.255/32',
  '::/0', 'ff:ff:ff:ff:ff:ff', B'11111', B'1010101010101010101', '<!-- c -->', '',
  '', 'x@y', 'empty', '92233720368547758.07', '((-1e300,-1e300),(1e300,1e300))',
  '((0,0))', 'abc', 4294967295, 'A2'),
 (3, '-Infinity', '-0', '-0', '4713-01-01 00:00:00 BC', '4713-01-01 00:00:00+00 BC',
  '4713-01-01 BC', '23:59:59.999999', '23:59:59.999999+00', '-2147483648 months -2147483648 days -9223372036854775807 microseconds',
  '[-5:-3]={1,2,3}', '{}', '"only a string"', '"x"', NULL, E'\t\n\\ \'"', 'empty', NULL,
  '{}', 'happy', 1, ROW(NULL, NULL, NULL), NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'a9'),
 (4, '-0.000000000000000000000000000000000000001', 1.7976931348623157e308, 3.4028235e38,
  '294276-12-31 23:59:59.999999', '294276-12-31 23:59:59.999999+00', '5874897-12-31',
  NULL, NULL, '2147483647 months 2147483647 days 9223372036854775807 microseconds',
  ARRAY[2147483647, -2147483648, NULL], '{{"", " "}, {"NULL", "null"}}',
  '{"n": -0, "e": 1.0E-7, "s": "tab\tnl\n", "deep": [[[[[]]]]]}', ' { } ', NULL,
  '😀𝄞 👩‍👩‍👧 ﷽ 𠜎', NULL, '[2000-01-01 00:00+00,infinity)', NULL, 'ok', NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL),
 (5, 123456789012345678901234567890.123456789012345678901234567890, 4.9e-324, 1.4e-45,
  '2000-02-29 12:34:56.789012', '1969-12-31 23:59:59.999999-12', '2000-02-29',
  NULL, NULL, '1 day -1 second', NULL, NULL, NULL, NULL, NULL, repeat('x', 100000),
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
-- bytea with every byte, and a large value that lives in TOAST
INSERT INTO edge (id, b) SELECT 6, string_agg(set_byte('\x00', 0, g), '' ORDER BY g)
  FROM generate_series(0, 255) g;
INSERT INTO edge (id, b, txt)
  SELECT 7, ext.digest(repeat('toast', 1000), 'sha512') || decode(repeat('00ff', 50000), 'hex'),
         (SELECT string_agg(chr(c), '') FROM generate_series(1, 55295) c WHERE c <> 0);

-- ------------------------------------------------------------------ identity, generated, sequences
CREATE SEQUENCE counter AS smallint INCREMENT BY -3 MINVALUE -30000 MAXVALUE 100 START 99 CACHE 5 CYCLE;
SELECT nextval('counter'), nextval('counter'), nextval('counter');
CREATE SEQUENCE unused_seq START 42;
CREATE SEQUENCE set_not_called;
SELECT setval('set_not_called', 500, false);
COMMENT ON SEQUENCE counter IS 'counts down';
CREATE TABLE people (
  id bigint GENERATED ALWAYS AS IDENTITY (START WITH 1000 INCREMENT BY 7) PRIMARY KEY,
  ext_id int GENERATED BY DEFAULT AS IDENTITY (MINVALUE -5 START WITH -5),
  first text NOT NULL, last text COLLATE app.plain_c,
  full_name text GENERATED ALWAYS AS (first || ' ' || coalesce(last, '')) STORED,
  email email, home address, mood mood DEFAULT 'ok',
  born date CHECK (born > '1900-01-01') NOT NULL DEFAULT '2000-01-01',
  tags text[] DEFAULT '{}', secret text,
  CONSTRAINT people_email_key UNIQUE (email) DEFERRABLE INITIALLY DEFERRED
);
ALTER TABLE people ALTER COLUMN last SET STATISTICS 500;
ALTER TABLE people ALTER COLUMN secret SET STORAGE EXTERNAL;
ALTER TABLE people ALTER COLUMN tags SET COMPRESSION pglz;
ALTER TABLE people SET (fillfactor = 70, autovacuum_enabled = false);
ALTER TABLE people ALTER COLUMN first SET (n_distinct = -0.5);
INSERT INTO people (first, last, email, home, mood, born, tags, secret)
  SELECT 'P' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'L' || g END, 'p' || g || '@x.org',
         ROW('street ' || g, lpad(g::text, 5, '0'), point(g, -g))::address, (ARRAY['sad','meh','ok','happy'])[1 + g % 4]::mood,
         date '1950-01-01' + g * 11, ARRAY['t' || g % 4], md5(g::text)
  FROM generate_series(1, 300) g;
INSERT INTO people (ext_id, first) VALUES (77777, 'by default');
DELETE FROM people WHERE id % 5 = 0;
ALTER TABLE people ADD CONSTRAINT born_recent CHECK (born > '1960-01-01') NOT VALID;
CREATE INDEX people_lower ON people (lower(first)) INCLUDE (born) WHERE mood <> 'sad';
CREATE INDEX people_tags ON people USING gin (tags);
CLUSTER people USING people_pkey;
ALTER TABLE people REPLICA IDENTITY USING INDEX people_pkey;
CREATE STATISTICS people_stats (dependencies, ndistinct) ON first, last FROM people;
COMMENT ON COLUMN people.full_name IS 'generated';
COMMENT ON CONSTRAINT born_recent ON people IS 'not validated on purpose';
COMMENT ON INDEX people_lower IS 'partial expression index';

-- ------------------------------------------------------------------ partitions
CREATE TABLE events (
  id bigint NOT NULL, at timestamptz NOT NULL, kind text NOT NULL, payload jsonb,
  PRIMARY KEY (id, at, kind)
) PARTITION BY RANGE (at);
CREATE TABLE events_2023 PARTITION OF events FOR VALUES FROM ('2023-01-01') TO ('2024-01-01')
  PARTITION BY LIST (kind);
CREATE TABLE events_2023_click PARTITION OF events_2023 FOR VALUES IN ('click', 'tap');
CREATE TABLE events_2023_other PARTITION OF events_2023 DEFAULT;
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO (MAXVALUE)
  PARTITION BY HASH (id);
CREATE TABLE events_2024_h0 PARTITION OF events_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE events_2024_h1 PARTITION OF events_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE events_old (LIKE events INCLUDING ALL);
ALTER TABLE events ATTACH PARTITION events_old FOR VALUES FROM (MINVALUE) TO ('2023-01-01');
INSERT INTO events SELECT g, timestamptz '2022-06-01 00:00+00' + g * interval '37 hours',
  (ARRAY['click', 'tap', 'view', 'buy'])[1 + g % 4], jsonb_build_object('g', g)
  FROM generate_series(1, 2000) g;
CREATE INDEX events_payload ON events USING gin (payload jsonb_path_ops);

-- ------------------------------------------------------------------ constraints, exclusion, FKs
CREATE TABLE rooms (id int PRIMARY KEY, name text UNIQUE NOT NULL);
CREATE TABLE bookings (
  id serial PRIMARY KEY,
  room int REFERENCES rooms (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
  person bigint REFERENCES people (id) ON UPDATE SET NULL,
  during tstzrange NOT NULL,
  EXCLUDE USING gist (room WITH =, during WITH &&)
);
INSERT INTO rooms SELECT g, 'room ' || g FROM generate_series(1, 5) g;
INSERT INTO bookings (room, person, during)
  SELECT 1 + g % 5, (SELECT min(id) FROM people), tstzrange(timestamptz '2024-01-01 00:00+00' + g * interval '1 day', timestamptz '2024-01-01 00:00+00' + g * interval '1 day' + interval '3 hours')
  FROM generate_series(1, 50) g;
SELECT setval('bookings_id_seq', 1000);

CREATE UNLOGGED TABLE scratch (k text PRIMARY KEY, v ext.hstore);
INSERT INTO scratch VALUES ('one', 'a=>1'), ('two', NULL);

-- ------------------------------------------------------------------ views, matviews, rules
CREATE VIEW v_people AS SELECT id, full_name, mood FROM people WHERE mood <> 'sad';
CREATE VIEW v_happy WITH (security_barrier) AS SELECT * FROM v_people WHERE mood = 'happy'
  WITH LOCAL CHECK OPTION;
CREATE VIEW v_counts AS SELECT mood, count(*) AS n FROM v_happy GROUP BY mood;
CREATE MATERIALIZED VIEW mv_events AS
  SELECT kind, count(*) AS n, min(at) AS first FROM events GROUP BY kind WITH DATA;
CREATE UNIQUE INDEX mv_events_kind ON mv_events (kind);
CREATE MATERIALIZED VIEW mv_empty AS SELECT * FROM rooms WITH NO DATA;
COMMENT ON VIEW v_counts IS 'a view over a view over a view';
COMMENT ON MATERIALIZED VIEW mv_events IS 'refreshed on restore';
CREATE TABLE audit (at timestamptz DEFAULT now(), who text DEFAULT current_user, what text);
CREATE RULE rooms_log AS ON DELETE TO rooms DO ALSO INSERT INTO audit (what) VALUES ('deleted ' || OLD.name);

-- ------------------------------------------------------------------ functions, procedures, triggers
CREATE FUNCTION app.secure_lookup(p_id bigint) RETURNS text
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = app, pg_temp
  COST 50 PARALLEL SAFE
AS $$
BEGIN
  RETURN (SELECT secret FROM people WHERE id = p_id);
END
$$;
REVOKE EXECUTE ON FUNCTION app.secure_lookup(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION app.secure_lookup(bigint) TO corpus_app;
COMMENT ON FUNCTION app.secure_lookup(bigint) IS 'security definer';
CREATE FUNCTION app.add(a int, b int DEFAULT 1, VARIADIC rest int[] DEFAULT '{}')
  RETURNS int LANGUAGE sql IMMUTABLE STRICT
  RETURN a + b + coalesce((SELECT sum(x) FROM unnest(rest) x), 0)::int;
CREATE FUNCTION app.sets(n int, OUT i int, OUT sq int) RETURNS SETOF record
  LANGUAGE sql ROWS 7 AS 'SELECT g, g * g FROM generate_series(1, n) g';
CREATE PROCEDURE app.bump(INOUT total int, step int DEFAULT 1)
  LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN total := total + step; COMMIT; END $$;
CREATE AGGREGATE app.concat_all(text) (SFUNC = textcat, STYPE = text, INITCOND = '');
CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO audit (what) VALUES (TG_OP || ' ' || TG_TABLE_NAME);
  RETURN NEW;
END $$;
CREATE TRIGGER people_touch AFTER INSERT OR UPDATE OF first ON people
  FOR EACH ROW WHEN (NEW.first IS NOT NULL) EXECUTE FUNCTION app.touch();
CREATE TRIGGER rooms_stmt BEFORE TRUNCATE ON rooms FOR EACH STATEMENT EXECUTE FUNCTION app.touch();
CREATE CONSTRAINT TRIGGER bookings_check AFTER INSERT ON bookings DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION app.touch();
ALTER TABLE people DISABLE TRIGGER people_touch;
CREATE OPERATOR app.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = int4eq, COMMUTATOR = OPERATOR(app.===));
CREATE TEXT SEARCH CONFIGURATION app.simple_ts (COPY = pg_catalog.simple);
CREATE CAST (app.address AS text) WITH INOUT AS ASSIGNMENT;
RESET ROLE;
CREATE FUNCTION app.on_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN RAISE NOTICE 'ddl: %', tg_tag; END $$;
CREATE EVENT TRIGGER corpus_ddl ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
  EXECUTE FUNCTION app.on_ddl();
ALTER EVENT TRIGGER corpus_ddl DISABLE;
COMMENT ON EVENT TRIGGER corpus_ddl IS 'disabled on purpose';

-- ------------------------------------------------------------------ row level security
ALTER TABLE people ENABLE ROW LEVEL SECURITY;
ALTER TABLE people FORCE ROW LEVEL SECURITY;
CREATE POLICY people_own ON people FOR SELECT TO corpus_app USING (mood <> 'sad');
CREATE POLICY people_write ON people AS RESTRICTIVE FOR UPDATE TO corpus_app, corpus_ro
  USING (true) WITH CHECK (born > '1950-01-01');
ALTER TABLE bookings ENABLE ROW LEVEL SECURITY;
COMMENT ON POLICY people_own ON people IS 'no sad people';

-- ------------------------------------------------------------------ privileges
ALTER DEFAULT PRIVILEGES FOR ROLE corpus_owner IN SCHEMA app
  GRANT SELECT ON TABLES TO corpus_ro;
ALTER DEFAULT PRIVILEGES FOR ROLE corpus_owner IN SCHEMA app
  GRANT USAGE, SELECT ON SEQUENCES TO corpus_app;
ALTER DEFAULT PRIVILEGES FOR ROLE corpus_owner
  REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE corpus_app
  GRANT INSERT ON TABLES TO corpus_ro WITH GRANT OPTION;
ALTER DEFAULT PRIVILEGES FOR ROLE corpus_owner REVOKE USAGE ON TYPES FROM PUBLIC;
GRANT USAGE ON SCHEMA app TO corpus_app, corpus_ro;
GRANT CREATE ON SCHEMA app TO corpus_app;
GRANT SELECT, INSERT, UPDATE ON app.people TO corpus_app;
GRANT SELECT (id, first, mood), UPDATE (first) ON app.people TO corpus_ro;
GRANT REFERENCES (id) ON app.people TO corpus_app WITH GRANT OPTION;
GRANT SELECT ON ALL TABLES IN SCHEMA app TO corpus_ro;
REVOKE SELECT ON app.edge FROM corpus_ro;
GRANT TRUNCATE, TRIGGER ON app.rooms TO corpus_app;
GRANT USAGE ON SEQUENCE app.counter TO corpus_app;
GRANT SELECT ON SEQUENCE app.bookings_id_seq TO corpus_ro;
GRANT EXECUTE ON PROCEDURE app.bump(int, int) TO corpus_app;
GRANT USAGE ON DOMAIN app.positive TO corpus_ro;
GRANT ALL ON SCHEMA "Odd Schema ✓" TO corpus_app;
CREATE TABLE "Odd Schema ✓"."Odd ""table"" ✓" ("col ✓" text PRIMARY KEY, "Ü" int);
INSERT INTO "Odd Schema ✓"."Odd ""table"" ✓" VALUES ('ä', 1), ('😀', 2), ('', NULL);
GRANT SELECT ("Ü") ON "Odd Schema ✓"."Odd ""table"" ✓" TO corpus_ro;
ALTER TABLE "Odd Schema ✓"."Odd ""table"" ✓" OWNER TO corpus_app;
REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC;
GRANT USAGE ON LANGUAGE plpgsql TO corpus_owner;
SET ROLE corpus_owner;
CREATE TABLE app.after_defaults (id int);  -- picks up the default privileges
CREATE SEQUENCE app.after_defaults_seq;
RESET ROLE;

-- ------------------------------------------------------------------ large objects
SELECT lo_from_bytea(424242, convert_to(repeat('large object ✓ ', 20000), 'UTF8'));
SELECT lo_from_bytea(424243, '\x');
SELECT lo_from_bytea(424244, (SELECT b FROM app.edge WHERE id = 6));
ALTER LARGE OBJECT 424242 OWNER TO corpus_owner;
GRANT SELECT ON LARGE OBJECT 424242 TO corpus_ro;
GRANT SELECT, UPDATE ON LARGE OBJECT 424244 TO corpus_app;
COMMENT ON LARGE OBJECT 424243 IS 'an empty one';
CREATE TABLE app.documents (id int PRIMARY KEY, body oid);
INSERT INTO app.documents VALUES (1, 424242), (2, 424243);

-- ------------------------------------------------------------------ publication
CREATE PUBLICATION corpus_pub FOR TABLE app.rooms, app.bookings (id, room) WHERE (room > 1)
  WITH (publish = 'insert, update');

-- ------------------------------------------------------------------ inheritance, view extras
CREATE TABLE app.base_item (id int PRIMARY KEY, label text NOT NULL DEFAULT 'x');
CREATE TABLE app.special_item (label text NOT NULL DEFAULT 'special', extra int)
  INHERITS (app.base_item);
ALTER TABLE app.special_item ADD PRIMARY KEY (id);
INSERT INTO app.base_item VALUES (1, 'base');
INSERT INTO app.special_item VALUES (2, 'special', 7);
ALTER VIEW app.v_people ALTER COLUMN mood SET DEFAULT 'ok';
CREATE FUNCTION app.v_people_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO app.people (first, mood) VALUES (NEW.full_name, NEW.mood); RETURN NEW; END $$;
CREATE TRIGGER v_people_ins INSTEAD OF INSERT ON app.v_people
  FOR EACH ROW EXECUTE FUNCTION app.v_people_insert();
ALTER DOMAIN app.positive ADD CONSTRAINT below_a_billion CHECK (VALUE < 1e9) NOT VALID;
ALTER DATABASE corpus CONNECTION LIMIT 42;

-- ------------------------------------------------------------------ foreign data
CREATE EXTENSION postgres_fdw SCHEMA ext;
CREATE SERVER loopback FOREIGN DATA WRAPPER postgres_fdw
  OPTIONS (host '127.0.0.1', dbname 'corpus', fetch_size '500');
CREATE USER MAPPING FOR corpus_app SERVER loopback OPTIONS (user 'corpus_app', password 'fdw-secret');
CREATE USER MAPPING FOR PUBLIC SERVER loopback;
GRANT USAGE ON FOREIGN SERVER loopback TO corpus_app;
CREATE FOREIGN TABLE app.remote_rooms (id int OPTIONS (column_name 'id'), name text)
  SERVER loopback OPTIONS (schema_name 'app', table_name 'rooms');
COMMENT ON SERVER loopback IS 'talks to itself';

-- ------------------------------------------------------------------ a stale materialized view
-- Rows added after its last refresh: a restore refreshes it (pg_dump keeps no rows of
-- materialized views), so it then holds these rows too.
CREATE MATERIALIZED VIEW app.mv_stale AS SELECT id, name FROM app.rooms;
INSERT INTO app.rooms VALUES (6, 'after the refresh');

-- ------------------------------------------------------------------ a dropped column
CREATE TABLE app.reshaped (a int PRIMARY KEY, gone text, b text DEFAULT 'b', c int);
INSERT INTO app.reshaped VALUES (1, 'x', 'y', 2);
ALTER TABLE app.reshaped DROP COLUMN gone;

-- ------------------------------------------------------------------ hash partitions on an enum
-- An enum hashes by its oids, which differ on the restored server: pg_dump loads such a
-- table through its root, so rows may land in other partitions (see the README).
CREATE TABLE app.by_mood (id int, m app.mood) PARTITION BY HASH (m);
CREATE TABLE app.by_mood_0 PARTITION OF app.by_mood FOR VALUES WITH (MODULUS 3, REMAINDER 0);
CREATE TABLE app.by_mood_1 PARTITION OF app.by_mood FOR VALUES WITH (MODULUS 3, REMAINDER 1);
CREATE TABLE app.by_mood_2 PARTITION OF app.by_mood FOR VALUES WITH (MODULUS 3, REMAINDER 2);
INSERT INTO app.by_mood SELECT g, (ARRAY['sad', 'meh', 'ok', 'happy'])[1 + g % 4]::app.mood
  FROM generate_series(1, 40) g;
