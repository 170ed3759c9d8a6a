"""A driver's parameters, checked the way ``cozybackup apply`` checks a BackupClass."""

from __future__ import annotations

import pytest

from .._api.errors import DriverParametersError
from .._api.types import GroupKind
from .._api.wire import load_yaml
from .._catalog.catalog import Catalog
from .._drivers.contract import Driver
from .._drivers.registry import DriverRegistry
from ._manifests import backup_class_yaml


def driver_class_yaml(
    driver: type[Driver], name: str, parameters: str, *, kind: str | None = None
) -> str:
    """A BackupClass ``name`` binding ``kind`` of apps.cozystack.io (default: the first
    kind the driver serves) to the driver's strategy ``name`` with ``parameters``."""
    served = GroupKind(kind=kind) if kind else driver.kinds[0]
    return backup_class_yaml(
        name,
        served.kind,
        driver.strategy_kind,
        api_group=served.api_group,
        strategy_group=driver.strategy_group,
        parameters=parameters,
    )


def validate_parameters(
    driver: type[Driver], parameters: str, *, kind: str | None = None
) -> list[tuple[str, str]]:
    """Validate ``parameters`` as a class's only strategy for ``driver`` (raises the
    :class:`DriverParametersError` a bad class gets); returns the warnings ``apply``
    would print (keys the driver does not know)."""
    registry = DriverRegistry()
    registry.add(driver)
    (bc,) = load_yaml(driver_class_yaml(driver, "c", parameters, kind=kind))
    return Catalog.build(registry).validate(bc)


def refused_parameters(
    driver: type[Driver], parameters: str, *, kind: str | None = None
) -> DriverParametersError:
    """The error refusing ``parameters``, which must name the field path under
    ``spec.strategies[0].parameters``."""
    with pytest.raises(DriverParametersError) as err:
        validate_parameters(driver, parameters, kind=kind)
    assert str(err.value).startswith("spec.strategies[0].parameters"), str(err.value)
    return err.value
