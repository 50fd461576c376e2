"""The contract between the relay and a protocol's inspector.

The relay (controlplane/relay/service.py) moves bytes between a client and an agent and knows
no protocol. Between the two sits the connection type's `Inspector`: it frames what the client
sends, decides it against the guardrails, commits its events, and reads the agent's result
marks. `controlplane/relay/protocols.py` says which inspector serves which connection type; a
protocol lives in its own folder (`relay/pg/`, `relay/term/`) and depends on this module,
never on another protocol's folder.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from controlplane.audit.events import Draft, SessionContext
from controlplane.audit.writer import AuditWriter
from controlplane.policy.document import Connection
from controlplane.policy.store import PolicyStore
from controlplane.relay.tunnel import Tunnel
from controlplane.store.database import Database
from gatehouse.v1 import tunnel_pb2

__all__ = ["EndCause", "Inspector", "InspectorFactory", "Opening"]


class EndCause(enum.Enum):
    """Why the control plane ends a session itself; each protocol tells its client in its own
    words (PostgreSQL: a FATAL with a SQLSTATE; a terminal stream: an exit with a message)."""

    PROTOCOL = "protocol"  # the client broke the protocol, or left in the middle of a message
    SHUTDOWN = "shutdown"  # its token stopped working, or its agent was revoked
    AUDIT = "audit"  # one of its events could not be recorded
    AGENT_LOST = "agent_lost"  # the agent's stream broke: what was running has no known outcome


class Inspector(Protocol):
    """What the relay needs of a protocol's inspector."""

    session: SessionContext
    statements: int  # requests recorded: `session.end` counts them
    finished: bool  # it answered the client with a last message of its own
    # After the client stops sending: how long the target's answers are awaited (None: until
    # it ends), and whether the agent is told the session is over (PostgreSQL: yes; a
    # command: no, it runs to its exit, which the client is still waiting for).
    drain_timeout: float | None
    end_on_client_eof: bool

    @property
    def incomplete(self) -> bool:
        """The client's bytes so far end in the middle of a message."""
        ...

    async def from_client(self, data: bytes) -> bytes:
        """The client's bytes: decide and record what they hold; returns what may go to the
        agent now (answers of its own are queued and the relay woken for them). Raises the
        protocol's ProtocolError (listed in `protocols.PROTOCOL_ERRORS`) on malformed input."""
        ...

    async def from_agent(self, frame: tunnel_pb2.Frame) -> list[bytes]:
        """An agent frame: record the results its marks end; returns what goes to the client."""
        ...

    def take_synthetic(self) -> list[bytes]:
        """Answers of the inspector's own that are due to the client (the relay was woken)."""
        ...

    def closing(self) -> list[bytes]:
        """The agent's stream ended: what is still due to the client."""
        ...

    def cancel_event(self) -> Draft | None:
        """The client asked out of band to cancel what runs: the event to record before the
        agent is told, or None when the protocol has no such request."""
        ...

    def fatal(self, message: str, cause: EndCause = EndCause.PROTOCOL) -> bytes:
        """The session's last words to the client, in this protocol."""
        ...

    async def finish(self, reason: str) -> None:
        """The session ended (`reason`) and its pumps stopped: give every request still in
        flight its result (its real one if it has it, else outcome unknown and why); returns
        once they are committed or reported lost. Called on every end, once the relay is over."""
        ...

    async def agent_lost(self) -> None:
        """The agent's stream broke: the same, before the client is told (it may be called
        before `finish`, which then finds nothing left)."""
        ...


@dataclass(frozen=True, slots=True)
class Opening:
    """Everything an inspector may need when its session opens: the session and its
    connection, the agent's tunnel (whose attach message the protocol may read), the writers,
    the policy (guardrails and masking of the connection) and the store."""

    session: SessionContext
    connection: Connection
    mode: str
    tunnel: Tunnel
    audit: AuditWriter
    policy: PolicyStore
    db: Database
    forward: Callable[[bytes], Awaitable[None]]  # decided client bytes to the agent, now

    @property
    def target(self) -> Any:
        """The connection's target section, as its type's model validated it."""
        return self.connection.target


InspectorFactory = Callable[[Opening], Inspector]
"""Makes a session's inspector; one per connection type in `protocols.INSPECTORS`."""


async def record(audit: AuditWriter, events: list[Draft], *, strict: bool) -> list[Any]:
    """A request's events as every inspector records them: committed before anything is
    forwarded (strict), or queued for the next group commit (async; futures of their seqs).
    Raises AuditUnavailable when the store refused them."""
    if strict:
        return await audit.commit_all(events)
    return [await audit.submit(e) for e in events]
