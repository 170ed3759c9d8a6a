"""Human units: what a person reads in messages and tables."""

from __future__ import annotations

import datetime as dt

import pytest

from cozybackup_core import short_list
from cozybackup_core._api.units import human_age, human_bytes, parse_duration


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (5429299, "5.2 MiB"),
        (3 << 50, "3072.0 TiB"),
    ],
)
def test_bytes_in_binary_units(n: int, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-5, "0s"), (45, "45s"), (119, "1m"), (7199, "119m"), (7200, "2h"), (3 * 86400, "3d")],
)
def test_ages_as_kubectl_prints_them(seconds: int, text: str) -> None:
    assert human_age(dt.timedelta(seconds=seconds)) == text


def test_durations_sum_their_units() -> None:
    assert parse_duration("2w3d") == dt.timedelta(days=17)
    assert parse_duration("1h30m") == dt.timedelta(minutes=90)


def test_a_long_list_names_the_first_and_counts_the_rest() -> None:
    names = [f"t{i}" for i in range(12)]
    assert short_list(names[:5]) == "t0, t1, t2, t3, t4"
    assert short_list(names) == "t0, t1, t2, t3, t4 and 7 more"
    assert short_list(names, 2) == "t0, t1 and 10 more"
    assert short_list([]) == ""
