"""The agent's end of the multiplexed session stream (docs/decisions/0027).

One `Sessions` stream per replica the agent serves sessions for, dialled when the first
session order for that replica arrives and kept open. A session is a number on the stream:
`attach` opens it, frames and grants carry it, `end` (the agent's) or `close` (the control
plane's) finishes it. The writer sends everything queued as one message; each session's
credit bounds what it has in flight, so one stalled client stalls only its own session.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Sequence

import grpc

from agent.engines import CANCEL, Cancel
from agent.metrics import AgentStats
from gatehouse.v1 import agent_pb2, agent_pb2_grpc, tunnel_pb2
from wire.mux import Credit, Grants, Outbox

log = logging.getLogger(__name__)

Metadata = Sequence[tuple[str, str]]
Received = bytes | Cancel | None


class StreamLost(ConnectionError):
    """The session stream to the control plane broke: the session cannot go on."""


class MuxSession:
    """One session on a stream: what the engines read from and send to."""

    def __init__(self, mux: SessionMux, number: int) -> None:
        self._mux = mux
        self.number = number
        self.credit = Credit()  # the target's bytes we may still send
        self._inbox: asyncio.Queue[Received] = asyncio.Queue()  # bounded by our grants
        self._grants = Grants(self._grant)
        self.closed = False  # the control plane is done with it, or the stream broke
        self.lost = False  # the stream broke

    def _grant(self, size: int) -> None:
        self._mux.outbox.put(agent_pb2.AgentEvent(session=self.number, credit=size))

    async def receive(self) -> Received:
        """The next client bytes (a cancel; None: the end), granting credit for what is taken."""
        item = await self._inbox.get()
        if item is None:
            self._inbox.put_nowait(None)  # every later read sees the end too
        elif isinstance(item, bytes):
            self._mux.stats.bytes_to_targets += len(item)
            self._grants.took(len(item))
        return item

    async def send(self, frame: tunnel_pb2.Frame) -> None:
        """Queue the target's bytes, waiting while the client's side has not taken enough."""
        if self.lost:
            raise StreamLost("the session stream to the control plane broke")
        await self.credit.spend(len(frame.data))
        if self.closed:
            return  # the control plane is done with the session: nobody reads this
        self._mux.stats.bytes_from_targets += len(frame.data)
        event = agent_pb2.AgentEvent(session=self.number, frame=frame)
        self._mux.outbox.put(event, len(frame.data))

    def end(self, failure: str = "") -> None:
        """The engine finished (its last frame is queued before this), or failed: then the
        control plane ends the session as agent_lost, what ran having an unknown outcome."""
        if not self.closed:
            event = (
                agent_pb2.AgentEvent(session=self.number, lost=failure)
                if failure
                else agent_pb2.AgentEvent(session=self.number, end=True)
            )
            self._mux.outbox.put(event)
        self._finish()

    def _finish(self) -> None:
        self.closed = True
        self.credit.close()
        self._mux.sessions.pop(self.number, None)

    def deliver(self, event: agent_pb2.GatewayEvent) -> None:
        kind = event.WhichOneof("msg")
        if kind == "data":
            self._inbox.put_nowait(bytes(event.data))
        elif kind == "cancel":
            self._inbox.put_nowait(CANCEL)
        elif kind == "credit":
            self.credit.grant(event.credit)
        elif kind == "end":
            self._inbox.put_nowait(None)
        elif kind == "close":
            log.info("session %d closed by the control plane: %s", self.number, event.close)
            self._finish()
            self._inbox.put_nowait(None)

    def broke(self) -> None:
        self.lost = True
        self._finish()
        self._inbox.put_nowait(None)


class SessionMux:
    """The `Sessions` stream to one replica, opened on first use and reopened after a break."""

    def __init__(self, channel: grpc.aio.Channel, metadata: Metadata, stats: AgentStats) -> None:
        self._channel = channel
        self._metadata = metadata
        self.stats = stats
        self.outbox: Outbox[agent_pb2.AgentEvent] = Outbox()
        self.sessions: dict[int, MuxSession] = {}
        self._numbers = itertools.count(1)
        self._task: asyncio.Task[None] | None = None

    def open(self, attach: agent_pb2.SessionAttach) -> MuxSession:
        """A new session on the stream (dialled now if it is not open): `attach` goes first."""
        if self._task is None or self._task.done():
            self.outbox = Outbox()
            self._task = asyncio.create_task(self._run())
        session = MuxSession(self, next(self._numbers))
        self.sessions[session.number] = session
        self.outbox.put(agent_pb2.AgentEvent(session=session.number, attach=attach))
        return session

    async def _run(self) -> None:
        stub = agent_pb2_grpc.AgentServiceStub(self._channel)
        call = stub.Sessions(metadata=self._metadata)  # type: ignore[call-arg]  # read/write API
        outbox = self.outbox
        writer = asyncio.create_task(self._write(call, outbox))
        reader = asyncio.create_task(self._read(call))
        try:
            await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (writer, reader):
                task.cancel()
            results = await asyncio.gather(writer, reader, return_exceptions=True)
            call.cancel()
            for session in list(self.sessions.values()):
                session.broke()
            self.sessions.clear()
        for result in results:
            if isinstance(result, grpc.aio.AioRpcError):
                log.warning("session stream failed: %s", result.details())

    @staticmethod
    async def _write(
        call: grpc.aio.StreamStreamCall[agent_pb2.AgentBatch, agent_pb2.GatewayBatch],
        outbox: Outbox[agent_pb2.AgentEvent],
    ) -> None:
        while True:
            events = await outbox.take()
            await call.write(agent_pb2.AgentBatch(events=events))

    async def _read(
        self, call: grpc.aio.StreamStreamCall[agent_pb2.AgentBatch, agent_pb2.GatewayBatch]
    ) -> None:
        while True:
            batch = await call.read()
            if not isinstance(batch, agent_pb2.GatewayBatch):  # end of stream
                return
            for event in batch.events:
                session = self.sessions.get(event.session)
                if session is not None:  # else: ended here already; what came late is moot
                    session.deliver(event)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
