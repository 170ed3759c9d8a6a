"""Real disk images made with ``qemu-img``/``qemu-io``, and stand-ins for running VMs.

A "running VM" here is a ``qemu-nbd`` process holding the image open for writing: it
takes QEMU's image locks exactly as a running QEMU does, which is what the driver checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

MiB = 1 << 20
GiB = 1 << 30


def run(*argv: str | Path) -> str:
    out = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, f"{argv}: {out.stderr}"
    return out.stdout


def make_image(
    path: Path,
    fmt: str,
    size: int,
    *,
    patterns: tuple[tuple[int, int, int], ...] = (),
    random_at: tuple[tuple[int, int], ...] = (),
    seed: int = 0,
) -> Path:
    """A fresh image: ``patterns`` of ``(byte, offset, length)`` written with
    ``qemu-io write -P``, ``random_at`` of ``(offset, length)`` filled with seeded random
    bytes (``write -s``); everything else is a hole."""
    if path.exists():
        path.unlink()
    run("qemu-img", "create", "-q", "-f", fmt, path, str(size))
    cmds: list[str] = []
    for byte, offset, length in patterns:
        cmds += ["-c", f"write -q -P {byte:#x} {offset} {length}"]
    with tempfile.TemporaryDirectory() as tmp:
        rng = random.Random(seed)
        for i, (offset, length) in enumerate(random_at):
            src = Path(tmp) / f"r{i}"
            src.write_bytes(rng.randbytes(length))
            cmds += ["-c", f"write -q -s {src} {offset} {length}"]
        if cmds:
            run("qemu-io", "-f", fmt, *cmds, path)
    return path


def guest_digest(path: Path, fmt: str | None = None) -> str:
    """sha256 of the guest-visible bytes (via ``qemu-img convert -O raw``) and the size:
    independent of the driver's own reader."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "flat.raw"
        fmt_args = ["-f", fmt] if fmt else []
        run("qemu-img", "convert", "-U", *fmt_args, "-O", "raw", path, raw)
        h = hashlib.sha256()
        with raw.open("rb") as f:
            while chunk := f.read(4 * MiB):
                h.update(chunk)
        return f"{raw.stat().st_size}:{h.hexdigest()}"


def virtual_size(path: Path, fmt: str) -> int:
    info = json.loads(run("qemu-img", "info", "-U", "-f", fmt, "--output=json", path))
    return int(info["virtual-size"])


def identical(a: Path, b: Path, fa: str, fb: str) -> bool:
    """Same virtual size, and ``qemu-img compare`` finds the same guest-visible content.
    (Not ``compare -s``: that also compares allocation, which differs between formats.)"""
    if virtual_size(a, fa) != virtual_size(b, fb):
        return False
    out = subprocess.run(
        ["qemu-img", "compare", "-U", "-f", fa, "-F", fb, str(a), str(b)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode in (0, 1), out.stderr
    return out.returncode == 0


def image_format(path: Path) -> str:
    return str(json.loads(run("qemu-img", "info", "-U", "--output=json", path))["format"])


@attrs.define
class FakeVM:
    """A process holding images open for writing, as a running QEMU does."""

    images: list[tuple[Path, str]]
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = attrs.field(factory=list)

    def start(self) -> None:
        for i, (path, fmt) in enumerate(self.images):
            sock = self.workdir / f"vm{i}.sock"
            sock.unlink(missing_ok=True)
            proc = subprocess.Popen(
                ["qemu-nbd", "--persistent", f"--socket={sock}", f"--format={fmt}", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.procs.append(proc)
            deadline = time.monotonic() + 20
            while not sock.exists():
                assert proc.poll() is None, "qemu-nbd (the fake VM) exited"
                assert time.monotonic() < deadline, "the fake VM did not start"
                time.sleep(0.02)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.procs.clear()

    @property
    def running(self) -> bool:
        return any(p.poll() is None for p in self.procs)


@pytest.fixture
def fake_vms(tmp_path: Path) -> Iterator[list[FakeVM]]:
    vms: list[FakeVM] = []
    yield vms
    for vm in vms:
        vm.stop()


def no_temp_files(*dirs: Path) -> bool:
    return not [p for d in dirs for p in d.iterdir() if ".cozybackup-restore-" in p.name]
