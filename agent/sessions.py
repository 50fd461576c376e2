"""The agent's end of a session: attach on the session stream, run the protocol engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from google.protobuf.json_format import MessageToDict

from agent.http import engine as http_engine
from agent.metrics import AgentStats
from agent.mux import SessionMux, StreamLost
from agent.pg import relay as pg_relay
from agent.term import shell as term_shell
from agent.term import ssh as term_ssh
from gatehouse.v1 import agent_pb2, tunnel_pb2
from wire.logcontext import SESSION_ID
from wire.term import codec as term_codec

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str]]
TERM_ENGINES = {"ssh": term_ssh.run, "shell": term_shell.run}
"""Connection types whose sessions carry the terminal stream (wire/term/codec.py)."""
FIRST_BYTES_TIMEOUT = 10.0
"""How long a session for an unknown connection waits to learn the client's protocol."""


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
        if spec is None:
            message = f"the agent has no connection named {order.connection!r}"
            await send(_refusal(await _first_bytes(receive), message))
            reason = "unknown connection"
        elif spec.type == "postgres":
            target = MessageToDict(spec.target)
            reason = await pg_relay.run(
                target, dict(spec.secret), receive, send, masking=MessageToDict(spec.masking)
            )
        elif spec.type == "http":
            reason = await http_engine.run(
                MessageToDict(spec.target),
                dict(spec.secret),
                receive,
                send,
                masking=MessageToDict(spec.masking),
            )
        elif (engine := TERM_ENGINES.get(spec.type)) is not None:
            reason = await engine(MessageToDict(spec.target), dict(spec.secret), receive, send)
        else:
            await send(pg_relay.error_frame("0A000", f"type {spec.type} is not supported"))
            reason = "unsupported type"
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
    """The session's first message; for a `shell` connection it says whose account its
    commands run as (the control plane records it, and refuses a session without it)."""
    attach = agent_pb2.SessionAttach(session_id=session_id)
    if spec is not None and spec.type == "shell":
        run_as = term_shell.running_as(MessageToDict(spec.target))
        attach.run_as.CopyFrom(
            agent_pb2.RunAs(
                mode=run_as.mode,
                account=run_as.account or "",
                uid=run_as.uid,
                user=run_as.user or "",
                error=run_as.error or "",
            )
        )
    return attach


async def _first_bytes(receive: pg_relay.Receive) -> bytes:
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


def _refusal(first: bytes, message: str) -> tunnel_pb2.Frame:
    """A refusal in the protocol the client speaks, told from its first message: a terminal
    stream opens with its start tag, where a PostgreSQL startup opens with a length whose
    first byte is 0 (the agent does not know the type of a connection it has never heard of)."""
    if first[:1] == bytes([term_codec.START]):
        exit_ = term_codec.Exit(255, error=f"gatehouse agent: {message}")
        return tunnel_pb2.Frame(data=term_codec.encode_exit(exit_))
    return pg_relay.error_frame("08001", message)
