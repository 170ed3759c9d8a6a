"""Field helpers: one declaration gives both the attrs validator and the CRD schema.

A field's constraints live in its attrs metadata under ``"schema"``; the validator reads
the same dict, so the Python check and the generated ``openAPIV3Schema`` cannot disagree.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs

SCHEMA_KEY = "cozybackup.schema"

# Kubernetes object names (RFC 1123 subdomain).  No "/", no "..", no upper case: safe to
# use as a path segment in the artifact layout.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # RFC 1123 label (namespaces)
KIND_PATTERN = r"^[A-Z][A-Za-z0-9]*$"
GROUP_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$"
LINE_PATTERN = r"^[^\x00-\x1f\x7f]*$"
PREFIX_PATTERN = r"^([A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*)?$"
# metav1.Condition's type: CamelCase, optionally under a domain (``example.com/Verified``).
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class FieldInvalid(ValueError):
    """Raised by validators; the converter turns it into a field-path problem."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _check(schema: dict[str, Any]) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    pattern = re.compile(schema["pattern"]) if "pattern" in schema else None

    def validate(_inst: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if isinstance(value, str):
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                raise FieldInvalid(attribute.name, f"at most {schema['maxLength']} characters")
            if "minLength" in schema and len(value) < schema["minLength"]:
                raise FieldInvalid(attribute.name, "must not be empty")
            if pattern is not None and not pattern.fullmatch(value):
                raise FieldInvalid(attribute.name, f"{value[:80]!r} {schema['x-describe']}")
            if "enum" in schema and value not in schema["enum"]:
                choices = ", ".join(v or '""' for v in schema["enum"])
                raise FieldInvalid(attribute.name, f"{value[:80]!r} is not one of {choices}")
        if isinstance(value, int) and not isinstance(value, bool):
            if "minimum" in schema and value < schema["minimum"]:
                raise FieldInvalid(attribute.name, f"must be >= {schema['minimum']}")
            if "maximum" in schema and value > schema["maximum"]:
                raise FieldInvalid(attribute.name, f"must be <= {schema['maximum']}")

    return validate


def constrained(*, default: Any = attrs.NOTHING, **schema: Any) -> Any:
    """An attrs field whose value is checked against a small JSON-schema subset."""
    return attrs.field(default=default, validator=_check(schema), metadata={SCHEMA_KEY: schema})


def name_field(*, default: Any = attrs.NOTHING, empty: bool = False) -> Any:
    """An object name; ``empty`` also allows ``""`` (Cozystack's references default it)."""
    return constrained(
        default=default,
        pattern=f"^({NAME_PATTERN[1:-1]})?$" if empty else NAME_PATTERN,
        maxLength=253,
        **{"x-describe": "is not a valid name (lower case letters, digits, '-' and '.')"},
    )


def optional_ref_field() -> Any:
    """An optional reference (``planRef``): one written without a name (``planRef: {}``,
    legal in Cozystack's schema) is no reference."""
    return attrs.field(default=None, converter=_named_or_none)


def _named_or_none(ref: Any) -> Any:
    return ref if ref is not None and ref.name else None


def namespace_field(*, default: Any = attrs.NOTHING) -> Any:
    return constrained(
        default=default,
        pattern=LABEL_PATTERN,
        maxLength=63,
        **{"x-describe": "is not a valid namespace (lower case letters, digits and '-')"},
    )


def kind_field(*, default: Any = attrs.NOTHING) -> Any:
    return constrained(
        default=default,
        pattern=KIND_PATTERN,
        maxLength=63,
        **{"x-describe": "is not a valid kind (CamelCase letters and digits)"},
    )


def group_field(
    *, default: Any = attrs.NOTHING, converter: Callable[[Any], Any] | None = None
) -> Any:
    schema: dict[str, Any] = {
        "pattern": GROUP_PATTERN,
        "maxLength": 253,
        "x-describe": "is not a valid API group (a DNS name such as apps.cozystack.io)",
    }
    return attrs.field(
        default=default,
        converter=converter,
        validator=_check(schema),
        metadata={SCHEMA_KEY: schema},
    )


def enum_field(*values: str, default: Any = attrs.NOTHING) -> Any:
    return constrained(default=default, enum=list(values))


def text_field(*, default: Any = attrs.NOTHING, max_length: int = 32768) -> Any:
    return constrained(default=default, maxLength=max_length)


def line_field(*, default: Any = attrs.NOTHING, max_length: int = 256) -> Any:
    """Input text on one line: no control characters (NUL, escapes, newlines)."""
    return constrained(
        default=default,
        maxLength=max_length,
        pattern=LINE_PATTERN,
        **{"x-describe": "must be one line of printable text"},
    )


def path_field(*, default: Any = attrs.NOTHING) -> Any:
    """A relative object-key prefix: segments that cannot climb out of their root."""
    return constrained(
        default=default,
        maxLength=512,
        pattern=PREFIX_PATTERN,
        **{"x-describe": "is not a relative prefix (segments of letters, digits, '.', '_', '-')"},
    )
