"""Layer rules as a check (kopf's .importlinter is the model), by reading imports with ast.

- a core module imports only modules of its own or a lower layer;
- the core never imports a driver;
- drivers (and plugins-example) import only the core's public facade and testing kit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "cozybackup_core"

# Lower number = lower layer.  Modules may import their own layer or below.
LAYERS: dict[str, int] = {
    "_errors": 0,
    "_fields": 0,
    "_types": 1,
    "_wire": 1,
    "_crd": 1,
    "_classes": 2,
    "_driver": 2,
    "hookspecs": 2,
    "_plugins": 2,
    "_tools": 2,
    "_localpaths": 2,
    "_crypto": 3,
    "_storage": 3,
    "_host": 4,
    "_progress": 4,
    "_redact": 4,
    "_engine": 4,
    "_admission": 4,
    "_recovery": 4,
    "_plans": 4,
    "_schedule": 4,
    "_retention": 4,
    "_prune": 4,
    "_drills": 4,
    "hosts": 5,
    "testing": 6,
    "cli": 7,
    "__init__": 8,
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the package
                pkg = path.relative_to(ROOT).with_suffix("").parts[: -node.level]
                base = ".".join(pkg)
                if node.module:
                    out.append(f"{base}.{node.module}")
                else:  # "from . import x": x is a module or a name of the package
                    out.extend(f"{base}.{a.name}" for a in node.names)
            elif node.module:
                out.append(node.module)
        elif isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "cozybackup_core":
        return None
    if len(parts) == 1:
        return LAYERS["__init__"]
    return LAYERS.get(parts[1])


CORE_FILES = sorted(CORE.rglob("*.py"))


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_imports_only_lower_layers(path: Path) -> None:
    rel = path.relative_to(CORE).with_suffix("").parts
    own = LAYERS[rel[0]]
    for mod in _imports(path):
        assert not mod.startswith("cozybackup_") or mod.startswith("cozybackup_core"), (
            f"core imports driver {mod}"
        )
        layer = _layer(mod)
        if layer is not None and rel[0] != "__init__":
            assert layer <= own, f"{path.name} (layer {own}) imports {mod} (layer {layer})"


DRIVER_FILES = sorted(
    p
    for d in [ROOT / "plugins-example", *(ROOT / "drivers").glob("*")]
    for p in d.rglob("*.py")
    if ".nox" not in p.parts
)


@pytest.mark.parametrize("path", DRIVER_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_drivers_use_only_the_public_api(path: Path) -> None:
    for mod in _imports(path):
        if mod.startswith("cozybackup_core"):
            assert mod in ("cozybackup_core", "cozybackup_core.testing"), (
                f"{path} imports private {mod}"
            )


def test_every_layer_is_known() -> None:
    for path in CORE_FILES:
        assert path.relative_to(CORE).with_suffix("").parts[0] in LAYERS, path
