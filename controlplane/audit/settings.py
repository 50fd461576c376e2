"""The audit trail's settings read from the environment, and the one duration syntax they use.

Every limit is explicit: checkpoint interval, minimum retention and witnesses have defaults that
`controlplane serve` shows in --help and validation refuses nonsense instead of guessing.
"""

from __future__ import annotations

import os
from datetime import timedelta

from trail.times import parse_duration

# Re-exported: the one duration syntax (cli/serve.py reads settings with it).
__all__ = ["parse_duration"]

CHECKPOINT_INTERVAL_ENV = "GATEHOUSE_CHECKPOINT_INTERVAL"
MIN_RETENTION_ENV = "GATEHOUSE_AUDIT_MIN_RETENTION"
WITNESS_ENV = "GATEHOUSE_AUDIT_WITNESS"
DEFAULT_CHECKPOINT_INTERVAL = 60.0  # seconds
DEFAULT_MIN_RETENTION = timedelta(days=30)
PRUNE_REQUEST_TTL = timedelta(hours=24)  # a second admin approves within this, or asks again


def env_checkpoint_interval() -> float:
    """GATEHOUSE_CHECKPOINT_INTERVAL (default 60 s); -1 when unreadable, which validation
    refuses."""
    value = os.environ.get(CHECKPOINT_INTERVAL_ENV, "").strip()
    if not value:
        return DEFAULT_CHECKPOINT_INTERVAL
    try:
        return parse_duration(value, CHECKPOINT_INTERVAL_ENV).total_seconds()
    except ValueError:
        return -1.0


def env_min_retention() -> timedelta:
    """GATEHOUSE_AUDIT_MIN_RETENTION (default 30 days); negative when unreadable (refused)."""
    value = os.environ.get(MIN_RETENTION_ENV, "").strip()
    if not value:
        return DEFAULT_MIN_RETENTION
    try:
        return parse_duration(value, MIN_RETENTION_ENV)
    except ValueError:
        return timedelta(seconds=-1)


def env_witnesses() -> tuple[str, ...]:
    """GATEHOUSE_AUDIT_WITNESS: file paths and http(s) URLs, separated by commas."""
    return split_witnesses(os.environ.get(WITNESS_ENV, ""))


def split_witnesses(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())
