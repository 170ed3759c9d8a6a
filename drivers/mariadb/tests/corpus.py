"""A fidelity corpus: every MariaDB 10.11 data type at its edges, every kind of object,
accounts with every attribute and grants at every level; and an exact description of a
server to compare before and after a round trip."""

from __future__ import annotations

import hashlib
from typing import Any

from mariadb_server import MariaDBServer

from conftest import SERVER_ACCOUNTS, _columns_sorted, _q, _s

#: Tables a logical backup cannot keep exactly, and says so when it is made.
FLOAT_TABLE = "corpus.floats"
EMOJI_MEMBER_TABLE = "corpus.emoji_members"
CHARSET_TABLE = "corpus.legacy_charsets"
NOT_EXACT = (FLOAT_TABLE, EMOJI_MEMBER_TABLE, CHARSET_TABLE)

ALL_BYTES = bytes(range(256)).hex()

CORPUS = f"""
SET time_zone = '+00:00';
SET sql_mode = 'STRICT_ALL_TABLES';
CREATE DATABASE corpus CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci COMMENT 'the corpus';
CREATE DATABASE `données ü` CHARACTER SET latin1;
USE corpus;

CREATE TABLE ints (
  id INT PRIMARY KEY,
  ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, su SMALLINT UNSIGNED,
  mi MEDIUMINT, mu MEDIUMINT UNSIGNED, i INT, iu INT UNSIGNED,
  bi BIGINT, bu BIGINT UNSIGNED, b1 BIT(1), b64 BIT(64), bo BOOLEAN
) COMMENT 'integer extremes';
INSERT INTO ints VALUES
  (1, -128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0,
   b'0', b'0', FALSE),
  (2, 127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295,
   9223372036854775807, 18446744073709551615, b'1', b'1111111111111111111111111111111111111111111111111111111111111111', TRUE),
  (3, 0, 1, -1, 1, 0, 1, 0, 1, -1, 1, NULL, b'1010', NULL);

CREATE TABLE decimals (
  id INT PRIMARY KEY, d65 DECIMAL(65,30), d0 DECIMAL(65,0), du DECIMAL(10,2) UNSIGNED,
  dbl DOUBLE, dblu DOUBLE UNSIGNED
);
INSERT INTO decimals VALUES
  (1, 99999999999999999999999999999999999.999999999999999999999999999999,
   99999999999999999999999999999999999999999999999999999999999999999, 99999999.99,
   1.7976931348623157e308, 0),
  (2, -99999999999999999999999999999999999.999999999999999999999999999999,
   -99999999999999999999999999999999999999999999999999999999999999999, 0,
   -1.7976931348623157e308, 5e-324),
  (3, 0.000000000000000000000000000001, 0, 0.01, 2.2250738585072014e-308,
   0.1),
  (4, 0, 0, 0, -5e-324, 1.2345678901234567e-100),
  (5, NULL, NULL, NULL, 3.141592653589793, 0.30000000000000004);

CREATE TABLE floats (id INT PRIMARY KEY, f FLOAT, fu FLOAT UNSIGNED);
INSERT INTO floats VALUES (1, 3.4028234e38, 1.17549435e-38), (2, -1.2345678, 0.1),
  (3, 16777217, 1);

CREATE TABLE times (
  id INT PRIMARY KEY, d DATE, dt DATETIME(6), dt0 DATETIME, ts TIMESTAMP(6) NULL,
  t TIME(6), y YEAR
);
INSERT INTO times VALUES
  (1, '1000-01-01', '1000-01-01 00:00:00.000000', '1000-01-01 00:00:00',
   '1970-01-01 00:00:01.000000', '-838:59:59.000000', 1901),
  (2, '9999-12-31', '9999-12-31 23:59:59.999999', '9999-12-31 23:59:59',
   '2038-01-19 03:14:07.999999', '838:59:59.000000', 2155),
  (3, '2024-02-29', '2024-02-29 12:34:56.000001', '2024-02-29 12:34:56',
   '2024-03-31 01:30:00.500000', '-00:00:00.000001', 2000),
  (4, NULL, NULL, NULL, NULL, NULL, NULL);

CREATE TABLE texts (
  id INT PRIMARY KEY,
  c CHAR(10) COLLATE utf8mb4_bin, v VARCHAR(200), tx TEXT, mt MEDIUMTEXT,
  l1 VARCHAR(300) CHARACTER SET latin1 COLLATE latin1_swedish_ci,
  l2 VARCHAR(20) CHARACTER SET latin2, bin BINARY(16), vb VARBINARY(300), bl BLOB, lb LONGBLOB
);
INSERT INTO texts VALUES
  (1, 'a', '🙂🚀 emoji 𝄞 and 中文', 'line\\nbreak\\ttab\\\\ backslash '' quote " dq',
   REPEAT('x', 70000), CONVERT(X'{ALL_BYTES[64:]}' USING latin1), X'A1B1E9F5',
   X'00FF00FF00FF00FF00FF00FF00FF00FF', X'{ALL_BYTES}', X'{ALL_BYTES}',
   X'{ALL_BYTES * 3}'),
  (2, '', '', '', '', '', '', X'', X'', X'', X''),
  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);

-- several codes for one character, or bytes with no Unicode character
CREATE TABLE legacy_charsets (id INT PRIMARY KEY, sj VARCHAR(20) CHARACTER SET sjis,
  b5 VARCHAR(20) CHARACTER SET big5, cz VARCHAR(20) CHARACTER SET cp1250,
  cp VARCHAR(20) CHARACTER SET cp932);
INSERT INTO legacy_charsets VALUES (1, X'8790FA40EEEF', X'A1C3F9F9', X'81838890', X'8790EEEF');

CREATE TABLE special (
  id INT PRIMARY KEY, j JSON, i6 INET6, i4 INET4, u UUID, g GEOMETRY, p POINT NOT NULL,
  e ENUM('a', 'b c', 'é'), s SET('x', 'y', 'z''q'), SPATIAL INDEX (p)
);
INSERT INTO special VALUES
  (1, '{{"a": [1, 2.5, "🙂", null, true], "b": {{"c": "\\\\u0000"}}}}', '::', '0.0.0.0',
   '00000000-0000-0000-0000-000000000000', ST_GeomFromText('POLYGON((0 0,1 0,1 1,0 0))'),
   ST_GeomFromText('POINT(1.5 -2.25)'), 'é', 'x,y'),
  (2, '[]', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', '255.255.255.255',
   'ffffffff-ffff-ffff-ffff-ffffffffffff', ST_GeomFromText('POINT(0 0)'),
   ST_GeomFromText('POINT(1e300 -1e-300)'), 'b c', ''),
  (3, NULL, '::ffff:192.0.2.1', NULL, NULL, NULL, ST_GeomFromText('POINT(0 0)'), NULL, NULL);

CREATE TABLE emoji_members (id INT PRIMARY KEY, e ENUM('plain', 'smile 🙂'),
  s SET('a', 'rocket 🚀')) COMMENT 'table 🙂';
INSERT INTO emoji_members VALUES (1, 'smile 🙂', 'a,rocket 🚀'), (2, 'plain', 'a');

CREATE TABLE generated (
  id INT PRIMARY KEY AUTO_INCREMENT, price DECIMAL(10,2) NOT NULL DEFAULT 1.50,
  qty INT NOT NULL CHECK (qty >= 0), total DECIMAL(12,2) AS (price * qty) STORED,
  label VARCHAR(50) AS (CONCAT('n° ', id, ' 🙂')) VIRTUAL,
  secret INT INVISIBLE DEFAULT 42, note VARCHAR(20) DEFAULT 'it''s' COMMENT 'col comment',
  CONSTRAINT positive_price CHECK (price > 0), KEY by_total (total) COMMENT 'idx comment'
) AUTO_INCREMENT = 1000;
INSERT INTO generated (price, qty, secret) VALUES (2.50, 4, 7), (9.99, 0, 8);

CREATE TABLE history (id INT PRIMARY KEY, v VARCHAR(20)) WITH SYSTEM VERSIONING;
INSERT INTO history VALUES (1, 'first'), (2, 'two');
UPDATE history SET v = 'second' WHERE id = 1;
DELETE FROM history WHERE id = 2;

CREATE TABLE history_parted (x INT) WITH SYSTEM VERSIONING
  PARTITION BY SYSTEM_TIME (PARTITION p_hist HISTORY, PARTITION p_cur CURRENT);
INSERT INTO history_parted VALUES (1);
UPDATE history_parted SET x = 2;
UPDATE history_parted SET x = 3;

CREATE TABLE periods (id INT, s DATE, e DATE, PERIOD FOR valid(s, e),
  PRIMARY KEY (id, valid WITHOUT OVERLAPS));
INSERT INTO periods VALUES (1, '2024-01-01', '2024-06-01'), (1, '2024-06-01', '2025-01-01');

CREATE TABLE parted (id INT NOT NULL, made DATE NOT NULL, PRIMARY KEY (id, made))
  PARTITION BY RANGE (YEAR(made)) (
    PARTITION p2023 VALUES LESS THAN (2024) COMMENT 'old',
    PARTITION p2024 VALUES LESS THAN (2025),
    PARTITION pmax VALUES LESS THAN MAXVALUE);
INSERT INTO parted VALUES (1, '2023-05-01'), (2, '2024-05-01'), (3, '2099-01-01');

CREATE TABLE aria_t (k INT PRIMARY KEY, v TEXT) ENGINE = Aria;
CREATE TABLE myisam_t (k INT PRIMARY KEY, v TEXT) ENGINE = MyISAM;
INSERT INTO aria_t VALUES (1, 'aria');
INSERT INTO myisam_t VALUES (1, 'myisam');

CREATE TABLE parent (id INT PRIMARY KEY) ENGINE = InnoDB;
CREATE TABLE child (id INT PRIMARY KEY, parent_id INT,
  FOREIGN KEY (parent_id) REFERENCES parent (id) ON DELETE CASCADE);
INSERT INTO parent VALUES (1), (2);
INSERT INTO child VALUES (10, 1), (20, 2);

CREATE SEQUENCE ids START WITH 100 INCREMENT BY 5 MINVALUE 1 MAXVALUE 100000 CYCLE;
SELECT NEXTVAL(ids), NEXTVAL(ids);

CREATE TABLE `données ü`.`tàble` (`clé` INT PRIMARY KEY, `valeur` VARCHAR(20));
INSERT INTO `données ü`.`tàble` VALUES (1, CONVERT(X'E9E8FF' USING latin1));

-- accounts and roles with every attribute
CREATE USER 'app'@'%' IDENTIFIED BY 'app-pw' WITH MAX_QUERIES_PER_HOUR 100
  MAX_UPDATES_PER_HOUR 50 MAX_CONNECTIONS_PER_HOUR 20 MAX_USER_CONNECTIONS 5
  MAX_STATEMENT_TIME 30 PASSWORD EXPIRE INTERVAL 90 DAY;
CREATE USER 'locked'@'10.%' IDENTIFIED BY 'locked-pw' ACCOUNT LOCK PASSWORD EXPIRE;
CREATE USER 'tls'@'%' IDENTIFIED BY 'tls-pw' REQUIRE SUBJECT '/CN=app' AND
  ISSUER '/CN=ca' AND CIPHER 'ECDHE-RSA-AES256-GCM-SHA384';
CREATE USER 'x509'@'%' REQUIRE X509;
CREATE USER 'ssl'@'localhost' IDENTIFIED VIA mysql_native_password
  USING PASSWORD('ssl-pw') REQUIRE SSL PASSWORD EXPIRE NEVER;
CREATE USER 'nopw'@'192.168.1.0/255.255.255.0';
CREATE USER 'proxied'@'%' IDENTIFIED BY 'proxied-pw';
CREATE ROLE reader;
CREATE ROLE writer;
CREATE ROLE admin_role;
GRANT SELECT ON corpus.* TO reader;
GRANT INSERT, UPDATE ON corpus.texts TO writer;
GRANT reader TO writer;
GRANT writer TO admin_role WITH ADMIN OPTION;
GRANT PROCESS, SHOW DATABASES ON *.* TO 'app'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE, EXECUTE, CREATE VIEW, SHOW VIEW, TRIGGER
  ON corpus.* TO 'app'@'%' WITH GRANT OPTION;
GRANT SELECT (id, v), UPDATE (v) ON corpus.texts TO 'locked'@'10.%';
GRANT SELECT ON `données ü`.`tàble` TO 'locked'@'10.%';
GRANT SELECT ON corpus.ints TO 'nopw'@'192.168.1.0/255.255.255.0';
GRANT PROXY ON 'proxied'@'%' TO 'app'@'%';
GRANT reader TO 'app'@'%';
GRANT writer TO 'tls'@'%';
GRANT admin_role TO 'tls'@'%';
SET DEFAULT ROLE reader FOR 'app'@'%';
SET DEFAULT ROLE admin_role FOR 'tls'@'%';

-- views over views, DEFINER and INVOKER, owned by an application account
CREATE DEFINER = 'app'@'%' SQL SECURITY DEFINER VIEW corpus.v_ints AS
  SELECT id, bi, bu FROM corpus.ints;
CREATE DEFINER = 'app'@'%' SQL SECURITY DEFINER VIEW corpus.v_over AS
  SELECT id, bu FROM corpus.v_ints WHERE id > 1 WITH CHECK OPTION;
CREATE DEFINER = 'app'@'%' SQL SECURITY INVOKER VIEW corpus.v_invoker AS
  SELECT o.id, 'é🙂' AS lit FROM corpus.v_over o;
CREATE VIEW corpus.v_legacy AS SELECT f.f, l.sj, e.e FROM corpus.floats f
  JOIN corpus.legacy_charsets l ON l.id = f.id JOIN corpus.emoji_members e ON e.id = f.id;
CREATE ALGORITHM = TEMPTABLE VIEW corpus.v_temptable AS SELECT COUNT(*) AS n FROM corpus.texts;
GRANT SELECT ON corpus.v_over TO 'nopw'@'192.168.1.0/255.255.255.0';

DELIMITER ;;
CREATE DEFINER = 'app'@'%' PROCEDURE corpus.add_qty(IN n INT)
  SQL SECURITY DEFINER COMMENT 'adds ''n'' rows'
BEGIN
  INSERT INTO corpus.generated (price, qty) VALUES (1.00, n);
END;;
CREATE FUNCTION corpus.invoker_fn(x INT) RETURNS INT DETERMINISTIC SQL SECURITY INVOKER
  RETURN x * 2;;
SET sql_mode = 'NO_BACKSLASH_ESCAPES';;
CREATE PROCEDURE corpus.nbe_proc() COMMENT 'C:\\dir\\file and ''quote'''
  SELECT 'C:\\no\\escapes' AS path;;
CREATE PROCEDURE corpus.`nbe hostile
-- Current Database: x`() COMMENT 'x\''; DROP DATABASE corpus; --
-- Final view structure for view `v`
' SELECT 1;;
CREATE EVENT corpus.nbe_event ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00'
  DISABLE COMMENT 'back\\slash' DO SELECT 'a\\b';;
SET sql_mode = 'ANSI_QUOTES,PIPES_AS_CONCAT';;
CREATE FUNCTION corpus.ansi_fn() RETURNS VARCHAR(20) DETERMINISTIC RETURN 'a' || 'b';;
SET sql_mode = 'ORACLE';;
CREATE PROCEDURE corpus.oracle_proc(a IN INT) AS BEGIN NULL; END;;
SET sql_mode = 'STRICT_ALL_TABLES';;
CREATE TRIGGER corpus.gen_before BEFORE INSERT ON corpus.generated FOR EACH ROW
  SET NEW.note = CONCAT('t:', COALESCE(NEW.note, ''));;
CREATE TRIGGER corpus.gen_before_2 BEFORE INSERT ON corpus.generated FOR EACH ROW
  FOLLOWS gen_before SET NEW.note = CONCAT(NEW.note, '2');;
CREATE DEFINER = 'app'@'%' EVENT corpus.cleanup ON SCHEDULE AT '2035-01-01 00:00:00'
  ON COMPLETION PRESERVE DISABLE DO DELETE FROM corpus.child WHERE id < 0;;
DELIMITER ;
GRANT EXECUTE ON PROCEDURE corpus.add_qty TO 'locked'@'10.%';
GRANT EXECUTE ON FUNCTION corpus.invoker_fn TO reader WITH GRANT OPTION;
"""

