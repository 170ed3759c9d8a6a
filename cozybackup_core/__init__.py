"""cozybackup core: API types, BackupClass resolution, driver contract, storage, engine.

Drivers import only from here (and ``cozybackup_core.testing`` in their tests).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._classes import (
    BUILTIN_CLASS,
    BUILTIN_STORAGE,
    DEFAULT_BUCKET,
    DEFAULT_CLASS,
    Catalog,
    Resolved,
)
from ._crd import all_crds, crd, object_schema
from ._driver import (
    AppLocation,
    BackupContext,
    Capabilities,
    Deadline,
    Driver,
    NoParameters,
    ProgressReporter,
    RestoreContext,
    ServerSideTarget,
    StreamSink,
    StreamSource,
    WriteBehind,
    iter_chunks,
)
from ._engine import Engine, EngineConfig
from ._errors import (
    ArtifactCorruptError,
    ClassNotFoundError,
    ConflictError,
    CozyError,
    DeadlineExceeded,
    DriverError,
    DriverNotFoundError,
    DriverParametersError,
    EncryptionKeyError,
    NoBindingError,
    NotFoundError,
    PermanentError,
    StorageError,
    TransientError,
    UnsupportedError,
    ValidationError,
)
from ._fields import FieldInvalid
from ._localpaths import LocalDir, LocalFile, UnsafeLocalPath, open_local
from ._plans import fire_due_plans
from ._plugins import BrokenPlugin, DriverRegistry, PluginHost
from ._storage import ArtifactKey, ArtifactStore, Manifest
from ._tools import run_admin_command, run_tool
from ._types import (
    API_VERSION,
    APPS_GROUP,
    ApplicationRef,
    ArtifactRecord,
    Backup,
    BackupClass,
    BackupJob,
    Condition,
    GroupKind,
    LocalObjectRef,
    ObjectMeta,
    Plan,
    RestoreJob,
    StorageLocation,
    StrategyRef,
)
from ._wire import dump, load, load_yaml
from .hookspecs import hookimpl

try:
    __version__ = version("cozybackup-core")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "API_VERSION",
    "APPS_GROUP",
    "BUILTIN_CLASS",
    "BUILTIN_STORAGE",
    "DEFAULT_BUCKET",
    "DEFAULT_CLASS",
    "AppLocation",
    "ApplicationRef",
    "ArtifactCorruptError",
    "ArtifactKey",
    "ArtifactRecord",
    "ArtifactStore",
    "Backup",
    "BackupClass",
    "BackupContext",
    "BackupJob",
    "BrokenPlugin",
    "Capabilities",
    "Catalog",
    "ClassNotFoundError",
    "Condition",
    "ConflictError",
    "CozyError",
    "Deadline",
    "DeadlineExceeded",
    "Driver",
    "DriverError",
    "DriverNotFoundError",
    "DriverParametersError",
    "DriverRegistry",
    "EncryptionKeyError",
    "Engine",
    "EngineConfig",
    "FieldInvalid",
    "GroupKind",
    "LocalDir",
    "LocalFile",
    "LocalObjectRef",
    "Manifest",
    "NoBindingError",
    "NoParameters",
    "NotFoundError",
    "ObjectMeta",
    "PermanentError",
    "Plan",
    "PluginHost",
    "ProgressReporter",
    "Resolved",
    "RestoreContext",
    "RestoreJob",
    "ServerSideTarget",
    "StorageError",
    "StorageLocation",
    "StrategyRef",
    "StreamSink",
    "StreamSource",
    "TransientError",
    "UnsafeLocalPath",
    "UnsupportedError",
    "ValidationError",
    "WriteBehind",
    "__version__",
    "all_crds",
    "crd",
    "dump",
    "fire_due_plans",
    "hookimpl",
    "iter_chunks",
    "load",
    "load_yaml",
    "object_schema",
    "open_local",
    "run_admin_command",
    "run_tool",
]
