"""A small NBD client (fixed newstyle, structured replies, ``base:allocation``) and a
``qemu-nbd`` process to talk to over a private unix socket.

Why NBD: ``qemu-nbd`` opens the image once, with QEMU's own format drivers, and gives
random access to the *guest-visible* bytes (qcow2 clusters decoded) plus the allocation
map of that same open image (``NBD_CMD_BLOCK_STATUS``).  ``qemu-img map`` + one
``qemu-img dd``/``qemu-io`` process per extent would cost a process per extent and parse
text; reading the qcow2 format ourselves would duplicate QEMU.  The socket lives in a
0700 temp directory: nothing listens on a network port.  The protocol is
https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from cozybackup_core import Deadline, DeadlineExceeded

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2

OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_SET_META_CONTEXT = 10
REP_ACK = 1
REP_INFO = 3
REP_META_CONTEXT = 4
INFO_EXPORT = 0

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_BLOCK_STATUS = 7

REPLY_FLAG_DONE = 1
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR_BIT = 1 << 15

STATE_HOLE = 1
STATE_ZERO = 2

#: qemu-nbd accepts requests of up to 32 MiB; stay well below.
MAX_REQUEST = 4 << 20
_BLOCK_STATUS_SPAN = 1 << 30


class NBDError(Exception):
    """The server or the protocol failed (the text is for the operator, never a tenant)."""


class NBDClient:
    """One connection to one export; requests are issued one at a time."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline
        self._cookie = 0
        self.size = 0
        self.read_only = True
        self._meta_id: int | None = None

    @classmethod
    def connect(cls, path: Path, deadline: Deadline) -> NBDClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client = cls(sock, deadline)
        try:
            sock.settimeout(max(deadline.remaining(), 0.1))
            sock.connect(str(path))
            client._handshake()
        except BaseException:
            sock.close()
            raise
        return client

    # ---- plumbing

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            self._sock.settimeout(max(min(self._deadline.remaining(), 600.0), 0.1))
            try:
                chunk = self._sock.recv(min(n - len(buf), 1 << 20))
            except TimeoutError:
                if self._deadline.expired:
                    raise DeadlineExceeded(
                        "the job ran past its deadline and was stopped"
                    ) from None
                raise NBDError("the NBD server stopped answering") from None
            if not chunk:
                raise NBDError("the NBD server closed the connection")
            buf += chunk
        return bytes(buf)

    def _send(self, *parts: bytes) -> None:
        self._sock.settimeout(max(min(self._deadline.remaining(), 600.0), 0.1))
        try:
            for part in parts:
                self._sock.sendall(part)
        except TimeoutError:
            if self._deadline.expired:
                raise DeadlineExceeded("the job ran past its deadline and was stopped") from None
            raise NBDError("the NBD server stopped reading") from None

    def _option(self, opt: int, data: bytes = b"") -> None:
        self._send(struct.pack(">QII", IHAVEOPT, opt, len(data)), data)

    def _option_reply(self, opt: int) -> tuple[int, bytes]:
        magic, ropt, rtype, length = struct.unpack(">QIII", self._recv(20))
        if magic != REPLY_MAGIC or ropt != opt:
            raise NBDError(f"bad option reply {magic:#x}/{ropt}")
        data = self._recv(length) if length else b""
        if rtype & (1 << 31):
            raise NBDError(
                f"option {opt} refused ({rtype:#x}): {data[4:].decode(errors='replace')}"
            )
        return rtype, data

    def _handshake(self) -> None:
        magic, opt_magic, flags = struct.unpack(">QQH", self._recv(18))
        if magic != NBDMAGIC or opt_magic != IHAVEOPT or not flags & FLAG_FIXED_NEWSTYLE:
            raise NBDError("not a fixed-newstyle NBD server")
        self._send(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES)))
        self._option(OPT_STRUCTURED_REPLY)
        rtype, _ = self._option_reply(OPT_STRUCTURED_REPLY)
        if rtype != REP_ACK:
            raise NBDError("structured replies not acknowledged")
        query = b"base:allocation"
        self._option(
            OPT_SET_META_CONTEXT,
            struct.pack(">I", 0) + struct.pack(">II", 1, len(query)) + query,
        )
        while True:
            rtype, data = self._option_reply(OPT_SET_META_CONTEXT)
            if rtype == REP_ACK:
                break
            if rtype == REP_META_CONTEXT and data[4:] == query:
                self._meta_id = struct.unpack(">I", data[:4])[0]
        if self._meta_id is None:
            raise NBDError("the server does not report base:allocation")
        self._option(OPT_GO, struct.pack(">IH", 0, 0))
        while True:
            rtype, data = self._option_reply(OPT_GO)
            if rtype == REP_ACK:
                break
            if rtype == REP_INFO and struct.unpack(">H", data[:2])[0] == INFO_EXPORT:
                self.size, tflags = struct.unpack(">QH", data[2:12])
                self.read_only = bool(tflags & 2)

    def _request(self, cmd: int, offset: int, length: int, flags: int = 0) -> int:
        self._deadline.check()
        self._cookie += 1
        self._send(struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, self._cookie, offset, length))
        return self._cookie

    def _chunks(self, cookie: int) -> Iterator[tuple[int, bytes]]:
        """Yield ``(type, payload)`` of every reply chunk to ``cookie`` until done."""
        while True:
            magic = struct.unpack(">I", self._recv(4))[0]
            if magic == SIMPLE_REPLY_MAGIC:
                error, rcookie = struct.unpack(">IQ", self._recv(12))
                if rcookie != cookie:
                    raise NBDError("reply to an unknown request")
                if error:
                    raise NBDError(f"server error {error}")
                yield REPLY_TYPE_NONE, b""
                return
            if magic != STRUCTURED_REPLY_MAGIC:
                raise NBDError(f"bad reply magic {magic:#x}")
            flags, rtype, rcookie, length = struct.unpack(">HHQI", self._recv(16))
            if rcookie != cookie:
                raise NBDError("reply to an unknown request")
            payload = self._recv(length) if length else b""
            if rtype & REPLY_TYPE_ERROR_BIT:
                error, msglen = struct.unpack(">IH", payload[:6])
                raise NBDError(
                    f"server error {error}: {payload[6 : 6 + msglen].decode(errors='replace')}"
                )
            yield rtype, payload
            if flags & REPLY_FLAG_DONE:
                return

    # ---- commands

    def block_status(self, offset: int, length: int) -> list[tuple[int, int]]:
        """``[(length, flags)]`` from ``offset``: covers at least one byte, at most ``length``."""
        cookie = self._request(CMD_BLOCK_STATUS, offset, length)
        extents: list[tuple[int, int]] = []
        for rtype, payload in self._chunks(cookie):
            if rtype != REPLY_TYPE_BLOCK_STATUS:
                continue
            if struct.unpack(">I", payload[:4])[0] != self._meta_id:
                continue
            for i in range(4, len(payload) - 7, 8):
                extents.append(struct.unpack(">II", payload[i : i + 8]))
        if not extents or extents[0][0] == 0:
            raise NBDError("empty block status reply")
        return extents

    def extents(self) -> Iterator[tuple[int, int, bool]]:
        """``(offset, length, reads_as_zero)`` over the whole export, merged."""
        pos = 0
        cur: tuple[int, int, bool] | None = None
        while pos < self.size:
            span = min(self.size - pos, _BLOCK_STATUS_SPAN)
            for length, flags in self.block_status(pos, span):
                length = min(length, self.size - pos)
                if length <= 0:
                    break
                zero = bool(flags & STATE_ZERO)
                if cur is not None and cur[2] == zero and cur[0] + cur[1] == pos:
                    cur = (cur[0], cur[1] + length, zero)
                else:
                    if cur is not None:
                        yield cur
                    cur = (pos, length, zero)
                pos += length
        if cur is not None:
            yield cur

    def read(self, offset: int, length: int) -> bytes:
        if length > MAX_REQUEST or offset + length > self.size:
            raise NBDError(f"read out of range {offset}+{length}")
        cookie = self._request(CMD_READ, offset, length)
        buf = bytearray(length)
        for rtype, payload in self._chunks(cookie):
            if rtype == REPLY_TYPE_OFFSET_DATA:
                at = struct.unpack(">Q", payload[:8])[0] - offset
                data = payload[8:]
                if at < 0 or at + len(data) > length:
                    raise NBDError("read reply out of range")
                buf[at : at + len(data)] = data
            elif rtype == REPLY_TYPE_OFFSET_HOLE:
                at_abs, _size = struct.unpack(">QI", payload[:12])
                if at_abs < offset or at_abs + _size > offset + length:
                    raise NBDError("hole reply out of range")
                # buf is zero-initialised: a hole needs no copy
        return bytes(buf)

    def write(self, offset: int, data: bytes) -> None:
        if len(data) > MAX_REQUEST or offset + len(data) > self.size:
            raise NBDError(f"write out of range {offset}+{len(data)}")
        self._deadline.check()
        self._cookie += 1
        cookie = self._cookie
        header = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, cookie, offset, len(data))
        self._send(header, data)
        for _ in self._chunks(cookie):
            pass

    def flush(self) -> None:
        for _ in self._chunks(self._request(CMD_FLUSH, 0, 0)):
            pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.settimeout(2.0)
            self._sock.sendall(
                struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, self._cookie + 1, 0, 0)
            )
        self._sock.close()

    def __enter__(self) -> NBDClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class QemuNbdFailed(Exception):
    """``qemu-nbd`` exited before serving; ``stderr`` says why (operator text)."""

    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


