"""ClickHouse failures → errors a tenant can act on.

The server's own text goes to ``admin_detail`` only (masked: it can echo a statement,
and a native-mode statement holds storage credentials); the tenant reads what failed,
while doing what, and what to do.
"""

from __future__ import annotations

from collections.abc import Iterable

from cozybackup_core import (
    CozyError,
    CredentialsRejected,
    DatabaseUnavailable,
    DriverError,
    MissingPrivilege,
)

from ._client import ServerError, Unreachable, mask

__all__ = ["CredentialsRejected", "DatabaseUnavailable", "MissingPrivilege"]


#: Error codes (``src/Common/ErrorCodes.cpp``) grouped by what the tenant can do.
_AUTH = {
    192,
    193,
    194,
    516,
}  # UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, AUTHENTICATION_FAILED
_PRIVILEGE = {164, 497}  # READONLY, ACCESS_DENIED
_GONE = {60, 81}  # UNKNOWN_TABLE, UNKNOWN_DATABASE
_BUSY = {202, 203}  # TOO_MANY_SIMULTANEOUS_QUERIES, NO_FREE_CONNECTION
_NAMED = {
    241: "the server ran out of memory (its memory limit for a query)",
    159: "the server's time limit for a query was reached",
    243: "the server ran out of disk space",
    252: "the table has too many parts; the server refuses more inserts until it merges",
    62: "the server did not accept a statement's syntax",
    50: "the server does not know a data type of the backup",
    46: "the server does not know a function the schema uses",
    57: "an object already exists",
    36: "the server rejected an argument",
    70: "the server could not convert a value",
    33: "the data ended early",
    27: "the data could not be parsed",
    499: "the server could not use the backup storage it was handed (S3 error); ask the "
    "platform operator to check that the application's server can reach it",
    598: "the server found a backup already in the place it was handed; ask the platform operator",
}


def classify(
    exc: Exception, *, doing: str, secrets: Iterable[str] = (), after: str = ""
) -> CozyError:
    """``doing`` completes "... while <doing>"; ``after`` says what state things are in."""
    tail = f"; {after}" if after else ""
    if isinstance(exc, Unreachable):
        return DatabaseUnavailable(
            f"the ClickHouse server could not be reached or went away while {doing}; check "
            f"that it is running, then run the job again{tail}",
            admin_detail=mask(str(exc), secrets),
        )
    if not isinstance(exc, ServerError):  # pragma: no cover - callers pass only these
        raise TypeError(type(exc).__name__)
    detail = mask(exc.text, secrets)
    code = exc.code
    if code in _AUTH or (code is None and exc.text.startswith(("HTTP 401", "HTTP 403"))):
        return CredentialsRejected(
            f"ClickHouse rejected the credentials the platform uses for this application "
            f"while {doing}; ask the platform operator to check them{tail}",
            admin_detail=detail,
        )
    if code in _PRIVILEGE:
        return MissingPrivilege(
            f"the account the platform uses lacks a privilege needed while {doing}; ask the "
            f"platform operator to grant it{tail}",
            admin_detail=detail,
        )
    if code in _GONE:
        return DriverError(
            f"a table or database disappeared while {doing} (dropped or renamed meanwhile); "
            f"run the job again{tail}",
            admin_detail=detail,
        )
    if code in _BUSY:
        return DatabaseUnavailable(
            f"the ClickHouse server was too busy while {doing}; run the job again later{tail}",
            admin_detail=detail,
        )
    what = _NAMED.get(code or -1, "ClickHouse reported an error")
    number = f" (error code {code})" if code is not None else ""
    return DriverError(f"{what}{number} while {doing}{tail}", admin_detail=detail)
