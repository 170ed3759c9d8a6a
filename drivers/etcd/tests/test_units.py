"""Pieces without a server: the snapshot check, the protobuf codec, parameters and
connection settings, the entry point."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest
from cozybackup_etcd import (
    ApplicationMisconfigured,
    EtcdDriver,
    EtcdParameters,
    SnapshotFrom,
    _control,
)
from cozybackup_etcd import _proto as pb
from cozybackup_etcd._cluster import Cluster
from cozybackup_etcd._snapshot import SnapshotCheck, SnapshotCorrupt, check_sent
from hypothesis import given, settings
from hypothesis import strategies as st

from cozybackup_core import (
    ApplicationRef,
    AppLocation,
    PluginHost,
    UnsafeLocalPath,
)
from cozybackup_core.testing import LocalPlatform, refused_parameters, validate_parameters

#: A stand-in database: bbolt's meta page header and magic, then any bytes.
DB = bytes(16) + (0xED0CDAED).to_bytes(4, "little") + bytes(range(256)) * 40
SNAPSHOT = DB + hashlib.sha256(DB).digest()


def _feed(data: bytes, cuts: list[int]) -> SnapshotCheck:
    check = SnapshotCheck()
    last = 0
    for cut in sorted(set(cuts)):
        check.feed(data[last:cut])
        last = cut
    check.feed(data[last:])
    return check


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(SNAPSHOT)), max_size=12))
def test_snapshot_check_accepts_any_chunking(cuts: list[int]) -> None:
    check = _feed(SNAPSHOT, cuts)
    assert check.problem() is None
    assert check.size == len(SNAPSHOT)
    assert check.digest == hashlib.sha256(DB).hexdigest()
    check_sent(check, len(DB))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, len(SNAPSHOT) - 1), st.integers(1, 255), st.lists(st.integers(0, 10_000)))
def test_snapshot_check_refuses_any_flipped_byte(at: int, xor: int, cuts: list[int]) -> None:
    bad = bytearray(SNAPSHOT)
    bad[at] ^= xor
    assert _feed(bytes(bad), cuts).problem() is not None


def test_snapshot_check_refuses_short_and_foreign_streams() -> None:
    check = _feed(SNAPSHOT, [100])
    with pytest.raises(SnapshotCorrupt, match="ended early"):
        check_sent(check, len(DB) + 1)
    assert "only" in (_feed(SNAPSHOT[:40], []).problem() or "")
    foreign = b"SQLite format 3\x00" + bytes(100)
    assert "not a bbolt" in (_feed(foreign + hashlib.sha256(foreign).digest(), []).problem() or "")


@given(st.integers(-(2**63), 2**64 - 1))
def test_varints_round_trip(value: int) -> None:
    message = pb.field_int(3, value) + pb.field_bytes(4, b"x")
    got = pb.ints(message, 3)
    assert (pb.as_int64(got) if value < 0 else got) == value
    assert pb.blob(message, 4) == b"x"


def test_proto_skips_unknown_fields_and_rejects_garbage() -> None:
    message = pb.field_bytes(9, "unknown") + pb.field_int(2, 7) + pb.field_message(1, b"")
    assert pb.ints(message, 2) == 7 and pb.blob(message, 1) == b""
    assert pb.repeated(pb.field_bytes(3, b"a") + pb.field_bytes(3, b"b"), 3) == [b"a", b"b"]
    for garbage in (b"\x0a\x05ab", b"\x08\xff", b"\x07"):
        with pytest.raises(pb.ProtoError):
            list(pb.fields(garbage))


# ---------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("parameters", "problem"),
    [
        (
            "{snapshotFrom: learner}",
            "spec.strategies[0].parameters.snapshotFrom: 'learner' is not a member choice; "
            'use one of "leader", "follower", "any"',
        ),
        (
            "{timeoutSeconds: 0}",
            "spec.strategies[0].parameters.timeoutSeconds: must be between 1 and 86400, got 0",
        ),
    ],
)
def test_parameters_are_checked_when_the_class_is_applied(parameters: str, problem: str) -> None:
    assert problem in str(refused_parameters(EtcdDriver, parameters))


def test_good_parameters_and_defaults() -> None:
    validate_parameters(EtcdDriver, "{snapshotFrom: any, timeoutSeconds: 900}")
    assert EtcdParameters() == EtcdParameters(snapshot_from=SnapshotFrom.LEADER)


# ---------------------------------------------------------------------------- connection


def _loc(connection: dict[str, object], credentials: dict[str, str] | None = None) -> AppLocation:
    return AppLocation(
        ref=ApplicationRef(kind="Etcd", name="x"),
        namespace="ns",
        connection=connection,
        credentials=credentials or {},
    )


PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_connection_settings() -> None:
    c = Cluster.from_location(
        _loc({"endpoints": "10.0.0.1:2379", "serverName": "etcd"}, {"ca.crt": PEM})
    )
    assert [(e.target, e.tls) for e in c.endpoints] == [("10.0.0.1:2379", True)]
    c = Cluster.from_location(_loc({"endpoints": ["http://[::1]:2379", "etcd.ns.svc:2379"]}))
    assert [(e.target, e.tls) for e in c.endpoints] == [("[::1]:2379", False),
                                                        ("etcd.ns.svc:2379", False)]  # fmt: skip
    assert "BEGIN" not in repr(Cluster.from_location(_loc({"endpoints": ["a:1"]}, {"ca.crt": PEM})))


@pytest.mark.parametrize(
    ("connection", "credentials", "detail"),
    [
        ({}, {}, "needs 'endpoints'"),
        ({"endpoints": ["ftp://a:1"]}, {}, "must be http(s)://host:port"),
        ({"endpoints": ["a"]}, {}, "must be http(s)://host:port"),
        ({"endpoints": ["a:1"], "endpoint": "x"}, {}, "unknown connection keys ['endpoint']"),
        ({"endpoints": ["a:1"]}, {"tls.crt": PEM}, "needs both 'tls.crt' and 'tls.key'"),
        ({"endpoints": ["a:1"]}, {"ca.crt": "not pem"}, "is not PEM text"),
        ({"endpoints": ["a:1"]}, {"cert": PEM}, "unknown credential keys ['cert']"),
        ({"endpoints": ["a:1"]}, {"password": "p"}, "'password' without 'username'"),
        ({"endpoints": ["a:1"], "members": [{"name": "m"}]}, {}, "exactly the keys"),
        (
            {"endpoints": ["a:1"], "members": [{"name": "m", "peerURL": "x", "dataDir": "/d"}]},
            {},
            "must be an http(s) URL",
        ),
        (
            {
                "endpoints": ["a:1"],
                "members": [
                    {"name": n, "peerURL": "http://a:2", "dataDir": f"/d/{n}"} for n in ("m0", "m1")
                ],
            },
            {},
            "share the same peerURL",
        ),
        ({"endpoints": ["a:1"], "stopCommand": "systemctl stop etcd"}, {}, "list of strings"),
        ({"endpoints": ["a:1"], "binDir": "bin"}, {}, "absolute path"),
    ],
)
def test_bad_connection_settings(
    connection: dict[str, object], credentials: dict[str, str], detail: str
) -> None:
    with pytest.raises(ApplicationMisconfigured) as info:
        Cluster.from_location(_loc(connection, credentials))
    assert detail in (info.value.admin_detail or "")
    assert str(info.value) == (
        "this etcd cluster's connection settings for backups are incomplete or wrong; "
        "ask the platform operator"
    )


def test_misconfigured_application_fails_before_anything(tmp_path: Path) -> None:
    plat = LocalPlatform(tmp_path / "home", drivers=(EtcdDriver,))
    ref = plat.declare_app("ns", "typo", "Etcd", {"endpoint": "http://127.0.0.1:1"})
    job = plat.backup("ns", ref, "b1")
    assert job.status.phase == "Failed"
    assert job.status.conditions[0].reason == "ApplicationMisconfigured"
    assert "127.0.0.1" not in plat.tenant_view("ns")


def test_entry_point_registers_the_driver() -> None:
    host = PluginHost.load()
    assert host.broken == [] or all(b.name != "etcd" for b in host.broken)
    driver = host.registry.for_strategy("Etcd")
    assert isinstance(driver, EtcdDriver)


def test_the_running_probe_follows_no_link_and_opens_no_fifo(tmp_path: Path) -> None:
    """Whether a member runs is read from the flock on ``member/snap/db``: that file is
    opened without following links, and a FIFO there is neither opened nor waited on."""
    snap = tmp_path / "data" / "member" / "snap"
    snap.mkdir(parents=True)
    os.mkfifo(snap / "db")
    opened: list[bool] = []
    stop = threading.Event()

    def watch() -> None:  # a reader of the FIFO would show here (and be released)
        while not stop.is_set():
            try:
                fd = os.open(snap / "db", os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.002)
                continue
            opened.append(True)
            os.close(fd)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        assert _control.data_dir_in_use(tmp_path / "data") is False
    finally:
        stop.set()
        t.join()
    assert not opened
    (snap / "db").unlink()
    outside = tmp_path / "outside.db"
    outside.write_bytes(b"x")
    (snap / "db").symlink_to(outside)
    assert _control.data_dir_in_use(tmp_path / "data") is False
    (tmp_path / "link").symlink_to(tmp_path / "data")
    with pytest.raises(UnsafeLocalPath, match="data directory is a symbolic link"):
        _control.data_dir_in_use(tmp_path / "link")
