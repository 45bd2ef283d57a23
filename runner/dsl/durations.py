"""Durations as written in definition files (`45s`, `10m`, `1h30m`, `500ms`, or seconds),
and instants as shown to people and clients (ISO 8601 with a zone)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d)\s*)+$")


def parse_duration(value: object) -> float:
    """Return seconds for a duration value; raise ValueError with a fix otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}; use e.g. 45s, 10m, 1h30m or a number of seconds")
    if isinstance(value, int | float):
        if value != value:  # `.nan`: a timeout would fire at once, a wait never end
            raise ValueError("the duration is not a number (.nan); write e.g. 30s")
        if value < 0:
            raise ValueError(f"duration {value} is negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
        if _WHOLE.match(text):
            return sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    raise ValueError(
        f"invalid duration {value!r}; use e.g. 45s, 10m, 1h30m, 500ms or a number of seconds"
    )


def format_duration(seconds: float | None) -> str:
    """Short human form: 850ms, 12.3s, 4m05s, 2h10m."""
    if seconds is None:
        return "-"
    # each unit is chosen after rounding to it: 0.9996 s is "1.0s", not "1000ms"
    if round(seconds * 1000) < 1000:
        return f"{seconds * 1000:.0f}ms"
    if round(seconds, 1) < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        m, s = divmod(whole, 60)
        return f"{m}m{s:02d}s"
    h, rest = divmod(whole, 3600)
    return f"{h}h{rest // 60:02d}m"


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC, to the millisecond (None stays None)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds") if ts is not None else None


def parse_instant(value: str, now: float) -> float:
    """Epoch seconds for a point in time written by a person: ISO 8601 (`2026-11-01`,
    `2026-11-01T08:00`, `...Z` or `+02:00`; no zone means UTC), or a duration meaning
    that long ago (`24h`, `7d`). Raise ValueError with the accepted forms otherwise."""
    text = value.strip()
    if _WHOLE.match(text):
        return now - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"invalid time {value!r}; use a date (2026-11-01), a date and time "
                         f"(2026-11-01T08:00Z) or a duration ago (24h, 7d)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
