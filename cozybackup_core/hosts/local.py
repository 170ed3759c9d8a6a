"""The embedded host: state and the default bucket under one home directory.

Layout of ``$COZYBACKUP_HOME`` (default ``~/.local/share/cozybackup``)::

    state/<Kind>/<namespace or _cluster>/<name>.yaml   one object per file, atomic writes
    events/<namespace or _cluster>.jsonl                events, appended
    buckets/<bucket>/                                  Local storage locations
    state.lock / run.lock                              flock()s: object writes / the runner

Only one ``cozybackup run`` works at a time (``run.lock``); ``apply`` may run beside it,
object writes are serialised by ``state.lock``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import attrs
import yaml

from .._api.errors import ConflictError, CozyError, NotFoundError, ValidationError
from .._api.types import ApplicationRef
from .._api.wire import API_KINDS, dump, load
from .._drivers.contract import AppLocation
from .._engine.port import Resource, T, bumped, stamped, with_metadata, with_status_of
from ._local_types import Application, Secret

# libyaml's loader and dumper when PyYAML has them: every command reads every state file
# it lists, and the pure-Python parser made that most of a short command's time.  The
# files are this module's own (safe_dump of plain data), which both read alike.
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

log = logging.getLogger(__name__)

#: The kinds the embedded host stores: the API's, and its own admin-only Application
#: and Secret.  Pass it to ``load``/``load_yaml`` for manifests that may hold them.
LOCAL_KINDS = API_KINDS.with_kinds(Application, Secret)


def default_home() -> Path:
    env = os.environ.get("COZYBACKUP_HOME")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cozybackup"


class RunnerBusy(CozyError):
    reason = "RunnerBusy"


class LocalObjectStore:
    def __init__(self, root: Path, clock: Callable[[], dt.datetime] | None = None) -> None:
        self.root = root
        self._clock = clock or _now
        _private_dir(root)
        (root / "state").mkdir(mode=0o700, exist_ok=True)
        self._lock_path = root / "state.lock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with _open_private(self._lock_path) as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _path(self, kind: str, namespace: str | None, name: str) -> Path:
        return self.root / "state" / kind / (namespace or "_cluster") / _file_name(name)

    def _read(self, path: Path) -> Any:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        return load(yaml.load(text, Loader=_LOADER), LOCAL_KINDS)  # noqa: S506 - a safe loader

    def _write(self, obj: Any) -> None:
        path = self._path(obj.kind, obj.metadata.namespace, obj.metadata.name)
        path.parent.parent.mkdir(mode=0o700, exist_ok=True)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        # A short temporary name (a 253-character object name leaves no room for a
        # suffix), created owner-only, and removed if anything fails before the rename.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w") as f:
                yaml.dump(dump(obj), f, Dumper=_DUMPER, sort_keys=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                Path(tmp).unlink()
            raise

    def get(self, cls: type[T], namespace: str | None, name: str) -> T | None:
        obj: T | None = self._read(self._path(cls.kind, namespace, name))
        return obj

    def list(self, cls: type[T], namespace: str | None = None) -> list[T]:
        base = self.root / "state" / cls.kind
        dirs = (
            [base / namespace] if namespace else (sorted(base.iterdir()) if base.exists() else [])
        )
        out: list[T] = []
        for d in dirs:
            if d.is_dir():
                for p in sorted(d.glob("*.yaml")):
                    try:
                        obj = self._read(p)
                    except (ValidationError, yaml.YAMLError) as exc:
                        # Stored before a stricter check (or edited by hand): one bad
                        # object must not stop every pass.  Left alone, in the log.
                        log.error("skipping %s %s/%s: %s", cls.kind, d.name, p.name, exc)
                        continue
                    if obj is not None:
                        out.append(obj)
        return out

    def create(self, obj: T) -> T:
        with self.locked():
            meta = obj.metadata
            if self.get(type(obj), meta.namespace, meta.name) is not None:
                raise ConflictError(f"{obj.kind} {meta.name} already exists")
            obj = with_metadata(obj, stamped(meta, self._clock()))
            self._write(obj)
            return obj

    def replace(self, obj: T) -> T:
        """Create or update spec and metadata, keeping status (``apply``)."""
        with self.locked():
            meta = obj.metadata
            current = self.get(type(obj), meta.namespace, meta.name)
            if current is None:
                meta = stamped(attrs.evolve(meta, uid=None, creation_timestamp=None), self._clock())
            else:
                cm = current.metadata
                meta = attrs.evolve(
                    meta,
                    uid=cm.uid,
                    creation_timestamp=cm.creation_timestamp,
                    resource_version=bumped(cm).resource_version,
                    generation=(cm.generation or 1) + 1,
                )
                if hasattr(current, "status"):
                    obj = with_status_of(obj, current)
            obj = with_metadata(obj, meta)
            self._write(obj)
            return obj

    def set_metadata(self, obj: T) -> T:
        """Replace labels and annotations of an existing object (spec and status kept)."""
        with self.locked():
            meta = obj.metadata
            current = self.get(type(obj), meta.namespace, meta.name)
            if current is None:
                raise NotFoundError(f"{obj.kind} {meta.name} does not exist")
            new_meta = attrs.evolve(
                bumped(current.metadata), labels=meta.labels, annotations=meta.annotations
            )
            new = with_metadata(current, new_meta)
            self._write(new)
            return new

    def update_status(self, obj: T) -> T:
        with self.locked():
            meta = obj.metadata
            current = self.get(type(obj), meta.namespace, meta.name)
            if current is None:
                raise NotFoundError(f"{obj.kind} {meta.name} does not exist")
            new = with_metadata(with_status_of(current, obj), bumped(current.metadata))
            self._write(new)
            return new

    def delete(self, cls: type[Resource], namespace: str | None, name: str) -> None:
        with self.locked(), contextlib.suppress(FileNotFoundError):
            self._path(cls.kind, namespace, name).unlink()


def _private_dir(path: Path) -> None:
    """Create ``path`` owner-only; an existing home that others can reach is narrowed
    (it holds Secrets in clear and, unencrypted, the backups themselves)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.stat()
    if st.st_mode & 0o077 and st.st_uid == os.geteuid():
        path.chmod(0o700)


