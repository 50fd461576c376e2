"""Durations and moments as people write them on a command line or in a setting.

One syntax for both sides: the control plane's settings and the CLI's `--ttl`,
`--allow-unsigned-tail` and `--before` read them the same way (cli.parser.duration for the
CLI's options), and refuse what they cannot read with a message.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

_DURATION = re.compile(r"^(\d{1,9}(?:\.\d{1,6})?)([smhd]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str) -> timedelta:
    """`90`, `90s`, `15m`, `12h`, `30d` (a bare number is seconds); ValueError naming `what`."""
    match = _DURATION.match(text.strip().lower())
    if match is None:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ValueError(f"{what} must be a duration such as 90s, 15m, 12h or 30d, not {shown!r}")
    try:
        return timedelta(seconds=float(match.group(1)) * _UNIT[match.group(2)])
    except OverflowError:
        raise ValueError(f"{what} {text!r} is longer than any clock can count") from None


def parse_cutoff(text: str) -> datetime:
    """`--before`: a date (midnight UTC) or an RFC 3339 time; naive times are UTC."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(value)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ValueError(
            f"{shown!r} is not a date or time: write e.g. 2026-01-31 or 2026-01-31T12:00:00Z"
        ) from None
