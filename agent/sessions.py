"""The agent's end of a session: dial the control plane back, attach, run the protocol engine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
from google.protobuf.json_format import MessageToDict

from agent.pg import relay as pg_relay
from gatehouse.v1 import agent_pb2, agent_pb2_grpc, tunnel_pb2

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str]]


async def serve_session(
    channel: grpc.aio.Channel,
    metadata: Metadata,
    order: agent_pb2.OpenSession,
    spec: agent_pb2.ConnectionSpec | None,
) -> None:
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    call = stub.Session(metadata=metadata)  # type: ignore[call-arg]  # read/write API
    session_id = order.session_id
    try:
        await call.write(
            agent_pb2.AgentFrame(attach=agent_pb2.SessionAttach(session_id=session_id))
        )

        async def send(frame: tunnel_pb2.Frame) -> None:
            await call.write(agent_pb2.AgentFrame(frame=frame))

        async def receive() -> bytes | pg_relay.Cancel | None:
            message = await call.read()
            if not isinstance(message, agent_pb2.GatewayFrame):  # end of stream
                return None
            if message.cancel:
                return pg_relay.CANCEL
            if message.end:
                return None
            return bytes(message.data)

        if spec is None:
            await send(
                pg_relay.error_frame(
                    "08001", f"the agent has no connection named {order.connection!r}"
                )
            )
            reason = "unknown connection"
        elif spec.type == "postgres":
            target = MessageToDict(spec.target)
            reason = await pg_relay.run(
                target, dict(spec.secret), receive, send, masking=MessageToDict(spec.masking)
            )
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
