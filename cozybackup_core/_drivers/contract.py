"""The driver contract: what a driver declares and the contexts it works against."""

from __future__ import annotations

import abc
import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any, ClassVar, Generic, Protocol, get_args, get_origin

import attrs
from typing_extensions import TypeVar

from .._api.errors import DeadlineExceeded, UnsupportedError
from .._api.types import STRATEGY_GROUP, ApplicationRef, GroupKind
from .toolpipe import ToolContainer, ToolIO, ToolPipe


@attrs.frozen(kw_only=True)
class NoParameters:
    """The parameters type of a driver that takes none."""


@attrs.frozen(kw_only=True)
class Capabilities:
    """What a driver can do; the engine refuses the rest before any work starts."""

    in_place_restore: bool = True
    to_copy_restore: bool = True
    #: Reads or writes files or directories at local paths that the admin declares in an
    #: application's connection (a database file, a disk image, a data directory).  Such
    #: a driver opens them with ``open_local``/``LocalDir`` (no links, no special files),
    #: and the conformance kit plants a symlink and a FIFO there to check it.
    local_paths: bool = False
    #: Restores to a moment (``RestoreJob.spec.options.recoveryTime``), not only to the
    #: backup's own time.
    point_in_time: bool = False


@attrs.frozen(kw_only=True)
class AppLocation:
    """How to reach one application: driver-specific connection keys and credentials.

    Platform-only: it never reaches a tenant-visible object.  ``credentials`` is kept out
    of ``repr`` so a stray log line cannot leak it.
    """

    ref: ApplicationRef
    namespace: str
    connection: Mapping[str, Any] = attrs.field(factory=dict)
    credentials: Mapping[str, str] = attrs.field(factory=dict, repr=False)


@attrs.frozen
class Deadline:
    """A point on the monotonic clock after which the work is abandoned."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def check(self) -> None:
        if self.expired:
            raise DeadlineExceeded("the job ran past its deadline and was stopped")

    def tighter(self, seconds: float | None) -> Deadline:
        """The earlier of this deadline and ``seconds`` from now (a class's
        ``timeoutSeconds``); this one when ``seconds`` is None."""
        if seconds is None:
            return self
        own = Deadline.after(seconds)
        return own if own.at < self.at else self


class ProgressReporter(Protocol):
    """Drivers call ``stage`` at each step; bytes written to streams are counted for them."""

    def stage(self, name: str, *, bytes_total: int | None = None) -> None: ...

    def advance(self, nbytes: int) -> None: ...


@attrs.frozen(kw_only=True)
class ServerSideTarget:
    """An S3 prefix that the application's own server writes to or reads from (for example
    ClickHouse's ``BACKUP ... TO S3(url, key, secret)``).

    Handing these credentials to a tenant's server is an admin decision: a storage location
    offers server-side targets only with ``serverSideAccess: true``, and should then be a
    bucket of its own.  The credentials are kept out of ``repr``.
    """

    #: ``http(s)://endpoint/bucket/.../<name>/``: always ends in ``/``.
    url: str
    access_key_id: str = attrs.field(repr=False)
    secret_access_key: str = attrs.field(repr=False)
    region: str | None = None


class StreamSink(Protocol):
    """Where a driver writes its data: named streams, compressed and hashed on the fly."""

    def open(self, name: str) -> AbstractContextManager[IO[bytes]]:
        """A writable binary stream; closing it records its size and checksums."""
        ...

    def server_side(self, name: str) -> ServerSideTarget:
        """A prefix for the application's server to write ``name`` to by itself.

        After ``backup`` returns, the platform lists and hashes every object under it and
        records them in the manifest; they are checked before any restore.  Raises
        :class:`UnsupportedError` (a message for the operator) when the storage does not
        offer server-side access.
        """
        ...


class StreamSource(Protocol):
    """Where a driver reads its data back from.  Reads verify checksums at the end."""

    def names(self) -> list[str]: ...

    def open(self, name: str) -> AbstractContextManager[IO[bytes]]:
        """A readable binary stream; reaching EOF on a corrupted stream raises."""
        ...

    def server_side(self, name: str) -> ServerSideTarget:
        """Where the server wrote ``name`` at backup time (already verified), for the
        target's server to read from.  :class:`NotFoundError` if the backup has none."""
        ...


