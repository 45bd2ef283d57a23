"""Durations as written in definition files (`45s`, `1h30m`, `500ms`, seconds) and as
shown to people (`850ms`, `12.3s`, `4m05s`, `2h10m`), with every boundary pinned."""

from __future__ import annotations

import math

import pytest

from runner.dsl.durations import format_duration, iso, parse_duration
from runner.dsl.loader import load_text

# -- parse_duration ------------------------------------------------------------------------


@pytest.mark.parametrize("value, seconds", [
    (0, 0.0), (5, 5.0), (2.5, 2.5), ("0", 0.0), ("12", 12.0), (" 7.5 ", 7.5),
    ("500ms", 0.5), ("45s", 45.0), ("10m", 600.0), ("2h", 7200.0), ("1d", 86400.0),
    ("1h30m", 5400.0), ("1h 30m", 5400.0), ("1.5m", 90.0), ("1m1s", 61.0), ("1s500ms", 1.5),
    ("2d3h4m5s6ms", 2 * 86400 + 3 * 3600 + 4 * 60 + 5 + 0.006),
])
def test_durations_in_every_unit(value: object, seconds: float) -> None:
    result = parse_duration(value)
    assert type(result) is float
    assert math.isclose(result, seconds, rel_tol=0, abs_tol=1e-9)


@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_not_durations(value: bool) -> None:
    # `timeout: true` is a bool, which Python would happily treat as 1 s
    with pytest.raises(ValueError, match=rf"invalid duration {value}; use e.g. 45s"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, -0.5, -86400])
def test_negative_numbers_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match=f"duration {value} is negative"):
        parse_duration(value)


def test_nan_is_refused() -> None:
    with pytest.raises(ValueError, match=r"not a number \(\.nan\)"):
        parse_duration(float("nan"))


@pytest.mark.parametrize("value", ["", "soon", "-1s", "-5", "5x", "s", "1h30", "ms5", "1 hour", None, [], {}, "1e3"])
def test_what_is_not_a_duration_says_how_to_write_one(value: object) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .*; use e\.g\. 45s, 10m, 1h30m, 500ms or a number"):
        parse_duration(value)


@pytest.mark.parametrize("text, problem", [
    ("true", "steps[0].timeout: invalid duration True; use e.g. 45s, 10m, 1h30m or a number of seconds"),
    ("-5", "steps[0].timeout: duration -5 is negative"),
    ("-1s", "steps[0].timeout: invalid duration '-1s'; use e.g. 45s, 10m, 1h30m, 500ms or a number of seconds"),
    (".nan", "steps[0].timeout: the duration is not a number (.nan); write e.g. 30s"),
])
def test_a_definition_with_a_bad_timeout_is_reported_at_the_field(text: str, problem: str) -> None:
    d = load_text(f"steps:\n  - {{id: a, timeout: {text}, log: x}}\n", "wf.yaml")
    assert not d.valid
    assert [str(p) for p in d.problems] == [f"wf.yaml:2:22: {problem}"]


def test_a_good_timeout_loads_as_seconds() -> None:
    d = load_text("steps:\n  - {id: a, timeout: 1h30m, log: x}\n  - {id: b, timeout: 0, log: x}\n", "wf.yaml")
    assert d.valid and [s.timeout for s in d.spec.steps] == [5400.0, 0.0]


# -- format_duration -----------------------------------------------------------------------


@pytest.mark.parametrize("seconds, text", [
    (None, "-"),
    (0, "0ms"), (0.0004, "0ms"), (0.001, "1ms"), (0.85, "850ms"), (0.9994, "999ms"),
    (1, "1.0s"), (1.04, "1.0s"), (12.34, "12.3s"), (59.94, "59.9s"),
    (60, "1m00s"), (61, "1m01s"), (65.9, "1m06s"), (245, "4m05s"), (600, "10m00s"), (3599, "59m59s"),
    (3600, "1h00m"), (3659, "1h00m"), (3660, "1h01m"), (7800, "2h10m"), (86399, "23h59m"), (90000, "25h00m"),
])
def test_format_duration_at_every_boundary(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_duration_reads_back_as_about_the_same_duration() -> None:
    for seconds in (0.5, 45, 245, 7800):
        shown = format_duration(seconds)
        assert abs(parse_duration(shown) - seconds) < 60  # minutes are the finest unit past an hour


# -- iso -------------------------------------------------------------------------------------


def test_iso_is_utc_to_the_millisecond() -> None:
    assert iso(None) is None
    assert iso(0) == "1970-01-01T00:00:00.000+00:00"
    assert iso(1_700_000_000.1234) == "2023-11-14T22:13:20.123+00:00"


def test_format_duration_rounds_before_it_picks_the_unit() -> None:
    from runner.dsl.durations import format_duration

    assert [format_duration(x) for x in (0.9994, 0.9996, 59.94, 59.96, 3599.4, 3599.6)] == [
        "999ms", "1.0s", "59.9s", "1m00s", "59m59s", "1h00m"]
