"""Helpers for tests, demos and benchmarks: throwaway servers and a realistic dataset.

Nothing here is used by backups or restores; :class:`PostgresServer` (from ``_server``)
is also what restore drills run on.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any

from ._server import (
    PostgresServer,
    _ident,
    conninfo_dbname,
    find_bindir,
    free_port,
)

__all__ = [
    "PostgresServer",
    "ServerPool",
    "conninfo_dbname",
    "find_bindir",
    "free_port",
    "roles_catalog",
    "running",
    "write_dataset",
]


def write_dataset(server: PostgresServer, seed: int, *, rows: int = 2000) -> None:
    """Replace the server's contents with a realistic dataset determined by ``seed``.

    Several databases (one with a name no stream may carry), schemas, an extension
    (pgcrypto), large objects, roles with passwords, memberships and grants, views,
    sequences, foreign keys, partitions, jsonb/bytea/array columns.
    """
    existing = [d for d in server.databases() if d != "postgres"]
    drops = "".join(f"DROP DATABASE {_ident(d)} WITH (FORCE);\n" for d in existing)
    server.psql(  # the dataset is fixed SQL with integers formatted in: no injection
        drops  # noqa: S608
        + """
DROP TABLE IF EXISTS public.notes;
DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT rolname FROM pg_roles WHERE rolname IN ('app_owner', 'reader', 'analyst', 'Mixed Rôle') LOOP
    EXECUTE format('DROP OWNED BY %I', r.rolname);
    EXECUTE format('DROP ROLE %I', r.rolname);
  END LOOP;
END $$;
"""
    )
    server.psql(
        f"""
CREATE ROLE app_owner LOGIN PASSWORD 'owner-pw-{seed}';
CREATE ROLE reader NOLOGIN;
CREATE ROLE analyst LOGIN PASSWORD 'analyst-pw-{seed}' CONNECTION LIMIT {5 + seed % 3} IN ROLE reader;
CREATE ROLE "Mixed Rôle" NOLOGIN;
CREATE DATABASE shop OWNER app_owner;
CREATE DATABASE "Analytics Ü 'q' a=b" OWNER app_owner;
CREATE TABLE public.notes (id int PRIMARY KEY, body text);
INSERT INTO public.notes SELECT g, 'note ' || g || ' of seed {seed}' FROM generate_series(1, {10 + seed}) g;
"""  # noqa: S608
    )
    server.psql(
        f"""
SET ROLE app_owner;
CREATE SCHEMA sales;
CREATE SCHEMA inventory;
CREATE TABLE inventory.products (
  id serial PRIMARY KEY, sku text UNIQUE NOT NULL, name text NOT NULL,
  price numeric(10, 2) NOT NULL, tags text[], attrs jsonb, photo bytea);
CREATE TABLE sales.customers (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL UNIQUE,
  name text, joined timestamptz NOT NULL, secret bytea);
CREATE TABLE sales.orders (
  id bigserial, customer_id bigint NOT NULL REFERENCES sales.customers(id),
  product_id int NOT NULL REFERENCES inventory.products(id), qty int CHECK (qty > 0),
  placed date NOT NULL, PRIMARY KEY (id, placed)) PARTITION BY RANGE (placed);
CREATE TABLE sales.orders_2023 PARTITION OF sales.orders FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE sales.orders_2024 PARTITION OF sales.orders FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE INDEX ON sales.orders (customer_id);
CREATE TABLE sales."Audit Log" (at timestamptz DEFAULT now(), event text);
CREATE VIEW sales.order_totals AS
  SELECT o.customer_id, sum(o.qty * p.price) AS total
  FROM sales.orders o JOIN inventory.products p ON p.id = o.product_id GROUP BY 1;
INSERT INTO inventory.products (sku, name, price, tags, attrs, photo)
  SELECT 'sku-' || g, 'product ' || md5((g * {seed})::text), (g % 97) + 0.99,
         ARRAY['t' || g % 5, 'seed{seed}'], jsonb_build_object('g', g, 'seed', {seed}),
         decode(md5(g::text || '{seed}'), 'hex')
  FROM generate_series(1, 200) g;
INSERT INTO sales.customers (email, name, joined, secret)
  SELECT 'c' || g || '@example.com', 'Customer ' || g || ' Zoë ✓',
         timestamptz '2023-01-01 00:00+00' + (g * {seed + 1}) * interval '1 hour',
         decode(md5(g::text), 'hex')
  FROM generate_series(1, {rows}) g;
