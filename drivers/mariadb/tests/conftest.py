"""Fixtures: real MariaDB servers (one per application), test data, checksums."""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cozybackup_mariadb import MariaDBDriver

from cozybackup_core.testing import driver_class_yaml

sys.path.insert(0, str(Path(__file__).parent))

from mariadb_server import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    MariaDBServer,
    chown_tree,
    make_template,
    private_dir,
)

SYSTEM = ("mysql", "information_schema", "performance_schema", "sys")
SERVER_ACCOUNTS = ("root", "mariadb.sys", "mysql", "", ADMIN_USER)
DATABASES = ("shop", "crm", "odd `name` db")
#: (shell) tools the tests and the driver need.
TOOLS = ("mariadbd", "mariadb", "mariadb-dump", "mariabackup", "mbstream", "mariadb-install-db")


def class_yaml(name: str, parameters: str) -> str:
    """A BackupClass ``name`` binding MariaDB to the driver's strategy ``name``."""
    return driver_class_yaml(MariaDBDriver, name, parameters)


if missing := [t for t in TOOLS if shutil.which(t) is None]:  # pragma: no cover
    pytest.exit(
        f"MariaDB tools missing: {missing}; apt-get install mariadb-server mariadb-client "
        "mariadb-backup",
        returncode=4,
    )


