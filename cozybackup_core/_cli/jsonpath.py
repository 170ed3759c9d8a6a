"""kubectl's ``-o jsonpath=TEMPLATE``: text with ``{.path}`` expressions (JSONPath, by
jsonpath-ng), ``{"\\n"}`` literals and ``{range .path}...{end}`` loops; several matches of
one expression print space-separated, as kubectl prints them."""

from __future__ import annotations

import json
import re
from typing import Any

from jsonpath_ng.exceptions import JsonPathParserError  # type: ignore[import-untyped, unused-ignore]
from jsonpath_ng.ext.parser import parse  # type: ignore[import-untyped, unused-ignore]

from .._api.errors import ValidationError

_TOKEN = re.compile(r"\{((?:[^{}\"]|\"(?:[^\"\\]|\\.)*\")*)\}")


def _tokens(template: str) -> list[tuple[str, str]]:
    """``("text", ...)`` and ``("expr", ...)`` in order."""
    out, pos = [], 0
    for m in _TOKEN.finditer(template):
        if m.start() > pos:
            out.append(("text", template[pos : m.start()]))
        out.append(("expr", m.group(1).strip()))
        pos = m.end()
    if pos < len(template):
        out.append(("text", template[pos:]))
    return out


def _find(expr: str, data: Any, template: str) -> list[Any]:
    path = (
        expr
        if expr.startswith("$")
        else "$" + (expr if expr.startswith((".", "[")) else "." + expr)
    )
    try:
        return [m.value for m in parse(path).find(data)]
    except (JsonPathParserError, ValueError, TypeError, AttributeError) as exc:
        raise ValidationError(
            [("--output", f"jsonpath {template!r}: {expr!r} is not a JSONPath expression ({exc})")]
        ) from None


def _literal(value: str, template: str) -> str:
    try:
        return str(json.loads(value, strict=False))
    except json.JSONDecodeError:
        raise ValidationError(
            [("--output", f"jsonpath {template!r}: {value} is not a quoted string")]
        ) from None


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def render(template: str, data: Any) -> str:
    tokens = _tokens(template)
    out, _ = _render(tokens, 0, data, template)
    return out


def _render(tokens: list[tuple[str, str]], i: int, data: Any, template: str) -> tuple[str, int]:
    """From ``tokens[i]`` to the matching ``{end}`` (or the end); the text and where it stopped."""
    out: list[str] = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            out.append(value)
        elif value == "end":
            return "".join(out), i
        elif value.startswith("range "):
            body_start = i + 1
            items = _find(value[len("range ") :].strip(), data, template)
            end = body_start
            for item in items:
                text, end = _render(tokens, body_start, item, template)
                out.append(text)
            if not items:  # still find where the body ends
                _, end = _skip(tokens, body_start)
            i = end
        elif value.startswith('"'):
            out.append(_literal(value, template))
        else:
            out.append(" ".join(_show(v) for v in _find(value, data, template)))
        i += 1
    return "".join(out), i


def _skip(tokens: list[tuple[str, str]], i: int) -> tuple[str, int]:
    depth = 0
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "expr" and value.startswith("range "):
            depth += 1
        elif kind == "expr" and value == "end":
            if depth == 0:
                return "", i
            depth -= 1
        i += 1
    return "", i
