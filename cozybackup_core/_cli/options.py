"""The types of the CLI's options (argparse ``type=``): each refuses a bad value with a
message naming what it expects, and argparse names the option."""

from __future__ import annotations

import argparse
import re

from .._api.units import DURATION_PATTERN, parse_duration


def interval(text: str) -> float:
    """``--interval``: a pass re-reads all state, so a loop without a pause is refused."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 1 <= seconds <= 86400:
        raise argparse.ArgumentTypeError(f"{text} is not between 1 and 86400 seconds")
    return seconds


def job_ttl(text: str) -> float | None:
    if text == "never":
        return None
    if not re.fullmatch(DURATION_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 14d or 36h, or never")
    seconds = parse_duration(text).total_seconds()
    if seconds < 60:
        raise argparse.ArgumentTypeError(f"{text} is less than a minute")
    return seconds


def address(text: str) -> tuple[str, int]:
    """``--metrics-address``: ``HOST:PORT``; ``:PORT`` listens on every interface (in a Pod,
    where the kubelet's probes and Prometheus reach it)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9090, or :9090 for every interface)"
        )
    return (host.strip("[]") or "0.0.0.0", int(port))  # noqa: S104 - asked for by ":PORT"


#: A Kubernetes resource quantity (``250m``, ``2Gi``, ``1.5``, ``1e3``).
_QUANTITY = r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"


def resources(text: str) -> dict[str, str]:
    """``--worker-requests``/``--worker-limits``: ``cpu=500m,memory=1Gi`` (as ``kubectl set
    resources`` takes them)."""
    out: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if key not in ("cpu", "memory", "ephemeral-storage") or not sep:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not RESOURCE=QUANTITY (cpu, memory or ephemeral-storage)"
            )
        if not re.fullmatch(_QUANTITY, value):
            raise argparse.ArgumentTypeError(f"{value!r} is not a quantity such as 500m or 1Gi")
        out[key] = value
    return out


def workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 64")
    return int(text)