class SegmentStore(Protocol):
    """An application's continuous archive of log segments (PostgreSQL's WAL): each
    segment stored, compressed, encrypted and verified like a stream, beside the
    application's Backups in the same location."""

    def names(self) -> list[str]:
        """The stored segments, sorted by name."""
        ...

    def metadata(self, name: str) -> Mapping[str, Any]:
        """What the driver recorded with segment ``name`` when it stored it."""
        ...

    def open(self, name: str) -> AbstractContextManager[IO[bytes]]:
        """Segment ``name``; reaching its end verifies it (:class:`ArtifactCorruptError`
        naming the segment otherwise)."""
        ...

    def put(self, name: str, source: IO[bytes], metadata: Mapping[str, Any]) -> None:
        """Store ``source`` to its end as segment ``name``; wholly or not at all."""
        ...

    def delete(self, name: str) -> None: ...


class Streamer(Protocol):
    """A long-running copier of one application's changes into its archive (a WAL
    streamer), hosted by the runner beside jobs (see ``Driver.streams``)."""

    def run(self, stop: threading.Event) -> None:
        """Copy until ``stop`` is set; return then.  Raise (a :class:`CozyError` with a
        tenant-safe message) when it cannot go on: the runner reports it and starts a new
        streamer later."""
        ...

    def lag(self) -> Mapping[str, Any]:
        """How far behind the application it is (``lagBytes``, ``lagSeconds``...)."""
        ...

    def release(self) -> None:
        """Give back what it holds on the application's server (a replication slot),
        when no class asks for streaming any more."""
        ...


#: A driver's parameters type (``Driver[PostgresParameters]``); ``Any`` when not given.
P = TypeVar("P", default=Any)


@attrs.frozen(kw_only=True)
class PriorBackup:
    """The application's newest Ready Backup of the same class, open for reading: what a
    driver that stores only what changed builds on (a VM disk's changed blocks are laid
    over the previous disk stream, so every Backup still holds a whole disk)."""

    name: str
    taken_at: dt.datetime
    #: What the driver recorded on it (``BackupContext.metadata``), with its types.
    driver_metadata: Mapping[str, Any]
    #: Its streams; every read is verified as a restore's is.
    artifact: StreamSource


def _no_prior() -> PriorBackup | None:
    return None


@attrs.define(kw_only=True)
class BackupContext(Generic[P]):
    application: AppLocation
    #: The BackupClass's parameters, structured into the driver's ``parameters_type``.
    parameters: P
    artifact: StreamSink
    progress: ProgressReporter
    log: logging.Logger
    deadline: Deadline
    #: Recorded on ``Backup.spec.driverMetadata``: tenant-visible, so no secrets or paths.
    metadata: dict[str, Any] = attrs.field(factory=dict)
    #: Recorded in the manifest only (platform-visible): e.g. ``{"pg_dump": "15.8"}``.
    tool_versions: dict[str, str] = attrs.field(factory=dict)
    #: Recorded on ``Backup.status.underlyingResources`` (Cozystack's field, tagged with
    #: the strategy's apiVersion and kind): what a restore or a person needs to know of
    #: what was backed up (databases, server version, disks).  Tenant-visible, JSON values.
    resources: dict[str, Any] = attrs.field(factory=dict)
    #: The worker's end of the driver's ``tool_container``, where a host runs it beside the
    #: worker (Kubernetes worker Jobs); None where the driver runs its tool itself.
    tool: ToolPipe | None = None
    #: What this backup cannot bring back exactly, said before anyone needs it: each is a
    #: Warning event on the BackupJob and an entry of ``underlyingResources.warnings``.
    warnings: list[BackupWarning] = attrs.field(factory=list)
    #: The application's previous Backup of this class (:class:`PriorBackup`), opened
    #: when called (None: there is none, or it cannot be read); only drivers that build
    #: on it call it.
    prior: Callable[[], PriorBackup | None] = _no_prior

    def warn(self, message: str, reason: str = "BackupNotExact") -> None:
        """Say something the tenant should know about this backup (see ``warnings``)."""
        self.warnings.append(BackupWarning(reason=reason, message=message))


