"""The agent's end of a session: attach on the session leg, run the protocol engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from agent.engines import Receive, Refusal
from agent.metrics import AgentStats
from agent.mux import SessionMux, StreamLost
from agent.protocols import ENGINES, FALLBACK
from gatehouse.v1 import agent_pb2, tunnel_pb2
from wire.logcontext import SESSION_ID

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str]]
FIRST_BYTES_TIMEOUT = 10.0
"""How long a session for an unknown connection of an unknown type waits to learn the
client's protocol."""


async def serve_session(
    mux: SessionMux,
    order: agent_pb2.OpenSession,
    spec: agent_pb2.ConnectionSpec | None,
    stats: AgentStats | None = None,
) -> None:
    """Run one session on `mux` (the stream to the replica holding its client)."""
    stats = stats if stats is not None else AgentStats()
    session_id = order.session_id
    token = SESSION_ID.set(session_id)
    stats.sessions_active += 1
    stats.sessions_total += 1
    session = mux.open(_attach(session_id, spec))
    receive, send = session.receive, session.send
    failure = "the agent stopped"  # what the control plane is told unless the engine ends
    try:
        engine = None if spec is None else ENGINES.get(spec.type)
        if spec is None:
            message = f"the agent has no connection named {order.connection!r}"
            await send(await _refusal(order.type, receive, message))
            reason = "unknown connection"
        elif engine is None:
            await send(
                FALLBACK.refusal(Refusal.NOT_SUPPORTED, f"type {spec.type} is not supported")
            )
            reason = "unsupported type"
        else:
            reason = await engine.run(spec, receive, send)
        log.info("session %s ended: %s", session_id, reason)
        failure = ""
    except StreamLost as exc:
        log.warning("session %s: %s", session_id, exc)
    except Exception as exc:
        log.exception("session %s failed", session_id)
        failure = f"the agent's engine failed: {exc!r}"
    finally:
        session.end(failure)
        stats.sessions_active -= 1
        SESSION_ID.reset(token)


def _attach(session_id: str, spec: agent_pb2.ConnectionSpec | None) -> agent_pb2.SessionAttach:
    """The session's first message, with what the connection's engine adds to it (a `shell`
    connection: whose account its commands run as)."""
    attach = agent_pb2.SessionAttach(session_id=session_id)
    engine = None if spec is None else ENGINES.get(spec.type)
    if spec is not None and engine is not None:
        engine.attach(spec, attach)
    return attach


async def _first_bytes(receive: Receive) -> bytes:
    """What the client sent first (b"" if nothing came in time): its protocol's opening."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(FIRST_BYTES_TIMEOUT):
            while True:
                data = await receive()
                if data is None:
                    return b""
                if isinstance(data, bytes) and data:
                    return data
    return b""


async def _refusal(kind: str, receive: Receive, message: str) -> tunnel_pb2.Frame:
    """A refusal in the protocol of the connection's type, as the control plane named it in
    the order; from an older control plane (no type), in the protocol the client speaks."""
    engine = ENGINES.get(kind)
    if engine is not None:
        return engine.refusal(Refusal.NO_CONNECTION, message)
    return _sniffed_refusal(await _first_bytes(receive), message)


def _sniffed_refusal(first: bytes, message: str) -> tunnel_pb2.Frame:
    """A refusal in the protocol the client speaks, told from its first bytes by the engines
    (a client whose server speaks first sends nothing: it gets the fallback's)."""
    for engine in ENGINES.values():
        if engine.speaks(first):
            return engine.refusal(Refusal.NO_CONNECTION, message)
    return FALLBACK.refusal(Refusal.NO_CONNECTION, message)
