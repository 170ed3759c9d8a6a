"""BackupClass resolution: first match wins, and each failure has its own error."""

from __future__ import annotations

import attrs
import pytest

from cozybackup_core import (
    ApplicationRef,
    Catalog,
    ClassNotFoundError,
    DriverNotFoundError,
    DriverParametersError,
    DriverRegistry,
    GroupKind,
    NoBindingError,
    PluginHost,
    builtin_class,
    load_yaml,
)
from cozybackup_core.testing._platform import _InProcess

from support.drivers import FilesDriver, ToolDriver


def _catalog(*yaml_docs: str) -> Catalog:
    host = PluginHost.load(entry_points=False, plugins=[_InProcess([FilesDriver, ToolDriver])])
    objs = [o for d in yaml_docs for o in load_yaml(d)]
    classes = [o for o in objs if o.kind == "BackupClass"]
    storages = [o for o in objs if o.kind == "StorageLocation"]
    return Catalog.build(host.registry, classes, storages)


TWO = """
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {name: two}
spec:
  storageRef: {name: dedicated}
  strategies:
  - application: {apiGroup: apps.example.com, kind: Directory}
    strategyRef: {kind: Files, name: first}
  - application: {apiGroup: apps.example.com, kind: Directory}
    strategyRef: {kind: Tool, name: second}
---
apiVersion: backups.cozystack.io/v1alpha1
kind: StorageLocation
metadata: {name: dedicated}
spec: {provider: Local, bucket: tenant-a-backups}
"""

APP = ApplicationRef(api_group="apps.example.com", kind="Directory", name="x")


class _Platform(FilesDriver):
    """A driver that serves two platform kinds and puts them in cozy-default."""

    name = "platform-files"
    strategy_kind = "PlatformFiles"
    kinds = (
        GroupKind(api_group="apps.cozystack.io", kind="Postgres"),
        GroupKind(api_group="apps.cozystack.io", kind="VMDisk"),
    )
    default_kinds = ("Postgres", "VMDisk")


def test_cozy_default_binds_what_the_installed_drivers_declare() -> None:
    # The core names no driver: an installed one brings its kinds into cozy-default.
    registry = DriverRegistry()
    assert builtin_class(registry).spec.strategies == ()
    with registry.transaction("test"):
        registry.add(FilesDriver)
        registry.add(_Platform)
    bindings = builtin_class(registry).spec.strategies
    assert [(b.application.kind, b.strategy_ref.kind) for b in bindings] == [
        ("Postgres", "PlatformFiles"),
        ("VMDisk", "PlatformFiles"),
    ]
    assert {b.application.api_group for b in bindings} == {"apps.cozystack.io"}
    assert {b.strategy_ref.name for b in bindings} == {"cozy-default"}
    # Declaring default kinds leaves the driver's own strategy kind as it was.
    assert registry.for_strategy("PlatformFiles").name == "platform-files"


def test_a_default_kind_the_driver_does_not_serve_is_refused() -> None:
    class Liar(FilesDriver):
        name = "liar"
        strategy_kind = "Liar"
        default_kinds = ("Postgres",)

    registry = DriverRegistry()
    with pytest.raises(ValueError, match="default_kinds names 'Postgres'"):
        registry.add(Liar)
    assert len(registry) == 0


def test_a_failed_registration_leaves_nothing_behind() -> None:
    registry = DriverRegistry()
    with pytest.raises(RuntimeError), registry.transaction("plugin-x"):
        registry.add(FilesDriver)
        raise RuntimeError("the plugin's hook failed after adding a driver")
    assert len(registry) == 0
    registry.add(FilesDriver)  # the name is free again
    assert registry.origin("files") == "<in-process>"


def test_first_matching_binding_wins_and_storage_is_dedicated() -> None:
    resolved = _catalog(TWO).resolve("two", APP)
    assert resolved.driver.name == "files"
    assert resolved.binding.strategy_ref.name == "first"
    assert resolved.storage.spec.bucket == "tenant-a-backups"


def test_unknown_class() -> None:
    with pytest.raises(ClassNotFoundError, match="'nope' does not exist"):
        _catalog().resolve("nope", APP)


