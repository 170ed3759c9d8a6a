"""The core's import contracts (kopf's ``.importlinter`` is the model), checked with ast.

The folders of ``cozybackup_core`` are its layers, lowest first::

    _api           types, fields, wire, CRDs, errors; no I/O
    _policy        pure decisions: cron arithmetic, retention; no I/O
    _drivers       the driver contract, the registry, the driver kit
    _storage | _catalog      stores and providers | BackupClass resolution (independent)
    _plugins, hookspecs      the plugin host and the hooks it calls
    _engine        services and every operation over them, the runner, the host port
    hosts          adapters of the port (independent of each other)
    _cli           the CLI's parts: printing (kubectl's -o forms, selectors, describe),
                   completion, option types, the run/controller loop
    cli | testing  programs and the test kit (independent)
    __init__       the public facade

Contracts: a module imports only its own folder or lower layers; siblings of one layer
do not import each other; there is no import circle (imports under ``TYPE_CHECKING`` and
inside functions count); no module imports another's private names; ``_api`` and
``_policy`` import no I/O library; the core never imports a driver; drivers import only
the public facade and testing kit.  The checks are functions over ``{module: source}``,
so the last tests show each one failing on a module written to break it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "cozybackup_core"

#: Lowest first; a set is one layer whose members are independent of each other.
LAYERS: list[set[str]] = [
    {"_api"},
    {"_policy"},
    {"_drivers"},
    {"_storage", "_catalog"},
    {"_plugins", "hookspecs"},
    {"_engine"},
    {"hosts"},
    {"_cli"},
    {"cli", "testing"},
    {"__init__"},
]
#: Members of one layer that may import each other (a plugin host needs its hookspecs).
PARTNERS = {frozenset({"_plugins", "hookspecs"})}
#: The adapters in ``hosts``: independent, except a host's own modules (its helpers, its
#: install bundle).
HOST_GROUPS = {
    "local": "local",
    "_local_types": "local",
    "memory": "memory",
    "kube": "kube",
    "kube_lease": "kube",
    "kube_install": "kube",
    "kube_admission": "kube",
    "kube_workers": "kube",
    "kube_informer": "kube",
}
NO_IO = {"_api", "_policy"}
IO_MODULES = {
    "os", "io", "sys", "subprocess", "socket", "shutil", "tempfile", "pathlib", "threading",
    "signal", "urllib", "http", "fsspec", "s3fs", "boto3", "botocore", "kubernetes", "sqlite3",
}  # fmt: skip


def _rank(top: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(module: str, source: str, is_package: bool) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import, wherever it is."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                pkg = module.split(".")
                pkg = pkg if is_package else pkg[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno


def core_sources() -> dict[str, tuple[str, bool]]:
    return {
        module_name(p): (p.read_text(), p.name == "__init__.py") for p in sorted(CORE.rglob("*.py"))
    }


def _top(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "cozybackup_core":
        return None
    return "__init__" if len(parts) == 1 else parts[1]


def violations(sources: Mapping[str, tuple[str, bool]]) -> list[str]:
    """Every broken contract in ``{module: (source, is_package)}``."""
    found: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for module, (source, is_pkg) in sources.items():
        own = _top(module)
        assert own is not None
        for target, names, line in imports(module, source, is_pkg):
            where = f"{module}:{line}"
            root = target.split(".")[0]
            if root.startswith("cozybackup_") and root != "cozybackup_core":
                found.append(f"{where} imports the driver {target}")
            if own in NO_IO and root in IO_MODULES:
                found.append(f"{where} imports {root}: {own} does no I/O")
            top = _top(target)
            if top is None:
                continue
            # "from pkg import name": name may be a submodule.
            targets = [t for t in (f"{target}.{n}" for n in names) if t in sources] or [target]
            for t in targets:
                if t in sources and t != module:
                    graph[module].add(t)
            if own == "__init__":
                continue
            if target != "cozybackup_core" and any(
                n.startswith("_") and not n.startswith("__") for n in names
            ):
                found.append(f"{where} takes private names {names} from {target}")
            if top == own:
                if own == "hosts":
                    a, b = module.split(".")[-1], targets[0].split(".")[-1]
                    if b in HOST_GROUPS and HOST_GROUPS.get(a) != HOST_GROUPS[b]:
                        found.append(f"{where}: hosts are independent, {a} imports {b}")
                continue
            if top == "__init__" and not names:
                continue
            if top == "__init__":  # "from .. import x": x must be a module of a lower layer
                tops = [_top(t) or "" for t in targets if t != "cozybackup_core"]
                if not tops:
                    found.append(f"{where} imports the public facade from inside the core")
                    continue
                top = tops[0]
                if top == own:
                    continue
            if _rank(top) > _rank(own):
                found.append(f"{where} ({own}) imports {target} of a higher layer ({top})")
            elif _rank(top) == _rank(own) and frozenset({top, own}) not in PARTNERS:
                found.append(f"{where}: {own} and {top} are independent, it imports {target}")
    found += [f"import circle: {' -> '.join(c)}" for c in _circles(graph)]
    return found


def _circles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), as paths."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            # The facade imports everything and everything may import "from .. import x":
            # a circle through the package itself is how Python packages work, not a design one.
            comp = [m for m in comp if m != "cozybackup_core"]
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_core_keeps_its_contracts() -> None:
    assert violations(core_sources()) == []


def test_every_folder_is_a_known_layer() -> None:
    known = set().union(*LAYERS)
    for path in CORE.rglob("*.py"):
        top = _top(module_name(path))
        assert top in known, f"{path} is in no layer: add its folder to LAYERS"


DRIVER_FILES = sorted(
    p
    for d in [ROOT / "plugins-example", *(ROOT / "drivers").glob("*")]
    for p in d.rglob("*.py")
    if ".nox" not in p.parts
)


@pytest.mark.parametrize("path", DRIVER_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_drivers_use_only_the_public_api(path: Path) -> None:
    for target, _, line in imports(module_name(path), path.read_text(), False):
        if target.startswith("cozybackup_core"):
            assert target in ("cozybackup_core", "cozybackup_core.testing"), (
                f"{path}:{line} imports private {target}"
            )


# ------------------------------------------------------------------ the checks can fail


def _with(**extra: str) -> dict[str, tuple[str, bool]]:
    sources = core_sources()
    for name, source in extra.items():
        sources["cozybackup_core." + name.replace("__", ".")] = (source, False)
    return sources


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("_api__bad", "from .._engine import services\n", "of a higher layer"),
        ("_api__bad", "import subprocess\n", "does no I/O"),
        ("_policy__bad", "from pathlib import Path\n", "does no I/O"),
        ("_catalog__bad", "from .._storage import store\n", "are independent"),
        ("cli__bad", "from ..testing import _platform\n", "are independent"),
        ("_engine__bad", "from .services import _condition\n", "private names"),
        ("_engine__bad", "import cozybackup_sqlite\n", "imports the driver"),
        (
            "_drivers__bad",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .._engine.services import Services\n",
            "of a higher layer",
        ),
    ],
)
def test_a_broken_contract_is_found(module: str, source: str, expected: str) -> None:
    found = violations(_with(**{module: source}))
    assert any(expected in v for v in found), found


def test_an_independent_host_importing_another_is_found() -> None:
    sources = core_sources()
    text, is_pkg = sources["cozybackup_core.hosts.memory"]
    sources["cozybackup_core.hosts.memory"] = (text + "\nfrom .local import LocalHost\n", is_pkg)
    assert any("hosts are independent, memory imports local" in v for v in violations(sources))


def test_a_circle_is_found_even_through_type_only_imports() -> None:
    sources = _with(
        _engine__a="from .b import B\nclass A: ...\n",
        _engine__b="from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import A\nclass B: ...\n",
    )
    assert "import circle: cozybackup_core._engine.a -> cozybackup_core._engine.b" in violations(
        sources
    )