@attrs.frozen(kw_only=True)
class BackupWarning:
    #: A CamelCase event reason (``BackupNotExact``).
    reason: str
    message: str


@attrs.define(kw_only=True)
class RestoreContext(Generic[P]):
    target: AppLocation
    source: ApplicationRef
    in_place: bool
    parameters: P
    artifact: StreamSource
    driver_metadata: Mapping[str, Any]
    taken_at: dt.datetime
    progress: ProgressReporter
    log: logging.Logger
    deadline: Deadline
    #: The RestoreJob's options this driver declared in ``restore_options``, as written
    #: (Cozystack's console sends strings); ``recovery_time`` is ``options.recoveryTime``.
    options: Mapping[str, Any] = attrs.field(factory=dict)
    recovery_time: dt.datetime | None = None
    #: The source application's continuous archive, in the Backup's location (for a
    #: driver with ``point_in_time``); None where the host offers none.
    archive: SegmentStore | None = None
    #: As ``BackupContext.tool``.
    tool: ToolPipe | None = None
    #: What this restore did not bring back exactly (values the server changed, objects
    #: it could not re-create as they were): each a Warning event on the RestoreJob, and
    #: its message says how many.
    warnings: list[BackupWarning] = attrs.field(factory=list)

    def warn(self, message: str, reason: str = "RestoreNotExact") -> None:
        """Say something the tenant should know about this restore (see ``warnings``)."""
        self.warnings.append(BackupWarning(reason=reason, message=message))


@attrs.frozen(kw_only=True)
class ToolRequest:
    """What a driver's ``tool_container`` is asked for: the application the tool reads
    (a backup, ``io`` ``out``) or writes (a restore, ``in``), and for a restore, which
    backup of which application, in place or into a copy."""

    io: ToolIO
    application: AppLocation
    in_place: bool = True
    source: ApplicationRef | None = None
    taken_at: dt.datetime | None = None


@attrs.frozen(kw_only=True)
class LocatorCase:
    """How a :class:`Locator` reaches the applications whose live object matches ``when``
    (dotted paths into it, ``spec.replicas``, and the values they must equal; a path the
    object lacks matches nothing): ``connection`` merged over the Locator's, and
    ``credentials_from``/``keys`` in place of its own when given."""

    when: Mapping[str, Any]
    connection: Mapping[str, Any] = attrs.field(factory=dict)
    credentials_from: str | None = None
    keys: Mapping[str, str] | None = None

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for path, want in self.when.items():
            found: Any = obj
            for part in path.split("."):
                if not isinstance(found, Mapping) or part not in found:
                    return False
                found = found[part]
            if found != want and str(found) != str(want):
                return False
        return True


@attrs.frozen(kw_only=True)
class Locator:
    """How a platform (Kubernetes) reaches every application of one kind.

    ``connection`` values (strings, or lists/dicts of strings, nested) are templates:
    ``{name}`` is the application's name and ``{namespace}`` the tenant's namespace
    (``{{``/``}}`` for literal braces); other values are used as they are.
    ``credentials_from`` (``credentialsFrom`` in a file) names the Secret (a template) in
    the tenant's namespace that holds the credentials; ``keys`` maps a credential key the
    driver reads to the Secret's key (default: every key of the Secret under its own
    name); ``fixed`` adds constant credentials (``username: root``).  With ``resource``
    the live application object is read first (it exists when that object does) and the
    first of ``cases`` it matches applies; without, the application counts as existing
    when its Secret exists (without a Secret: always).
    """

    connection: Mapping[str, Any] = attrs.field(factory=dict)
    credentials_from: str | None = None
    keys: Mapping[str, str] | None = None
    fixed: Mapping[str, str] = attrs.field(factory=dict)
    #: The plural of the live application object (``postgreses`` of apps.cozystack.io,
    #: ``version``): read first, so a missing application says so, and matched against
    #: ``cases`` (the first that matches applies).  None: not read.
    resource: str | None = None
    version: str = "v1alpha1"
    cases: tuple[LocatorCase, ...] = ()

    def for_object(self, obj: Mapping[str, Any] | None) -> Locator:
        """This Locator with the first case ``obj`` matches applied."""
        if obj is None:
            return self
        case = next((c for c in self.cases if c.matches(obj)), None)
        if case is None:
            return self
        return attrs.evolve(
            self,
            connection={**self.connection, **case.connection},
            credentials_from=case.credentials_from or self.credentials_from,
            keys=case.keys if case.keys is not None else self.keys,
            cases=(),
        )


