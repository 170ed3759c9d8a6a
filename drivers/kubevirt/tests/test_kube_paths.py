"""The Kubernetes path's pieces that need no cluster: the stream read front to back from
an export's raw image equals the one read through qemu-nbd; the gzip body an upload sends
is the raw image; a Kubernetes connection's mistakes are the operator's, named for them.
(The whole path, on the real API server through worker Jobs, is ``tests/kube/test_kubevirt.py``
at the repository's root.)"""

from __future__ import annotations

import io
import json
import logging
import random
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from cozybackup_kubevirt._https import gzip_image
from cozybackup_kubevirt._kube import (
    GROUP_SNAPSHOT_VERSIONS,
    VOLUME_GROUP_SNAPSHOT,
    VOLUME_SNAPSHOT,
    Cluster,
    _refused,
)
from cozybackup_kubevirt._kube_backup import GROUP_UNBOUND_SECONDS, group_failed, snapshots
from cozybackup_kubevirt._kube_machine import is_kube, locate
from cozybackup_kubevirt._nbd import serve
from cozybackup_kubevirt._params import KubeVirtParameters, Snapshots
from cozybackup_kubevirt._stream import (
    BLOCK,
    StreamInvalid,
    Summary,
    canonical,
    read_header,
    records,
    sequential_runs,
    write_runs,
    write_stream,
)

from cozybackup_core import (
    ApplicationMisconfigured,
    ApplicationRef,
    AppLocation,
    Deadline,
    DriverError,
)

from conftest import MiB, make_image

SIZE = 12 * MiB + 4096  # not a whole number of blocks: the last one is short
WRITTEN = ((0, 5000), (4 * MiB - 100, 70_000), (9 * MiB + 7, 300_000), (SIZE - 1000, 1000))


def test_an_exported_raw_image_streams_as_through_qemu_nbd(tmp_path: Path) -> None:
    img = make_image(tmp_path / "d.raw", "raw", SIZE, random_at=WRITTEN, seed=3)
    deadline = Deadline.after(60)
    via_nbd = io.BytesIO()
    with serve(img, "raw", deadline=deadline) as client:
        write_stream(client, via_nbd, deadline.check)
    via_export = io.BytesIO()
    with img.open("rb") as body:
        summary = write_runs(via_export, SIZE, sequential_runs(body, SIZE, deadline.check))
    assert via_export.getvalue() == via_nbd.getvalue()
    assert summary.virtual_size == SIZE and 0 < summary.data_bytes < SIZE // 4


