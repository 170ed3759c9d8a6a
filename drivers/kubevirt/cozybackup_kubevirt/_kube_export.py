"""A VirtualMachineExport, while it is needed: made with a token the driver chose (its
Secret owned by the export, so both go together), waited on until ready, and each
exported PVC's raw image read through the export server."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import attrs

from cozybackup_core import DriverError

from . import _https
from ._kube import EXPORT, EXPORT_VERSIONS, LABELS, Cluster
from ._stream import StreamInvalid, sequential_runs

T = TypeVar("T")
_ENDED = ("Terminated", "Skipped")


def object_name(purpose: str) -> str:
    """A new object's name: ``cozybackup-<purpose>-<random>``."""
    return f"cozybackup-{purpose}-{secrets.token_hex(4)}"


@attrs.frozen
class Export:
    name: str
    token: str = attrs.field(repr=False)
    #: The export server's CA (PEM), from ``status.links.internal.cert``.
    cert: str | None
    #: volume name -> URL of its ``raw`` format
    raw: Mapping[str, str]

    def url(self, claim: str) -> str:
        """The raw image URL of PVC ``claim``: a PVC's export names the volume after the
        PVC, a snapshot's after the PVC restored from it (``<export>-<PVC>``)."""
        for name in (claim, f"{self.name}-{claim}"):
            if name in self.raw:
                return self.raw[name]
        raise DriverError(
            "the export of the virtual machine's disks lacks a disk; ask the platform operator",
            admin_detail=f"VirtualMachineExport {self.name}: no raw volume for {claim} "
            f"(has {sorted(self.raw)})",
        )

    def runs(
        self,
        cluster: Cluster,
        claim: str,
        what: str,
        consume: Callable[[int, Iterator[tuple[int, bytes]]], T],
    ) -> T:
        """``consume(size, runs)`` over the non-zero runs of ``claim``'s raw image."""
        url = self.url(claim)
        with _https.download(url, self.token, self.cert, cluster.deadline, what) as (body, size):
            try:
                return consume(size, sequential_runs(body, size, cluster.deadline.check))
            except StreamInvalid as exc:
                raise DriverError(
                    f"{what} failed: the export server's image was cut short; ask the "
                    "platform operator",
                    admin_detail=f"{url}: {exc}",
                ) from None


@contextlib.contextmanager
def exported(cluster: Cluster, source: Mapping[str, str], what: str) -> Iterator[Export]:
    """Export ``source`` (a PVC or a VirtualMachineSnapshot) until the block ends."""
    kind = cluster.served(EXPORT, EXPORT_VERSIONS)
    name = object_name("export")
    token = secrets.token_urlsafe(32)
    ttl = max(60, int(cluster.deadline.remaining()) + 60)
    made = cluster.create(
        kind,
        name,
        {"source": dict(source), "tokenSecretRef": f"{name}-token", "ttlDuration": f"{ttl}s"},
        labels=LABELS,
    )
    try:
        cluster.create_secret(f"{name}-token", {"token": token}, owner=made)
        ready = cluster.wait(what, kind, name, _ready, _failed)
        assert ready is not None
        link = ready["status"]["links"]["internal"]
        raw = {
            v["name"]: f["url"]
            for v in link.get("volumes") or ()
            for f in v.get("formats") or ()
            if f.get("format") == "raw"
        }
        yield Export(name=name, token=token, cert=link.get("cert") or None, raw=raw)
    finally:
        cluster.delete(kind, name)


def _ready(obj: Mapping[str, Any]) -> bool:
    status = obj.get("status") or {}
    link = (status.get("links") or {}).get("internal") or {}
    return status.get("phase") == "Ready" and bool(link.get("volumes"))


def _failed(obj: Mapping[str, Any]) -> str | None:
    phase = (obj.get("status") or {}).get("phase")
    return f"export phase {phase}" if phase in _ENDED else None
