"""Everything a tenant can read, after successes and failures, holds no platform secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cozybackup_core import ApplicationRef
from cozybackup_core.testing import LocalPlatform, S3ServerInfo, s3_location_yaml

from support.drivers import FILES, FilesDriver, RaisingDriver, ToolDriver
from support.manifests import directory_class

NS = "tenant-a"
APP_PASSWORD = "app-password-Zq81"


@pytest.mark.s3
def test_tenant_view_has_no_endpoint_credential_bucket_or_path(
    tmp_path: Path, s3: S3ServerInfo
) -> None:
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver, RaisingDriver, ToolDriver))
    location = s3_location_yaml(
        s3, "tenant-a-dedicated", "secret-bucket-name", prefix="platform/prefix-xyz"
    )
    plat.apply(
        location
        + """---
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {name: files}
spec:
  storageRef: {name: tenant-a-dedicated}
  strategies:
  - application: {apiGroup: apps.example.com, kind: Directory}
    strategyRef: {kind: Files, name: files}
  - application: {apiGroup: apps.example.com, kind: Raising}
    strategyRef: {kind: Raising, name: raising}
"""
    )
    data = tmp_path / "data-dir-of-app1"
    data.mkdir()
    (data / "x.bin").write_bytes(os.urandom(100_000))
    creds = {"password": APP_PASSWORD}
    good = plat.declare_app(
        NS, "app1", "Directory", {"path": str(data)}, creds, api_group=FILES.api_group
    )
    missing = plat.declare_app(
        NS,
        "app2",
        "Directory",
        {"path": str(tmp_path / "gone-dir")},
        creds,
        api_group=FILES.api_group,
    )

    assert plat.backup(NS, good, "ok", "files").status.phase == "Succeeded"
    assert plat.backup(NS, missing, "missing-dir", "files").status.phase == "Failed"
    assert (
        plat.backup(
            NS,
            ApplicationRef(api_group=FILES.api_group, kind="Directory", name="ghost"),
            "ghost",
            "files",
        ).status.phase
        == "Failed"
    )
    assert plat.restore(NS, "ok", "in-place").status.phase == "Succeeded"
    copy = plat.declare_app(
        NS,
        "copy",
        "Directory",
        {"path": str(tmp_path / "copy-dir")},
        creds,
        api_group=FILES.api_group,
    )
    assert plat.restore(NS, "ok", "to-copy", target=copy).status.phase == "Succeeded"
    assert plat.restore(NS, "nope", "no-backup").status.phase == "Failed"

    # A storage outage during a restore: the error must not name the endpoint or bucket.
    plat.engine.invalidate_stores()
    plat.apply("""
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {name: tenant-a-dedicated}
spec:
  provider: S3
  endpoint: "http://127.0.0.1:9"
  bucket: secret-bucket-name
  prefix: platform/prefix-xyz
  credentialsSecretRef: {name: s3-creds}
""")
    outage = plat.backup(NS, good, "during-outage", "files")
    assert outage.status.phase == "Failed"

    view = plat.tenant_view(NS)
    forbidden = [
        s3.endpoint_url,
        "127.0.0.1",
        s3.access_key,
        s3.secret_key,
        "secret-bucket-name",
        "prefix-xyz",
        "s3-creds",
        "tenant-a-dedicated",
        str(tmp_path),
        "data-dir-of-app1",
        "copy-dir",
        APP_PASSWORD,
        "Traceback",
    ]
    leaks = [s for s in forbidden if s in view]
    assert not leaks, f"tenant-visible objects contain {leaks}:\n{view}"
    assert "ok" in view and "Succeeded" in view and "Failed" in view  # the view is not empty


def test_raising_driver_message_is_scrubbed(tmp_path: Path) -> None:
    """A driver that puts a path and a password into its exception text leaks neither."""
    plat = LocalPlatform(tmp_path / "home", drivers=(RaisingDriver,))
    plat.apply(directory_class("raising", "Raising", "r"))
    ref = plat.declare_app(
        NS,
        "app1",
        "Directory",
        {"path": str(tmp_path / "secret-path")},
        {"password": APP_PASSWORD},
        api_group=FILES.api_group,
    )
    job = plat.backup(NS, ref, "b1", "raising")
    assert job.status.phase == "Failed"
    view = plat.tenant_view(NS)
    assert APP_PASSWORD not in view and "secret-path" not in view and "boom" not in view


def test_d5_masking_is_no_oracle_for_guessed_platform_values(tmp_path: Path) -> None:
    """Jobs named after the admin's bucket and an unused location's credentials read the
    same as a job with a wrong guess: nothing a tenant chose is ever masked."""
    plat = LocalPlatform(tmp_path / "home", drivers=(FilesDriver,))
    plat.apply(
        directory_class("files", "Files", "files")
        + """---
apiVersion: v1
kind: Secret
metadata: {name: offsite-creds}
stringData: {accessKey: minioadmin, secretKey: minioadmin123}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {name: offsite}
spec:
  provider: S3
  endpoint: "http://127.0.0.1:9"
  bucket: offsite-tenant-backups
  credentialsSecretRef: {name: offsite-creds}
"""
    )
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_text("x\n")
    ref = plat.declare_app(NS, "app1", "Directory", {"path": str(data)}, api_group=FILES.api_group)
    guesses = [
        "guess-wrong",
        "minioadmin",
        "minioadmin123",
        "offsite-tenant-backups",
        "x-minioadmin-y",
    ]
    shapes = set()
    for name in guesses:
        job = plat.backup(NS, ref, name, "files")
        assert job.status.phase == "Succeeded"
        assert job.status.message.startswith(f"Backup {name} is ready: "), job.status.message
        shapes.add(job.status.message.replace(name, "NAME").split(":")[0])
    assert shapes == {"Backup NAME is ready"}
    assert "[redacted]" not in plat.tenant_view(NS)


def test_d5_a_secret_around_a_tenant_name_is_still_masked() -> None:
    from cozybackup_core._engine.redact import MASK, Redactor

    redact = Redactor(["minioadmin", "s3.internal.example"])
    text = "could not log in as minioadmin at s3.internal.example for job admin"
    assert redact(text, keep=["admin", "internal"]) == (
        f"could not log in as {MASK} at {MASK} for job admin"
    )
    assert redact("Backup x-minioadmin-y is ready", keep=["x-minioadmin-y"]) == (
        "Backup x-minioadmin-y is ready"
    )