def test_records_do_not_depend_on_the_pieces_a_reader_found() -> None:
    rnd = random.Random(5)
    content = [(0, rnd.randbytes(3 * BLOCK)), (5 * BLOCK, rnd.randbytes(130 * BLOCK))]
    whole = list(canonical(content))
    for trial in range(20):
        pieces = []
        for offset, data in content:
            blocks = len(data) // BLOCK
            cuts = sorted(rnd.sample(range(1, blocks), min(trial % 5, blocks - 1)))
            for lo, hi in zip([0, *cuts], [*cuts, blocks], strict=True):
                pieces.append((offset + lo * BLOCK, data[lo * BLOCK : hi * BLOCK]))
        assert list(canonical(pieces)) == whole
    # Cut at 4 MiB (64 blocks): 0-3, 5-63, 64-127, 128-134.
    assert [(o // BLOCK, len(d) // BLOCK) for o, d in whole] == [
        (0, 3),
        (5, 59),
        (64, 64),
        (128, 7),
    ]


def test_an_export_cut_short_or_too_long_is_refused(tmp_path: Path) -> None:
    raw = make_image(tmp_path / "d.raw", "raw", SIZE, random_at=WRITTEN).read_bytes()
    tick = Deadline.after(60).check
    with pytest.raises(StreamInvalid, match="ends early"):
        list(sequential_runs(io.BytesIO(raw[:-1]), SIZE, tick))
    with pytest.raises(StreamInvalid, match="longer"):
        list(sequential_runs(io.BytesIO(raw + b"x"), SIZE, tick))


def test_the_upload_body_is_the_raw_image_gzipped(tmp_path: Path) -> None:
    raw = make_image(tmp_path / "d.raw", "raw", SIZE, random_at=WRITTEN, seed=4).read_bytes()
    stream = io.BytesIO()
    tick = Deadline.after(60).check
    write_runs(stream, SIZE, sequential_runs(io.BytesIO(raw), SIZE, tick))
    stream.seek(0)
    size = read_header(stream)
    body = b"".join(gzip_image(size, records(stream, size, Summary(size)), tick))
    assert zlib.decompress(body, 31) == raw
    # The holes cost about 1/230 of their size on the wire (zlib level 1 on zeros).
    assert len(body) < sum(n for _, n in WRITTEN) + SIZE // 200


def _loc(kind: str, connection: dict[str, Any]) -> AppLocation:
    ref = ApplicationRef(api_group="apps.cozystack.io", kind=kind, name="x")
    return AppLocation(ref=ref, namespace="tenant-a", connection=connection)


@pytest.mark.parametrize(
    ("kind", "connection"),
    [
        ("VMDisk", {"dataVolume": "vm-disk-x", "path": "/x"}),
        ("VMDisk", {"dataVolume": ""}),
        ("VMDisk", {"virtualMachine": "vm-instance-x"}),
        ("VMInstance", {"dataVolume": "vm-disk-x"}),
        ("VMInstance", {"virtualMachine": "vm", "uploadProxyURL": 3}),
    ],
)
def test_a_wrong_kubernetes_connection_is_the_operators(
    kind: str, connection: dict[str, Any]
) -> None:
    loc = _loc(kind, connection)
    assert is_kube(loc)
    with pytest.raises(ApplicationMisconfigured) as err:
        locate(loc, cluster=None)  # type: ignore[arg-type]  # refused before any call
    assert "ask the platform operator" in str(err.value)
    assert "vm-disk" not in str(err.value) and "vm-instance" not in str(err.value)


def test_a_file_connection_is_not_a_kubernetes_one() -> None:
    assert not is_kube(_loc("VMDisk", {"path": "/var/lib/vms/x.qcow2", "format": "qcow2"}))


class _Discovery:
    """A cluster as API discovery answers: the versions each group serves."""

    def __init__(self, served: dict[str, set[str]]) -> None:
        self.served = served

    def versions(self, group: str) -> set[str]:
        return self.served.get(group, set())


@pytest.mark.parametrize(
    ("asked", "served", "taken"),
    [
        ("auto", {"v1beta1"}, "kubevirt"),
        ("auto", set(), "volume"),
        # A KubeVirt serving only another version of its snapshot API: the driver's
        # v1beta1 objects would be refused, so volume snapshots.
        ("auto", {"v1alpha1"}, "volume"),
        ("volume", {"v1beta1"}, "volume"),
        ("kubevirt", set(), "kubevirt"),
    ],
)
def test_auto_takes_kubevirts_snapshots_where_served_else_volume_snapshots(
    asked: str, served: set[str], taken: str
) -> None:
    params = KubeVirtParameters(snapshots=Snapshots(asked))
    cluster = _Discovery({"snapshot.kubevirt.io": served})
    assert snapshots(cluster, params) is Snapshots(taken)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("served", "taken"),
    [({"v1", "v1beta2"}, "v1"), ({"v1beta2", "v1beta1"}, "v1beta2"), ({"v1beta1"}, "v1beta1")],
)
def test_group_snapshots_are_taken_in_the_newest_version_served(
    served: set[str], taken: str
) -> None:
    cluster = Cluster.__new__(Cluster)
    cluster.versions = _Discovery({VOLUME_GROUP_SNAPSHOT.group: served}).versions  # type: ignore[method-assign]
    kind = cluster.served(VOLUME_GROUP_SNAPSHOT, GROUP_SNAPSHOT_VERSIONS, hint="h")
    assert kind.api_version == f"groupsnapshot.storage.k8s.io/{taken}"


def test_group_snapshots_asked_of_a_cluster_without_them_tell_the_operator_what_is_missing() -> (
    None
):
    cluster = Cluster.__new__(Cluster)
    cluster.versions = _Discovery({VOLUME_GROUP_SNAPSHOT.group: {"v1alpha1"}}).versions  # type: ignore[method-assign]
    with pytest.raises(DriverError) as caught:
        cluster.served(
            VOLUME_GROUP_SNAPSHOT, GROUP_SNAPSHOT_VERSIONS, hint="CSIVolumeGroupSnapshot"
        )
    assert "ask the platform operator" in caught.value.message
    assert "groupsnapshot" not in caught.value.message  # the tenant is told no API names
    detail = str(caught.value.admin_detail)
    assert "serves ['v1alpha1']" in detail and "CSIVolumeGroupSnapshot" in detail


