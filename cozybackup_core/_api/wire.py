"""The wire format: one cattrs converter, camelCase keys, field-path errors.

``load(dict)`` dispatches on ``apiVersion``/``kind``; ``dump(obj)`` is its inverse.
Closed schemas (spec, status) forbid unknown keys so a typo such as ``backupClassname``
is an error naming the field, not a silently ignored setting.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import typing
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

import attrs
import cattrs
import yaml
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .errors import ValidationError
from .fields import FieldInvalid
from .types import KINDS, ApplicationRef, GroupKind, ObjectMeta, Schedule


@attrs.frozen
class Kinds:
    """The kinds a loader knows, by ``(apiVersion, kind)``: explicit, never global state.

    :data:`API_KINDS` holds cozybackup's API; a host with admin-only kinds of its own (the
    local host's Application and Secret) extends it with :meth:`with_kinds` and passes the
    result to :func:`load` / :func:`load_yaml`.  A kind class carries ``api_version`` and
    ``kind`` as class attributes.
    """

    by_key: Mapping[tuple[str, str], type[Any]]

    @classmethod
    def of(cls, *classes: type[Any]) -> Kinds:
        return cls({(c.api_version, c.kind): c for c in classes})

    def with_kinds(self, *classes: type[Any]) -> Kinds:
        return Kinds({**self.by_key, **Kinds.of(*classes).by_key})

    def get(self, api_version: str, kind: str) -> type[Any] | None:
        return self.by_key.get((api_version, kind))

    def known(self, api_version: str) -> list[str]:
        return sorted(k for (v, k) in self.by_key if v == api_version)

    def __iter__(self) -> Iterator[type[Any]]:
        return iter(self.by_key.values())


#: cozybackup's own kinds (``backups.cozystack.io/v1alpha1``).
API_KINDS = Kinds.of(*KINDS.values())

# Keys that must be emitted even when equal to their default, so dumps stay explicit.
_ALWAYS_EMIT: dict[type[Any], set[str]] = {
    ApplicationRef: {"api_group"},
    GroupKind: {"api_group"},
    Schedule: {"type"},
}
_OPEN_SCHEMAS: set[type[Any]] = {ObjectMeta}  # Kubernetes adds metadata keys we do not model


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _structure_datetime(value: Any, _t: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value[:40]!r} is not an RFC 3339 time") from None
    else:
        raise TypeError(f"expected an RFC 3339 time, got {type(value).__name__}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _unstructure_datetime(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _strict_str(value: Any, _t: Any) -> str:
    # cattrs would call str() on anything; a number where a name belongs is an error.
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strict_int(value: Any, _t: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _strict_bool(value: Any, _t: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def _str_map(value: Any, _t: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    bad = [k for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"keys and values must be strings (see {str(bad[0])[:40]!r})")
    return dict(value)


def _as_json(value: Any) -> Any:
    """A free-form value as the API server holds it (JSON): a YAML timestamp such as an
    unquoted ``recoveryTime: 2026-12-05T09:15:00Z`` becomes its RFC 3339 string."""
    if isinstance(value, dt.datetime):
        return _unstructure_datetime(
            value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
        )
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json(v) for v in value]
    return value


def metadata_strings(metadata: Mapping[str, Any]) -> dict[str, str]:
    """``Backup.spec.driverMetadata`` as Cozystack types it (``map[string]string``):
    strings as they are, anything else as compact JSON (``7``, ``["shop","crm"]``).  A
    string that would read as JSON (``"5e54634226373932"``, ``"true"``, ``"7"``) is written
    as a JSON string, quoted, so :func:`metadata_values` gives back exactly what was
    recorded.  A driver gets its typed record from the artifact's manifest, not from here."""
    return {k: _metadata_string(v) for k, v in metadata.items()}


def _metadata_string(value: Any) -> str:
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def metadata_values(strings: Mapping[str, str]) -> dict[str, Any]:
    """The values :func:`metadata_strings` wrote, exactly: JSON decoded, other text as is."""
    out: dict[str, Any] = {}
    for key, text in strings.items():
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def _any_map(value: Any, _t: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    if not all(isinstance(k, str) for k in value):
        raise TypeError("keys must be strings")
    return {k: _as_json(v) for k, v in value.items()}


def _is_homogeneous_tuple(t: Any) -> bool:
    args: tuple[Any, ...] = typing.get_args(t)
    origin: Any = typing.get_origin(t)
    return origin is tuple and len(args) == 2 and args[1] is Ellipsis


def _int_or_text(value: Any, t: Any) -> int:
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,18}", value.strip()):
        return int(value)
    return _strict_int(value, t)


