"""open_local / LocalDir: an application's files reached without following links."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cozybackup_core import DriverError, LocalDir, UnsafeLocalPath, open_local


@contextmanager
def fifo_watch(path: Path) -> Iterator[list[bool]]:
    """Make ``path`` a FIFO and report whether anyone opened it (for reading)."""
    os.mkfifo(path)
    opened: list[bool] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader
                time.sleep(0.002)
                continue
            opened.append(True)
            os.close(fd)  # the reader sees end of file
            return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        yield opened
    finally:
        time.sleep(0.05)
        stop.set()
        t.join()


def _assert_tenant_safe(exc: DriverError, tmp_path: Path) -> None:
    assert str(tmp_path) not in exc.message
    assert exc.admin_detail and str(tmp_path) in exc.admin_detail


def test_opens_a_regular_file_and_names_it_for_tools(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"content")
    f = open_local(tmp_path / "d" / "f", what="database file")
    assert f is not None
    with f:
        assert os.read(f.fd, 100) == b"content"
        assert Path(f.fd_path).read_bytes() == b"content"
        assert f.path == str(tmp_path / "d" / "f")
        assert f.is_at_name()
        (tmp_path / "d" / "f").rename(tmp_path / "d" / "g")
        assert not f.is_at_name()
        assert Path(f.fd_path).read_bytes() == b"content"  # still this very file
    assert f.fd == -1 and f.dir.fd == -1


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlink_at_the_name_is_refused(tmp_path: Path, dangling: bool) -> None:
    secret = tmp_path / "other-tenant" / "db"
    secret.parent.mkdir()
    if not dangling:
        secret.write_bytes(b"secret")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "db").symlink_to(secret)
    for write in (False, True):
        with pytest.raises(UnsafeLocalPath) as info:
            open_local(tmp_path / "app" / "db", what="database file", write=write, missing_ok=True)
        assert "database file is a symbolic link" in info.value.message
        assert info.value.reason == "UnsafeApplicationPath"
        _assert_tenant_safe(info.value, tmp_path)
    assert secret.exists() != dangling


def test_a_symlink_on_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "db").write_bytes(b"x")
    (tmp_path / "app").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafeLocalPath, match=r"a directory on the path .* symbolic link") as info:
        open_local(tmp_path / "app" / "db", what="database file")
    _assert_tenant_safe(info.value, tmp_path)
    with pytest.raises(UnsafeLocalPath, match="is a symbolic link"):
        LocalDir.open(tmp_path / "app", what="data directory")


def test_special_files_are_refused_without_being_opened(tmp_path: Path) -> None:
    with fifo_watch(tmp_path / "fifo") as opened:
        for write in (False, True):
            with pytest.raises(UnsafeLocalPath, match="is a FIFO") as info:
                open_local(tmp_path / "fifo", what="database file", write=write)
            _assert_tenant_safe(info.value, tmp_path)
    assert not opened
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    sock.close()
    with pytest.raises(UnsafeLocalPath, match="is a socket"):
        open_local(tmp_path / "sock", what="disk image")
    (tmp_path / "dir").mkdir()
    with pytest.raises(UnsafeLocalPath, match="is a directory, not a regular file"):
        open_local(tmp_path / "dir", what="disk image")
    if os.geteuid() == 0:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        with pytest.raises(UnsafeLocalPath, match="is a character device"):
            open_local(tmp_path / "null", what="disk image", write=True)


def test_hard_links_are_refused_unless_allowed(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x")
    os.link(tmp_path / "a", tmp_path / "b")
    with pytest.raises(UnsafeLocalPath, match="has 2 hard links"):
        open_local(tmp_path / "b", what="database file")
    f = open_local(tmp_path / "b", what="database file", allow_hardlinks=True)
    assert f is not None
    f.close()


def test_missing_files_and_directories(tmp_path: Path) -> None:
    assert open_local(tmp_path / "nothing", what="database file", missing_ok=True) is None
    with pytest.raises(DriverError, match="database file does not exist") as info:
        open_local(tmp_path / "nothing", what="database file")
    assert not isinstance(info.value, UnsafeLocalPath)
    with pytest.raises(DriverError, match="does not exist"):
        open_local(tmp_path / "no-dir" / "db", what="database file", missing_ok=True)


@pytest.mark.parametrize("bad", ["relative/db", "/a/../etc/passwd", "/a/./b", "/", "/a\0b"])
def test_ambiguous_paths_are_not_accepted(bad: str) -> None:
    with pytest.raises(ValueError):
        open_local(bad, what="database file")


def test_new_files_are_owner_only_and_replace_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"victim")
    app = tmp_path / "app"
    app.mkdir()
    (app / "db").symlink_to(victim)
    old_umask = os.umask(0)
    try:
        with LocalDir.open(app, what="database directory") as d:
            new = d.create("db", tag="cozybackup-restore")
            with new:
                assert stat.S_IMODE(new.stat().st_mode) == 0o600
                assert new.name.startswith(".db.cozybackup-restore-")
                os.write(new.fd, b"restored")
                new.adopt(None)
                assert stat.S_IMODE(new.stat().st_mode) == 0o600
                assert new.stat().st_uid == app.stat().st_uid
                d.replace(new.name, "db")
            d.fsync()
            assert d.check_entry("db", what="database file", expected="a regular file")
            assert not d.check_entry("gone", what="database file")
    finally:
        os.umask(old_umask)
    assert victim.read_bytes() == b"victim"
    assert not (app / "db").is_symlink() and (app / "db").read_bytes() == b"restored"
    assert [p.name for p in app.iterdir()] == ["db"]


def test_adopt_takes_the_old_files_mode(tmp_path: Path) -> None:
    (tmp_path / "db").write_bytes(b"x")
    (tmp_path / "db").chmod(0o640)
    old = open_local(tmp_path / "db", what="database file")
    assert old is not None
    with old, old.dir.create("db") as new:
        new.adopt(old.stat())
        assert stat.S_IMODE(new.stat().st_mode) == 0o640
        old.dir.unlink(new.name)
        old.dir.unlink(new.name)  # twice: nothing there is fine


def test_subdirectories_and_entries(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    os.mkfifo(tmp_path / "fifo")
    with LocalDir.open(tmp_path, what="data directory") as d:
        assert d.check_entry("data", what="data directory")
        with d.open_dir("data", what="data directory") as sub:
            assert sub.path == str(tmp_path / "data")
            (Path(sub.fd_path) / "made-through-the-fd").write_bytes(b"x")
        assert (tmp_path / "data" / "made-through-the-fd").exists()
        for name, kind in (("link", "a symbolic link"), ("fifo", "a FIFO")):
            with pytest.raises(UnsafeLocalPath, match=kind):
                d.check_entry(name, what="data directory")
            with pytest.raises(UnsafeLocalPath, match=kind):
                d.open_dir(name, what="data directory")
        assert "data" in d.names()
        (tmp_path / "data").rename(tmp_path / "moved")
        (tmp_path / "data").symlink_to(tmp_path / "moved")
        with pytest.raises(UnsafeLocalPath, match="a symbolic link"):
            d.open_dir("data", what="data directory")
        with pytest.raises(DriverError, match="does not exist"):
            d.open_dir("nothing", what="data directory")
    root = LocalDir.open("/", what="root")
    root.close()
