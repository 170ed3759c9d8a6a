"""The conformance kit every driver's tests run (SQLAlchemy's dialect suite is the model).

Subclass :class:`DriverConformance`, set ``driver`` (the class) and ``kind``, and
implement the four application hooks.  Tests that need a capability the driver does not
declare are skipped with that reason.
"""

from __future__ import annotations

import abc
import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

from .._api.types import APPS_GROUP, ApplicationRef, ArtifactRecord
from .._drivers.contract import Driver
from .._engine.redact import sensitive_values
from ._platform import LocalPlatform

NS = "tenant-conformance"


@attrs.define
class AppHandle:
    """One application under test: its ref plus whatever the driver's tests need."""

    ref: ApplicationRef
    connection: dict[str, Any]
    credentials: dict[str, str] = attrs.field(factory=dict)
    extra: dict[str, Any] = attrs.field(factory=dict)


class DriverConformance(abc.ABC):
    driver: ClassVar[type[Driver]]
    kind: ClassVar[str]
    api_group: ClassVar[str] = APPS_GROUP
    #: The BackupClass manifest (YAML) binding ``kind`` to the driver; None uses cozy-default.
    backup_class_yaml: ClassVar[str | None] = None
    backup_class: ClassVar[str] = "cozy-default"

    # ---- what a driver's test provides

    @abc.abstractmethod
    def create_app(self, tmp_path: Path, name: str) -> AppHandle:
        """Create (start) an empty application; cleanup is the driver test's fixture's job."""

    @abc.abstractmethod
    def write_data(self, app: AppHandle, seed: int) -> None:
        """Replace the app's contents with a dataset determined by ``seed``."""

    @abc.abstractmethod
    def checksum(self, app: AppHandle) -> str:
        """A digest of the app's whole contents (equal data <=> equal digest)."""

    @abc.abstractmethod
    def break_app(self, app: AppHandle) -> AppHandle:
        """An app handle whose backup must fail (e.g. wrong credentials or server stopped)."""

    # ---- fixtures

    @pytest.fixture
    def platform(self, tmp_path: Path) -> Iterator[LocalPlatform]:
        plat = LocalPlatform(tmp_path / "home", drivers=(self.driver,))
        if self.backup_class_yaml:
            plat.apply(self.backup_class_yaml)
        yield plat

    def _declare(self, plat: LocalPlatform, app: AppHandle) -> ApplicationRef:
        return plat.declare_app(
            NS,
            app.ref.name,
            app.ref.kind,
            app.connection,
            app.credentials,
            api_group=app.ref.api_group,
        )

    def _ok(self, job: Any) -> None:
        assert job.status.phase == "Succeeded", f"{job.kind} failed: {job.status.message}"

    # ---- the guarantees

    def test_round_trip_in_place(self, platform: LocalPlatform, tmp_path: Path) -> None:
        if not self.driver.capabilities.in_place_restore:
            pytest.skip(f"{self.driver.name} does not restore in place")
        app = self.create_app(tmp_path, "origin")
        ref = self._declare(platform, app)
        self.write_data(app, seed=1)
        before = self.checksum(app)
        self._ok(platform.backup(NS, ref, "b1", self.backup_class))
        self.write_data(app, seed=2)
        assert self.checksum(app) != before
        self._ok(platform.restore(NS, "b1", "r1"))
        assert self.checksum(app) == before

    def test_round_trip_to_copy(self, platform: LocalPlatform, tmp_path: Path) -> None:
        if not self.driver.capabilities.to_copy_restore:
            pytest.skip(f"{self.driver.name} does not restore into a copy")
        app = self.create_app(tmp_path, "origin")
        copy = self.create_app(tmp_path, "copy")
        ref = self._declare(platform, app)
        copy_ref = self._declare(platform, copy)
        self.write_data(app, seed=3)
        before = self.checksum(app)
        self._ok(platform.backup(NS, ref, "b1", self.backup_class))
        self._ok(platform.restore(NS, "b1", "r1", target=copy_ref))
        assert self.checksum(copy) == before
        assert self.checksum(app) == before

    def test_failing_backup_commits_nothing(self, platform: LocalPlatform, tmp_path: Path) -> None:
        app = self.break_app(self.create_app(tmp_path, "origin"))
        ref = self._declare(platform, app)
        job = platform.backup(NS, ref, "b1", self.backup_class)
        assert job.status.phase == "Failed"
        assert job.status.message
        assert platform.backups(NS) == []
        assert platform.stored_files() == []
        assert platform.host.objects.list(ArtifactRecord) == []

    def test_corrupted_artifact_is_refused(self, platform: LocalPlatform, tmp_path: Path) -> None:
        app = self.create_app(tmp_path, "origin")
        ref = self._declare(platform, app)
        self.write_data(app, seed=4)
        self._ok(platform.backup(NS, ref, "b1", self.backup_class))
        self.write_data(app, seed=5)
        after = self.checksum(app)
        streams = [p for p in platform.stored_files() if p.suffix == ".zst"]
        assert streams
        data = bytearray(streams[0].read_bytes())
        data[len(data) // 2] ^= 0xFF
        streams[0].write_bytes(bytes(data))
        target = None if self.driver.capabilities.in_place_restore else ref
        job = platform.restore(NS, "b1", "r1", target=target)
        assert job.status.phase == "Failed"
        assert job.status.conditions[0].reason == "ArtifactCorrupt"
        assert self.checksum(app) == after, "the target was touched before checksums were verified"

    def test_restores_exactly_the_named_backup(
        self, platform: LocalPlatform, tmp_path: Path
    ) -> None:
        app = self.create_app(tmp_path, "origin")
        ref = self._declare(platform, app)
        self.write_data(app, seed=6)
        first = self.checksum(app)
        self._ok(platform.backup(NS, ref, "older", self.backup_class))
        self.write_data(app, seed=7)
        self._ok(platform.backup(NS, ref, "newer", self.backup_class))
        self.write_data(app, seed=8)
        if self.driver.capabilities.in_place_restore:
            self._ok(platform.restore(NS, "older", "r1"))
            assert self.checksum(app) == first
        else:
            copy = self.create_app(tmp_path, "copy")
            self._ok(platform.restore(NS, "older", "r1", target=self._declare(platform, copy)))
            assert self.checksum(copy) == first

    def test_tenant_sees_no_platform_secrets(self, platform: LocalPlatform, tmp_path: Path) -> None:
        """Success and failure paths, with the default storage encrypted: nothing a tenant
        can read holds a path, bucket, credential, Secret name or key material, and an
        encrypted backup still round-trips."""
        key, other_key = os.urandom(32), os.urandom(32)
        platform.apply(_key_secret("platform-key-x1", key), _ENCRYPTED_DEFAULT)
        platform.engine.invalidate_stores()
        good = self.create_app(tmp_path, "origin")
        bad = self.break_app(self.create_app(tmp_path, "broken"))
        ref = self._declare(platform, good)
        self.write_data(good, seed=9)
        before = self.checksum(good)
        self._ok(platform.backup(NS, ref, "b1", self.backup_class))
        platform.backup(NS, self._declare(platform, bad), "b2", self.backup_class)
        target = None if self.driver.capabilities.in_place_restore else ref
        if target is None:
            self.write_data(good, seed=10)
        self._ok(platform.restore(NS, "b1", "r1", target=target))
        assert self.checksum(good) == before
        platform.restore(NS, "missing", "r2")
        # The key is replaced: the restore fails before the target is touched.
        self.write_data(good, seed=11)
        after = self.checksum(good)
        platform.apply(_key_secret("platform-key-x1", other_key))
        platform.engine.invalidate_stores()
        job = platform.restore(NS, "b1", "r3", target=target)
        assert job.status.phase == "Failed"
        assert job.status.conditions[0].reason == "EncryptionKeyUnavailable"
        assert self.checksum(good) == after

        view = platform.tenant_view(NS)
        secrets = [str(platform.home), "buckets", "cozy-backups/", "platform-key-x1"]
        for raw in (key, other_key):
            secrets += [base64.b64encode(raw).decode(), raw.hex()]
        for handle in (good, bad):
            found = sensitive_values(handle.connection, handle.credentials)
            secrets += [v for v in found if len(v) >= 3]
        leaks = [s for s in secrets if s in view]
        assert not leaks, f"tenant-visible objects contain {leaks}"


def _key_secret(name: str, raw: bytes) -> str:
    return f"""
apiVersion: v1
kind: Secret
metadata: {{name: {name}}}
stringData: {{key: "{base64.b64encode(raw).decode()}"}}
"""


_ENCRYPTED_DEFAULT = """
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {name: cozy-backups}
spec:
  bucket: cozy-backups
  encryption: {keys: [{id: x1, secretRef: {name: platform-key-x1}}]}
"""
