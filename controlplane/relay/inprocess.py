"""A session whose client is inside the control plane: the `/mcp` endpoint's tool calls.

`PipeEnd` is the session's `ClientEnd` (what the relay reads and writes) and `PipeCall` the
client's side, shaped like the gRPC call of `ClientService.Session` (cli.session.Call), so
that the same protocol clients (cli.pg.query, cli.term.stream) drive it; in between, the session
runs `ClientServicer.serve` like any other: same inspection, guardrails and audit.

Both directions are bounded queues (a slow reader holds the relay back, as a slow gRPC client
does). A client that cancels stops reading: from then on whatever the relay still writes is
dropped, so the session runs to its end without waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import grpc

from controlplane.relay.tunnel import CANCEL, Cancel
from gatehouse.v1 import client_pb2

if TYPE_CHECKING:
    from controlplane.relay.service import Admitted, ClientServicer

DEPTH = 64
"""Messages queued in each direction."""


class PipeEnd:
    """The relay's side of an in-process session."""

    def __init__(self, peer: str) -> None:
        self._peer = peer
        self.inbound: asyncio.Queue[bytes | Cancel | None] = asyncio.Queue(DEPTH)
        self.outbound: asyncio.Queue[bytes | None] = asyncio.Queue(DEPTH)
        self.cancelled = False

    @property
    def peer(self) -> str:
        return self._peer

    async def read(self) -> bytes | Cancel | None:
        return await self.inbound.get()

    async def write(self, data: bytes) -> None:
        if not self.cancelled:
            await self.outbound.put(data)

    async def ended(self) -> None:
        """The session is over: the client reads the end of its stream."""
        if self.cancelled:
            self.drop()
            with contextlib.suppress(asyncio.QueueFull):
                self.outbound.put_nowait(None)
        else:
            await self.outbound.put(None)

    def drop(self) -> None:
        """Forget what the client will never read, freeing a writer that waits for room."""
        while not self.outbound.empty():
            self.outbound.get_nowait()


class PipeCall:
    """The client's side: ClientFrames in, ServerFrames out, None at the end (as grpc.aio.EOF)."""

    def __init__(self, end: PipeEnd) -> None:
        self._end = end
        self._writing = True

    async def write(self, request: client_pb2.ClientFrame) -> None:
        if not self._writing or self._end.cancelled:
            raise grpc.aio.UsageError("the session's stream is closed for writing")
        if request.HasField("cancel"):
            await self._end.inbound.put(CANCEL)
        elif request.HasField("data"):
            await self._end.inbound.put(request.data)

    async def read(self) -> object:
        if self._end.cancelled:
            return None
        item = await self._end.outbound.get()
        if item is None:
            return None
        return client_pb2.ServerFrame(data=item)

    async def done_writing(self) -> None:
        if self._writing:
            self._writing = False
            await self._end.inbound.put(None)

    def cancel(self) -> bool:
        """Stop reading; the session ends as when a gRPC client goes away (its input ends)."""
        end = self._end
        if end.cancelled:
            return False
        end.cancelled = True
        end.drop()
        if self._writing:
            self._writing = False
            while not end.inbound.empty():  # input not yet relayed is not sent after a cancel
                end.inbound.get_nowait()
            end.inbound.put_nowait(None)
        return True


class InProcessSessions:
    """The relays of in-process sessions, owned here: stopped with the endpoint."""

    def __init__(self, sessions: ClientServicer) -> None:
        self.sessions = sessions
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, admitted: Admitted, peer: str) -> PipeCall:
        end = PipeEnd(peer)
        task = asyncio.create_task(self._serve(end, admitted), name="mcp-session")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return PipeCall(end)

    async def _serve(self, end: PipeEnd, admitted: Admitted) -> None:
        try:
            await self.sessions.serve(end, admitted)
        finally:
            await end.ended()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
