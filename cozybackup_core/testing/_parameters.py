"""A driver's parameters, checked the way ``cozybackup apply`` checks a BackupClass."""

from __future__ import annotations

import pytest

from .._api.errors import DriverParametersError
from .._api.types import STRATEGY_GROUP
from .._api.wire import load_yaml
from .._catalog.catalog import Catalog
from .._drivers.contract import Driver
from .._drivers.registry import DriverRegistry
from ._manifests import backup_class_yaml


def driver_class_yaml(
    driver: type[Driver], name: str, parameters: str, *, kind: str | None = None
) -> str:
    """A BackupClass ``name`` binding ``kind`` (default: the driver's first default
    kind) to the driver's strategy ``name`` with ``parameters`` (flow YAML)."""
    return backup_class_yaml(
        name,
        kind or driver.default_kinds[0],
        driver.strategy_kind,
        strategy_group=STRATEGY_GROUP,
        parameters=parameters,
    )


def validate_parameters(driver: type[Driver], parameters: str, *, kind: str | None = None) -> None:
    """Validate ``parameters`` as a class's only strategy for ``driver`` (raises the
    :class:`DriverParametersError` a bad class gets)."""
    registry = DriverRegistry()
    registry.add(driver)
    (bc,) = load_yaml(driver_class_yaml(driver, "c", parameters, kind=kind))
    Catalog.build(registry).validate(bc)


def refused_parameters(
    driver: type[Driver], parameters: str, *, kind: str | None = None
) -> DriverParametersError:
    """The error refusing ``parameters``, which must name the field path under
    ``spec.strategies[0].parameters``."""
    with pytest.raises(DriverParametersError) as err:
        validate_parameters(driver, parameters, kind=kind)
    assert str(err.value).startswith("spec.strategies[0].parameters"), str(err.value)
    return err.value
