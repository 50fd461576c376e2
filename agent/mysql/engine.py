"""MySQL's engine: the agent's sessions of `mysql` connections (agent/engines.py)."""

from __future__ import annotations

from google.protobuf.json_format import MessageToDict

from agent.engines import Engine, Receive, Refusal, SendFrame
from agent.mysql import relay
from gatehouse.v1 import agent_pb2, tunnel_pb2
from wire.mysql.constants import ER_NOT_SUPPORTED, ER_UNKNOWN_ERROR

_REFUSALS = {
    Refusal.NO_CONNECTION: (ER_UNKNOWN_ERROR, "08001"),
    Refusal.NOT_SUPPORTED: (ER_NOT_SUPPORTED, "0A000"),
}


class MysqlEngine(Engine):
    async def run(self, spec: agent_pb2.ConnectionSpec, receive: Receive, send: SendFrame) -> str:
        return await relay.run(
            MessageToDict(spec.target),
            dict(spec.secret),
            receive,
            send,
            masking=MessageToDict(spec.masking),
        )

    def refusal(self, why: Refusal, message: str) -> tunnel_pb2.Frame:
        code, sqlstate = _REFUSALS[why]
        return relay.error_frame(code, sqlstate, message, 0)
