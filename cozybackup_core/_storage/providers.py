"""Storage providers: "make a store for this StorageLocation", by provider name.

``Local`` (a directory) and ``S3`` are built in.  A package adds another (anything fsspec
speaks: GCS, Azure, SFTP...) by implementing the ``cozybackup_register_storage`` hook and
calling ``providers.add(StorageProvider(...))``.  Each provider also says which values of a
location are sensitive, so the redactor masks them in everything a tenant reads.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

import attrs

from .._api.errors import CozyError, NotFoundError
from .._api.types import EncryptionSpec, StorageLocationSpec
from .crypto import KeyRing, parse_key
from .store import ArtifactStore

log = logging.getLogger("cozybackup.storage")


class StorageEnv(Protocol):
    """What a provider may ask of the host: Secrets in the platform namespace and where
    named local buckets live.  Every ``Host`` is one."""

    def secret(self, name: str) -> Mapping[str, str]: ...

    def local_bucket_path(self, bucket: str) -> str: ...


@attrs.frozen(kw_only=True)
class StorageProvider:
    """One backend: ``open`` makes the store, ``sensitive`` lists what must be masked
    (endpoints, buckets, paths, credentials) for a location of this provider."""

    name: str
    open: Callable[[StorageLocationSpec, StorageEnv], ArtifactStore]
    sensitive: Callable[[StorageLocationSpec, StorageEnv], Iterable[str]]


class StorageProviders:
    """Providers by name; ``Local`` and ``S3`` are always there."""

    def __init__(self) -> None:
        self._by_name: dict[str, StorageProvider] = {}
        for provider in (LOCAL, S3):
            self.add(provider)

    def add(self, provider: StorageProvider) -> None:
        if provider.name in self._by_name:
            raise ValueError(f"storage provider {provider.name!r} is already registered")
        self._by_name[provider.name] = provider

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: a block that raises leaves no provider it added."""
        before = set(self._by_name)
        try:
            yield
        except BaseException:
            for name in set(self._by_name) - before:
                del self._by_name[name]
            raise

    def get(self, name: str) -> StorageProvider:
        try:
            return self._by_name[name]
        except KeyError:
            raise NotFoundError(
                "the storage of this class is misconfigured; ask the platform operator",
                admin_detail=f"no storage provider {name!r} is installed "
                f"(installed: {', '.join(sorted(self._by_name))})",
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._by_name))

    def open(self, spec: StorageLocationSpec, env: StorageEnv) -> ArtifactStore:
        """A store for ``spec``, with its keyring when the location encrypts."""
        store = self.get(spec.provider).open(spec, env)
        if spec.encryption is not None:
            store.keyring = keyring(spec.encryption, env)
        store.deduplicate = spec.deduplication
        return store

    def sensitive(self, spec: StorageLocationSpec, env: StorageEnv) -> list[str]:
        """Every value of the location a tenant must never read."""
        out = [s for s in (spec.endpoint, spec.bucket, spec.path, spec.prefix) if s]
        secrets = [spec.credentials_secret_ref.name] if spec.credentials_secret_ref else []
        if spec.encryption:
            secrets += [k.secret_ref.name for k in spec.encryption.keys]
        for name in secrets:
            try:
                out += list(env.secret(name).values())
            except (CozyError, ValueError):
                pass  # an unreadable Secret holds nothing to mask; jobs using it fail
        if spec.provider in self._by_name:
            out += list(self._by_name[spec.provider].sensitive(spec, env))
        return out


def unusable_keys(
    spec: EncryptionSpec, secret: Callable[[str], Mapping[str, str] | None]
) -> list[tuple[str, str]]:
    """Field-path problems of keys whose Secret exists but holds no usable key, for
    admission: refused at ``apply`` instead of failing every later job.  A Secret not
    there yet is not a problem here (it may be applied after the location)."""
    problems = []
    for i, ref in enumerate(spec.keys):
        values = secret(ref.secret_ref.name)
        if values is None:
            continue
        field = f"spec.encryption.keys[{i}]"
        try:
            parse_key(values["key"])
        except KeyError:
            problems.append((field, f"Secret {ref.secret_ref.name} has no key 'key'"))
        except ValueError as exc:
            problems.append((field, f"Secret {ref.secret_ref.name} key 'key' {exc}"))
    return problems


def keyring(spec: EncryptionSpec, env: StorageEnv) -> KeyRing:
    """The admin's keys from their Secrets.  A missing or malformed one is left out:
    backups wrapped only under it cannot be read, and if it is the active key no backup
    can be written; both fail with a message naming it to the operator."""
    keys = []
    for ref in spec.keys:
        try:
            keys.append((ref.id, parse_key(env.secret(ref.secret_ref.name)["key"])))
        except (CozyError, KeyError, ValueError) as exc:
            log.error(
                "encryption key %s (Secret %s) is unusable: %s", ref.id, ref.secret_ref.name, exc
            )
    return KeyRing(keys=tuple(keys), active=spec.keys[0].id, per_tenant=spec.per_tenant_keys)


def store_secrets(store: ArtifactStore) -> list[str]:
    """What an open store itself holds that must be masked: its root and its key bytes."""
    out = [store.root]
    if store.keyring:
        for _, raw in store.keyring.keys:
            out += [base64.b64encode(raw).decode(), raw.hex()]
    return out


# ---------------------------------------------------------------------------- built in


def _local_root(spec: StorageLocationSpec, env: StorageEnv) -> str:
    root = spec.path or env.local_bucket_path(spec.bucket)
    if spec.prefix:
        root = f"{root.rstrip('/')}/{spec.prefix.strip('/')}"
    return root


def _open_local(spec: StorageLocationSpec, env: StorageEnv) -> ArtifactStore:
    return ArtifactStore.local(_local_root(spec, env))


def _open_s3(spec: StorageLocationSpec, env: StorageEnv) -> ArtifactStore:
    creds = env.secret(spec.credentials_secret_ref.name) if spec.credentials_secret_ref else {}
    return ArtifactStore.s3(
        endpoint=spec.endpoint,
        bucket=spec.bucket,
        prefix=spec.prefix,
        key=creds.get("accessKeyId", ""),
        secret=creds.get("secretAccessKey", ""),
        region=spec.region,
        server_side=spec.server_side_access,
    )


LOCAL = StorageProvider(
    name="Local",
    open=_open_local,
    sensitive=lambda spec, env: [_local_root(spec, env)],
)
S3 = StorageProvider(name="S3", open=_open_s3, sensitive=lambda spec, env: [])
