"""cozybackup core: API types, BackupClass resolution, driver contract, storage, engine.

Drivers import only from here (and ``cozybackup_core.testing`` in their tests).  A host
program (a custom controller) embeds the engine through here too: it implements
:class:`Host` (with an :class:`ObjectStore` of :class:`Resource` objects), builds an
:class:`Engine` and drives it with a :class:`Runner` (see docs/embedding.md).
"""

from __future__ import annotations

from ._api.crd import all_crds, crd, object_schema
from ._api.errors import (
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
from ._api.fields import FieldInvalid
from ._api.types import (
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
from ._api.version import __version__
from ._api.wire import API_KINDS, Kinds, dump, load, load_yaml
from ._catalog.catalog import (
    BUILTIN_STORAGE,
    DEFAULT_BUCKET,
    DEFAULT_CLASS,
    Catalog,
    Resolved,
    builtin_class,
)
from ._drivers.contract import (
    AppLocation,
    BackupContext,
    Capabilities,
    Deadline,
    Driver,
    Locator,
    NoParameters,
    ProgressReporter,
    RestoreContext,
    ServerSideTarget,
    StreamSink,
    StreamSource,
    WriteBehind,
    iter_chunks,
)
from ._drivers.localpaths import LocalDir, LocalFile, UnsafeLocalPath, open_local
from ._drivers.registry import DriverRegistry
from ._drivers.tools import run_admin_command, run_tool
from ._engine.engine import Engine, EngineConfig
from ._engine.plans import fire_due_plans
from ._engine.port import Host, ObjectStore, Resource
from ._engine.runner import PassReport, Runner
from ._plugins.host import BrokenPlugin, PluginHost
from ._storage.providers import StorageEnv, StorageProvider, StorageProviders
from ._storage.store import ArtifactKey, ArtifactStore, Manifest
from .hookspecs import hookimpl

__all__ = [
    "API_KINDS",
    "API_VERSION",
    "APPS_GROUP",
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
    "Host",
    "Kinds",
    "LocalDir",
    "LocalFile",
    "LocalObjectRef",
    "Locator",
    "Manifest",
    "NoBindingError",
    "NoParameters",
    "NotFoundError",
    "ObjectMeta",
    "ObjectStore",
    "PassReport",
    "PermanentError",
    "Plan",
    "PluginHost",
    "ProgressReporter",
    "Resolved",
    "Resource",
    "RestoreContext",
    "RestoreJob",
    "Runner",
    "ServerSideTarget",
    "StorageEnv",
    "StorageError",
    "StorageLocation",
    "StorageProvider",
    "StorageProviders",
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
    "builtin_class",
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
