"""The conformance kit every driver's tests run (SQLAlchemy's dialect suite is the model).

Subclass :class:`DriverConformance`, set ``driver`` (the class) and ``kind``, and
implement the four application hooks.  Tests that need a capability the driver does not
declare are skipped with that reason.  A driver with ``Capabilities(local_paths=True)``
also implements :meth:`DriverConformance.local_paths`.
"""

from __future__ import annotations

import abc
import base64
import os
import stat
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

from .._api.types import (
    APPS_GROUP,
    ApplicationRef,
    ArtifactRecord,
    BackupClass,
    BackupClassSpec,
    GroupKind,
    ObjectMeta,
    StrategyBinding,
    StrategyRef,
)
from .._api.wire import camel, load_yaml
from .._catalog.catalog import BUILTIN_STORAGE, Catalog, parameters_for
from .._drivers.contract import Driver
from .._drivers.registry import DriverRegistry
from .._engine.redact import sensitive_values
from ..hosts.local import LOCAL_KINDS
from ._app import AppHandle
from ._cozystack import MISSING_CRDS, cozystack_schemas, invalid_under_cozystack
from ._manifests import key_secret_yaml as _key_secret
from ._manifests import local_location_yaml
from ._platform import LocalPlatform

NS = "tenant-conformance"


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

    #: Whether a backup reads the app's local paths.  False when only restores use them
    #: (etcd rebuilds data directories but backs up over the network): the backup may then
    #: succeed, but still must not open what is planted there.
    backup_reads_local_paths: ClassVar[bool] = True

    def local_paths(self, app: AppHandle) -> list[Path]:
        """The files or directories of ``app`` that the driver reads or writes, each
        written verbatim somewhere in ``app.connection``; [] when this application (or
        mode) uses none.  Required with ``Capabilities(local_paths=True)``."""
        raise NotImplementedError(
            f"{self.driver.name} declares local_paths: its conformance test must say which "
            "paths of an application the driver reads or writes (DriverConformance.local_paths)"
        )

    # ---- fixtures

    @pytest.fixture
    def platform(self, tmp_path: Path) -> Iterator[LocalPlatform]:
        plat = LocalPlatform(tmp_path / "home", drivers=(self.driver,))
        if self.backup_class_yaml:
            plat.apply(self.backup_class_yaml)
        yield plat
        # Every object written on every path of every guarantee below (successes and
        # failures) is a valid Cozystack object; checked where Cozystack's CRDs are
        # present (test_written_objects_are_valid_cozystack_objects says where they are not).
        assert invalid_under_cozystack(plat.host.objects) == []

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

    def _stored_deduplicated(self, platform: LocalPlatform, name: str) -> bool:
        """Whether Backup ``name`` was stored in the deduplicating format (chunks in the
        tenant's repository; what an application's server wrote itself is never chunked)."""
        manifest = platform.manifest(NS, name)
        chunked = all(s.chunks or not s.size_bytes for s in manifest.streams)
        return manifest.deduplicated and chunked

    def test_round_trip_in_place(self, platform: LocalPlatform, tmp_path: Path) -> None:
        """On the default storage, which deduplicates: the backup is chunks in the
        tenant's repository."""
        if not self.driver.capabilities.in_place_restore:
            pytest.skip(f"{self.driver.name} does not restore in place")
        app = self.create_app(tmp_path, "origin")
        ref = self._declare(platform, app)
        self.write_data(app, seed=1)
        before = self.checksum(app)
        self._ok(platform.backup(NS, ref, "b1", self.backup_class))
        assert self._stored_deduplicated(platform, "b1")
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
        assert self._stored_deduplicated(platform, "b1")
        self._ok(platform.restore(NS, "b1", "r1", target=copy_ref))
        assert self.checksum(copy) == before
        assert self.checksum(app) == before

    def test_stream_format_backup_restores_after_the_default_changes(
        self, platform: LocalPlatform, tmp_path: Path
    ) -> None:
        """A backup stored in the stream format (``deduplication: false``, the default
        before deduplication was) restores exactly once the location deduplicates, beside
        a deduplicated backup of the same application."""
        platform.apply(local_location_yaml(deduplication=False))
        platform.engine.invalidate_stores()
        app = self.create_app(tmp_path, "origin")
        ref = self._declare(platform, app)
        self.write_data(app, seed=14)
        before = self.checksum(app)
        self._ok(platform.backup(NS, ref, "streamed", self.backup_class))
        assert not self._stored_deduplicated(platform, "streamed")
        platform.apply(local_location_yaml())
        platform.engine.invalidate_stores()
        self.write_data(app, seed=15)
        self._ok(platform.backup(NS, ref, "chunked", self.backup_class))
        assert self._stored_deduplicated(platform, "chunked")
        if self.driver.capabilities.in_place_restore:
            self._ok(platform.restore(NS, "streamed", "r1"))
            assert self.checksum(app) == before
        else:
            copy = self.create_app(tmp_path, "copy")
            self._ok(platform.restore(NS, "streamed", "r1", target=self._declare(platform, copy)))
            assert self.checksum(copy) == before

    def test_backup_describes_what_it_holds(self, platform: LocalPlatform, tmp_path: Path) -> None:
        """``Backup.status.underlyingResources``: Cozystack's self-typed record of what a
        backup holds, filled by the driver (``BackupContext.resources``)."""
        app = self.create_app(tmp_path, "origin")
        self.write_data(app, seed=12)
        self._ok(platform.backup(NS, self._declare(platform, app), "b1", self.backup_class))
        [backup] = platform.backups(NS)
        described = dict(backup.status.underlying_resources or {})
        assert described.pop("apiVersion", None) == f"{backup.spec.strategy_ref.api_group}/v1alpha1"
        assert described.pop("kind", None) == backup.spec.strategy_ref.kind
        assert described, f"the {self.driver.name} driver describes nothing of what it backed up"

    def test_written_objects_are_valid_cozystack_objects(
        self, platform: LocalPlatform, tmp_path: Path
    ) -> None:
        """A backup, a failed backup and a restore, held against Cozystack's CRDs (the
        fixture holds every other test's objects against them too)."""
        if cozystack_schemas() is None:
            pytest.skip(MISSING_CRDS)
        good = self.create_app(tmp_path, "origin")
        bad = self.break_app(self.create_app(tmp_path, "broken"))
        self.write_data(good, seed=13)
        ref = self._declare(platform, good)
        self._ok(platform.backup(NS, ref, "b1", self.backup_class))
        platform.backup(NS, self._declare(platform, bad), "b2", self.backup_class)
        target = None if self.driver.capabilities.in_place_restore else ref
        platform.restore(NS, "b1", "r1", target=target)
        platform.restore(NS, "missing", "r2")
        assert invalid_under_cozystack(platform.host.objects) == []

    def test_failing_backup_commits_nothing(self, platform: LocalPlatform, tmp_path: Path) -> None:
        app = self.break_app(self.create_app(tmp_path, "origin"))
        ref = self._declare(platform, app)
        job = platform.backup(NS, ref, "b1", self.backup_class)
        assert job.status.phase == "Failed"
        assert job.status.message
        assert platform.backups(NS) == []
        assert platform.leftovers() == []
        assert platform.host.objects.list(ArtifactRecord) == []

    def test_corrupted_artifact_is_refused(self, platform: LocalPlatform, tmp_path: Path) -> None:
        app = self.create_app(tmp_path, "origin")
        ref = self._declare(platform, app)
        self.write_data(app, seed=4)
        self._ok(platform.backup(NS, ref, "b1", self.backup_class))
        self.write_data(app, seed=5)
        after = self.checksum(app)
        # The backup's data: the packs of the tenant's repository (the default format),
        # or its streams on a location that does not deduplicate.
        stored = [p for p in platform.stored_files() if p.suffix == ".zst" or "packs" in p.parts]
        assert stored
        data = bytearray(stored[0].read_bytes())
        data[len(data) // 2] ^= 0xFF
        stored[0].write_bytes(bytes(data))
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

    def test_unknown_parameter_keys_warn_and_string_values_convert(self) -> None:
        """Cozystack's parameters are strings and its classes carry keys for other
        drivers: a key this driver does not know is a warning naming it, not a refusal,
        and the class's integer and boolean values written as strings mean the same."""
        given = dict(self._binding().parameters)
        typed = parameters_for(self.driver(), given, "p")
        as_text = {
            camel(k): str(v).lower() if isinstance(v, bool) else str(v)
            for k, v in attrs.asdict(typed, recurse=False).items()
            if isinstance(v, (int, bool))
        }
        mixed = {**given, **as_text, "notAParameterOfAnyDriver": "x"}
        assert parameters_for(self.driver(), mixed, "p") == typed
        bc = self._class_with(mixed)
        registry = DriverRegistry()
        registry.add(self.driver)
        warnings = Catalog.build(registry, [bc], [BUILTIN_STORAGE]).validate(bc)
        assert warnings == [
            (
                "spec.strategies[0].parameters.notAParameterOfAnyDriver",
                f"not a parameter of the {self.driver.name} strategy; ignored",
            )
        ]

    def _binding(self) -> StrategyBinding:
        """The binding of ``kind`` in the conformance's class (cozy-default: none, so
        an empty one)."""
        for bc in self._classes():
            for binding in bc.spec.strategies:
                if binding.application == GroupKind(api_group=self.api_group, kind=self.kind):
                    return binding
        return StrategyBinding(
            application=GroupKind(api_group=self.api_group, kind=self.kind),
            strategy_ref=StrategyRef(kind=self.driver.strategy_kind, name="conformance"),
        )

    def _classes(self) -> list[BackupClass]:
        docs = (
            load_yaml(self.backup_class_yaml, kinds=LOCAL_KINDS) if self.backup_class_yaml else []
        )
        return [d for d in docs if isinstance(d, BackupClass)]

    def _class_with(self, parameters: Mapping[str, Any]) -> BackupClass:
        binding = attrs.evolve(self._binding(), parameters=parameters, storage_ref=None)
        return BackupClass(
            metadata=ObjectMeta(name="conformance"),
            spec=BackupClassSpec(strategies=(binding,)),
        )

    def test_links_and_fifos_at_local_paths_are_refused(
        self, platform: LocalPlatform, tmp_path: Path
    ) -> None:
        """A tenant controls the file types at its own application's paths: a symlink to a
        file outside, a dangling one, one to a FIFO, or a FIFO planted there.  A backup
        fails cleanly without opening the target (unless it never reads the paths), and an
        in-place restore fails cleanly without writing through the link; nothing outside
        changes and the tenant learns no path."""
        if not self.driver.capabilities.local_paths:
            pytest.skip(f"{self.driver.name} reads and writes no local paths")
        app = self.create_app(tmp_path, "origin")
        paths = self.local_paths(app)
        if not paths:
            pytest.skip("this application has no local paths")
        ref = self._declare(platform, app)
        self.write_data(app, seed=12)
        self._ok(platform.backup(NS, ref, "good", self.backup_class))
        outside = tmp_path / "outside-the-application"
        outside.mkdir()
        n = 0
        for i, path in enumerate(paths):
            assert str(path) in _strings(app.connection), f"{path} is not in the connection"
            is_dir = path.is_dir()
            secret = outside / f"secret-{i}"
            if is_dir:
                secret.mkdir()
                (secret / "canary").write_bytes(_CANARY)
            else:
                secret.write_bytes(_CANARY * 1000)
            for plant in ("symlink", "dangling symlink", "symlink to a FIFO", "FIFO"):
                n += 1
                spot = tmp_path / "planted" / f"{i}-{n}" / path.name
                spot.parent.mkdir(parents=True)
                planted = AppHandle(
                    ref=app.ref,
                    connection=_swap_path(app.connection, str(path), str(spot)),
                    credentials=app.credentials,
                    extra=app.extra,
                )
                self._declare(platform, planted)  # the same application, now at ``spot``
                fifo = outside / f"fifo-{n}" if plant == "symlink to a FIFO" else spot
                dangling = outside / f"missing-{n}"
                if plant == "symlink":
                    spot.symlink_to(secret)
                elif plant == "dangling symlink":
                    spot.symlink_to(dangling)
                elif plant == "symlink to a FIFO":
                    spot.symlink_to(fifo)
                with _watch_fifo(fifo if "FIFO" in plant else None) as opened:
                    before = _tree(outside)
                    job = platform.backup(NS, ref, f"b-{n}", self.backup_class)
                    if self.backup_reads_local_paths or job.status.phase != "Succeeded":
                        self._refused(job, plant)
                    if self.driver.capabilities.in_place_restore:
                        self._refused(platform.restore(NS, "good", f"r-{n}"), plant)
                assert not opened, f"{plant}: the driver opened the FIFO"
                assert _tree(outside) == before, f"{plant}: a file outside the app changed"
                assert not dangling.exists(), f"{plant}: the link's target was created"
                if plant == "FIFO":
                    assert stat.S_ISFIFO(spot.lstat().st_mode)
                else:
                    assert spot.is_symlink() and spot.readlink() == (
                        {"symlink": secret, "dangling symlink": dangling}.get(plant, fifo)
                    ), f"{plant}: the link was replaced"
        view = platform.tenant_view(NS)
        assert str(tmp_path) not in view and "outside-the-application" not in view

    def _refused(self, job: Any, plant: str) -> None:
        assert job.status.phase == "Failed", f"{plant}: {job.kind} {job.status.phase}"
        reason = job.status.conditions[0].reason
        assert reason == "UnsafeApplicationPath", f"{plant}: {reason}: {job.status.message}"
        expected = "a FIFO" if plant == "FIFO" else "a symbolic link"
        assert expected in (job.status.message or ""), f"{plant}: {job.status.message}"


_CANARY = b"cozybackup-conformance: a file outside the application\n"


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _swap_path(value: Any, old: str, new: str) -> Any:
    """``value`` (a connection) with every string equal to ``old`` replaced by ``new``."""
    if isinstance(value, str):
        return new if value == old else value
    if isinstance(value, Mapping):
        return {k: _swap_path(v, old, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_swap_path(v, old, new) for v in value]
    return value


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under ``root``: its type and, for files, its bytes (FIFOs not read)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), data)
    return out


@contextmanager
def _watch_fifo(path: Path | None) -> Iterator[list[bool]]:
    """Create the FIFO ``path`` and record whether anyone opens it for reading (they
    then read end-of-file rather than blocking forever)."""
    opened: list[bool] = []
    if path is None:
        yield opened
        return
    os.mkfifo(path)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody has it open for reading
                time.sleep(0.002)
                continue
            opened.append(True)
            os.close(fd)
            time.sleep(0.01)

    thread = threading.Thread(target=watch, name="conformance-fifo-watch", daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        stop.set()
        thread.join()


_ENCRYPTED_DEFAULT = """
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {name: cozy-backups}
spec:
  bucket: cozy-backups
  encryption: {keys: [{id: x1, secretRef: {name: platform-key-x1}}]}
"""
