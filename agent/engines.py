"""The contract between the agent's session loop and a protocol's engine.

A session is a stream of client bytes in (and, out of band, a cancel) and a stream of frames
out (bytes, with result marks for the control plane). `agent/sessions.py` knows nothing of any
protocol: it looks up the connection's type in `agent/protocols.py` and hands the session to
that `Engine`. A protocol lives in its own folder (`agent/pg/`, `agent/term/`) and depends on
this module, never on another protocol's folder.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

from gatehouse.v1 import agent_pb2, tunnel_pb2

__all__ = ["CANCEL", "Cancel", "Engine", "Receive", "Refusal", "SendFrame"]


class Cancel:
    """What `receive` returns when the client asked to cancel what the target is running."""


CANCEL = Cancel()
Receive = Callable[[], Awaitable[bytes | Cancel | None]]
"""The client's next bytes, CANCEL, or None once the client finished sending."""
SendFrame = Callable[[tunnel_pb2.Frame], Awaitable[None]]
"""Send one frame to the control plane (waits for credit: a slow client slows its target)."""


class Refusal(enum.Enum):
    """Why a session is refused before its engine runs; each protocol says it its own way."""

    NO_CONNECTION = "no_connection"  # the agent has no connection by that name
    NOT_SUPPORTED = "not_supported"  # the agent has no engine for the connection's type


class Engine(ABC):
    """One protocol's sessions on the agent. One instance serves every session of its
    connection types, so it keeps no per-session state of its own."""

    @abstractmethod
    async def run(self, spec: agent_pb2.ConnectionSpec, receive: Receive, send: SendFrame) -> str:
        """Serve one session until either side ends; returns why it ended (for the log).

        The target and secret references are `spec`'s; secrets are resolved here, on the
        agent, and never sent anywhere. A refusal is sent to the client in the protocol's
        own terms (and returned as the reason), never raised.
        """

    @abstractmethod
    def refusal(self, why: Refusal, message: str) -> tunnel_pb2.Frame:
        """The only frame of a session that cannot be served, in this protocol."""

    def speaks(self, first: bytes) -> bool:
        """Whether `first`, a client's first bytes, open a session of this protocol: how a
        session for a connection the agent does not know is refused in words the client
        understands. False unless the protocol can tell."""
        return False

    def attach(self, spec: agent_pb2.ConnectionSpec, attach: agent_pb2.SessionAttach) -> None:
        """Add to the session's first message what the control plane must know before the
        relay starts (a shell connection: whose account its commands run as). Nothing by
        default."""
        return None
