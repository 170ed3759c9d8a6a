"""Class parameters of the ``Job`` strategy, and their apply-time checks.

In a BackupClass (camelCase on the wire)::

    parameters:
      image: registry.example.com/tools/postgres:15   # Kubernetes hosts only
      timeoutSeconds: 3600
      stream: dump.pgc
      versionCommand: [pg_dump, --version]
      env: {PGHOST: "${connection.host}", PGPORT: "${connection.port}",
            PGUSER: "${credentials.username}", PGPASSWORD: "${credentials.password}"}
      backup:  {command: [pg_dump, -Fc, -Z0, "--dbname=${connection.database}"]}
      restore: {command: [pg_restore, --clean, --if-exists, --exit-on-error,
                          "--dbname=${connection.database}"]}
      inPlaceRestore: true
      toCopyRestore: true
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from cozybackup_core import FieldInvalid, ValidationError

from ._template import ARGV, ENV, Part, TemplateError, parse

#: A week: the platform's own job deadline normally ends a job much earlier.
MAX_TIMEOUT = 7 * 86_400
STREAM_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: The names this driver sets itself (see README): an admin's env may not shadow them.
RESERVED_ENV_PREFIX = "COZY_"
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,511}$")


def _timeout(_inst: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and not 1 <= value <= MAX_TIMEOUT:
        raise FieldInvalid(attribute.name, f"must be between 1 and {MAX_TIMEOUT}, got {value}")


@attrs.frozen(kw_only=True)
class Command:
    """One command: ``command`` is argv (no shell), ``env`` is added to its environment."""

    command: tuple[str, ...]
    env: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class JobParameters:
    """``parameters`` of a ``Job`` strategy binding (see the README for the reference).

    ``backup`` / ``restore``
        The backup command's stdout is the backup; the restore command reads it on stdin.
    ``env``
        Environment for both commands (a command's own ``env`` wins on a clash).
    ``stream``
        The artifact stream's name (``data``); a tenant never sees it.
    ``version_command`` (``versionCommand``)
        argv whose first output line is recorded in the manifest as the tool's version.
    ``timeout_seconds`` (``timeoutSeconds``)
        Stop a command after this long (the platform's job deadline still applies).
    ``in_place_restore`` / ``to_copy_restore`` (``inPlaceRestore`` / ``toCopyRestore``)
        Which restores the commands support; the others are refused before they start.
    ``image``
        The container image a Kubernetes host runs the commands in; the embedded host
        runs them as local processes and ignores it.
    """

    backup: Command
    restore: Command
    env: Mapping[str, str] = attrs.field(factory=dict)
    stream: str = "data"
    version_command: tuple[str, ...] | None = None
    timeout_seconds: int | None = attrs.field(default=None, validator=_timeout)
    in_place_restore: bool = True
    to_copy_restore: bool = True
    image: str | None = None


@attrs.frozen(kw_only=True)
class Compiled:
    """A command with its templates parsed: argv parts and env parts by variable name."""

    argv: tuple[tuple[Part, ...], ...]
    env: Mapping[str, tuple[Part, ...]]


def check(params: JobParameters) -> None:
    """Every apply-time check beyond the types; all problems at once, by field path."""
    problems: list[tuple[str, str]] = []
    compile_command(params, "backup", problems)
    compile_command(params, "restore", problems)
    if params.version_command is not None:
        _argv(params.version_command, "versionCommand", problems)
    if not STREAM_RE.match(params.stream):
        problems.append(
            ("stream", f"{params.stream[:60]!r} is not a valid stream name (a-z0-9._-)")
        )
    if not (params.in_place_restore or params.to_copy_restore):
        problems.append(("toCopyRestore", "inPlaceRestore and toCopyRestore cannot both be false"))
    if params.image is not None and not _IMAGE_RE.match(params.image):
        problems.append(("image", f"{params.image[:80]!r} is not a container image reference"))
    if problems:
        # The shared env is checked with each command: report each problem once.
        raise ValidationError(list(dict.fromkeys(problems)))


def compile_command(
    params: JobParameters, which: str, problems: list[tuple[str, str]] | None = None
) -> Compiled:
    """Parse ``params.<which>`` together with the shared ``env``.

    With ``problems`` given, problems are appended there (apply time); without, the first
    one raises :class:`ValidationError` (a class that changed under a running job).
    """
    sink: list[tuple[str, str]] = [] if problems is None else problems
    cmd: Command = getattr(params, which)
    argv = _argv(cmd.command, f"{which}.command", sink)
    env: dict[str, tuple[Part, ...]] = {}
    for path, mapping in (("env", params.env), (f"{which}.env", cmd.env)):
        for name, value in mapping.items():
            where = f"{path}.{name}"
            if not ENV_NAME_RE.match(name):
                sink.append((path, f"{name[:60]!r} is not a valid environment variable name"))
                continue
            if name.startswith(RESERVED_ENV_PREFIX):
                sink.append(
                    (where, f"names starting with {RESERVED_ENV_PREFIX} are set by the driver")
                )
                continue
            try:
                env[name] = parse(value, ENV)
            except TemplateError as exc:
                sink.append((where, str(exc)))
    if problems is None and sink:
        raise ValidationError(sink)
    return Compiled(argv=argv, env=env)


def _argv(
    argv: tuple[str, ...], path: str, problems: list[tuple[str, str]]
) -> tuple[tuple[Part, ...], ...]:
    if not argv:
        problems.append((path, "must name a program to run (an argv list, not empty)"))
        return ()
    out: list[tuple[Part, ...]] = []
    for i, arg in enumerate(argv):
        try:
            parts = parse(arg, ARGV)
        except TemplateError as exc:
            problems.append((f"{path}[{i}]", str(exc)))
            continue
        if i == 0 and not (len(parts) == 1 and isinstance(parts[0], str) and parts[0].strip()):
            problems.append((f"{path}[0]", "must be a program name or path without placeholders"))
        out.append(parts)
    return tuple(out)