def test_a_group_snapshot_never_bound_fails_with_what_may_be_missing() -> None:
    """A snapshot controller without its group snapshot feature gate (or a CSI driver
    without group snapshots) never writes the group's status: the backup fails after
    ``GROUP_UNBOUND_SECONDS`` instead of waiting for the job's deadline."""
    unbound: dict[str, Any] = {"metadata": {"name": "g"}}
    assert group_failed(time.monotonic())(unbound) is None
    said = group_failed(time.monotonic() - GROUP_UNBOUND_SECONDS - 1)(unbound)
    assert said is not None and "no VolumeGroupSnapshotContent after 300 s" in said
    assert "CSIVolumeGroupSnapshot feature gate" in said
    # Bound: only a lasting status.error fails it (the controller retries).
    bound = {"status": {"boundVolumeGroupSnapshotContentName": "c", "error": {"message": "x"}}}
    assert group_failed(time.monotonic() - GROUP_UNBOUND_SECONDS - 1)(bound) is None


def test_a_misspelled_snapshots_choice_names_the_choices() -> None:
    with pytest.raises(ValueError, match='use one of "auto", "kubevirt", "volume"'):
        Snapshots("csi")


def _api_error(status: int, message: str) -> Exception:
    from kubernetes.client.exceptions import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
        ApiException,
    )

    exc = ApiException(status=status, reason="refused")
    exc.body = json.dumps({"kind": "Status", "status": "Failure", "message": message})
    return exc  # type: ignore[no-any-return]


def test_a_quota_refusal_tells_the_tenant_what_is_missing_and_nothing_else() -> None:
    said = (
        'persistentvolumeclaims "cozybackup-volsnap-claim-1" is forbidden: exceeded quota: '
        "storage, requested: requests.storage=40Gi, used: requests.storage=90Gi, "
        "limited: requests.storage=100Gi"
    )
    with pytest.raises(DriverError) as caught, _refused("create PersistentVolumeClaim x"):
        raise _api_error(403, said)
    assert "resource quota leaves no room" in caught.value.message
    assert "40Gi" not in caught.value.message and said in str(caught.value.admin_detail)


def test_an_admission_refusal_reaches_the_operator_whole() -> None:
    """A webhook's reason comes last in a long message: it is kept, past 300 characters
    (the driver looks for KubeVirt's "snapshot feature gate not enabled" in it)."""
    said = (
        'admission webhook "virtualmachine-snapshot-validator.snapshot.kubevirt.io" denied '
        "the request: " + "x" * 300 + " snapshot feature gate not enabled"
    )
    with pytest.raises(DriverError) as caught, _refused("create VirtualMachineSnapshot s"):
        raise _api_error(400, said)
    assert "snapshot feature gate not enabled" in str(caught.value.admin_detail)
    assert "ClusterRole" not in str(caught.value.admin_detail)  # not an RBAC refusal


def test_a_cleanup_that_fails_is_logged_and_never_hides_what_happened(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Deletions are cleanup (in ``finally`` blocks): a refused one must not replace the
    error that brought the job there, nor fail a backup whose data is stored."""

    class Refusing:
        def delete_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> None:
            raise _api_error(500, "etcdserver: request timed out")

        def delete_namespaced_persistent_volume_claim(self, *args: Any, **kwargs: Any) -> None:
            raise _api_error(404, "not found")

        def patch_namespaced_persistent_volume_claim(self, *args: Any, **kwargs: Any) -> None:
            raise _api_error(409, "the object has been modified")

    cluster = Cluster.__new__(Cluster)
    cluster.namespace, cluster.deadline = "tenant-a", Deadline.after(60)
    cluster.log = logging.getLogger("cleanup-test")
    cluster._custom, cluster._core = Refusing(), Refusing()
    with caplog.at_level(logging.ERROR, "cleanup-test"):
        assert cluster.delete(VOLUME_SNAPSHOT, "cozybackup-volsnap-1") is False
        assert cluster.delete_claim("cozybackup-volsnap-claim-1") is True  # already gone
        assert cluster.unlabel_claim("vm-disk-a", "backups.cozystack.io/volume-group") is False
    deleted, unlabelled = caplog.records
    assert "VolumeSnapshot cozybackup-volsnap-1" in deleted.getMessage()
    assert "etcdserver: request timed out" in deleted.getMessage()
    assert "app.kubernetes.io/managed-by=cozybackup" in deleted.getMessage()
    assert "PersistentVolumeClaim vm-disk-a" in unlabelled.getMessage()
    assert "remove label backups.cozystack.io/volume-group" in unlabelled.getMessage()
