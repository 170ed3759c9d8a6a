"""The driver's parts: parameters, connection settings, CREATE heads, error detection."""

from __future__ import annotations

import re
import socket
import threading
from typing import Any

import pytest
from cozybackup_clickhouse import (
    ApplicationMisconfigured,
    ClickHouseDriver,
    ClickHouseParameters,
    Mode,
)
from cozybackup_clickhouse._catalog import Column, dump_columns, kind_of
from cozybackup_clickhouse._client import (
    ChdbTarget,
    HttpTarget,
    ServerError,
    mask,
    parse_tsv,
    target_of,
)
from cozybackup_clickhouse._http import HttpClient, trailing_error
from cozybackup_clickhouse._sql import ident, parse_head, rename_in_create
from cozybackup_clickhouse.testing import rows

from cozybackup_core import (
    ApplicationRef,
    AppLocation,
    Deadline,
    DriverParametersError,
    PluginHost,
)
from cozybackup_core.testing import refused_parameters, validate_parameters

from conftest import ServerFactory

# ---------------------------------------------------------------------------- parameters


def _validate(parameters: str) -> None:
    validate_parameters(ClickHouseDriver, parameters)


@pytest.mark.parametrize(
    "parameters",
    ["{}", "{mode: logical}", "{mode: native}", "{databases: [a, 'odd db']}",
     "{timeoutSeconds: 3600}", "{mode: native, databases: [shop], timeoutSeconds: null}"],
)  # fmt: skip
def test_good_parameters(parameters: str) -> None:
    _validate(parameters)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{mode: snapshot}", "parameters.mode: 'snapshot' is not a mode; use \"logical\" or \"native\""),
        ("{mode: 7}", "parameters.mode"),
        ("{databases: [shop, shop]}", "parameters.databases[1]: 'shop' is listed twice"),
        ("{databases: [system]}", "parameters.databases[0]: 'system' is the server's own database"),
        ("{databases: [information_schema, INFORMATION_SCHEMA]}", "parameters.databases[1]: 'INFORMATION_SCHEMA'"),
        ("{databases: ['']}", "parameters.databases[0]: must not be empty"),
        ("{databases: ['a/b']}", "parameters.databases[0]: 'a/b' is not a valid ClickHouse database name"),
        ("{databases: [shop, 7]}", "parameters.databases[1]: expected a string, got int"),
        ("{timeoutSeconds: 0}", "parameters.timeoutSeconds: must be at least 1, got 0"),
    ],
)  # fmt: skip
def test_bad_parameters_are_refused_with_the_field_path(parameters: str, message: str) -> None:
    assert message in str(refused_parameters(ClickHouseDriver, parameters))


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(DriverParametersError) as err:
        _validate("{databases: [system, a, a]}")
    paths = [p for p, _ in err.value.problems]
    assert paths == [
        "spec.strategies[0].parameters.databases[0]",
        "spec.strategies[0].parameters.databases[2]",
    ]


def test_parameters_default_to_a_logical_backup_of_everything() -> None:
    p = ClickHouseParameters()
    assert (p.mode, p.databases, p.timeout_seconds) == (Mode.LOGICAL, (), None)


def test_the_entry_point_registers_the_driver() -> None:
    host = PluginHost.load()
    assert not [b for b in host.broken if b.name == "clickhouse"]
    driver = host.registry.for_strategy("ClickHouse")
    assert type(driver).__name__ == "ClickHouseDriver"
    assert str(driver.kinds[0]) == "apps.cozystack.io/ClickHouse"


# ---------------------------------------------------------------------------- connection keys

REF = ApplicationRef(kind="ClickHouse", name="a")


def _loc(connection: dict[str, Any], credentials: dict[str, str] | None = None) -> AppLocation:
    return AppLocation(
        ref=REF, namespace="ns", connection=connection, credentials=credentials or {}
    )


def test_targets() -> None:
    t = target_of(_loc({"host": "ch.svc", "port": "9123"}, {"username": "u", "password": "p"}))
    assert t == HttpTarget(
        ref=REF, host="ch.svc", port=9123, secure=False, username="u", password="p"
    )
    assert "'p'" not in repr(t)
    t = target_of(_loc({"host": "ch.svc", "secure": True}))
    assert isinstance(t, HttpTarget) and (t.port, t.username, t.password) == (8443, "default", "")
    assert target_of(_loc({"engine": "chdb", "path": "/srv/x"})) == ChdbTarget(
        ref=REF, path="/srv/x"
    )