INSERT INTO sales.orders (customer_id, product_id, qty, placed)
  SELECT 1 + (g * 7 + {seed}) % {rows}, 1 + (g * 13) % 200, 1 + g % 9,
         date '2023-01-01' + (g * {seed + 3}) % 700
  FROM generate_series(1, {rows * 2}) g;
INSERT INTO sales."Audit Log" (at, event) VALUES ('2024-05-01 12:00+00', 'seed {seed}');
RESET ROLE;
CREATE EXTENSION pgcrypto SCHEMA public;
UPDATE sales.customers SET secret = public.digest(email || '{seed}', 'sha256') WHERE id % 10 = 0;
SELECT lo_from_bytea({100000 + seed * 10}, convert_to(repeat('large object {seed} ', 5000), 'UTF8'));
SELECT lo_from_bytea({100001 + seed * 10}, decode(md5('{seed}'), 'hex'));
GRANT USAGE ON SCHEMA sales TO reader;
GRANT SELECT ON ALL TABLES IN SCHEMA sales TO reader;
GRANT INSERT ON sales."Audit Log" TO "Mixed Rôle";
""",  # noqa: S608
        "shop",
    )
    server.psql(
        rf"""
CREATE SCHEMA "Reporting";
CREATE TABLE "Reporting".daily (day date PRIMARY KEY, visits int, note text);
INSERT INTO "Reporting".daily SELECT date '2024-01-01' + g, g * {seed + 1}, 'line1
line2; ''q'' "dq" \ {seed}'
  FROM generate_series(0, 99) g;
ALTER TABLE "Reporting".daily OWNER TO app_owner;
""",  # noqa: S608
        "Analytics Ü 'q' a=b",
    )


def roles_catalog(server: PostgresServer, *, skip: Sequence[str] = ()) -> dict[str, Any]:
    """pg_authid (every column but the oid, which differs between servers), comments,
    pg_auth_members and pg_db_role_setting (role None: ``ALTER ROLE ALL``, or
    ``ALTER DATABASE`` with a database), by name; without built-in roles and the
    connecting superuser (and ``skip``)."""
    out = server.psql(
        """SET TimeZone = 'UTC';
SELECT json_build_object(
 'authid', (SELECT json_agg(to_jsonb(a) - 'oid' || jsonb_build_object('comment',
             shobj_description(a.oid, 'pg_authid')) ORDER BY a.rolname)
            FROM pg_authid a WHERE a.rolname !~ '^pg_' AND a.rolname <> current_user),
 'members', (SELECT json_agg(json_build_object('role', r.rolname, 'member', m.rolname,
             'grantor', g.rolname, 'admin', am.admin_option) ORDER BY r.rolname, m.rolname)
            FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.roleid
            JOIN pg_roles m ON m.oid = am.member LEFT JOIN pg_roles g ON g.oid = am.grantor
            WHERE m.rolname !~ '^pg_' AND m.rolname <> current_user),
 'settings', (SELECT json_agg(json_build_object('db', d.datname, 'role', r.rolname,
             'config', s.setconfig) ORDER BY d.datname NULLS FIRST, r.rolname NULLS FIRST)
            FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole
            LEFT JOIN pg_database d ON d.oid = s.setdatabase
            WHERE r.rolname IS DISTINCT FROM current_user))"""
    )
    data: dict[str, Any] = json.loads(out)
    for key in ("authid", "members", "settings"):
        data[key] = [
            row
            for row in data[key] or []
            if not {row.get("rolname"), row.get("role"), row.get("member")} & set(skip)
        ]
    return data


class ServerPool:
    """Starts servers on demand; :meth:`close` destroys every one of them."""

    def __init__(self, **defaults: object) -> None:
        self.defaults = defaults
        self.servers: list[PostgresServer] = []

    def start(self, **kwargs: object) -> PostgresServer:
        server = PostgresServer.start(**{**self.defaults, **kwargs})  # type: ignore[arg-type]
        self.servers.append(server)
        return server

    def close(self) -> None:
        errors: list[BaseException] = []
        for server in self.servers:
            try:
                server.destroy()
            except Exception as exc:  # noqa: BLE001 - re-raised after the others stopped
                errors.append(exc)
        self.servers.clear()
        if errors:
            raise errors[0]


@contextlib.contextmanager
def running(**kwargs: object) -> Iterator[PostgresServer]:
    server = PostgresServer.start(**kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.destroy()
