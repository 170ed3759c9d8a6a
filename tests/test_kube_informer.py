"""The informer's cache rules, without a server: an event older than what is cached is
ignored, a deleted object stays deleted against late events, a list replaces it all.
(On a real API server the informers serve every pass of tests/kube/test_controller.py.)"""

from __future__ import annotations

import threading
from typing import Any

from cozybackup_core.hosts.kube_informer import Informer


def obj(name: str, version: str, phase: str = "", ns: str = "t") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "resourceVersion": version},
        "status": {"phase": phase},
    }


class _Pages:
    """``list_cluster_custom_object`` answering from pages of items."""

    def __init__(self, *pages: list[dict[str, Any]], version: str = "100") -> None:
        self.pages = pages
        self.version = version
        self.calls: list[str | None] = []

    def list_cluster_custom_object(self, *_: Any, **kw: Any) -> dict[str, Any]:
        self.calls.append(kw.get("_continue"))
        i = int(kw.get("_continue") or 0)
        more = {"continue": str(i + 1)} if i + 1 < len(self.pages) else {}
        return {
            "kind": "BackupJobList",
            "metadata": {"resourceVersion": self.version, **more},
            "items": self.pages[i],
        }


def informer(api: Any = None) -> Informer:
    return Informer(api, "backupjobs", threading.Event())


def phases(inf: Informer, namespace: str | None = None) -> dict[str, str]:
    return {r["metadata"]["name"]: r["status"]["phase"] for r in inf.items(namespace)}


def test_an_older_event_never_overwrites_a_newer_write() -> None:
    inf = informer()
    inf.observe(obj("a", "12", "Succeeded"))  # our write's answer
    inf.observe(obj("a", "11", "Running"))  # the watch catching up
    assert phases(inf) == {"a": "Succeeded"}
    inf.observe(obj("a", "13", "Failed"))
    assert phases(inf) == {"a": "Failed"}


def test_a_deleted_object_stays_deleted_until_made_again() -> None:
    inf = informer()
    inf.observe(obj("a", "5", "Running"))
    inf.forget("t", "a")  # our delete: the tombstone is the version we knew
    inf.observe(obj("a", "5", "Running"))  # a late event
    assert phases(inf) == {}
    inf.forget("t", "a", "9")  # the watch's DELETED
    inf.observe(obj("a", "8", "Running"))
    assert phases(inf) == {}
    inf.observe(obj("a", "20", "Pending"))  # created again under the same name
    assert phases(inf) == {"a": "Pending"}


def test_a_list_reads_every_page_and_replaces_the_cache() -> None:
    api = _Pages([obj("a", "1"), obj("b", "2", ns="u")], [obj("c", "3")])
    inf = informer(api)
    inf.observe(obj("stale", "0"))
    inf.forget("t", "gone", "99")
    assert inf._list() == "100"
    assert api.calls == [None, "1"]
    assert sorted(phases(inf)) == ["a", "b", "c"]
    assert sorted(phases(inf, "u")) == ["b"]
    assert inf.synced.is_set() and inf.lists == 1
    inf.observe(obj("gone", "50"))  # the tombstones went with the old cache
    assert "gone" in phases(inf)
    assert inf.items()[0]["kind"] == "BackupJob"


def test_each_object_is_decoded_once_per_version_and_a_bad_one_skipped() -> None:
    decoded: list[str] = []

    def decode(raw: dict[str, Any]) -> str:
        from cozybackup_core import ValidationError

        name = raw["metadata"]["name"]
        decoded.append(name)
        if name == "bad":
            raise ValidationError([("spec", "required")])
        return f"{name}@{raw['metadata']['resourceVersion']}"

    inf = Informer(None, "backupjobs", threading.Event(), decode=decode)
    for o in (obj("a", "1"), obj("b", "2"), obj("bad", "3")):
        inf.observe(o)
    assert sorted(inf.decoded()) == ["a@1", "b@2"]
    assert sorted(inf.decoded()) == ["a@1", "b@2"]
    assert sorted(decoded) == ["a", "b", "bad"]  # once each, the bad one too
    inf.observe(obj("a", "4"))
    assert sorted(inf.decoded()) == ["a@4", "b@2"]
    assert sorted(decoded) == ["a", "a", "b", "bad"]
