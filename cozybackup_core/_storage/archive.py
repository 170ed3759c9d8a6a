"""An application's continuous archive: log segments stored one at a time (PostgreSQL's
WAL), for restores to a moment between backups.

Layout under the location's root (admin-visible only)::

    <root>/_archive/<namespace>/<kind>/<application>/<segment>/
        streams/segment.zst
        keys.json            <- encrypted locations only
        manifest.json        <- written last: its presence is the commit

Each segment is an artifact of its own, written by the same code as a Backup's: compressed,
encrypted under a data key of its own, both digests recorded, the manifest last, so a
segment is either wholly stored or absent, and every read is verified.  ``_archive``
cannot be a namespace (a namespace never begins with ``_``), so nothing here meets a
Backup's folder, and no ArtifactRecord names it: the orphan sweep never sees it.  The
deduplicating format is not used here (segments are written once and share nothing).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator, Mapping
from typing import IO, Any

import attrs

from .._api.errors import ArtifactCorruptError, StorageError
from .store import MANIFEST, ArtifactKey, ArtifactStore, Manifest

#: The one stream of a segment's artifact.
SEGMENT_STREAM = "segment"
ARCHIVE_DIR = "_archive"


@attrs.define
class SegmentArchive:
    """The archive of one application (namespace, kind, name) in one store."""

    store: ArtifactStore
    namespace: str
    kind: str
    application: str
    driver: str

    @classmethod
    def of(cls, store: ArtifactStore, key: ArtifactKey, driver: str) -> SegmentArchive:
        """The archive of the application whose Backup is at ``key``, in the same location
        (and under the same encryption keys)."""
        return cls.for_application(store, key.namespace, key.kind, key.application, driver)

    @classmethod
    def for_application(
        cls, store: ArtifactStore, namespace: str, kind: str, application: str, driver: str
    ) -> SegmentArchive:
        # Validates the three names as path segments, as for a Backup.
        ArtifactKey(namespace=namespace, kind=kind, application=application, uid="archive")
        beside = attrs.evolve(store, root=f"{store.root}/{ARCHIVE_DIR}", deduplicate=False)
        return cls(beside, namespace, kind, application, driver)

    def _key(self, name: str) -> ArtifactKey:
        return ArtifactKey(
            namespace=self.namespace, kind=self.kind, application=self.application, uid=name
        )

    def _base(self) -> str:
        return f"{self.store.root}/{self.namespace}/{self.kind}/{self.application}"

    def put(self, name: str, source: IO[bytes], metadata: Mapping[str, Any]) -> None:
        """Store ``source`` as segment ``name`` (replacing a segment of that name)."""
        key = self._key(name)
        writer = self.store.writer(key)
        try:
            with writer.open(SEGMENT_STREAM) as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
            now = dt.datetime.now(dt.timezone.utc).isoformat()
            manifest = Manifest(
                format_version=1,
                backup_uid=name,
                namespace=self.namespace,
                application={"kind": self.kind, "name": self.application},
                driver={"name": self.driver},
                strategy_ref={},
                parameters={},
                taken_at=now,
                streams=tuple(writer.streams),
                driver_metadata=dict(metadata),
                encryption=writer.encryption,
            )
            writer.commit(manifest)
        except BaseException:
            writer.abort()
            with contextlib.suppress(Exception):
                self.store.delete(key)
            raise

    def names(self) -> list[str]:
        """The committed segments, sorted by name."""
        try:
            entries = self.store.fs.ls(self._base(), detail=False)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise StorageError("the backup storage is unreachable", admin_detail=repr(exc)) from exc
        found = sorted(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)
        return [n for n in found if self.store.fs.exists(f"{self._base()}/{n}/{MANIFEST}")]

    def metadata(self, name: str) -> Mapping[str, Any]:
        """What the driver recorded with segment ``name`` (read from its manifest)."""
        return self.store.reader(self._key(name)).manifest.driver_metadata

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        """Segment ``name``, decrypted and decompressed; reaching its end verifies both
        digests (:class:`ArtifactCorruptError` naming the segment otherwise)."""
        try:
            reader = self.store.reader(self._key(name))
            reader.unlock()
            with reader.open(SEGMENT_STREAM) as stream:
                yield stream
        except ArtifactCorruptError as exc:
            raise ArtifactCorruptError(
                f"archived segment {name} is damaged: {exc.message}", admin_detail=exc.admin_detail
            ) from None

    def delete(self, name: str) -> None:
        self.store.delete(self._key(name))
