"""The audit trail's two refusals, shared by the writer, the drafting code and every caller.

`InvalidEvent` is an `AuditUnavailable` (the request it describes must not go through, so every
`except AuditUnavailable` around a commit already refuses it) and an `InvalidArgument` (the
caller sent something that cannot be recorded: a gRPC handler answers INVALID_ARGUMENT).
"""

from __future__ import annotations

from controlplane.errors import InvalidArgument


class AuditUnavailable(Exception):
    """The event could not be committed; the request it describes must not go through."""


class InvalidEvent(AuditUnavailable, InvalidArgument):
    """The event cannot be written as RFC 8785 canonical JSON; only its own request fails."""
