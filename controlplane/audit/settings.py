"""The audit trail's setting defaults, and the one duration syntax settings use.

Every limit is explicit: checkpoint interval, minimum retention and witnesses have defaults that
`controlplane serve` shows in --help and validation refuses nonsense instead of guessing.
"""

from __future__ import annotations

import re
from datetime import timedelta

CHECKPOINT_INTERVAL_ENV = "GATEHOUSE_CHECKPOINT_INTERVAL"
MIN_RETENTION_ENV = "GATEHOUSE_AUDIT_MIN_RETENTION"
WITNESS_ENV = "GATEHOUSE_AUDIT_WITNESS"
DEFAULT_CHECKPOINT_INTERVAL = 60.0  # seconds
DEFAULT_MIN_RETENTION = timedelta(days=30)
PRUNE_REQUEST_TTL = timedelta(hours=24)  # a second admin approves within this, or asks again

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


def split_witnesses(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())