def _open_private(path: Path) -> IO[str]:
    """Open for appending and reading, creating the file owner-only (0600)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "a+")


def _ends_torn(path: Path) -> bool:
    """Whether a non-empty append-only file's last line lacks its newline."""
    with path.open("rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


#: NAME_MAX of common file systems.
_NAME_MAX = 255


def _file_name(name: str) -> str:
    """The state file of an object: ``<name>.yaml``, or, when that would not fit in a
    file name, a cut of the name and a hash of the whole (the file's content has the name)."""
    if len(name) + len(".yaml") <= _NAME_MAX:
        return f"{name}.yaml"
    return f"{name[:200]}-{hashlib.sha256(name.encode()).hexdigest()[:32]}.yaml"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


@attrs.define
class LocalHost:
    """Implements the engine's host port on a local directory."""

    home: Path
    objects: LocalObjectStore = attrs.field(init=False)
    clock: Any = None  # a callable returning an aware datetime; tests pass their own

    def __attrs_post_init__(self) -> None:
        self.objects = LocalObjectStore(self.home, self.now)

    def now(self) -> dt.datetime:
        return self.clock() if self.clock else _now()

    def locate(self, namespace: str, ref: ApplicationRef) -> AppLocation:
        app = self.objects.get(Application, namespace, ref.name)
        if app is None or app.ref.group_kind != ref.group_kind:
            raise NotFoundError(
                f"application {ref.kind} {ref.name} does not exist in namespace {namespace}"
            )
        creds: Mapping[str, str] = {}
        if app.spec.credentials_secret_ref:
            creds = self.secret(app.spec.credentials_secret_ref.name)
        return AppLocation(
            ref=app.ref,
            namespace=namespace,
            connection=dict(app.spec.connection),
            credentials=creds,
        )

    def secret(self, name: str) -> Mapping[str, str]:
        s = self.objects.get(Secret, None, name)
        if s is None:
            # Tenant-visible through job messages: do not name the secret.
            raise NotFoundError(
                "credentials for this application are not configured; ask the platform operator",
                admin_detail=f"Secret {name} not found",
            )
        return s.values()

    def local_bucket_path(self, bucket: str) -> str:
        return str(self.home / "buckets" / bucket)

    def event(self, obj: Any, type_: str, reason: str, message: str) -> None:
        ns = obj.metadata.namespace or "_cluster"
        path = self.home / "events" / f"{ns}.jsonl"
        path.parent.mkdir(mode=0o700, exist_ok=True)
        rec = {
            "time": dump_time(self.now()),
            "type": type_,
            "reason": reason,
            "message": message,
            "involvedObject": {
                "kind": obj.kind,
                "namespace": obj.metadata.namespace,
                "name": obj.metadata.name,
            },
        }
        with self.objects.locked(), _open_private(path) as f:
            # A line torn by a full disk or a crash is closed first, so this event stands
            # on a line of its own and only the torn one is lost.
            f.write(("\n" if _ends_torn(path) else "") + json.dumps(rec) + "\n")

    def events(
        self, namespace: str | None, kind: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        path = self.home / "events" / f"{namespace or '_cluster'}.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
                inv = rec["involvedObject"]
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a full disk or a crash: skipped, not fatal
            if not isinstance(inv, dict):
                continue
            if (kind is None or inv["kind"] == kind) and (name is None or inv["name"] == name):
                out.append(rec)
        return out

    @contextlib.contextmanager
    def runner_lock(self) -> Iterator[None]:
        """Only one runner per home: recovery relies on it (a Running job has no live owner)."""
        path = self.home / "run.lock"
        with _open_private(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise RunnerBusy(
                    f"another cozybackup run is active on this home (pid {f.read().strip() or '?'})"
                ) from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def dump_time(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
