"""Class parameters of the ``Postgres`` strategy, and their checks.

In a BackupClass (camelCase on the wire)::

    parameters:
      databases: [shop]                  # default: every non-template database
      jobs: 2                            # databases dumped or restored at a time, 1-16
      indexJobs: 2                       # connections building one database's indexes, 1-16
      extraDumpOptions: [--no-owner]     # pg_dump options from an allow-list
      timeoutSeconds: 3600               # on top of the platform's own job deadline
      analyze: true                      # ANALYZE each restored database
      mode: physical                     # logical (default) or physical (pg_basebackup)
      walArchiving: true                 # physical only: stream WAL continuously (PITR)
      pitrWindowSeconds: 604800          # physical only: how far back recoveryTime may go
      walPartialSeconds: 5               # physical only: how often the segment being
                                         # filled is stored (1-3600)
"""

from __future__ import annotations

import re

import attrs

from cozybackup_core import ValidationError

from ._pg import check_name

MAX_JOBS = 16

#: The allowed options that also steer pg_restore (custom-format archives keep owners and
#: privileges; these must be repeated when restoring).
RESTORE_OPTIONS = frozenset(
    {
        "--no-owner",
        "--no-privileges",
        "--no-acl",
        "--no-comments",
        "--no-publications",
        "--no-subscriptions",
        "--no-security-labels",
        "--no-tablespaces",
        "--no-table-access-method",
    }
)
#: Options of pg_dump a BackupClass may add, with no value: those above, and these that
#: only shape the dump.
FLAG_OPTIONS = RESTORE_OPTIONS | {
    "--no-toast-compression",
    "--no-unlogged-table-data",
    "--no-blobs",
    "--load-via-partition-root",
    "--quote-all-identifiers",
    "--serializable-deferrable",
}
#: Options of pg_dump a BackupClass may add as ``--option=VALUE``.
VALUE_OPTIONS = frozenset(
    {
        "--exclude-table",
        "--exclude-table-data",
        "--exclude-schema",
        "--lock-wait-timeout",
    }
)
_LOCK_TIMEOUT = re.compile(r"^[0-9]+(ms|s|min|h|d)?$")


@attrs.frozen(kw_only=True)
class PostgresParameters:
    """``parameters`` of a ``Postgres`` strategy binding (camelCase in a BackupClass).

    ``databases``: back up only these (default: every non-template database).
    ``jobs``: databases dumped or restored at the same time (1-16).
    ``indexJobs``: logical restores: connections building one database's indexes,
    constraints and triggers at the same time once its data is in (``pg_restore -j`` on
    the post-data section, 1-16).
    ``extraDumpOptions``: extra ``pg_dump`` options from an allow-list.
    ``timeoutSeconds``: stop a backup or restore that runs longer than this.
    ``analyze``: run ``ANALYZE`` on each restored database (planner statistics are not
    part of a dump).
    """

    databases: tuple[str, ...] = ()
    jobs: int = 1
    index_jobs: int = 2
    extra_dump_options: tuple[str, ...] = ()
    timeout_seconds: int | None = None
    analyze: bool = True
    #: ``logical`` (``pg_dump`` per database) or ``physical`` (``pg_basebackup``).
    mode: str = "logical"
    #: Physical only: keep a WAL streamer for every application of this binding, so a
    #: restore can stop at any moment (``recoveryTime``) up to the newest archived WAL.
    wal_archiving: bool = False
    #: Physical only: the archived WAL retention keeps for this long, whatever the base
    #: backups kept (None: only what the kept base backups need).
    pitr_window_seconds: int | None = None
    #: Physical only: seconds between two stores of the WAL segment being filled (the
    #: archive's lag is about this much); None: the default, 5.
    wal_partial_seconds: int | None = None


