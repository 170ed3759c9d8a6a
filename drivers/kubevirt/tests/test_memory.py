"""Memory stays flat: a backup and a restore of ten times more data peak at about the same RSS
(each run in a fresh interpreter, so ``ru_maxrss`` is that run's own peak)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import GiB, MiB, make_image

SCRIPT = """
import resource, sys
from pathlib import Path
from cozybackup_core.testing import LocalPlatform
from cozybackup_kubevirt import KubeVirtDriver

image, home = sys.argv[1], Path(sys.argv[2])
plat = LocalPlatform(home, drivers=(KubeVirtDriver,))
ref = plat.declare_app("ns", "big", "VMDisk", {"path": image, "format": "qcow2"})
job = plat.backup("ns", ref, "b1")
assert job.status.phase == "Succeeded", job.status.message
copy = plat.declare_app("ns", "copy", "VMDisk", {"path": str(home / "copy.qcow2")})
job = plat.restore("ns", "b1", "r1", target=copy)
assert job.status.phase == "Succeeded", job.status.message
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def peak_rss_mib(tmp_path: Path, data_mib: int) -> int:
    img = make_image(
        tmp_path / f"d{data_mib}.qcow2",
        "qcow2",
        64 * GiB,
        # Patterns, not random bytes: quick to make, and the driver's own buffers do not
        # depend on what the bytes are.
        patterns=tuple((i % 250 + 1, i * 48 * MiB, 16 * MiB) for i in range(data_mib // 16)),
    )
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(img), str(tmp_path / f"home{data_mib}")],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    img.unlink()
    return int(out.stdout.split()[-1])


@pytest.mark.slow
def test_memory_is_flat_in_the_amount_of_data(tmp_path: Path) -> None:
    small = peak_rss_mib(tmp_path, 64)
    large = peak_rss_mib(tmp_path, 512)
    assert large - small < 32, (small, large)


KUBE_SCRIPT = """
import resource, sys
from pathlib import Path
from cozybackup_core import Deadline
from cozybackup_kubevirt._https import gzip_image
from cozybackup_kubevirt._stream import Summary, read_header, records, sequential_runs, write_runs

image, stream = Path(sys.argv[1]), Path(sys.argv[2])
size, tick = image.stat().st_size, Deadline.after(200).check
with image.open("rb") as body, stream.open("wb") as out:  # an export's raw image
    write_runs(out, size, sequential_runs(body, size, tick))
with stream.open("rb") as src:  # the upload's body
    size = read_header(src)
    sent = sum(len(piece) for piece in gzip_image(size, records(src, size, Summary(size)), tick))
assert sent > 0
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def kube_peak_rss_mib(tmp_path: Path, data_mib: int) -> int:
    img = tmp_path / f"k{data_mib}.raw"
    with img.open("wb") as f:
        f.truncate(4 * data_mib * MiB)
        for i in range(data_mib // 16):
            f.seek(i * 64 * MiB + 12345)
            f.write(bytes([i % 250 + 1]) * (16 * MiB))
    out = subprocess.run(
        [sys.executable, "-c", KUBE_SCRIPT, str(img), str(tmp_path / f"k{data_mib}.vmdisk")],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    img.unlink()
    (tmp_path / f"k{data_mib}.vmdisk").unlink()
    return int(out.stdout.split()[-1])


@pytest.mark.slow
def test_the_kubernetes_path_is_flat_in_the_amount_of_data(tmp_path: Path) -> None:
    """An export's body read into the stream and the stream sent as the upload's gzip body
    (what a worker does on Kubernetes besides the HTTP calls)."""
    small = kube_peak_rss_mib(tmp_path, 64)
    large = kube_peak_rss_mib(tmp_path, 512)
    assert large - small < 32, (small, large)
