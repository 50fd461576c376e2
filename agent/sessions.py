"""The agent's end of a session: dial the control plane back, attach, run the protocol engine."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from agent.metrics import AgentStats
from agent.pg import relay as pg_relay
from agent.term import shell as term_shell
from agent.term import ssh as term_ssh
from gatehouse.v1 import agent_pb2, agent_pb2_grpc, tunnel_pb2
from wire.logcontext import SESSION_ID
from wire.term import codec as term_codec

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str]]
TERM_ENGINES = {"ssh": term_ssh.run, "shell": term_shell.run}
"""Connection types whose sessions carry the terminal stream (wire/term/codec.py)."""
FIRST_BYTES_TIMEOUT = 10.0
"""How long a session for an unknown connection waits to learn the client's protocol."""
CLOSE_GRACE = 5.0
"""How long a session that ended waits for the control plane to end the stream."""


async def serve_session(
    channel: grpc.aio.Channel,
    metadata: Metadata,
    order: agent_pb2.OpenSession,
    spec: agent_pb2.ConnectionSpec | None,
    stats: AgentStats | None = None,
) -> None:
    stats = stats if stats is not None else AgentStats()
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    call = stub.Session(metadata=metadata)  # type: ignore[call-arg]  # read/write API
    session_id = order.session_id

    async def read() -> bytes | pg_relay.Cancel | None:
        message = await call.read()
        if not isinstance(message, agent_pb2.GatewayFrame):  # end of stream
            return None
        if message.cancel:
            return pg_relay.CANCEL
        if message.end:
            return None
        stats.bytes_to_targets += len(message.data)
        return bytes(message.data)

    receive = _Reader(read)
    token = SESSION_ID.set(session_id)
    stats.sessions_active += 1
    stats.sessions_total += 1
    try:
        await call.write(agent_pb2.AgentFrame(attach=_attach(session_id, spec)))

        async def send(frame: tunnel_pb2.Frame) -> None:
            stats.bytes_from_targets += len(frame.data)
            await call.write(agent_pb2.AgentFrame(frame=frame))

        if spec is None:
            message = f"the agent has no connection named {order.connection!r}"
            await send(_refusal(await _first_bytes(receive), message))
            reason = "unknown connection"
        elif spec.type == "postgres":
            target = MessageToDict(spec.target)
            reason = await pg_relay.run(
                target, dict(spec.secret), receive, send, masking=MessageToDict(spec.masking)
            )
        elif (engine := TERM_ENGINES.get(spec.type)) is not None:
            reason = await engine(MessageToDict(spec.target), dict(spec.secret), receive, send)
        else:
            await send(pg_relay.error_frame("0A000", f"type {spec.type} is not supported"))
            reason = "unsupported type"
        log.info("session %s ended: %s", session_id, reason)
        await call.done_writing()
    except grpc.aio.AioRpcError as exc:
        log.warning("session %s: stream failed: %s", session_id, exc.details())
    except asyncio.CancelledError:
        call.cancel()
        raise
    except Exception:
        log.exception("session %s failed", session_id)
        call.cancel()
    finally:
        stats.sessions_active -= 1
        await receive.close(CLOSE_GRACE)
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


class _Reader:
    """`receive()` for the engines, safe to cancel.

    Cancelling a coroutine that waits in a grpc.aio `call.read()` cancels the whole RPC, so an
    engine that stops listening to its client (a command that exited while its input was
    still being read) would kill the stream before its exit status is sent. One task reads
    the stream here, a frame ahead at most; engines wait on a future they may cancel freely.
    """

    def __init__(
        self, read: Callable[[], Coroutine[Any, Any, bytes | pg_relay.Cancel | None]]
    ) -> None:
        self._read = read
        self._next: asyncio.Task[bytes | pg_relay.Cancel | None] | None = None

    async def __call__(self) -> bytes | pg_relay.Cancel | None:
        if self._next is None:
            self._next = asyncio.create_task(self._read())
        result = await asyncio.shield(self._next)
        self._next = None
        return result

    async def close(self, grace: float = 0.0) -> None:
        """Stop reading, once the control plane ended the stream or `grace` seconds passed
        (what it still sends meanwhile is dropped). Cancelling the call sooner, by cancelling
        a read or by dropping the call, could take frames it has not read yet with it: the
        last of them is the session's exit or final answer."""
        with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
            async with asyncio.timeout(grace):
                while await self() is not None:
                    pass
        if self._next is not None and not self._next.done():
            self._next.cancel()
            await asyncio.gather(self._next, return_exceptions=True)