MAX_PARTIAL_SECONDS = 3600
MODES = ("logical", "physical")
#: Fields that mean something to one mode only.
_LOGICAL_ONLY = (("databases", "databases"), ("extra_dump_options", "extraDumpOptions"))
_PHYSICAL_ONLY = (
    ("wal_archiving", "walArchiving"),
    ("pitr_window_seconds", "pitrWindowSeconds"),
    ("wal_partial_seconds", "walPartialSeconds"),
)


def check(parameters: PostgresParameters) -> None:
    """The checks beyond the type, run when a BackupClass is applied and when a job
    resolves it."""
    problems = parameter_problems(parameters)
    if problems:
        # (field, message): the core prefixes the class's path to each field.
        raise ValidationError(problems)


def parameter_problems(p: PostgresParameters) -> list[tuple[str, str]]:
    """Every problem of ``p`` as (field, message), the field in the class's camelCase."""
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, name in enumerate(p.databases):
        why = check_name(name)
        if why:
            problems.append((f"databases[{i}]", why))
        elif name in seen:
            problems.append((f"databases[{i}]", f"{name!r} is listed twice"))
        seen.add(name)
    if not 1 <= p.jobs <= MAX_JOBS:
        problems.append(("jobs", f"must be between 1 and {MAX_JOBS}"))
    if not 1 <= p.index_jobs <= MAX_JOBS:
        problems.append(("indexJobs", f"must be between 1 and {MAX_JOBS}"))
    for i, opt in enumerate(p.extra_dump_options):
        why = option_problem(opt)
        if why:
            problems.append((f"extraDumpOptions[{i}]", why))
    if p.timeout_seconds is not None and p.timeout_seconds < 1:
        problems.append(("timeoutSeconds", "must be at least 1"))
    problems.extend(_mode_problems(p))
    return problems


def _mode_problems(p: PostgresParameters) -> list[tuple[str, str]]:
    if p.mode not in MODES:
        return [("mode", f"must be one of {', '.join(MODES)}, got {p.mode[:40]!r}")]
    problems: list[tuple[str, str]] = []
    # A physical backup is the whole server; a logical one has no WAL to archive.
    other, fields = (
        ("physical", _PHYSICAL_ONLY) if p.mode == "logical" else ("logical", _LOGICAL_ONLY)
    )
    for attr, name in fields:
        if getattr(p, attr) not in ((), None, False):
            problems.append((name, f"means nothing with mode: {p.mode} (only with mode: {other})"))
    if p.pitr_window_seconds is not None and p.pitr_window_seconds < 1:
        problems.append(("pitrWindowSeconds", "must be at least 1"))
    if p.pitr_window_seconds is not None and not p.wal_archiving:
        problems.append(("pitrWindowSeconds", "needs walArchiving: true"))
    if p.wal_partial_seconds is not None:
        if not 1 <= p.wal_partial_seconds <= MAX_PARTIAL_SECONDS:
            problems.append(("walPartialSeconds", f"must be between 1 and {MAX_PARTIAL_SECONDS}"))
        if not p.wal_archiving:
            problems.append(("walPartialSeconds", "needs walArchiving: true"))
    return problems


def option_problem(option: str) -> str | None:
    """Why ``option`` may not be passed to pg_dump, or None."""
    name, eq, value = option.partition("=")
    if name in FLAG_OPTIONS:
        return None if not eq else f"{name} takes no value"
    if name in VALUE_OPTIONS:
        if not eq or not value:
            return f"write it as one item, {name}=VALUE"
        if any(c in value for c in "\x00\n\r"):
            return "the value must be on one line"
        if name == "--lock-wait-timeout" and not _LOCK_TIMEOUT.match(value):
            return "the value must be a duration such as 30s or 5000 (milliseconds)"
        return None
    allowed = ", ".join(sorted(FLAG_OPTIONS) + [f"{o}=..." for o in sorted(VALUE_OPTIONS)])
    return f"{option[:60]!r} is not an allowed pg_dump option (allowed: {allowed})"