@pytest.mark.parametrize(
    ("connection", "detail"),
    [
        ({}, "connection needs 'host'"),
        ({"host": "a", "prot": 1}, "unknown connection keys ['prot']"),
        ({"host": "a/b"}, "connection needs 'host'"),
        ({"host": "a", "port": 0}, "'port' must be 1..65535"),
        ({"host": "a", "secure": "yes"}, "'secure' must be true or false"),
        ({"engine": "native"}, "'engine' must be 'server' or 'chdb'"),
        ({"engine": "chdb", "path": "relative/dir"}, "engine chdb needs 'path'"),
        ({"engine": "chdb", "path": "/x", "host": "a"}, "engine chdb takes only 'path'"),
    ],
)
def test_bad_connection_settings_are_named_for_the_admin_only(
    connection: dict[str, Any], detail: str
) -> None:
    with pytest.raises(ApplicationMisconfigured) as err:
        target_of(_loc(connection))
    assert detail in (err.value.admin_detail or "")
    assert "ask the platform operator" in str(err.value)
    assert "relative/dir" not in str(err.value)


def test_masking() -> None:
    assert mask("key=AKIA1234 secret=s3cr3t!", ["AKIA1234", "s3cr3t!"]) == (
        "key=[redacted] secret=[redacted]"
    )
    assert mask("user abc, abcdef", ["abc"]) == "user [redacted], abcdef"


def test_tsv_values_are_unescaped() -> None:
    assert parse_tsv(b"a\\tb\tc\\\\d\\ne\n\\0x\t\n") == [("a\tb", "c\\d\ne"), ("\0x", "")]


# ---------------------------------------------------------------------------- CREATE heads


@pytest.mark.parametrize(
    "name", ["plain", "we`ird\ttab", "dots.in.name", "back\\slash", "ünï code", ".inner.mv"]
)
def test_heads_of_the_servers_own_statements(clickhouse: ServerFactory, name: str) -> None:
    server = clickhouse()
    server.run("CREATE DATABASE `odd db`")
    server.run(f"CREATE TABLE `odd db`.{ident(name)} (x UInt8) ENGINE = TinyLog")
    server.run("CREATE TABLE `odd db`.target (x UInt8) ENGINE = TinyLog")
    mv = "view " + name
    server.run(
        f"CREATE MATERIALIZED VIEW `odd db`.{ident(mv)} TO `odd db`.target AS SELECT x FROM `odd db`.{ident(name)}"
    )
    creates = dict(
        (r[0], r[1])
        for r in rows(
            server.run,
            "SELECT name, create_table_query FROM system.tables WHERE database = 'odd db'",
        )
    )
    head = parse_head(creates[name])
    assert (head.kind, head.database, head.name, head.to) == ("TABLE", "odd db", name, None)
    head = parse_head(creates[mv])
    assert (head.kind, head.name, head.to) == ("MATERIALIZED VIEW", mv, ("odd db", "target"))
    # The statement renamed into another database is accepted, and lands there.
    server.run("CREATE DATABASE other")
    server.run(rename_in_create(creates[name], "other", name))
    assert rows(server.run, "SELECT name FROM system.tables WHERE database = 'other'") == [[name]]


def test_heads_of_current_releases() -> None:
    create = (
        "CREATE MATERIALIZED VIEW shop.mv UUID '62dd9664-d4c7-4a84-a97b-737be48fb4c1' "
        "TO shop.agg (`k` UInt32) AS SELECT k FROM shop.src"
    )
    head = parse_head(create)
    assert head.to == ("shop", "agg")
    assert rename_in_create(create, "s", "mv").startswith(
        "CREATE MATERIALIZED VIEW `s`.`mv` TO shop.agg"
    )
    dictionary = "CREATE DICTIONARY shop.dict (`k` UInt32) PRIMARY KEY k SOURCE(NULL()) LAYOUT(FLAT()) LIFETIME(0)"
    assert parse_head(dictionary).kind == "DICTIONARY"
    assert parse_head('CREATE TABLE "a""b".c (x UInt8) ENGINE = Log').database == 'a"b'


