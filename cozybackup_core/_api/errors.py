"""The error model.

One base class.  Whether the engine retries is part of the type (kopf's model):
:class:`TransientError` carries a delay and is retried with backoff, everything else is
permanent and fails the job with a condition.  Messages of :class:`CozyError` are written
for the tenant: they never contain an endpoint, a credential, a bucket or a path.  Details
for the operator go to ``admin_detail`` and to the platform log.
"""

from __future__ import annotations


class CozyError(Exception):
    """Base of every error cozybackup raises on purpose.

    ``str(error)`` is safe to show a tenant.  ``reason`` is the CamelCase condition reason.
    """

    reason: str = "Error"

    def __init__(self, message: str, *, admin_detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.admin_detail = admin_detail


class PermanentError(CozyError):
    """Retrying will not help; the job fails."""

    reason = "Failed"


class TransientError(CozyError):
    """May succeed later; the engine retries after ``delay`` seconds with backoff."""

    reason = "Transient"

    def __init__(
        self, message: str, *, delay: float = 5.0, admin_detail: str | None = None
    ) -> None:
        super().__init__(message, admin_detail=admin_detail)
        self.delay = delay


class ValidationError(PermanentError, ValueError):
    """Input that does not fit the schema.  Each problem names its field path."""

    reason = "InvalidSpec"

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{path}: {msg}" if path else msg for path, msg in problems))


class ClassNotFoundError(PermanentError, KeyError):
    reason = "BackupClassNotFound"

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


class NoBindingError(PermanentError, LookupError):
    reason = "KindNotSupported"


class DriverNotFoundError(PermanentError, KeyError):
    """No installed driver serves the strategy a class binds (Cozystack's reason)."""

    reason = "StrategyNotServed"

    def __str__(self) -> str:
        return self.message


class DriverParametersError(ValidationError):
    reason = "InvalidParameters"


class NotFoundError(PermanentError, KeyError):
    """A referenced object does not exist (in the tenant's own namespace)."""

    reason = "NotFound"

    def __str__(self) -> str:
        return self.message


class ConflictError(CozyError):
    """A write lost a race or changed something immutable."""

    reason = "Conflict"


class StorageError(TransientError):
    """The artifact store could not be read or written.  Retried; then the job fails."""

    reason = "StorageUnavailable"


class ArtifactCorruptError(PermanentError):
    """Stored bytes do not match the checksums recorded at backup time."""

    reason = "ArtifactCorrupt"


class DriverError(PermanentError):
    """Raised by drivers: the tool failed.  The message must be tenant-safe."""

    reason = "DriverFailed"


class DeadlineExceeded(PermanentError, TimeoutError):
    reason = "DeadlineExceeded"


class UnsupportedError(PermanentError):
    """The driver cannot do what was asked (e.g. in-place restore)."""

    reason = "Unsupported"


class PointInTimeNotSupported(UnsupportedError):
    """``options.recoveryTime`` asked of a backup that cannot be rolled to a moment."""

    reason = "PointInTimeNotSupported"


class RecoveryTargetUnreachable(PermanentError):
    """``options.recoveryTime`` is outside what the Backup and the archive can reach; the
    message says the window that is."""

    reason = "RecoveryTargetUnreachable"


class OptionRefused(PermanentError):
    """A restore option the platform does not allow (another tenant's namespace)."""

    reason = "OptionRefused"


class QuotaExceededError(PermanentError):
    """A backup would take its tenant past the storage its BackupClass allows."""

    reason = "QuotaExceeded"


class EncryptionKeyError(PermanentError):
    """The key a backup needs is missing or wrong: nothing is read or restored."""

    reason = "EncryptionKeyUnavailable"