#: The copy already holds objects and accounts of the same names, all different.
CONFLICTS = """
CREATE DATABASE corpus;
CREATE TABLE corpus.ints (id INT PRIMARY KEY, other TEXT);
INSERT INTO corpus.ints VALUES (1, 'conflict');
CREATE TABLE corpus.only_on_target (x INT);
CREATE VIEW corpus.v_ints AS SELECT 1 AS id;
CREATE USER 'app'@'%' IDENTIFIED BY 'other-pw';
GRANT ALL ON *.* TO 'app'@'%';
CREATE ROLE reader;
GRANT DELETE ON corpus.* TO reader;
CREATE USER 'bystander'@'%' IDENTIFIED BY 'by-pw';
GRANT reader TO 'bystander'@'%';
"""


def describe(server: MariaDBServer, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything a round trip must keep: rows (also history), definitions, accounts."""
    out: dict[str, Any] = {}
    dbs = [
        r[0]
        for r in server.rows("SHOW DATABASES")
        if r[0] not in ("mysql", "information_schema", "performance_schema", "sys")
    ]
    out["databases"] = [server.rows(f"SHOW CREATE DATABASE {_q(d)}") for d in sorted(dbs)]
    names = ", ".join(_s(d) for d in dbs) or "''"
    tables = server.rows(
        "SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
        f"WHERE TABLE_SCHEMA IN ({names}) ORDER BY 1, 2"
    )
    for db, name, kind in tables:
        if f"{db}.{name}" in skip:
            continue
        ref = f"{_q(db)}.{_q(name)}"
        key = f"{db}.{name}"
        if kind == "VIEW":
            out[key] = server.rows(f"SHOW CREATE VIEW {ref}")
            continue
        if kind == "SEQUENCE":
            out[key] = [
                server.rows(f"SHOW CREATE SEQUENCE {ref}"),
                server.rows(f"SELECT * FROM {ref}"),
            ]
            continue
        create = server.rows(f"SHOW CREATE TABLE {ref}")
        # Every column's bytes (invisible ones too), history included.
        columns = [
            r[0]
            for r in server.rows(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
                f"{_s(db)} AND TABLE_NAME = {_s(name)} ORDER BY ORDINAL_POSITION"
            )
        ]
        select = ", ".join(f"HEX({_q(c)})" for c in columns)
        history = kind == "SYSTEM VERSIONED"
        if history:
            select += ", ROW_START, ROW_END"
        rows = server.sql(
            f"SET time_zone = '+00:00'; SELECT {select} FROM {ref}"
            + (" FOR SYSTEM_TIME ALL" if history else "")
        ).stdout
        # In key order; whole rows, so that versions of one key are ordered too.
        rows = "\n".join(sorted(rows.splitlines()))
        checksum = server.rows(f"CHECKSUM TABLE {ref} EXTENDED")[0][1]
        out[key] = [create, hashlib.sha256(rows.encode()).hexdigest(), checksum]
    out["routines"] = server.rows(
        "SELECT ROUTINE_SCHEMA, ROUTINE_NAME, ROUTINE_TYPE, SQL_MODE, SECURITY_TYPE, DEFINER, "
        "ROUTINE_COMMENT, HEX(ROUTINE_DEFINITION), DTD_IDENTIFIER, IS_DETERMINISTIC, "
        "CHARACTER_SET_CLIENT, COLLATION_CONNECTION, DATABASE_COLLATION FROM "
        f"information_schema.ROUTINES WHERE ROUTINE_SCHEMA IN ({names}) ORDER BY 1, 2, 3"
    )
    out["triggers"] = server.rows(
        "SELECT TRIGGER_SCHEMA, TRIGGER_NAME, ACTION_ORDER, EVENT_MANIPULATION, ACTION_TIMING, "
        "HEX(ACTION_STATEMENT), SQL_MODE, DEFINER, CHARACTER_SET_CLIENT FROM "
        f"information_schema.TRIGGERS WHERE TRIGGER_SCHEMA IN ({names}) ORDER BY 1, 2"
    )
    out["events"] = server.rows(
        "SELECT EVENT_SCHEMA, EVENT_NAME, DEFINER, HEX(EVENT_DEFINITION), EVENT_TYPE, "
        "EXECUTE_AT, INTERVAL_VALUE, INTERVAL_FIELD, SQL_MODE, STARTS, ENDS, STATUS, "
        "ON_COMPLETION, EVENT_COMMENT, TIME_ZONE FROM information_schema.EVENTS "
        f"WHERE EVENT_SCHEMA IN ({names}) ORDER BY 1, 2"
    )
    accounts = [
        (u, h, r)
        for u, h, r in server.rows("SELECT User, Host, is_role FROM mysql.user ORDER BY 1, 2")
        if u not in SERVER_ACCOUNTS and not u.startswith("cozybackup_import")
    ]
    out["accounts"] = accounts
    for u, h, r in accounts:
        who = _s(u) if r == "Y" else f"{_s(u)}@{_s(h)}"
        grants = sorted(_columns_sorted(g[0]) for g in server.rows(f"SHOW GRANTS FOR {who}"))
        create = [] if r == "Y" else server.rows(f"SHOW CREATE USER {who}")
        out[f"account {u}@{h}"] = [create, grants]
    out["proxies"] = server.rows(
        "SELECT Host, User, Proxied_host, Proxied_user, With_grant FROM mysql.proxies_priv "
        "ORDER BY 1, 2, 3, 4"
    )
    return out