@contextlib.contextmanager
def serve(
    image: str,
    fmt: str,
    *,
    deadline: Deadline,
    writable: bool = False,
    force_share: bool = False,
    start_timeout: float = 30.0,
) -> Iterator[NBDClient]:
    """Run ``qemu-nbd`` on ``image`` over a private unix socket; yield a connected client.

    The process is stopped by its PID when the block exits (it also exits by itself
    when the only client disconnects).  ``force_share`` reads an image that another
    process (a running VM) holds open for writing.
    """
    workdir = Path(tempfile.mkdtemp(prefix="cozy-nbd-"))
    sock = workdir / "nbd.sock"
    argv = [
        "qemu-nbd",
        f"--socket={sock}",
        "--shared=1",
        "--cache=writeback" if writable else "--cache=none",
        "--aio=threads",
    ]
    if writable:
        argv += [f"--format={fmt}", image]
    elif not force_share:
        argv += ["--read-only", f"--format={fmt}", image]
    else:
        # qemu-nbd has no --force-share flag (qemu-img's -U): say it in the options.
        filename = image.replace(",", ",,")
        argv += [
            "--read-only",
            "--image-opts",
            f"driver={fmt},read-only=on,force-share=on,file.driver=file,file.filename={filename}",
        ]
    errfile = tempfile.TemporaryFile(dir=workdir)  # noqa: SIM115 - closed in finally
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errfile,
            start_new_session=True,
        )
        limit = Deadline.after(min(start_timeout, deadline.remaining()))
        while not sock.exists():
            if proc.poll() is not None:
                errfile.seek(0)
                raise QemuNbdFailed(errfile.read()[-8192:].decode(errors="replace"))
            if limit.expired:
                deadline.check()
                raise QemuNbdFailed(f"qemu-nbd did not listen within {start_timeout:.0f}s")
            time.sleep(0.02)
        client = _connect_retrying(sock, deadline, limit)
        try:
            yield client
            if writable:
                client.flush()
        finally:
            client.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    finally:
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        errfile.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _connect_retrying(sock: Path, deadline: Deadline, limit: Deadline) -> NBDClient:
    while True:
        try:
            return NBDClient.connect(sock, deadline)
        except (ConnectionRefusedError, FileNotFoundError):
            if limit.expired:
                raise
            time.sleep(0.02)