@pytest.fixture(scope="session")
def template_datadir() -> Iterator[Path]:
    base = private_dir("cozy-mariadb-template-")
    try:
        yield make_template(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


ServerFactory = Callable[..., MariaDBServer]


@pytest.fixture
def mariadb(template_datadir: Path) -> Iterator[ServerFactory]:
    """``mariadb()`` starts a fresh server (``started=False``: datadir only, stopped)."""
    servers: list[MariaDBServer] = []

    def make(*, started: bool = True, empty: bool = False) -> MariaDBServer:
        server = MariaDBServer(private_dir("cozy-mariadb-"))
        servers.append(server)
        if not empty:
            shutil.copytree(template_datadir, server.datadir, symlinks=True)
            chown_tree(server.datadir)
        if started:
            server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()
        for server in servers:
            assert not server.running(), f"server in {server.base} is still running"
            shutil.rmtree(server.base, ignore_errors=True)


# ---------------------------------------------------------------------------- data


def connection(server: MariaDBServer, *, control: bool = False, **extra: Any) -> dict[str, Any]:
    conn: dict[str, Any] = {"host": "127.0.0.1", "port": server.port}
    if control:
        conn.update(
            datadir=str(server.datadir),
            stopCommand=server.control("stop"),
            startCommand=server.control("start"),
        )
    conn.update(extra)
    return conn


def credentials(password: str = ADMIN_PASSWORD) -> dict[str, str]:
    return {"username": ADMIN_USER, "password": password}


def _s(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\x00", "\\0") + "'"


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


TEXTS = [
    "plain ascii",
    "Zoë Ångström",
    "日本語のテキスト",
    "emoji 🙂🚀",
    "it's 'quoted'",
    'a "double" quote',
    "line one\nline two;\n-- not a comment",
    "back\\slash",
    "tab\tseparated",
    "DELIMITER ;;",
    "",
]


def write_data(server: MariaDBServer, seed: int) -> None:
    """Replace the user databases and accounts with a dataset determined by ``seed``."""
    rng = random.Random(seed)
    shop, crm, odd = (_q(d) for d in DATABASES)
    out = [f"DROP DATABASE IF EXISTS {_q(d)};" for d in DATABASES]
    out += [
        f"CREATE DATABASE {shop} CHARACTER SET utf8mb4;",
        f"USE {shop};",
        "CREATE TABLE customers (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(100) NOT NULL,"
        " email VARCHAR(200) UNIQUE, note TEXT, balance DECIMAL(12,2), avatar BLOB,"
        " created DATETIME(6), meta JSON) ENGINE=InnoDB;",
        "CREATE TABLE orders (id BIGINT PRIMARY KEY AUTO_INCREMENT, customer_id INT NOT NULL,"
        " total DECIMAL(12,2) NOT NULL, status ENUM('new','paid','shipped'),"
        " placed_at TIMESTAMP NULL, FOREIGN KEY (customer_id) REFERENCES customers(id),"
        " INDEX by_status (status, placed_at)) ENGINE=InnoDB;",
        "CREATE TABLE audit (id INT PRIMARY KEY AUTO_INCREMENT, event VARCHAR(200)) ENGINE=InnoDB;",
        "CREATE TABLE legacy (k INT PRIMARY KEY, v VARCHAR(50)) ENGINE=Aria;",
    ]
    n = 300 + rng.randrange(100)
    rows = []
    for i in range(1, n + 1):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        rows.append(
            f"({i}, {_s(rng.choice(TEXTS) + f' #{i}')}, {_s(f'c{i}.{seed}@example.com')}, "
            f"{_s(rng.choice(TEXTS)) if rng.random() < 0.8 else 'NULL'}, "
            f"{rng.randrange(-(10**6), 10**6) / 100:.2f}, X'{blob.hex()}', "
            f"'2024-0{rng.randrange(1, 10)}-1{rng.randrange(10)} 12:34:56.{rng.randrange(10**6):06d}', "
            f"{_s(json.dumps({'seed': seed, 'tags': rng.sample(TEXTS, 2)}))})"
        )
    out.append("INSERT INTO customers VALUES " + ",\n".join(rows) + ";")
    orders = [
        f"({rng.randrange(1, n + 1)}, {rng.randrange(100, 10**6) / 100:.2f}, "
        f"{_s(rng.choice(['new', 'paid', 'shipped']))}, '2024-05-0{rng.randrange(1, 10)} 10:00:00')"
        for _ in range(500 + seed)
    ]
    # The trigger exists before these rows: audit gets one row per order.
    out += [
        "CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW "
        f"INSERT INTO audit (event) VALUES (CONCAT('order ', NEW.id, ' seed {seed}'));",
        "INSERT INTO orders (customer_id, total, status, placed_at) VALUES "
        + ",\n".join(orders)
        + ";",
        "INSERT INTO legacy VALUES " + ",".join(f"({i}, 'v{i * seed}')" for i in range(50)) + ";",
        "CREATE VIEW customer_totals AS SELECT c.id, c.name, COUNT(o.id) AS orders,"
        " COALESCE(SUM(o.total), 0) AS spent FROM customers c"
        " LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id, c.name;",
        "DELIMITER ;;",
        "CREATE PROCEDURE add_order(IN cust INT, IN amount DECIMAL(12,2))"
        " BEGIN INSERT INTO orders (customer_id, total, status) VALUES (cust, amount, 'new');"
        " END;;",
        f"CREATE FUNCTION discounted(x DECIMAL(12,2)) RETURNS DECIMAL(12,2) DETERMINISTIC"
        f" RETURN x * 0.{seed % 10}5;;",
        "DELIMITER ;",
        "CREATE EVENT nightly_cleanup ON SCHEDULE EVERY 1 DAY DISABLE"
        " DO DELETE FROM audit WHERE id < 0;",
        f"CREATE DATABASE {crm} CHARACTER SET utf8mb4;",
        f"CREATE TABLE {crm}.contacts (id INT PRIMARY KEY, name VARCHAR(100), phone VARCHAR(30),"
        " bio MEDIUMTEXT) ENGINE=InnoDB;",
        f"INSERT INTO {crm}.contacts VALUES "
        + ",".join(
            f"({i}, {_s(rng.choice(TEXTS))}, '+1-555-{rng.randrange(10**4):04d}', "
            f"{_s(' '.join(rng.choices(TEXTS, k=20)))})"
            for i in range(200)
        )
        + ";",
        f"CREATE DATABASE {odd};",
        f"CREATE TABLE {odd}.{_q('we`ird table')} ({_q('select')} INT, {_q('semi;colon')} TEXT);",
        f"INSERT INTO {odd}.{_q('we`ird table')} VALUES (1, 'a;b'), ({seed}, NULL);",
        # Accounts: fixed names (an in-place restore replaces them), seed-dependent rights.
        f"CREATE OR REPLACE USER 'app'@'%' IDENTIFIED BY 'app-pw-{seed}';",
        "GRANT SELECT, INSERT, EXECUTE ON `shop`.* TO 'app'@'%';",
        *(["GRANT UPDATE ON `shop`.`orders` TO 'app'@'%';"] if seed % 2 else []),
        "CREATE OR REPLACE ROLE reporting;",
        f"GRANT SELECT ON {crm}.* TO reporting;",
        "GRANT reporting TO 'app'@'%';",
        "SET DEFAULT ROLE reporting FOR 'app'@'%';",
        f"CREATE OR REPLACE USER 'auditor'@'10.0.0.%' IDENTIFIED BY 'aud-{seed}'"
        f" WITH MAX_USER_CONNECTIONS {seed + 1};",
        f"GRANT SELECT ON {odd}.* TO 'auditor'@'10.0.0.%';",
    ]
    server.sql("\n".join(out))


def user_databases(server: MariaDBServer) -> list[str]:
    return sorted(r[0] for r in server.rows("SHOW DATABASES") if r[0] not in SYSTEM)


def table_checksums(server: MariaDBServer) -> dict[str, str]:
    """``CHECKSUM TABLE ... EXTENDED`` of every base table of every user database."""
    tables = server.rows(
        "SELECT table_schema, table_name FROM information_schema.TABLES WHERE table_type = "
        "'BASE TABLE' AND table_schema NOT IN ('mysql', 'information_schema', "
        "'performance_schema', 'sys') ORDER BY 1, 2"
    )
    if not tables:
        return {}
    script = "\n".join(f"CHECKSUM TABLE {_q(db)}.{_q(t)} EXTENDED;" for db, t in tables)
    rows = server.rows(script)
    return {f"{db}.{t}": row[1] for (db, t), row in zip(tables, rows, strict=True)}


def objects(server: MariaDBServer) -> dict[str, Any]:
    """Everything but the rows: schema, views, triggers, routines, events, accounts."""
    dbs = user_databases(server)
    out: dict[str, Any] = {"databases": dbs}
    names = "'" + "','".join(d.replace("'", "\\'") for d in dbs) + "'" if dbs else "''"
    out["views"] = server.rows(
        "SELECT table_schema, table_name, view_definition, definer FROM "
        f"information_schema.VIEWS WHERE table_schema IN ({names}) ORDER BY 1, 2"
    )
    out["triggers"] = server.rows(
        "SELECT trigger_schema, trigger_name, event_manipulation, action_timing, "
        "action_statement, definer FROM information_schema.TRIGGERS "
        f"WHERE trigger_schema IN ({names}) ORDER BY 1, 2"
    )
    out["routines"] = server.rows(
        "SELECT routine_schema, routine_name, routine_type, routine_definition, definer "
        f"FROM information_schema.ROUTINES WHERE routine_schema IN ({names}) ORDER BY 1, 2"
    )
    out["events"] = server.rows(
        "SELECT event_schema, event_name, event_definition, status FROM "
        f"information_schema.EVENTS WHERE event_schema IN ({names}) ORDER BY 1, 2"
    )
    out["tables"] = [
        server.rows(f"SHOW CREATE TABLE {_q(db)}.{_q(t)}")
        for db, t in server.rows(
            "SELECT table_schema, table_name FROM information_schema.TABLES WHERE "
            f"table_type = 'BASE TABLE' AND table_schema IN ({names}) ORDER BY 1, 2"
        )
    ]
    accounts = [
        (u, h, r)
        for u, h, r in server.rows("SELECT User, Host, is_role FROM mysql.user ORDER BY User, Host")
        if u not in SERVER_ACCOUNTS and not u.startswith("cozybackup_import")
    ]
    out["accounts"] = accounts
    grants = []
    for u, h, r in accounts:
        who = "PUBLIC" if u == "PUBLIC" else (_s(u) if r == "Y" else f"{_s(u)}@{_s(h)}")
        if r != "Y":
            grants += server.rows(f"SHOW CREATE USER {who}")
        grants += sorted(
            [_columns_sorted(g) for g in row] for row in server.rows(f"SHOW GRANTS FOR {who}")
        )
    out["grants"] = grants
    return out


def _columns_sorted(grant: str) -> str:
    """A column grant with its columns in name order (the server lists them in any order)."""
    return re.sub(
        r"\(((?:`[^`]*`(?:, )?)+)\)",
        lambda m: "(" + ", ".join(sorted(re.findall(r"`[^`]*`", m.group(1)))) + ")",
        grant,
    )


def checksum(server: MariaDBServer) -> str:
    doc = {"tables": table_checksums(server), "objects": objects(server)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