def test_kind_without_binding() -> None:
    with pytest.raises(
        NoBindingError, match=r"cannot back up applications of kind apps\.example\.com/Directory"
    ):
        _catalog().resolve("cozy-default", APP)


def test_driver_not_installed() -> None:
    with pytest.raises(DriverNotFoundError, match="the Postgres driver is not installed"):
        _catalog().resolve("cozy-default", ApplicationRef(kind="Postgres", name="db"))
    # A class naming a strategy whose driver is missing says which.
    [cls] = load_yaml(
        "apiVersion: backups.cozystack.io/v1alpha1\nkind: BackupClass\nmetadata: {name: pg}\n"
        "spec: {strategies: [{application: {kind: Postgres}, strategyRef: {kind: Postgres, name: x}}]}"
    )
    with pytest.raises(
        DriverNotFoundError, match=r"no driver installed on this platform serves the Postgres"
    ):
        Catalog.build(_catalog().drivers, [cls]).resolve(
            "pg", ApplicationRef(kind="Postgres", name="db")
        )


def test_class_is_validated_when_applied() -> None:
    cat = _catalog(TWO)
    [bad] = load_yaml("""
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {name: bad}
spec:
  strategies:
  - application: {kind: Postgres}
    strategyRef: {kind: Postgres, name: pg}
  - application: {apiGroup: apps.example.com, kind: Directory}
    strategyRef: {kind: Files, name: f}
    parameters: {compression: 99}
    storageRef: {name: nowhere}
""")
    with pytest.raises(DriverParametersError) as info:
        cat.validate(bad)
    assert info.value.problems == [
        ("spec.strategies[1].storageRef.name", "StorageLocation 'nowhere' does not exist")
    ]
    fixed = attrs.evolve(
        bad,
        spec=attrs.evolve(
            bad.spec,
            strategies=tuple(attrs.evolve(b, storage_ref=None) for b in bad.spec.strategies),
        ),
    )
    assert cat.validate(fixed) == [
        (
            "spec.strategies[0].strategyRef",
            "no driver installed on this platform serves the Postgres strategy "
            "(installed: Files, Tool)",
        ),
        (
            "spec.strategies[1].parameters.compression",
            "not a parameter of the files strategy; ignored",
        ),
    ]


class _AnyKindDriver(FilesDriver):
    name = "any"
    strategy_kind = "AnyKind"
    kinds = ()
    any_kind = True


ANY = """
apiVersion: backups.cozystack.io/v1alpha1
kind: BackupClass
metadata: {name: generic}
spec:
  strategies:
  - application: {apiGroup: apps.example.com, kind: Redis}
    strategyRef: {kind: AnyKind, name: any}
  - application: {apiGroup: apps.example.com, kind: Memcached}
    strategyRef: {kind: Files, name: files}
"""


def test_a_generic_driver_serves_any_kind_a_class_binds_and_others_do_not() -> None:
    host = PluginHost.load(entry_points=False, plugins=[_InProcess([FilesDriver, _AnyKindDriver])])
    (cls,) = load_yaml(ANY)
    cat = Catalog.build(host.registry, [], [])
    with pytest.raises(
        ValueError, match=r"spec\.strategies\[1\]\.application: driver 'files' serves"
    ):
        cat.validate(cls)
    cat = Catalog.build(host.registry, [cls], [])
    redis = ApplicationRef(api_group="apps.example.com", kind="Redis", name="cache")
    assert cat.resolve("generic", redis).driver.name == "any"
    with pytest.raises(NoBindingError):
        cat.resolve(
            "generic", ApplicationRef(api_group="apps.example.com", kind="Memcached", name="m")
        )


def test_a_driver_with_no_kinds_must_say_it_serves_any() -> None:
    class NoKinds(FilesDriver):
        name = "none"
        strategy_kind = "NoKinds"
        kinds = ()

    host = PluginHost.load(entry_points=False, plugins=[_InProcess([NoKinds])])
    assert host.broken and "kinds is empty" in host.broken[0].error
