"""CustomResourceDefinitions generated from the attrs types.

The same field declarations drive validation (``_fields``), the wire format (``_wire``)
and these schemas, so the three cannot drift apart.  Tests validate every object the
engine writes against these schemas.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs

from .fields import SCHEMA_KEY
from .types import GROUP, KINDS, VERSION, has_status_subresource
from .wire import camel

_PRINTER_COLUMNS: dict[str, list[dict[str, str]]] = {
    "BackupJob": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Application", "type": "string", "jsonPath": ".spec.applicationRef.name"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "RestoreJob": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Backup", "type": "string", "jsonPath": ".spec.backupRef.name"},
    ],
    "Backup": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Application", "type": "string", "jsonPath": ".spec.applicationRef.name"},
        {"name": "Taken", "type": "date", "jsonPath": ".spec.takenAt"},
    ],
    "Plan": [
        {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule.cron"},
        {"name": "Last", "type": "date", "jsonPath": ".status.lastScheduleTime"},
    ],
}


# What Cozystack's CRDs carry beyond the schema, carried the same way by ours so that its
# console and `kubectl get --field-selector` work on our objects as on its own.
_APP_FIELDS = [
    {"jsonPath": ".spec.applicationRef.apiGroup"},
    {"jsonPath": ".spec.applicationRef.kind"},
    {"jsonPath": ".spec.applicationRef.name"},
]
_SELECTABLE_FIELDS: dict[str, list[dict[str, str]]] = {
    "Plan": _APP_FIELDS,
    "BackupJob": _APP_FIELDS,
    "Backup": _APP_FIELDS,
}
#: The console fills these spec fields from lists of the named sources.
_CONSOLE_SOURCES: dict[str, dict[str, str]] = {
    "BackupJob": {
        "applicationRef.kind": "appkind",
        "backupClassName": "backupclass",
        "planRef.name": "plan",
    },
    "Backup": {"applicationRef.kind": "appkind"},
    "Plan": {"applicationRef.kind": "appkind", "backupClassName": "backupclass"},
    "RestoreJob": {"backupRef.name": "backup", "targetApplicationRef.kind": "appkind"},
}
#: CEL rules on spec fields, as Cozystack's: a job keeps the class it was made with
#: (our admission makes a job's whole spec immutable; this is the rule any client sees).
_SPEC_RULES: dict[str, dict[str, list[dict[str, str]]]] = {
    "BackupJob": {
        "backupClassName": [{"rule": "self == oldSelf", "message": "backupClassName is immutable"}]
    },
}


def schema_of(tp: Any) -> dict[str, Any]:
    """The openAPIV3Schema fragment of a Python type used in the API."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return schema_of(args[0])
        raise TypeError(f"unsupported union {tp}")
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", "format": "int64"}
    if tp is dt.datetime:
        return {"type": "string", "format": "date-time"}
    if origin is tuple:
        return {"type": "array", "items": schema_of(typing.get_args(tp)[0])}
    if origin in (Mapping, dict):
        value_t = typing.get_args(tp)[1]
        if value_t is str:
            return {"type": "object", "additionalProperties": {"type": "string"}}
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if attrs.has(tp):
        return _object_schema(tp)
    raise TypeError(f"no schema for {tp!r}")


def _object_schema(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        key = camel(field.name)
        prop = schema_of(hints[field.name])
        prop.update(
            {k: v for k, v in field.metadata.get(SCHEMA_KEY, {}).items() if not k.startswith("x-")}
        )
        props[key] = prop
        if field.default is attrs.NOTHING:
            required.append(key)
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    return out


def plural_of(kind: str) -> str:
    """The resource name of one of our kinds (``backupjobs``, ``backupclasses``), as its
    CRD declares it."""
    return kind.lower() + ("es" if kind.endswith("s") else "s")


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition manifest of one kind."""
    cls = KINDS[kind]
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": schema_of(hints["spec"]),
    }
    if "status" in hints:
        properties["status"] = schema_of(hints["status"])
    plural = plural_of(kind)
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {
            # ``spec`` is not required, as in Cozystack's: an object without one is
            # admitted there too (the controller here skips it, naming it in its log).
            "openAPIV3Schema": {"type": "object", "properties": properties}
        },
    }
    if has_status_subresource(cls):
        version["subresources"] = {"status": {}}
    if kind in _PRINTER_COLUMNS:
        version["additionalPrinterColumns"] = _PRINTER_COLUMNS[kind]
    if kind in _SELECTABLE_FIELDS:
        version["selectableFields"] = _SELECTABLE_FIELDS[kind]
    for field, rules in _SPEC_RULES.get(kind, {}).items():
        properties["spec"]["properties"][field]["x-kubernetes-validations"] = rules
    metadata: dict[str, Any] = {"name": f"{plural}.{GROUP}"}
    if kind in _CONSOLE_SOURCES:
        metadata["annotations"] = {
            f"options.cozystack.io/source.{path}": source
            for path, source in _CONSOLE_SOURCES[kind].items()
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": metadata,
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
            },
            "scope": "Namespaced" if cls.namespaced else "Cluster",
            "versions": [version],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(kind) for kind in KINDS]


def object_schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of ``kind``, for validating objects before they are sent."""
    schema: dict[str, Any] = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema
