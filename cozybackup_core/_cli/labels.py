"""kubectl's label selectors (``-l``): ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``,
``a in (x,y)``, ``a notin (x)``, joined by commas; every requirement must hold."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from .._api.errors import ValidationError

Requirement = Callable[[Mapping[str, str]], bool]

_KEY = r"[A-Za-z0-9][A-Za-z0-9._/-]*"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s+\(([^()]*)\)\s*$")
_EQ = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*([A-Za-z0-9._-]*)\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


def _split(text: str) -> list[str]:
    """Commas separate requirements, except inside ``( )``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _requirement(part: str, text: str) -> Requirement:
    if m := _SET.match(part):
        key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EQ.match(part):
        key, op, value = m.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _EXISTS.match(part):
        negated, key = m.group(1) == "!", m.group(2)
        return lambda labels: (key in labels) != negated
    raise ValidationError(
        [("--selector", f"{text!r} is not a label selector (e.g. app=shop,tier!=cache)")]
    )


def parse_selector(text: str) -> Requirement:
    """A predicate over an object's labels; a selector that does not parse names ``-l``."""
    reqs = [_requirement(part, text) for part in _split(text) if part.strip()]
    if not reqs:
        raise ValidationError([("--selector", "is empty")])
    return lambda labels: all(r(labels) for r in reqs)
