"""Placeholders in the admin's commands: ``${connection.host}``, ``${credentials.password}``.

Grammar (nothing else is special; there is no shell unless the admin runs one)::

    ${connection.<key>}    a value of the application's ``connection`` (not secret)
    ${credentials.<key>}   a value of the application's credentials: in ``env`` only
    ${app.name}            the application's name (for a restore: the target's)
    ${app.namespace}       its namespace
    ${app.kind}            its kind, e.g. ``Redis``
    ${app.apiGroup}        its API group, e.g. ``apps.example.com``
    $${                    a literal ``${`` (e.g. for ``sh -c 'echo $${HOME}'``)

A ``$`` not followed by ``{`` is literal, so ``sh -c 'pg_dump "$PGDATABASE"'`` needs no
escaping.  Every template is parsed when the BackupClass is applied: an unknown source,
an unknown ``app`` field, a malformed key, an unterminated ``${`` or a credential in argv
is refused there, with the field's path.  Only "this application has no such key"
(connection keys are declared per application) can surface at run time.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from cozybackup_core import AppLocation

#: Where a template may be used: argv is visible to every local user (``ps``), env is not.
ARGV = "argv"
ENV = "env"

SOURCES = ("connection", "credentials", "app")
APP_FIELDS = ("name", "namespace", "kind", "apiGroup")
_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$")
_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")


class TemplateError(ValueError):
    """A template that cannot be parsed, or a placeholder that is not allowed there."""


@attrs.frozen
class Ref:
    """One placeholder: ``source`` is connection, credentials or app."""

    source: str
    key: str

    def __str__(self) -> str:
        return "${" + f"{self.source}.{self.key}" + "}"


Part = str | Ref


def parse(text: str, where: str) -> tuple[Part, ...]:
    """Split ``text`` into literal strings and :class:`Ref` placeholders.

    ``where`` is :data:`ARGV` or :data:`ENV`; credentials are refused in argv.
    """
    if "\x00" in text:
        raise TemplateError("must not contain a NUL character")
    parts: list[Part] = []
    literal: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        literal.append(text[pos : m.start()])
        pos = m.end()
        if m.group(0) == "$${":
            literal.append("${")
            continue
        if m.group(1) is None:
            raise TemplateError(
                f"unterminated placeholder at character {m.start()}; write $${{ for a literal ${{"
            )
        ref = _ref(m.group(1).strip(), where)
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(ref)
    literal.append(text[pos:])
    if rest := "".join(literal):
        parts.append(rest)
    return tuple(parts)


def _ref(inner: str, where: str) -> Ref:
    source, dot, key = inner.partition(".")
    shown = "${" + inner[:60] + "}"
    if source not in SOURCES or not dot:
        raise TemplateError(
            f"unknown placeholder {shown}; use ${{connection.<key>}}, ${{credentials.<key>}} "
            f"(env only) or ${{app.<{'|'.join(APP_FIELDS)}>}}; write $${{ for a literal ${{"
        )
    if source == "app":
        if key not in APP_FIELDS:
            raise TemplateError(
                f"unknown placeholder {shown}; the app fields are {', '.join(APP_FIELDS)}"
            )
    elif not _KEY.match(key):
        raise TemplateError(f"placeholder {shown} does not name a valid {source} key")
    if source == "credentials" and where == ARGV:
        raise TemplateError(
            f"{shown} is a credential: any local user can read a command line (ps), so "
            "credentials may only be passed in env (e.g. env: {PGPASSWORD: "
            "${credentials.password}})"
        )
    return Ref(source, key)


class MissingValue(LookupError):
    """The application does not declare a value a placeholder needs (a run-time problem)."""

    def __init__(self, ref: Ref, why: str) -> None:
        super().__init__(f"{ref}: {why}")
        self.ref = ref


def scalar(value: Any) -> str | None:
    """The text of a connection value, or None for one that is not a scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def app_values(app: AppLocation) -> dict[str, str]:
    return {
        "name": app.ref.name,
        "namespace": app.namespace,
        "kind": app.ref.kind,
        "apiGroup": app.ref.api_group,
    }


def render(parts: tuple[Part, ...], app: AppLocation) -> str:
    """Substitute ``app``'s values; raises :class:`MissingValue` for an absent key."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        table: Mapping[str, Any]
        if part.source == "app":
            table = app_values(app)
        elif part.source == "connection":
            table = app.connection
        else:
            table = app.credentials
        if part.key not in table:
            raise MissingValue(part, f"the application declares no {part.source} key {part.key!r}")
        text = scalar(table[part.key])
        if text is None:
            raise MissingValue(part, f"the {part.source} value {part.key!r} is not a scalar")
        if "\x00" in text:
            raise MissingValue(part, f"the {part.source} value {part.key!r} contains a NUL")
        out.append(text)
    return "".join(out)


def env_name(prefix: str, key: str) -> str:
    """``COZY_CONN_`` + ``db-host`` -> ``COZY_CONN_DB_HOST``."""
    return prefix + re.sub(r"[^A-Z0-9]", "_", key.upper())