def _bool_or_text(value: Any, t: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return _strict_bool(value, t)


def make_converter(*, omit_defaults: bool = True, from_strings: bool = False) -> cattrs.Converter:
    """The wire converter.  ``omit_defaults=False`` gives full snapshots (manifests);
    ``from_strings`` also takes integers and booleans written as strings (``"7200"``,
    ``"true"``), as Cozystack's string-valued parameters hold them."""
    conv = cattrs.Converter(unstruct_collection_overrides={tuple: list})
    conv.register_structure_hook(dt.datetime, _structure_datetime)
    conv.register_unstructure_hook(dt.datetime, _unstructure_datetime)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(int, _int_or_text if from_strings else _strict_int)
    conv.register_structure_hook(bool, _bool_or_text if from_strings else _strict_bool)
    conv.register_structure_hook_func(lambda t: t == Mapping[str, str], _str_map)
    conv.register_structure_hook_func(lambda t: t == Mapping[str, Any], _any_map)

    def structure_factory(cls: type[Any]) -> Any:
        overrides = {a.name: override(rename=camel(a.name)) for a in attrs.fields(cls)}
        inner = make_dict_structure_fn(
            cls,
            conv,
            _cattrs_forbid_extra_keys=cls not in _OPEN_SCHEMAS,
            _cattrs_detailed_validation=True,
            **cast(dict[str, Any], overrides),
        )

        def structure(value: Any, t: Any) -> Any:
            if not isinstance(value, Mapping):
                raise TypeError(f"expected a mapping, got {type(value).__name__}")
            try:
                return inner(value, t)
            except FieldInvalid as exc:
                # An attrs validator fired in the constructor: group it so the path builds up.
                raise ClassValidationError(str(exc), [exc], cls) from None

        return structure

    def unstructure_factory(cls: type[Any]) -> Any:
        keep = _ALWAYS_EMIT.get(cls, set())
        overrides = {
            a.name: override(
                rename=camel(a.name), omit_if_default=omit_defaults and a.name not in keep
            )
            for a in attrs.fields(cls)
        }
        return make_dict_unstructure_fn(cls, conv, **cast(dict[str, Any], overrides))

    def tuple_factory(t: Any) -> Any:
        # cattrs would turn "shop" into ("s", "h", "o", "p"): a list is required.
        item_t = typing.get_args(t)[0] if typing.get_args(t) else Any

        def structure_tuple(value: Any, _t: Any) -> tuple[Any, ...]:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise TypeError(f"expected a list, got {type(value).__name__}")
            out, errors = [], []
            for i, item in enumerate(value):
                try:
                    out.append(conv.structure(item, item_t))
                except Exception as exc:  # noqa: BLE001 - collected, re-raised as a group
                    exc.__notes__ = [  # type: ignore[attr-defined]
                        *getattr(exc, "__notes__", []),
                        IterableValidationNote(f"@ index {i}", i, item_t),
                    ]
                    errors.append(exc)
            if errors:
                raise IterableValidationError("while structuring a list", errors, t)
            return tuple(out)

        return structure_tuple

    conv.register_structure_hook_factory(_is_homogeneous_tuple, tuple_factory)
    conv.register_structure_hook_factory(attrs.has, structure_factory)
    conv.register_unstructure_hook_factory(attrs.has, unstructure_factory)
    return conv


CONVERTER = make_converter()
SNAPSHOT = make_converter(omit_defaults=False)
#: For driver parameters only: Cozystack writes them as strings.
FROM_STRINGS = make_converter(from_strings=True)


# --------------------------------------------------------------------------- errors


def _flatten(exc: BaseException, path: str) -> Iterable[tuple[str, str]]:
    if isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            yield _join(path, str(key)), "unknown field"
        return
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        for sub in exc.exceptions:
            yield from _flatten(sub, _join(path, _segment(sub)))
        return
    if isinstance(exc, KeyError):
        yield path, "required"
        return
    if isinstance(exc, FieldInvalid):
        yield path, exc.message
        return
    yield path, str(exc) or type(exc).__name__


def _segment(exc: BaseException) -> str:
    if isinstance(exc, FieldInvalid):  # raised by an attrs validator in the constructor
        return camel(exc.field)
    for note in getattr(exc, "__notes__", ()):
        name = getattr(note, "name", None)
        if isinstance(name, str):
            return camel(name)
        index = getattr(note, "index", None)
        if isinstance(index, int):
            return f"[{index}]"
    return ""


def _join(path: str, seg: str) -> str:
    if not seg:
        return path
    if seg.startswith("["):
        return path + seg
    return f"{path}.{seg}" if path else seg


def structure(data: Any, cls: type[Any], path: str = "", *, from_strings: bool = False) -> Any:
    """Structure ``data`` into ``cls`` or raise :class:`ValidationError` with field paths."""
    try:
        return (FROM_STRINGS if from_strings else CONVERTER).structure(data, cls)
    except (ClassValidationError, IterableValidationError) as exc:
        raise ValidationError(list(_flatten(exc, path))) from None
    except (TypeError, ValueError) as exc:
        raise ValidationError([(path, str(exc))]) from None


def unstructure(obj: Any) -> Any:
    return CONVERTER.unstructure(obj)


def snapshot(obj: Any) -> Any:
    """Like :func:`unstructure`, with every default written out (a record of what was used)."""
    return SNAPSHOT.unstructure(obj)


# --------------------------------------------------------------------------- manifests

_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


def load(doc: Any, kinds: Kinds = API_KINDS, namespace: str | None = None) -> Any:
    """Load one Kubernetes-style manifest (a dict) into its typed object of ``kinds``.
    ``namespace`` (``apply -n``) is where a namespaced object without one goes; one that
    names another is an error, as with kubectl."""
    if not isinstance(doc, Mapping):
        raise ValidationError([("", f"expected a mapping, got {type(doc).__name__}")])
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    problems = []
    if not isinstance(api_version, str):
        problems.append(("apiVersion", "required"))
    if not isinstance(kind, str):
        problems.append(("kind", "required"))
    if problems:
        raise ValidationError(problems)
    cls = kinds.get(str(api_version), str(kind))
    if cls is None:
        known = kinds.known(str(api_version))
        hint = f" (known kinds: {', '.join(known)})" if known else ""
        raise ValidationError(
            [
                (
                    "kind",
                    f"{str(api_version)[:80]}/{str(kind)[:80]} is not a kind cozybackup knows{hint}",
                )
            ]
        )
    body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind")}
    meta = body.get("metadata")
    if namespace and cls.namespaced and isinstance(meta, Mapping):
        given = meta.get("namespace")
        if given not in (None, "", namespace):
            raise ValidationError(
                [("metadata.namespace", f"{str(given)[:63]!r} does not match -n {namespace}")]
            )
        body["metadata"] = {**meta, "namespace": namespace}
    meta = body.get("metadata")
    if isinstance(meta, Mapping) and not meta.get("name") and meta.get("generateName"):
        body["metadata"] = {**meta, "name": generated_name(meta["generateName"])}
    obj = structure(body, cls)
    if cls.namespaced and not obj.metadata.namespace:
        raise ValidationError([("metadata.namespace", f"required for {cls.kind}")])
    if not cls.namespaced and obj.metadata.namespace:
        raise ValidationError([("metadata.namespace", f"{cls.kind} is cluster-scoped; remove it")])
    return obj


#: The API server's alphabet for generated names (no vowels, no look-alike digits).
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def generated_name(prefix: Any) -> Any:
    """``metadata.generateName`` made a name as the API server makes it on create: the
    prefix (cut to 58 characters) and five random characters.  A prefix that is not a
    string is left for the name's own check to refuse."""
    if not isinstance(prefix, str):
        return prefix
    return prefix[:58] + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))