class Driver(abc.ABC, Generic[P]):
    """Base class of every driver.  Subclass it and register the class from a hook.

    Class attributes declare what it is; ``backup`` and ``restore`` do the work.  One
    instance serves every job, possibly several at once on different threads: keep no
    per-job state on ``self``.  Raise
    :class:`~cozybackup_core.DriverError` with a message a tenant can act on; anything
    else is reported to the tenant as an internal error and logged for the operator.

    Generic over its parameters type: ``class PostgresDriver(Driver[PostgresParameters])``
    types ``ctx.parameters`` in ``backup`` and ``restore`` and sets ``parameters_type``.
    A driver that only declares ``default_kinds`` serves those kinds of
    ``apps.cozystack.io`` (``kinds`` is derived from them).
    """

    #: Unique registry name, e.g. ``"postgres"``.
    name: ClassVar[str]
    #: ``strategyRef.kind`` that selects this driver in a BackupClass, e.g. ``"Postgres"``.
    strategy_kind: ClassVar[str]
    #: ``strategyRef.apiGroup`` it answers to: a binding naming another group is left to
    #: whichever controller serves that group (Cozystack's rule), never run by this one.
    strategy_group: ClassVar[str] = STRATEGY_GROUP
    #: Application kinds it can serve.
    kinds: ClassVar[tuple[GroupKind, ...]] = ()
    #: Serves whatever kind a BackupClass binds it to (generic strategies such as Job,
    #: whose parameters say how); ``kinds`` may then be empty.
    any_kind: ClassVar[bool] = False
    #: A frozen attrs class; ``BackupClass`` parameters are structured into it.
    parameters_type: ClassVar[type[Any]] = NoParameters
    capabilities: ClassVar[Capabilities] = Capabilities()
    version: ClassVar[str] = "0"
    #: Application kinds of ``apps.cozystack.io`` that the built-in class ``cozy-default``
    #: binds to this driver when it is installed (the driver must serve them).
    default_kinds: ClassVar[tuple[str, ...]] = ()
    #: How an application of each kind is reached on Kubernetes (Cozystack's service and
    #: Secret names), keyed by kind of ``apps.cozystack.io``; an admin's conventions file
    #: adds to or overrides these.
    locators: ClassVar[Mapping[str, Locator]] = {}
    #: ``RestoreJob.spec.options`` keys this driver understands beyond the engine's own
    #: (``restoreTimeoutSeconds``, ``targetNamespace``, ``recoveryTime``); any other key
    #: gives the tenant an ``UnknownRestoreOption`` warning and the restore goes on.
    restore_options: ClassVar[frozenset[str]] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # What a subclass already says once (its generic argument, its default kinds) is
        # not repeated as a second class attribute.
        super().__init_subclass__(**kwargs)
        if "parameters_type" not in cls.__dict__:
            for base in getattr(cls, "__orig_bases__", ()):
                args = get_args(base) if get_origin(base) is Driver else ()
                if args and isinstance(args[0], type):
                    cls.parameters_type = args[0]
        if "kinds" not in cls.__dict__ and not cls.kinds:
            cls.kinds = tuple(GroupKind(kind=kind) for kind in cls.default_kinds)

    @classmethod
    def serves(cls, kind: GroupKind) -> bool:
        return cls.any_kind or kind in cls.kinds

    def validate_parameters(self, parameters: Any) -> None:
        """Checks beyond the type, run when a BackupClass is applied.

        Raise ``ValidationError([("jobs", "must be between 1 and 16")])`` to name the field
        (camelCase, relative to the parameters; the class's path is prefixed), or a plain
        ``ValueError`` for a problem of the parameters as a whole.
        """

    @abc.abstractmethod
    def backup(self, ctx: BackupContext[P]) -> None:
        """Write the application's data into ``ctx.artifact``."""

    @abc.abstractmethod
    def restore(self, ctx: RestoreContext[P]) -> None:
        """Replay ``ctx.artifact`` into ``ctx.target``."""

    def streams(self, parameters: P) -> bool:
        """Whether applications bound with these parameters get a :class:`Streamer`
        (continuous archiving, for ``point_in_time`` restores).  Default: no."""
        return False

    def streamer(
        self, parameters: P, application: AppLocation, archive: SegmentStore, workdir: Path
    ) -> Streamer:
        """The streamer of one application, writing into ``archive``; ``workdir`` is a
        directory of its own that outlives it (what a killed streamer left there is the
        next one's to store).  Called only where :meth:`streams` is true."""
        raise UnsupportedError(f"the {self.name} driver has no streamer")

    def archive_expired(
        self,
        parameters: P,
        kept: Sequence[Mapping[str, Any]],
        names: Sequence[str],
        now: dt.datetime,
    ) -> tuple[list[str], str]:
        """Retention of the continuous archive: which of ``names`` (the application's
        stored segments) no kept Backup (``kept``: their driverMetadata) and no window the
        parameters promise still needs; returns them and a tenant-safe sentence saying
        what the rest is kept for.  Default: keep everything."""
        return [], "kept: the driver does not expire its archive"

    def tool_container(self, parameters: P, request: ToolRequest) -> ToolContainer | None:
        """A tool to run in an image of its own beside the worker, where the host moves
        data in worker Pods: for a backup (``request.io`` ``out``: its stdout is the
        stream) or a restore (``in``: its stdin); the driver then reads or feeds it
        through ``ctx.tool``.  Default: None (the driver runs its tools in the worker)."""
        return None

    def scratch_target(
        self, workdir: Path, like: AppLocation
    ) -> AbstractContextManager[AppLocation]:
        """A throwaway application of ``like``'s kind for restore drills, on a host where the
        driver itself can make one (the embedded host); removed when the context exits.

        Optional: the default raises :class:`UnsupportedError` and drills are reported as
        unsupported for this driver.
        """
        raise UnsupportedError(f"the {self.name} driver cannot create a scratch target for drills")

    def smoke_check(self, target: AppLocation, driver_metadata: Mapping[str, Any]) -> str:
        """After a drill's restore: check the data is usable; return a short tenant-safe
        summary, raise :class:`DriverError` if it is not.  Default: nothing beyond the restore."""
        return "restored without error"


