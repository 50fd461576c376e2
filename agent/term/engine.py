"""The terminal engines: the agent's sessions of `ssh` and `shell` connections, which carry
the terminal stream (wire/term/codec.py) and differ only in how a command starts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from google.protobuf.json_format import MessageToDict

from agent.engines import Engine, Receive, Refusal, SendFrame
from agent.term import shell, ssh
from agent.term.stream import GATEWAY_STATUS
from gatehouse.v1 import agent_pb2, tunnel_pb2
from wire.term import codec

Run = Callable[[Mapping[str, object], Mapping[str, str], Receive, SendFrame], Awaitable[str]]


class TermEngine(Engine):
    def __init__(self, run: Run) -> None:
        self._run = run

    async def run(self, spec: agent_pb2.ConnectionSpec, receive: Receive, send: SendFrame) -> str:
        return await self._run(MessageToDict(spec.target), dict(spec.secret), receive, send)

    def refusal(self, why: Refusal, message: str) -> tunnel_pb2.Frame:
        exit_ = codec.Exit(GATEWAY_STATUS, error=f"gatehouse agent: {message}")
        return tunnel_pb2.Frame(data=codec.encode_exit(exit_))

    def speaks(self, first: bytes) -> bool:
        """A terminal stream opens with its start message."""
        return first[:1] == bytes([codec.START])


class ShellEngine(TermEngine):
    def __init__(self) -> None:
        super().__init__(shell.run)

    def attach(self, spec: agent_pb2.ConnectionSpec, attach: agent_pb2.SessionAttach) -> None:
        """Whose account the commands run as: the control plane records it, and refuses a
        session without it."""
        run_as = shell.running_as(MessageToDict(spec.target))
        attach.run_as.CopyFrom(
            agent_pb2.RunAs(
                mode=run_as.mode,
                account=run_as.account or "",
                uid=run_as.uid,
                user=run_as.user or "",
                error=run_as.error or "",
            )
        )


def ssh_engine() -> TermEngine:
    return TermEngine(ssh.run)
