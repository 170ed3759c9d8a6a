"""Files and directories at local paths an admin declared, reached without following links.

A tenant's application often owns the directory its data lives in: SQLite writes its
journals beside the database, a VM disk's volume may be mounted into a tenant's pod.
The backup worker is more privileged than that application, so it must act only on the
file the admin named, never on what a name there *points to*.  A tenant who swaps its
own database for a symlink, a FIFO or a device must get a refusal, not another tenant's
data or a file written as root.  So everything here goes through file descriptors:

* the directory is reached from ``/`` one component at a time, each opened with
  ``O_NOFOLLOW | O_DIRECTORY`` relative to the previous one: a symlink anywhere on the
  way is refused, and the directory held open cannot be swapped under us afterwards;
* a name in it is ``lstat``-ed and opened relative to that descriptor with
  ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO cannot block the open), then ``fstat``-ed again:
  only a regular file with a single link (or a directory, where one is expected) is
  accepted, and special files are refused before they are opened;
* new files are created owner-only (0600) with ``O_EXCL`` in that directory and renamed
  over the name with ``renameat``, which replaces a link planted there, never its target.

A tool that only takes a path can be given :attr:`LocalFile.fd_path`, a
``/proc/<pid>/fd/<n>`` name for a descriptor opened here: the kernel reopens that very
file, no name in the tenant's directory is looked up again.

Refusals raise :class:`UnsafeLocalPath`: its message says what is wrong ("is a symbolic
link", "is a FIFO") in words a tenant may read; the path is in ``admin_detail`` only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from types import TracebackType

from .._api.errors import DriverError, UnsupportedError

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
#: intermediate directories need only be searchable, not readable
_SEARCH = getattr(os, "O_PATH", os.O_RDONLY)
_NOCTTY = getattr(os, "O_NOCTTY", 0)


class UnsafeLocalPath(DriverError):
    """The application's path is not what the admin declared: a symlink, a special file,
    a file with other hard links, or a directory on the way that is one of those."""

    reason = "UnsafeApplicationPath"


def describe(mode: int) -> str:
    """What a file of this ``st_mode`` is, for a message."""
    for test, text in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return text
    return "a special file"


def split_local(path: str | os.PathLike[str], *, root_ok: bool = False) -> tuple[str, ...]:
    """The components of an absolute local path; ``ValueError`` for anything ambiguous
    (relative, NUL, ``.`` or ``..`` components, and the root itself unless ``root_ok``)."""
    text = os.fspath(path)
    if not isinstance(text, str) or not text.startswith("/") or "\0" in text:
        raise ValueError(f"not an absolute path: {text!r}")
    parts = tuple(p for p in text.split("/") if p)
    if not parts and not root_ok:
        raise ValueError("the root directory is not a file or directory of an application")
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"'.' and '..' are not allowed in an application's path: {text!r}")
    return parts


def _refusal(what: str, st: os.stat_result, path: str, *, expected: str) -> UnsafeLocalPath:
    kind = describe(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        message = (
            f"the application's {what} is a symbolic link; backups and restores never "
            "follow links at an application's paths. Put the real file there, or ask the "
            "platform operator"
        )
    else:
        message = f"the application's {what} is {kind}, not {expected}; nothing was read or changed"
    return UnsafeLocalPath(message, admin_detail=f"{path} is {kind}, expected {expected}")


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _walk(path: str, what: str, *, holds: bool = False) -> int:
    """An fd of the directory ``path``, reached from ``/`` without following any link.
    ``holds``: ``what`` is in that directory (so the directory itself is on the way)."""
    parts = split_local(path, root_ok=True)
    fd = os.open("/", (_SEARCH if parts else os.O_RDONLY) | _DIRECTORY | _CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            here = "/" + "/".join(parts[: i + 1])
            flags = (os.O_RDONLY if last else _SEARCH) | _DIRECTORY | _NOFOLLOW | _CLOEXEC
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                st = _lstat_at(fd, part) if exc.errno != errno.EACCES else None
                if st is None and exc.errno == errno.ENOENT:
                    whose = (
                        f"the directory of the application's {what}"
                        if holds
                        else (f"the application's {what}")
                    )
                    raise DriverError(
                        f"{whose} does not exist; ask the platform operator",
                        admin_detail=f"{here} does not exist (declared: {path})",
                    ) from None
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    if last and not holds:
                        raise _refusal(what, st, here, expected="a directory") from None
                    raise UnsafeLocalPath(
                        f"a directory on the path of the application's {what} is "
                        f"{describe(st.st_mode)}; backups and restores never follow links at "
                        "an application's paths. Ask the platform operator",
                        admin_detail=f"{here} is {describe(st.st_mode)} (declared: {path}); "
                        "declare the path without links",
                    ) from None
                raise DriverError(
                    f"the application's {what} could not be opened; ask the platform operator",
                    admin_detail=f"{here}: {exc!r}",
                ) from None
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


class LocalFile:
    """A regular file opened through :class:`LocalDir` (so: not a link, not special)."""

    def __init__(self, directory: LocalDir, name: str, fd: int, *, owns_dir: bool = False):
        self.dir = directory
        self.name = name
        self.fd = fd
        self._owns_dir = owns_dir

    @property
    def path(self) -> str:
        """The declared path: for messages to the operator, never to open again."""
        return self.dir.join(self.name)

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)

    @property
    def fd_path(self) -> str:
        """A path naming this open file for a tool (``/proc/<pid>/fd/<n>``); valid while
        the file is open.  :class:`UnsupportedError` where the OS has no such names."""
        return _fd_path(self.fd)

    def is_at_name(self) -> bool:
        """Whether the name in the directory still refers to this very file."""
        st = self.dir.lstat(self.name)
        mine = self.stat()
        return st is not None and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def adopt(self, like: os.stat_result | None) -> None:
        """Take ``like``'s permissions and, where allowed, its owner; with no ``like``
        (a new file), stay owner-only and take the directory's owner."""
        ref = like if like is not None else self.dir.stat()
        if like is not None:
            os.fchmod(self.fd, stat.S_IMODE(like.st_mode))
        mine = self.stat()
        if (mine.st_uid, mine.st_gid) != (ref.st_uid, ref.st_gid):
            with contextlib.suppress(PermissionError):
                os.fchown(self.fd, ref.st_uid, ref.st_gid)

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._owns_dir:
            self.dir.close()

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class LocalDir:
    """A directory held open, reached without following links; names are looked up in
    it, never through a path string again."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, what: str, holds: bool = False) -> LocalDir:
        """Open the directory ``path``; ``what`` names it for messages ("data directory"),
        or, with ``holds``, names what is in it ("database file").  Raises
        :class:`UnsafeLocalPath` for a link on the way or at the end, :class:`DriverError`
        if it does not exist."""
        text = "/" + "/".join(split_local(path, root_ok=True))
        return cls(_walk(text, what, holds=holds), text)

    def join(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    @property
    def fd_path(self) -> str:
        """A path naming this directory for a tool or for a path-only API
        (``/proc/<pid>/fd/<n>``; names below it are looked up in this very directory)."""
        return _fd_path(self.fd)

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def lstat(self, name: str) -> os.stat_result | None:
        """``lstat`` of a name in this directory; None if there is nothing."""
        return _lstat_at(self.fd, _name(name))

    def open_file(
        self,
        name: str,
        *,
        what: str,
        write: bool = False,
        missing_ok: bool = False,
        allow_hardlinks: bool = False,
    ) -> LocalFile | None:
        """Open the regular file ``name`` (read-only, or read-write with ``write``).

        Refuses a symlink, a FIFO, a socket, a device, a directory and (unless
        ``allow_hardlinks``) a file with more than one link, without opening any of them.
        A missing file is None with ``missing_ok``, else a :class:`DriverError`.
        """
        name = _name(name)
        here = self.join(name)
        st = self.lstat(name)
        if st is None:
            if missing_ok:
                return None
            raise DriverError(
                f"the application's {what} does not exist; ask the platform operator",
                admin_detail=f"no file at {here}",
            )
        _check_regular(what, st, here, allow_hardlinks)
        flags = (os.O_RDWR if write else os.O_RDONLY) | _NOFOLLOW | os.O_NONBLOCK | _NOCTTY
        try:
            fd = os.open(name, flags | _CLOEXEC, dir_fd=self.fd)
        except OSError as exc:
            now = self.lstat(name)
            if now is not None and not stat.S_ISREG(now.st_mode):
                raise _refusal(what, now, here, expected="a regular file") from None
            if now is None and missing_ok:
                return None
            raise DriverError(
                f"the application's {what} could not be opened; ask the platform operator",
                admin_detail=f"{here}: {exc!r}",
            ) from None
        try:
            opened = os.fstat(fd)
            _check_regular(what, opened, here, allow_hardlinks)  # swapped since the lstat?
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return LocalFile(self, name, fd)

    def check_entry(self, name: str, *, what: str, expected: str = "a directory") -> bool:
        """Whether ``name`` exists; refuses it unless it is ``expected`` ("a directory" or
        "a regular file") -- a symlink is never."""
        name = _name(name)
        st = self.lstat(name)
        if st is None:
            return False
        want = stat.S_ISDIR if expected == "a directory" else stat.S_ISREG
        if not want(st.st_mode):
            raise _refusal(what, st, self.join(name), expected=expected)
        return True

    def open_dir(self, name: str, *, what: str) -> LocalDir:
        """The subdirectory ``name`` of this very directory, opened without following a
        link (:class:`UnsafeLocalPath` for anything but a directory, :class:`DriverError`
        if there is nothing)."""
        name = _name(name)
        here = self.join(name)
        try:
            fd = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=self.fd)
        except OSError as exc:
            st = self.lstat(name)
            if st is not None and not stat.S_ISDIR(st.st_mode):
                raise _refusal(what, st, here, expected="a directory") from None
            if st is None:
                raise DriverError(
                    f"the application's {what} does not exist; ask the platform operator",
                    admin_detail=f"{here} does not exist",
                ) from None
            raise DriverError(
                f"the application's {what} could not be opened; ask the platform operator",
                admin_detail=f"{here}: {exc!r}",
            ) from None
        return LocalDir(fd, here)

    def create(self, near: str, *, tag: str = "cozybackup-tmp", mode: int = 0o600) -> LocalFile:
        """A new, empty, owner-only file ``.<near>.<tag>-<random>`` in this directory
        (``O_EXCL``: never a link or a file that was already there)."""
        near = _name(near)
        for _ in range(16):
            name = f".{near[:160]}.{tag}-{secrets.token_hex(6)}"
            try:
                fd = os.open(
                    name,
                    os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                    mode,
                    dir_fd=self.fd,
                )
            except FileExistsError:
                continue
            os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
            return LocalFile(self, name, fd)
        raise FileExistsError(errno.EEXIST, "no free temporary name", self.join(near))

    def replace(self, src: str, dst: str) -> None:
        """``renameat`` within this directory: ``dst`` is replaced, whatever it is (a link
        there is replaced, not followed)."""
        os.replace(_name(src), _name(dst), src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        """Remove a file (or a link: never its target); nothing there is fine."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_name(name), dir_fd=self.fd)

    def names(self) -> list[str]:
        return os.listdir(self.fd)  # noqa: PTH208 - by descriptor, not by name

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> LocalDir:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_local(
    path: str | os.PathLike[str],
    *,
    what: str,
    write: bool = False,
    missing_ok: bool = False,
    allow_hardlinks: bool = False,
) -> LocalFile | None:
    """Open the regular file at the absolute ``path`` as :meth:`LocalDir.open_file` does,
    its directory reached without following links.  The returned file holds its
    directory (``.dir``) open until it is closed.  ``what`` names the file in messages
    ("database file"); see :class:`UnsafeLocalPath`."""
    parent, name = local_parent(path)
    directory = LocalDir.open(parent, what=what, holds=True)
    try:
        f = directory.open_file(
            name,
            what=what,
            write=write,
            missing_ok=missing_ok,
            allow_hardlinks=allow_hardlinks,
        )
    except BaseException:
        directory.close()
        raise
    if f is None:
        directory.close()
        return None
    f._owns_dir = True
    return f