def test_kinds_and_dump_order() -> None:
    assert [kind_of(e).value for e in ("MergeTree", "ReplicatedSummingMergeTree", "Log",
            "MaterializedView", "View", "Distributed", "Kafka", "Dictionary", "Set")] == [
        "table", "table", "table", "materializedView", "schema", "schema", "schema", "schema",
        "empty"]  # fmt: skip
    cols = [Column(name="a", type="String"), Column(name="n", type="LowCardinality(UInt8)"),
            Column(name="z", type="Array(String)")]  # fmt: skip
    assert [c.name for c in dump_columns(cols)] == ["a", "z", "n"]
    text = [Column(name="a", type="String"), Column(name="b", type="Nullable(String)")]
    assert dump_columns(text) == tuple(text)


# ---------------------------------------------------------------------------- errors mid-result

OLD = b"\x00\x01Code: 395, e.displayText() = DB::Exception: Value passed to 'throwIf' function is non zero, e.what() = DB::Exception\n"
NEW = b"\x07Code: 60. DB::Exception: Table shop.x does not exist. (UNKNOWN_TABLE) (version 24.8.4.13 (official build))\n"
TAGGED = b"\x00\x00__exception__\r\nabc\r\nCode: 241. DB::Exception: Memory limit\r\n40 abc\r\n__exception__\r\n"


def test_trailing_errors_of_every_release_are_recognised() -> None:
    err = trailing_error(OLD)
    assert err is not None and err.code == 395
    err = trailing_error(NEW)
    assert err is not None and err.code == 60
    err = trailing_error(TAGGED)
    assert err is not None and err.code == 241
    assert trailing_error(b"\x00" * 100) is None
    assert trailing_error(OLD[:-1]) is None, "the error is at the very end or not at all"


def test_a_result_that_fails_mid_way_is_never_taken_for_complete(clickhouse: ServerFactory) -> None:
    """18.16 has sent 200 OK and megabytes of rows when the error comes: it appends it."""
    server = clickhouse()
    target = target_of(_loc(server.connection(), server.credentials()))
    assert isinstance(target, HttpTarget)
    client = HttpClient(target, Deadline.after(60))
    received = 0
    with (
        pytest.raises(ServerError) as err,
        client.select_native(
            "SELECT number, throwIf(number = 3000000) FROM system.numbers LIMIT 10000000"
        ) as chunks,
    ):
        for chunk in chunks:
            received += len(chunk)
    assert err.value.code == 395
    assert received > 10 << 20  # the status line said OK long before


def test_why_a_fixed_width_column_goes_last(clickhouse: ServerFactory) -> None:
    """A row whose last value is an 18.16 error message, read with that column last,
    is indistinguishable from a failure; the driver never reads a table that way when
    it has a fixed-width column (this is the documented limit of text-only tables)."""
    server = clickhouse()
    server.run("CREATE TABLE default.t (n UInt8, s String) ENGINE = TinyLog")
    server.run("INSERT INTO default.t VALUES (1, 'Code: 1, e.displayText() = x, e.what() = y\\n')")
    target = target_of(_loc(server.connection(), server.credentials()))
    assert isinstance(target, HttpTarget)
    client = HttpClient(target, Deadline.after(60))
    with pytest.raises(ServerError), client.select_native("SELECT n, s FROM default.t") as chunks:
        list(chunks)
    with client.select_native("SELECT s, n FROM default.t") as chunks:
        assert b"".join(chunks).endswith(b"\x01")


def test_credentials_travel_in_headers_only() -> None:
    """What the client puts on the wire, captured by a listener that answers like 18.16."""
    requests: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
                while len(body) < length:
                    body += conn.recv(65536)
                requests.append(head + b"\r\n\r\n" + body)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n18.16.1\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        loc = _loc({"host": "127.0.0.1", "port": port}, {"username": "u", "password": "pw?&=#x"})
        target = target_of(loc)
        assert isinstance(target, HttpTarget)
        client = HttpClient(target, Deadline.after(10))
        assert client.version == "18.16.1"
        client.use_settings({"insert_deduplicate": "0"})
        client.execute("SELECT 1")
        thread.join(10)
    finally:
        listener.close()
    assert len(requests) == 2
    for raw in requests:
        line = raw.split(b"\r\n", 1)[0]
        assert b"pw" not in line and b"password" not in line.lower(), line
        assert b"X-ClickHouse-Key: pw?&=#x\r\n" in raw
        assert b"X-ClickHouse-User: u\r\n" in raw
    assert requests[1].split(b"\r\n", 1)[0] == b"POST /?insert_deduplicate=0 HTTP/1.1"
