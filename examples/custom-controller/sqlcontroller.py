"""A custom controller that embeds cozybackup's engine, keeping every object in SQL.

It uses only the public API (``import cozybackup_core``): it implements the host port
(:class:`cozybackup_core.Host` with an :class:`cozybackup_core.ObjectStore`) over one
SQLite table of objects and one of applications, then drives the engine with a
:class:`cozybackup_core.Runner`.  Signals, locks and output stay here, in the program.

    python sqlcontroller.py --db platform.db --buckets ./buckets apply job.yaml
    python sqlcontroller.py --db platform.db --buckets ./buckets app tenant-a shop SQLiteDatabase \
        apps.example.com '{"path": "/srv/shop.sqlite"}'
    python sqlcontroller.py --db platform.db --buckets ./buckets serve --once

Walked through in docs/embedding.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sqlite3
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import yaml

import cozybackup_core as cb

R = TypeVar("R", bound=cb.Resource)

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, manifest TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS applications (
    namespace TEXT NOT NULL, api_group TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    connection TEXT NOT NULL, PRIMARY KEY (namespace, api_group, kind, name));
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    time TEXT, kind TEXT, namespace TEXT, name TEXT, type TEXT, reason TEXT, message TEXT);
"""


class SQLObjectStore:
    """The engine's objects, one row each, as the manifests ``cb.dump`` writes."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, now: Any) -> None:
        self.db, self.lock, self.now = db, lock, now

    def get(self, cls: type[R], namespace: str | None, name: str) -> R | None:
        with self.lock:
            row = self.db.execute(
                "SELECT manifest FROM objects WHERE kind=? AND namespace=? AND name=?",
                (cls.kind, namespace or "", name),
            ).fetchone()
        return None if row is None else cb.load(json.loads(row[0]))

    def list(self, cls: type[R], namespace: str | None = None) -> list[R]:
        sql, args = "SELECT manifest FROM objects WHERE kind=?", [cls.kind]
        if namespace is not None:
            sql, args = sql + " AND namespace=?", [*args, namespace]
        with self.lock:
            rows = self.db.execute(sql + " ORDER BY namespace, name", args).fetchall()
        return [cb.load(json.loads(r[0])) for r in rows]

    def create(self, obj: R) -> R:
        obj = cb.with_metadata(obj, cb.stamped(obj.metadata, self.now()))
        with self.lock:
            try:
                self._write(obj, insert=True)
            except sqlite3.IntegrityError:
                raise cb.ConflictError(f"{obj.kind} {obj.metadata.name} already exists") from None
        return obj

    def update_status(self, obj: R) -> R:
        current = self.get(type(obj), obj.metadata.namespace, obj.metadata.name)
        if current is None:
            raise cb.NotFoundError(f"{obj.kind} {obj.metadata.name} does not exist")
        new = cb.with_metadata(cb.with_status_of(current, obj), cb.bumped(current.metadata))
        with self.lock:
            self._write(new, insert=False)
        return new

    def set_metadata(self, obj: R) -> R:
        current = self.get(type(obj), obj.metadata.namespace, obj.metadata.name)
        if current is None:
            raise cb.NotFoundError(f"{obj.kind} {obj.metadata.name} does not exist")
        meta = attrs.evolve(
            cb.bumped(current.metadata),
            labels=obj.metadata.labels,
            annotations=obj.metadata.annotations,
        )
        new = cb.with_metadata(current, meta)
        with self.lock:
            self._write(new, insert=False)
        return new

    def delete(self, cls: type[cb.Resource], namespace: str | None, name: str) -> None:
        with self.lock, self.db:
            self.db.execute(
                "DELETE FROM objects WHERE kind=? AND namespace=? AND name=?",
                (cls.kind, namespace or "", name),
            )

    def _write(self, obj: cb.Resource, insert: bool) -> None:
        verb = "INSERT" if insert else "REPLACE"
        with self.db:
            self.db.execute(
                f"{verb} INTO objects VALUES (?, ?, ?, ?)",
                (
                    obj.kind,
                    obj.metadata.namespace or "",
                    obj.metadata.name,
                    json.dumps(cb.dump(obj), default=str),
                ),
            )


class SQLHost:
    """The host port over the database: objects, applications, platform secrets, events."""

    def __init__(self, path: Path, buckets: Path) -> None:
        # One connection shared by the engine's worker threads, serialised by a lock.
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()
        self.buckets = buckets
        self.objects = SQLObjectStore(self.db, self.lock, self.now)

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)

    def locate(self, namespace: str, ref: cb.ApplicationRef) -> cb.AppLocation:
        with self.lock:
            row = self.db.execute(
                "SELECT connection FROM applications WHERE namespace=? AND api_group=? "
                "AND kind=? AND name=?",
                (namespace, ref.api_group, ref.kind, ref.name),
            ).fetchone()
        if row is None:  # tenant-safe: says nothing of how applications are reached
            raise cb.NotFoundError(
                f"application {ref.kind} {ref.name} does not exist in namespace {namespace}"
            )
        return cb.AppLocation(ref=ref, namespace=namespace, connection=json.loads(row[0]))

    def secret(self, name: str) -> Mapping[str, str]:
        with self.lock:
            row = self.db.execute("SELECT data FROM secrets WHERE name=?", (name,)).fetchone()
        if row is None:
            raise cb.NotFoundError(
                "the platform's storage is misconfigured; ask the platform operator",
                admin_detail=f"secret {name!r} is not in the secrets table",
            )
        return dict(json.loads(row[0]))

    def local_bucket_path(self, bucket: str) -> str:
        return str(self.buckets / bucket)

    def event(self, obj: Any, type_: str, reason: str, message: str) -> None:
        meta = obj.metadata
        with self.lock, self.db:
            self.db.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    self.now().isoformat(),
                    obj.kind,
                    meta.namespace,
                    meta.name,
                    type_,
                    reason,
                    message,
                ),
            )

    def add_application(
        self, namespace: str, ref: cb.ApplicationRef, connection: dict[str, Any]
    ) -> None:
        with self.lock, self.db:
            self.db.execute(
                "REPLACE INTO applications VALUES (?, ?, ?, ?, ?)",
                (namespace, ref.api_group, ref.kind, ref.name, json.dumps(connection)),
            )


def serve(host: SQLHost, once: bool, interval: float) -> int:
    engine = cb.Engine(host, cb.PluginHost.load())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runner = cb.Runner(engine)
    for note in runner.recover():
        print(f"recovered: {note}")

    def report(r: cb.PassReport) -> None:
        for job in r.finished:
            print(f"{job.kind}/{job.metadata.name}: {job.status.phase}: {job.status.message}")
        if r.error:
            print(f"pass stopped early: {r.error}", file=sys.stderr)

    reports = runner.serve(stop, interval, once=once, on_pass=report)
    return 1 if any(r.failed or r.error for r in reports) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="a cozybackup controller over a SQL database")
    p.add_argument("--db", type=Path, required=True, help="the SQLite database of the platform")
    p.add_argument("--buckets", type=Path, required=True, help="where Local buckets live")
    sub = p.add_subparsers(dest="command", required=True)
    ap = sub.add_parser("apply", help="store the objects of a YAML file")
    ap.add_argument("file", type=Path)
    app = sub.add_parser("app", help="declare how an application is reached")
    app.add_argument("namespace")
    app.add_argument("name")
    app.add_argument("kind")
    app.add_argument("api_group")
    app.add_argument("connection", help="JSON object of driver connection keys")
    sv = sub.add_parser("serve", help="run passes until SIGTERM (or one with --once)")
    sv.add_argument("--once", action="store_true")
    sv.add_argument("--interval", type=float, default=30.0)
    get = sub.add_parser("get", help="print the objects of a kind as YAML")
    get.add_argument("kind")
    args = p.parse_args(argv)
    host = SQLHost(args.db, args.buckets)
    try:
        if args.command == "apply":
            for obj in cb.load_yaml(args.file.read_text(), str(args.file)):
                host.objects.create(obj)
                print(f"{obj.kind}/{obj.metadata.name} created")
        elif args.command == "app":
            ref = cb.ApplicationRef(api_group=args.api_group, kind=args.kind, name=args.name)
            host.add_application(args.namespace, ref, json.loads(args.connection))
        elif args.command == "get":
            kinds = {c.kind.lower(): c for c in cb.API_KINDS}
            cls = kinds.get(args.kind.lower().removesuffix("s"))
            if cls is None:
                print(f"error: {args.kind!r} is not a kind ({', '.join(kinds)})", file=sys.stderr)
                return 2
            print(yaml.safe_dump_all([cb.dump(o) for o in host.objects.list(cls)], sort_keys=False))
        else:
            return serve(host, args.once, args.interval)
    except cb.CozyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        host.db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
