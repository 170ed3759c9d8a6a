"""The deduplicating artifact format: per-tenant repositories of chunks in packs.

The default of every StorageLocation (``spec.deduplication: false`` turns it off).  Layout
under the location's root, beside the per-backup folders of the stream format::

    _repos/<namespace>/<plain|sealed>/
        config.json               <- the repository key (wrapped when sealed), written once
        packs/<xx>/<pack-id>      <- chunk blobs, concatenated; tens of MiB each
        index/<xx>/<pack-id>      <- what is in that pack (sealed when the repository is)

A Backup's ``manifest.json`` (format version 2) lists each stream as its ordered chunk
references.  ``_repos`` cannot be a namespace (a DNS label has no ``_``), so it never
collides with the per-backup folders.  Deleting a Backup removes its manifest; the next
garbage collection (``gc.py``) removes what no committed manifest references any more.
"""

from .chunking import Chunker
from .repository import ChunkRef, Repository, repository_for
from .streams import ChunkReader, DedupStreamWriter, PackSink

__all__ = [
    "ChunkReader",
    "ChunkRef",
    "Chunker",
    "DedupStreamWriter",
    "PackSink",
    "Repository",
    "repository_for",
]
