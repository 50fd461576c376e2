"""PostgreSQL's engine: the agent's sessions of `postgres` connections (agent/engines.py)."""

from __future__ import annotations

from google.protobuf.json_format import MessageToDict

from agent.engines import Engine, Receive, Refusal, SendFrame
from agent.pg import relay
from gatehouse.v1 import agent_pb2, tunnel_pb2
from wire.pg import codes

_REFUSALS = {
    Refusal.NO_CONNECTION: codes.CLIENT_UNABLE_TO_CONNECT,
    Refusal.NOT_SUPPORTED: codes.FEATURE_NOT_SUPPORTED,
}


class PgEngine(Engine):
    async def run(self, spec: agent_pb2.ConnectionSpec, receive: Receive, send: SendFrame) -> str:
        return await relay.run(
            MessageToDict(spec.target),
            dict(spec.secret),
            receive,
            send,
            masking=MessageToDict(spec.masking),
        )

    def refusal(self, why: Refusal, message: str) -> tunnel_pb2.Frame:
        return relay.error_frame(_REFUSALS[why], message)

    def speaks(self, first: bytes) -> bool:
        """A startup packet opens with its length, whose first byte is 0 (under 16 MiB)."""
        return first[:1] == b"\x00"
