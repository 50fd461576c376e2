"""What every protocol's codec raises on malformed input, so that the relay can end one
session with that protocol's own fatal error without knowing which protocol it was."""

from __future__ import annotations


class ProtocolError(Exception):
    """Malformed or oversized input: the session must end."""