class WriteBehind:
    """A writer thread in front of an artifact stream, for drivers whose source has latency
    of its own (a network API, a tool's pipe).

    Writing to an artifact stream compresses, hashes and maybe uploads in the caller's
    thread, so the source waits meanwhile.  ``write()`` instead hands a copy of each chunk
    to a thread (zstd, hashlib and sockets release the GIL, so both run at once); at most
    ``depth`` chunks wait.  A failure of the sink is raised by the next ``write`` or on
    exit; leaving the block with an exception drops what is still queued (the stream is
    discarded anyway)::

        with ctx.artifact.open("data") as out, WriteBehind(out) as behind:
            for chunk in source:
                behind.write(chunk)
    """

    def __init__(self, sink: IO[bytes], depth: int = 4) -> None:
        self._sink = sink
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._drain, name="cozybackup-write-behind")

    def __enter__(self) -> WriteBehind:
        self._thread.start()
        return self

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._error is not None:
            raise self._error
        self._queue.put(bytes(data))  # a copy: the caller may reuse its buffer
        return len(data)

    def _drain(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is None and not self._abandoned:
                try:
                    self._sink.write(chunk)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the producer
                    self._error = exc

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        self._abandoned = exc_type is not None
        self._queue.put(None)
        self._thread.join()
        if self._error is not None and exc_type is None:
            raise self._error


def iter_chunks(stream: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    """Read a binary stream in fixed-size chunks (for drivers copying streams)."""
    while chunk := stream.read(size):
        yield chunk
