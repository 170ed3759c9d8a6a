"""Shell completion by argcomplete (commands, options, kinds, and the names of the
objects in the home ``--home`` names): ``cozybackup completion bash|zsh`` prints the
script to source, e.g. ``source <(cozybackup completion bash)``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..hosts.local import LocalHost

SHELLS = ("bash", "zsh")


def script(shell: str, prog: str = "cozybackup") -> str:
    from argcomplete.shell_integration import shellcode

    return str(shellcode([prog], shell=shell))


def kind_completer(aliases: Mapping[str, type[Any]]) -> Callable[..., Iterable[str]]:
    def complete(prefix: str, **_: Any) -> list[str]:
        return sorted(a for a in aliases if a.startswith(prefix.lower()))

    return complete


def name_completer(aliases: Mapping[str, type[Any]]) -> Callable[..., Iterable[str]]:
    """Names of the objects of the kind already typed, in the namespace already typed."""

    def complete(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
        cls = aliases.get(str(getattr(parsed_args, "kind", "")).lower())
        if cls is None:
            return []
        ns = getattr(parsed_args, "namespace", None) if cls.namespaced else None
        try:
            found = LocalHost(Path(parsed_args.home)).objects.list(cls, ns)
        except OSError:  # no home yet: nothing to offer
            return []
        return sorted(o.metadata.name for o in found if o.metadata.name.startswith(prefix))

    return complete


def autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer a completing shell and exit (argcomplete's protocol); a no-op otherwise.
    argcomplete is imported only when a shell is completing: every other run of the CLI
    starts without it."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    import argcomplete

    argcomplete.autocomplete(parser)