def _fd_path(fd: int) -> str:
    if not Path(f"/proc/{os.getpid()}/fd").is_dir():
        raise UnsupportedError("this backup worker has no /proc: local files need Linux")
    return f"/proc/{os.getpid()}/fd/{fd}"


def _check_regular(what: str, st: os.stat_result, path: str, allow_hardlinks: bool) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise _refusal(what, st, path, expected="a regular file")
    if st.st_nlink > 1 and not allow_hardlinks:
        raise UnsafeLocalPath(
            f"the application's {what} has {st.st_nlink} hard links; backups and restores "
            "refuse a file that is also reachable elsewhere. Ask the platform operator",
            admin_detail=f"{path} has {st.st_nlink} links",
        )


def _name(name: str) -> str:
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"not a single file name: {name!r}")
    return name


def local_parent(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(directory, name)`` of an absolute path, checked as :func:`split_local` does."""
    parts = split_local(path)
    return "/" + "/".join(parts[:-1]), parts[-1]


__all__ = [
    "LocalDir",
    "LocalFile",
    "UnsafeLocalPath",
    "describe",
    "local_parent",
    "open_local",
    "split_local",
]


def chown_tree(root: str | os.PathLike[str], uid: int, gid: int) -> None:
    """Give ``root`` and everything under it to ``uid:gid`` (a server's system user, for
    the data files a restore just wrote), links themselves and never what they point to;
    a refusal is a :class:`DriverError` for the operator."""
    if (os.geteuid(), os.getegid()) == (uid, gid):
        return
    try:
        os.chown(root, uid, gid)
        for base, dirs, files in os.walk(root):  # does not descend into linked directories
            for name in dirs + files:
                os.lchown(Path(base, name), uid, gid)
    except PermissionError as exc:
        raise DriverError(
            "the restored data files could not be given to the server's system user; "
            "ask the platform operator",
            admin_detail=f"chown to {uid}:{gid} under {root}: {exc!r}",
        ) from None
