"""BackupClass catalog and resolution.

``(class name, applicationRef)`` -> driver, validated parameters, storage location.
The first binding whose application kind matches wins.  ``cozy-default`` and the
``cozy-backups`` location are built in; an admin object of the same name overrides them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .._api.errors import (
    ClassNotFoundError,
    DriverNotFoundError,
    DriverParametersError,
    NoBindingError,
    NotFoundError,
    ValidationError,
)
from .._api.fields import FieldInvalid
from .._api.types import (
    APPS_GROUP,
    LABEL_CLASS,
    ApplicationRef,
    Backup,
    BackupClass,
    BackupClassSpec,
    GroupKind,
    LocalObjectRef,
    ObjectMeta,
    Retention,
    StorageLocation,
    StorageLocationSpec,
    StrategyBinding,
    StrategyRef,
    VerificationPolicy,
    label_value,
)
from .._api.wire import camel, snapshot, structure
from .._drivers.contract import Driver
from .._drivers.registry import DriverRegistry

DEFAULT_CLASS = "cozy-default"
DEFAULT_BUCKET = "cozy-backups"


def builtin_class(drivers: DriverRegistry) -> BackupClass:
    """``cozy-default``: every kind an installed driver declares in ``default_kinds``."""
    return BackupClass(
        metadata=ObjectMeta(name=DEFAULT_CLASS),
        spec=BackupClassSpec(
            strategies=tuple(
                StrategyBinding(
                    application=GroupKind(api_group=APPS_GROUP, kind=kind),
                    strategy_ref=StrategyRef(kind=strategy, name=DEFAULT_CLASS),
                )
                for kind, strategy in drivers.default_bindings()
            ),
            storage_ref=LocalObjectRef(name=DEFAULT_BUCKET),
        ),
    )


BUILTIN_STORAGE = StorageLocation(
    metadata=ObjectMeta(name=DEFAULT_BUCKET),
    spec=StorageLocationSpec(provider="Local", bucket=DEFAULT_BUCKET),
)


@attrs.frozen(kw_only=True)
class Resolved:
    """Everything the engine needs to run one job for one application."""

    class_name: str
    binding: StrategyBinding
    driver: Driver
    parameters: Any
    storage: StorageLocation

    @property
    def parameters_snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = snapshot(self.parameters)
        return snap


@attrs.define
class Catalog:
    """The classes and storage locations in force, plus the installed drivers."""

    drivers: DriverRegistry
    classes: dict[str, BackupClass] = attrs.field(factory=dict)
    storages: dict[str, StorageLocation] = attrs.field(factory=dict)

    @classmethod
    def build(
        cls,
        drivers: DriverRegistry,
        classes: list[BackupClass] = [],  # noqa: B006 - never mutated
        storages: list[StorageLocation] = [],  # noqa: B006
    ) -> Catalog:
        cat = cls(drivers)
        cat.classes[DEFAULT_CLASS] = builtin_class(drivers)
        cat.storages[DEFAULT_BUCKET] = BUILTIN_STORAGE
        cat.classes.update({c.metadata.name: c for c in classes})
        cat.storages.update({s.metadata.name: s for s in storages})
        return cat

    def binding_for(self, class_name: str, kind: GroupKind) -> StrategyBinding | None:
        """The binding of ``class_name`` that serves ``kind`` (the first that matches)."""
        bc = self.classes.get(class_name)
        if bc is None:
            return None
        return next((b for b in bc.spec.strategies if b.application == kind), None)

    def class_of(self, backup: Backup) -> BackupClass | None:
        """The class a Backup was made with (its label holds the name, or for a name over
        63 characters the name's label form)."""
        value = backup.metadata.labels.get(LABEL_CLASS, "")
        bc = self.classes.get(value)
        if bc is None and value:
            bc = next((c for n, c in self.classes.items() if label_value(n) == value), None)
        return bc

    def retention_for(self, backup: Backup) -> Retention | None:
        """The retention policy in force for a Backup: its binding's, else its class's."""
        bc = self.class_of(backup)
        if bc is None:
            return None
        binding = self.binding_for(bc.metadata.name, backup.spec.application_ref.group_kind)
        return (binding.retention if binding else None) or bc.spec.retention

    def verification_for(self, backup: Backup) -> VerificationPolicy | None:
        """The verification (drill) policy in force for a Backup."""
        bc = self.class_of(backup)
        if bc is None:
            return None
        binding = self.binding_for(bc.metadata.name, backup.spec.application_ref.group_kind)
        return (binding.verification if binding else None) or bc.spec.verification

    def resolve(self, class_name: str, app: ApplicationRef) -> Resolved:
        bc = self.classes.get(class_name)
        if bc is None:
            raise ClassNotFoundError(
                f"BackupClass {class_name!r} does not exist; ask the platform operator which "
                f"classes are available (the default is {DEFAULT_CLASS!r})"
            )
        for i, binding in enumerate(bc.spec.strategies):
            if binding.application == app.group_kind:
                driver = self.drivers.for_strategy(
                    binding.strategy_ref.kind, binding.strategy_ref.api_group
                )
                if not driver.serves(app.group_kind):
                    raise NoBindingError(
                        f"BackupClass {class_name!r} binds {app.group_kind} to a strategy that "
                        "cannot back it up; ask the platform operator to fix the class"
                    )
                params = self._parameters(driver, binding, f"spec.strategies[{i}].parameters")
                return Resolved(
                    class_name=class_name,
                    binding=binding,
                    driver=driver,
                    parameters=params,
                    storage=self._storage(bc, binding),
                )
        if class_name == DEFAULT_CLASS and app.api_group == APPS_GROUP:
            # cozy-default holds what the installed drivers declare: a platform kind with
            # no binding is one whose driver is not installed here.
            raise DriverNotFoundError(
                f"the {app.kind} driver is not installed on this platform; "
                "ask the platform operator"
            )
        raise NoBindingError(
            f"BackupClass {class_name!r} cannot back up applications of kind {app.group_kind}"
        )

    def validate(self, bc: BackupClass) -> list[tuple[str, str]]:
        """Check a class when it is applied; refuse what is wrong for a driver installed
        here (its parameters' values, a missing storage location) and return, as
        warnings, what Cozystack accepts and we would not act on: a strategy no installed
        driver serves (another controller may), a kind bound twice, parameter keys a
        driver does not know."""
        problems: list[tuple[str, str]] = []
        warnings: list[tuple[str, str]] = []
        seen: set[GroupKind] = set()
        for i, binding in enumerate(bc.spec.strategies):
            path = f"spec.strategies[{i}]"
            if binding.application in seen:
                warnings.append(
                    (
                        f"{path}.application",
                        f"{binding.application} is bound twice; only the first binding is used",
                    )
                )
            seen.add(binding.application)
            ref = binding.storage_ref or bc.spec.storage_ref
            if ref is not None and ref.name not in self.storages:
                where = f"{path}.storageRef" if binding.storage_ref else "spec.storageRef"
                problems.append((f"{where}.name", f"StorageLocation {ref.name!r} does not exist"))
            try:
                driver = self.drivers.for_strategy(
                    binding.strategy_ref.kind, binding.strategy_ref.api_group
                )
            except DriverNotFoundError as exc:
                warnings.append((f"{path}.strategyRef", str(exc)))
                continue
            if not driver.serves(binding.application):
                served = ", ".join(str(k) for k in driver.kinds)
                problems.append(
                    (
                        f"{path}.application",
                        f"driver {driver.name!r} serves {served}, not {binding.application}",
                    )
                )
            warnings += [
                (
                    f"{path}.parameters.{key}",
                    f"not a parameter of the {driver.name} strategy; ignored",
                )
                for key in unknown_parameters(driver, binding.parameters)
            ]
            try:
                self._parameters(driver, binding, f"{path}.parameters")
            except ValidationError as exc:
                problems.extend(exc.problems)
        if problems:
            raise DriverParametersError(problems)
        return warnings

    @staticmethod
    def _parameters(driver: Driver, binding: StrategyBinding, path: str) -> Any:
        return parameters_for(driver, binding.parameters, path)

    def _storage(self, bc: BackupClass, binding: StrategyBinding) -> StorageLocation:
        ref = binding.storage_ref or bc.spec.storage_ref or LocalObjectRef(name=DEFAULT_BUCKET)
        try:
            return self.storages[ref.name]
        except KeyError:
            # Tenant-visible: say what is wrong without naming the location.
            raise NotFoundError(
                f"BackupClass {bc.metadata.name!r} points at a storage location that does not "
                "exist; ask the platform operator"
            ) from None


def unknown_parameters(driver: Driver, raw: Mapping[str, Any]) -> list[str]:
    """Top-level keys the driver's parameters type does not have."""
    known = {camel(f.name) for f in attrs.fields(driver.parameters_type)}
    return sorted(k for k in raw if k not in known)


def parameters_for(driver: Driver, raw: Mapping[str, Any], path: str) -> Any:
    """Structure and check a driver's parameters; every problem is reported under ``path``.

    Values are taken as Cozystack writes them too (its parameters are strings: ``"7200"``,
    ``"true"``); keys the driver does not know are left out (``validate`` warns of them).
    A driver names the field in its own terms (``ValidationError([("jobs", "...")])``
    or ``FieldInvalid`` from an attrs validator); the path of the class is prefixed here.
    """
    unknown = set(unknown_parameters(driver, raw))
    known = {k: v for k, v in raw.items() if k not in unknown}
    try:
        params = structure(known, driver.parameters_type, path, from_strings=True)
        driver.validate_parameters(params)
    except ValidationError as exc:
        problems = [(p if p.startswith(path) else _join(path, p), m) for p, m in exc.problems]
        raise DriverParametersError(problems) from None
    except FieldInvalid as exc:
        raise DriverParametersError([(_join(path, camel(exc.field)), exc.message)]) from None
    except ValueError as exc:
        raise DriverParametersError([(path, str(exc))]) from None
    return params


def _join(path: str, field: str) -> str:
    return f"{path}.{field}" if field and not field.startswith("[") else f"{path}{field}"


def storage_summary(loc: StorageLocation) -> Mapping[str, str]:
    """Admin-side description, for ``describe``; never shown to tenants."""
    spec = loc.spec
    return {"provider": spec.provider, "bucket": spec.bucket, "prefix": spec.prefix}
