"""Run the real ``cozybackup`` CLI the way an admin would, for driver tests.

:func:`run_cli` and :func:`cli_ok` run one command; :class:`Cli` is a session on one
home (apply manifests, ``run --once``, read objects back as a tenant); and
:func:`cli_round_trip` is the round trip every driver's CLI test makes: an admin declares
two applications, a tenant backs the first up, damages it, restores it in place and into
the second, and reads nothing secret.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml

from .._engine.redact import sensitive_values
from ._app import AppHandle
from ._manifests import CLI_NS, app_manifests, backup_job, restore_job

#: What ``cozybackup get`` shows a tenant, for :meth:`Cli.tenant_text`.
TENANT_KINDS = ("backupjobs", "backups", "restorejobs")


def run_cli(
    home: Path,
    *args: str,
    stdin: str | None = None,
    timeout: float = 280,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``cozybackup ARGS`` in a child process on the embedded host at ``home``, with only
    the drivers installed as packages (``COZYBACKUP_PLUGINS`` is removed), as an admin
    would have it; ``env`` adds to (or overrides) the environment."""
    full = {**os.environ, "COZYBACKUP_HOME": str(home)}
    full.pop("COZYBACKUP_PLUGINS", None)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cozybackup_core.cli", *args],
        env=full,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a run that must have succeeded (else its whole output, to debug)."""
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


# ---------------------------------------------------------------- a CLI session


@attrs.define
class Cli:
    """The real CLI on the embedded host at ``home``, as an admin and as the tenant of
    ``namespace``; every helper but :meth:`__call__` asserts the command succeeded."""

    home: Path
    namespace: str = CLI_NS
    timeout: float = 280

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(self.home, *args, stdin=stdin, timeout=self.timeout)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        return cli_ok(self(*args, stdin=stdin))

    def apply(self, *manifests: str | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
        """``apply -f -`` of YAML text and/or manifests (one, or a list of them)."""
        docs = []
        for item in manifests:
            if isinstance(item, str):
                docs.append(item if item.endswith("\n") else item + "\n")
            else:
                many = [item] if isinstance(item, Mapping) else list(item)
                docs.append(yaml.safe_dump_all([dict(d) for d in many], sort_keys=False))
        return self.ok("apply", "-f", "-", stdin="---\n".join(docs))

    def run_once(self, *succeeded: str) -> subprocess.CompletedProcess[str]:
        """``run --once``, which must succeed and report each of ``succeeded`` (such as
        ``backupjob/nightly-1``) as Succeeded."""
        run = self("run", "--once")
        out = cli_ok(run)
        for job in succeeded:
            assert f"{job} Succeeded" in out, f"{out}\n{run.stderr}"
        return run

    def get(self, kind: str, name: str) -> dict[str, Any]:
        """One of the tenant's objects, as JSON."""
        doc: dict[str, Any] = json.loads(
            self.ok("get", kind, name, "-n", self.namespace, "-o", "json")
        )
        return doc

    def tenant_text(self, kinds: Sequence[str] = TENANT_KINDS) -> str:
        """What the tenant reads with ``get KIND -o yaml``."""
        return "".join(self.ok("get", kind, "-n", self.namespace, "-o", "yaml") for kind in kinds)


# ---------------------------------------------------------------- the round trip


def cli_round_trip(
    cli: Cli,
    source: AppHandle,
    copy: AppHandle,
    *,
    write_data: Callable[[AppHandle, int], None],
    checksum: Callable[[AppHandle], object],
    backup: str,
    in_place: str,
    to_copy: str,
    backup_class: str = "cozy-default",
    admin: Sequence[str] = (),
    tenant: Sequence[str] = (),
    drivers_show: Sequence[str] = (),
    seeds: tuple[int, int] = (21, 22),
    before_backup: Callable[[], None] | None = None,
    check_backup_run: Callable[[subprocess.CompletedProcess[str]], None] | None = None,
    check_backup: Callable[[dict[str, Any]], None] | None = None,
    tenant_kinds: Sequence[str] = TENANT_KINDS,
    secrets: Sequence[str] = (),
) -> str:
    """A driver's round trip through the real CLI, the driver found by its entry point.

    The admin applies ``admin`` (a BackupClass, say) and declares ``source`` and
    ``copy`` (:func:`app_manifests`); ``cozybackup drivers`` lists ``drivers_show``.  The
    source gets the dataset ``seeds[0]``; the tenant applies the BackupJob ``backup``
    (plus ``tenant``), ``before_backup`` runs, and ``run --once`` must back it up
    (``check_backup_run`` sees that run).  The Backup is Ready, listed, verified, and
    ``check_backup`` sees it.  The source is damaged (``seeds[1]``), then the RestoreJobs
    ``in_place`` and ``to_copy`` must bring back the backed-up data in both applications.
    Nothing the tenant reads (``tenant_kinds``) may hold the home, the applications'
    secrets and locations, or any of ``secrets``; it says the Backup is ready.

    Returns that tenant text for the driver's own checks.
    """
    apps = [doc for app in (source, copy) for doc in app_manifests(app, namespace=cli.namespace)]
    cli.apply(*admin, apps)
    drivers = cli.ok("drivers")
    for text in drivers_show:
        assert text in drivers, drivers
    write_data(source, seeds[0])
    expected = checksum(source)

    job = backup_job(backup, source.ref, backup_class=backup_class, namespace=cli.namespace)
    cli.apply(job, *tenant)
    if before_backup is not None:
        before_backup()
    run = cli.run_once(f"backupjob/{backup}")
    if check_backup_run is not None:
        check_backup_run(run)
    doc = cli.get("backup", backup)
    assert doc["status"]["phase"] == "Ready", doc["status"]
    assert backup in cli.ok("get", "backups", "-n", cli.namespace)
    cli.ok("verify", "backup", backup, "-n", cli.namespace)  # exit 0: the checksums match
    if check_backup is not None:
        check_backup(doc)

    write_data(source, seeds[1])  # the damage
    assert checksum(source) != expected
    cli.apply(
        [
            restore_job(in_place, backup, namespace=cli.namespace),
            restore_job(to_copy, backup, target=copy.ref, namespace=cli.namespace),
        ]
    )
    cli.run_once(f"restorejob/{in_place}", f"restorejob/{to_copy}")
    assert checksum(source) == expected
    assert checksum(copy) == expected

    text = cli.tenant_text(tenant_kinds)
    assert f"Backup {backup} is ready" in text
    found = [str(cli.home), *secrets]
    for app in (source, copy):
        found += [v for v in sensitive_values(app.connection, app.credentials) if len(v) >= 3]
    leaks = [s for s in found if s in text]
    assert not leaks, f"the tenant can read {leaks}"
    return text
