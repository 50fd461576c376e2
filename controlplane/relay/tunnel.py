"""The bounded pipes between a client's session stream and its agent's session stream.

The client's RPC and the agent's RPC are two handlers; a Tunnel joins them. Both queues are
small and every put is awaited, so a slow client slows its own target and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from controlplane.errors import PermissionDenied, Unavailable
from gatehouse.v1 import agent_pb2, tunnel_pb2
from wire.logcontext import SESSION_ID

QUEUE_FRAMES = 16


class Wake:
    """Sentinel in the client-bound queue: answers of the control plane's own are due."""


WAKE = Wake()


@dataclass(frozen=True, slots=True)
class Fatal:
    """In the client-bound queue: the session's last words (a protocol error), then the end."""

    data: bytes


class Cancel:
    """Sentinel in the agent-bound queue: cancel what the target is running."""


CANCEL = Cancel()


@dataclass(eq=False)
class Tunnel:
    session_id: str
    agent: str
    to_agent: asyncio.Queue[bytes | Cancel | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_FRAMES)
    )
    to_client: asyncio.Queue[tunnel_pb2.Frame | Wake | Fatal | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_FRAMES)
    )
    # Told of each frame the client's side takes (`next_for_client`): the agent's credit is
    # granted back only then, so what waits in `to_client` counts against it.
    taken: Callable[[tunnel_pb2.Frame], None] | None = None
    attached: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    # The agent instance serving it was revoked: set before the tunnel closes, so the relay
    # tells that end (agent_revoked) from a session that simply closed.
    revoked: asyncio.Event = field(default_factory=asyncio.Event)
    # The agent's stream broke (the agent died, its connection dropped) rather than ending:
    # whatever the target was doing, its outcome is unknown (the session ends as agent_lost).
    lost: bool = False
    ending: bool = False  # the client is done: the agent's end of stream is the expected answer
    # What the agent said when it attached: a shell session's account (SessionAttach.run_as).
    run_as: agent_pb2.RunAs | None = None
    # Why the control plane cut the session off (its agent instance was revoked): the client
    # is told this rather than seeing its session simply end.
    cut: str = ""
    started: float = field(default_factory=time.monotonic)
    # Set by the agent's side while it waits for the next item with nothing in hand: takes
    # client bytes straight to the agent's stream (False: no credit, use the queue).
    direct: Callable[[bytes], bool] | None = None

    async def send_to_agent(self, data: bytes) -> None:
        """Client bytes for the agent. With nothing queued ahead and credit left they go
        straight to the agent's stream, saving a task switch and two queue operations per
        message; otherwise through `to_agent`, in order, waiting for room."""
        if self.direct is None or not self.to_agent.empty() or not self.direct(data):
            await self.to_agent.put(data)

    async def next_for_client(self) -> tunnel_pb2.Frame | Wake | Fatal | None:
        """The next item for the client's side; a frame is reported to `taken`."""
        item = await self.to_client.get()
        if self.taken is not None and isinstance(item, tunnel_pb2.Frame):
            self.taken(item)
        return item

    def wake(self) -> None:
        """Nudge the client writer; if frames are queued, it will look anyway."""
        with contextlib.suppress(asyncio.QueueFull):
            self.to_client.put_nowait(WAKE)

    def revoke(self, reason: str) -> None:
        """The agent serving the session was revoked: end it now, as `agent_revoked`, telling
        the client `reason`."""
        self.cut = reason
        self.revoked.set()
        self.close()

    def close(self) -> None:
        self.closed.set()
        for queue in (self.to_agent, self.to_client):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)  # if full, the reader sees `closed` once it drains


class Tunnels:
    """Sessions waiting for, or joined with, their agent's stream."""

    def __init__(self) -> None:
        self._open: dict[str, Tunnel] = {}
        self.opened = 0  # since start, for metrics
        #: Called with each session's seconds when it ends (the duration histogram).
        self.on_close: Callable[[float], None] | None = None

    def expect(self, session_id: str, agent: str) -> Tunnel:
        # The rest of the caller's task (the client's RPC) is about this session: its log
        # lines say so (JSON logs, wire/logcontext.py). Each RPC runs in a task of its own.
        SESSION_ID.set(session_id)
        tunnel = Tunnel(session_id, agent)
        self.opened += 1
        self._open[session_id] = tunnel
        return tunnel

    def attach(self, session_id: str, agent: str, run_as: agent_pb2.RunAs | None = None) -> Tunnel:
        tunnel = self._open.get(session_id)
        if tunnel is None or tunnel.closed.is_set():
            raise Unavailable(f"session {session_id} is not waiting for an agent")
        if tunnel.agent != agent:
            raise PermissionDenied(f"session {session_id} belongs to another agent")
        if tunnel.attached.is_set():
            raise PermissionDenied(f"session {session_id} is already attached")
        SESSION_ID.set(session_id)  # the agent's session stream: its lines too
        tunnel.run_as = run_as  # before the client's side, waiting for `attached`, reads it
        tunnel.attached.set()
        return tunnel

    def discard(self, tunnel: Tunnel) -> None:
        tunnel.close()
        if self._open.get(tunnel.session_id) is tunnel:
            del self._open[tunnel.session_id]
            if self.on_close is not None:
                self.on_close(time.monotonic() - tunnel.started)

    def __len__(self) -> int:
        return len(self._open)