def dump(obj: Any) -> dict[str, Any]:
    """The manifest of a typed object: ``apiVersion``, ``kind``, then its fields."""
    body = unstructure(obj)
    return {"apiVersion": obj.api_version, "kind": obj.kind, **body}


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: a reviewer reads the
    first, YAML keeps the last (kubectl's strict field validation refuses it too)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


#: Deeper nesting than any manifest has; refused before PyYAML recurses into it.
MAX_YAML_DEPTH = 64


def _depth_ok(text: str) -> bool:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                return False
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return True


def _list_items(doc: Any) -> list[Any]:
    """A ``v1`` List (``kubectl get -o yaml``, ``cozybackup get -o yaml``) stands for its
    items; any other document for itself."""
    if isinstance(doc, Mapping) and doc.get("apiVersion") == "v1" and doc.get("kind") == "List":
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise ValidationError([("items", "a v1 List's items must be a list")])
        return [i for i in items if i is not None]
    return [doc]


def load_yaml(
    text: str, source: str = "<input>", kinds: Kinds = API_KINDS, namespace: str | None = None
) -> list[Any]:
    """Load every document of a YAML stream; errors name the document and field."""
    try:
        if not _depth_ok(text):
            raise ValidationError([("", f"{source}: nested deeper than {MAX_YAML_DEPTH} levels")])
        docs = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
        docs = [item for d in docs for item in _list_items(d)]
    except yaml.YAMLError as exc:
        raise ValidationError([("", f"{source}: not valid YAML: {exc}")]) from None
    out = []
    for i, doc in enumerate(docs):
        try:
            out.append(load(doc, kinds, namespace))
        except ValidationError as exc:
            where = f"{source}" + (f" (document {i + 1})" if len(docs) > 1 else "")
            raise ValidationError([(p, f"{m} [{where}]") for p, m in exc.problems]) from None
    return out


def dump_yaml(objs: Iterable[Any]) -> str:
    return yaml.safe_dump_all([dump(o) for o in objs], sort_keys=False)
