"""The audit trail's setting defaults, and the one duration syntax settings use.

Every limit is explicit: checkpoint interval, minimum retention and witnesses have defaults that
`controlplane serve` shows in --help and validation refuses nonsense instead of guessing.
"""

from __future__ import annotations

from datetime import timedelta

from trail.times import parse_duration

# Re-exported: the one duration syntax (controlplane/settings.py reads settings with it).
__all__ = ["parse_duration"]

CHECKPOINT_INTERVAL_ENV = "GATEHOUSE_CHECKPOINT_INTERVAL"
MIN_RETENTION_ENV = "GATEHOUSE_AUDIT_MIN_RETENTION"
WITNESS_ENV = "GATEHOUSE_AUDIT_WITNESS"
DEFAULT_CHECKPOINT_INTERVAL = 60.0  # seconds
DEFAULT_MIN_RETENTION = timedelta(days=30)
PRUNE_REQUEST_TTL = timedelta(hours=24)  # a second admin approves within this, or asks again


def split_witnesses(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())
