"""The sessions of an agent's multiplexed session leg, control-plane side (decisions 0027, 0035).

One leg (its frames: controlplane/agents/leg.py) carries every session the agent instance
serves through this replica. Each session joins its client's Tunnel
(controlplane/relay/tunnel.py) exactly as a per-session stream did:
frames go into `tunnel.to_client`, audited client bytes come out of `tunnel.to_agent`. What
changes is underneath: one writer sends everything queued as one message, and each session's
credit keeps one stalled client from holding up the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from controlplane.errors import GatehouseError
from controlplane.relay.tunnel import Cancel, Tunnel, Tunnels
from gatehouse.v1 import agent_pb2, tunnel_pb2
from wire.mux import MAX_EVENTS, WINDOW, Credit, Grants, Outbox

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 30.0
"""After the client finished sending, how long the agent's end of the session is awaited."""

MAX_REFUSED_ATTACHES = 64
"""Refused attaches in one agent batch at most: a few are a race with a client that gave up;
more is a broken or hostile agent making the control plane refuse (and queue closes) in bulk."""

MAX_UNSENT_REFUSALS = 4 * MAX_REFUSED_ATTACHES
"""Refused attaches whose closes wait for the leg's writer at most: an agent that goes on
attaching but does not read would have them pile up in the control plane's memory."""

MAX_SESSION_ID = 128
"""Characters of a session id at most (ours are UUIDs): a refused attach's close quotes it."""

Delivery = tunnel_pb2.Frame | None


class LegViolation(ConnectionError):
    """The agent broke the leg's protocol: the leg ends (its sessions: agent_lost)."""


@dataclass(eq=False)
class Leg:
    """One session on the stream."""

    number: int
    tunnel: Tunnel
    outbox: Outbox[agent_pb2.GatewayEvent]
    credit: Credit = field(default_factory=Credit)  # client bytes we may still send
    grants: Grants = field(init=False)
    # The agent's credit as we count it: WINDOW plus what we granted, less what it sent.
    # Never below what the agent itself counts (it learns of a grant after we add it).
    allowed: int = WINDOW
    # Frames the client's queue had no room for yet: with the queue, bounded by the agent's
    # credit, which is granted back only as the client's side takes them.
    backlog: deque[Delivery] = field(default_factory=deque)
    draining: asyncio.Task[None] | None = None
    agent_done: asyncio.Event = field(default_factory=asyncio.Event)
    pump: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.grants = Grants(self._grant)
        self.tunnel.taken = self._taken

    def _taken(self, frame: tunnel_pb2.Frame) -> None:
        """The client's side took a frame: its bytes are granted back to the agent (not when
        queued: the agent's credit bounds what waits in the queue and the backlog)."""
        self.grants.took(len(frame.data))

    def _grant(self, size: int) -> None:
        self.allowed += size
        self.outbox.put(agent_pb2.GatewayEvent(session=self.number, credit=size))

    def send(self, **fields: Any) -> None:
        self.outbox.put(agent_pb2.GatewayEvent(session=self.number, **fields))

    def deliver(self, item: Delivery) -> None:
        """A frame (or the end, None) for the client's side, in order, never blocking."""
        if not self.backlog:
            try:
                self.tunnel.to_client.put_nowait(item)
            except asyncio.QueueFull:
                pass
            else:
                return
        self.backlog.append(item)
        if self.draining is None:
            self.draining = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.backlog:
                item = self.backlog[0]
                put = asyncio.create_task(self.tunnel.to_client.put(item))
                closed = asyncio.create_task(self.tunnel.closed.wait())
                await asyncio.wait({put, closed}, return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                if not put.done():  # the client's side is gone: nobody will take the rest
                    put.cancel()
                    self.backlog.clear()
                    return
                self.backlog.popleft()
        finally:
            self.draining = None

    def broken(self) -> None:
        """The stream broke (or ended) before the agent ended this session: whatever the
        target was doing, its outcome is unknown (the session ends as agent_lost). Once: an
        agent repeating `lost` must not queue an end per event for a client taking nothing."""
        tunnel = self.tunnel
        if not tunnel.closed.is_set() and not self.agent_done.is_set() and not tunnel.lost:
            tunnel.lost = True
            self.deliver(None)
        self.credit.close()

    async def to_agent(self) -> None:
        """Audited client bytes (and cancels, and the end) to the agent, within credit."""
        tunnel = self.tunnel
        while True:
            tunnel.direct = self._direct  # parked with nothing in hand: order is kept
            try:
                item = await tunnel.to_agent.get()
            finally:
                tunnel.direct = None
            if item is None:
                if tunnel.closed.is_set():
                    break
                # The client is done sending; its last answers are still on their way.
                tunnel.ending = True
                self.send(end=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ended(), DRAIN_TIMEOUT)
                break
            if isinstance(item, Cancel):
                self.send(cancel=True)
                continue
            if self.credit.exhausted and not await self._credit_or_closed():
                break
            await self.credit.spend(len(item))
            self._put(item)

    def _direct(self, data: bytes) -> bool:
        """Client bytes straight to the stream's outbox, if the session has credit left."""
        if not self.credit.try_spend(len(data)):
            return False
        self._put(data)
        return True

    def _put(self, data: bytes) -> None:
        self.outbox.put(agent_pb2.GatewayEvent(session=self.number, data=data), len(data))

    async def _ended(self) -> None:
        """The agent's end of the session arrived, or the tunnel closed."""
        await self._or_closed(self.agent_done.wait())

    async def _credit_or_closed(self) -> bool:
        """Wait for the agent's engine to take data; False if the session closed first."""
        await self._or_closed(self.credit.spend(0))
        return not self.tunnel.closed.is_set()

    async def _or_closed(self, waiting: Coroutine[Any, Any, Any]) -> None:
        """Wait for `waiting` or the tunnel's close, whichever comes first."""
        first = asyncio.create_task(waiting)
        closed = asyncio.create_task(self.tunnel.closed.wait())
        try:
            await asyncio.wait({first, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            first.cancel()
            closed.cancel()


class SessionStream:
    """The sessions of one leg, by the agent's session numbers."""

    def __init__(self, tunnels: Tunnels, agent: str) -> None:
        self._tunnels = tunnels
        self._agent = agent
        self.outbox: Outbox[agent_pb2.GatewayEvent] = Outbox()
        self.legs: dict[int, Leg] = {}
        self._unsent_refusals = 0  # closes of refused attaches queued since the last take

    async def take(self) -> list[agent_pb2.GatewayEvent]:
        """The next message's events for the agent (the leg's writer, once the last went)."""
        events = await self.outbox.take()
        self._unsent_refusals = 0
        return events

    def receive(self, batch: agent_pb2.AgentBatch) -> None:
        """Dispatch one message of the agent's; never waits (a full client queue is a leg's
        backlog, bounded by that session's credit). Raises LegViolation, having dispatched
        the events before the offending one, when the agent broke the protocol."""
        if len(batch.events) > MAX_EVENTS:
            raise LegViolation(
                f"the agent sent {len(batch.events)} events in one batch, more than the "
                f"{MAX_EVENTS} an agent of this version sends; upgrade the agent to the control "
                "plane's version"
            )
        refused: list[str] = []
        for event in batch.events:
            kind = event.WhichOneof("msg")
            if kind == "frame":
                leg = self.legs.get(event.session)
                # Without data a frame carries nothing for the client (marks describe data)
                # and costs no credit: queued, an agent could pile them up without bound.
                if leg is not None and event.frame.data:
                    if leg.allowed <= 0:  # one frame may overdraw the credit, never two
                        raise LegViolation(
                            f"session {leg.tunnel.session_id} sent {len(event.frame.data)} "
                            f"bytes with its credit already spent ({-leg.allowed} bytes "
                            "beyond what the control plane granted); upgrade the agent to the "
                            "control plane's version"
                        )
                    leg.allowed -= len(event.frame.data)
                    leg.deliver(event.frame)
            elif kind == "credit":
                leg = self.legs.get(event.session)
                if leg is not None:
                    # The agent grants back only bytes it was sent: more would let client
                    # bytes pile up here for an agent that reads nothing.
                    if leg.credit.available + event.credit > WINDOW:
                        raise LegViolation(
                            f"session {leg.tunnel.session_id} granted {event.credit} bytes of "
                            f"credit, more than the control plane sent it "
                            f"({WINDOW - leg.credit.available} bytes unacknowledged); check "
                            "that it is a genuine agent of the control plane's version"
                        )
                    leg.credit.grant(event.credit)
            elif kind == "end":
                leg = self.legs.get(event.session)
                if leg is not None and not leg.agent_done.is_set():
                    leg.agent_done.set()
                    if not leg.tunnel.closed.is_set():
                        leg.deliver(None)
            elif kind == "lost":
                leg = self.legs.get(event.session)
                if leg is not None:
                    log.warning(
                        "session %s lost on the agent: %s", leg.tunnel.session_id, event.lost
                    )
                    leg.broken()
            elif kind == "attach":
                reason = self._attach(event.session, event.attach)
                if reason:
                    refused.append(reason)
                    self._unsent_refusals += 1
                    if len(refused) > MAX_REFUSED_ATTACHES:
                        raise LegViolation(
                            f"the agent sent more than {MAX_REFUSED_ATTACHES} attaches the "
                            f"control plane refused in one batch (the first: {refused[0]}); "
                            "check that it is a genuine agent of the control plane's version"
                        )
                    if self._unsent_refusals > MAX_UNSENT_REFUSALS:
                        raise LegViolation(
                            f"the agent sent more than {MAX_UNSENT_REFUSALS} attaches the "
                            "control plane refused without reading the answers (the last: "
                            f"{reason}); check that it is a genuine agent of the control "
                            "plane's version"
                        )
        if refused:  # one line per batch, not per attach
            log.warning(
                "agent %s: %d session attach(es) refused (the first: %s); the client of such "
                "a session gave up or it went to another replica: it opens a new one",
                self._agent,
                len(refused),
                refused[0],
            )

    def _attach(self, number: int, attach: agent_pb2.SessionAttach) -> str:
        """Attach the session; the reason it was refused (and the agent told), or ''."""
        if number in self.legs:
            reason = f"session {number} is in use"
            self.outbox.put(agent_pb2.GatewayEvent(session=number, close=reason), len(reason))
            return reason
        if len(attach.session_id) > MAX_SESSION_ID:
            # Not quoted: the close waits in the outbox, perhaps for an agent reading nothing.
            reason = f"a session id of {len(attach.session_id)} characters is not ours"
            self.outbox.put(agent_pb2.GatewayEvent(session=number, close=reason), len(reason))
            return reason
        run_as = attach.run_as if attach.HasField("run_as") else None
        # The session's own log context (wire/logcontext.py) for its lines, not the stream's.
        context = contextvars.copy_context()
        try:
            tunnel = context.run(self._tunnels.attach, attach.session_id, self._agent, run_as)
        except GatehouseError as exc:
            reason = f"session {attach.session_id[:100]!r} refused: {exc}"
            # Sized: the reason may quote the agent's session id, which counts against a batch.
            self.outbox.put(agent_pb2.GatewayEvent(session=number, close=str(exc)), len(str(exc)))
            return reason
        leg = Leg(number, tunnel, self.outbox)
        self.legs[number] = leg
        leg.pump = asyncio.create_task(self._pump(leg), context=context)
        return ""

    async def _pump(self, leg: Leg) -> None:
        try:
            await leg.to_agent()
        finally:
            if self.legs.get(leg.number) is leg:
                del self.legs[leg.number]
                if not leg.agent_done.is_set():
                    leg.send(close="the session ended at the control plane")
            leg.credit.close()

    def revoke(self, reason: str) -> None:
        """Every tunnel of this stream ends now, as agent_revoked, telling its client `reason`."""
        for leg in list(self.legs.values()):
            leg.tunnel.revoke(reason)

    async def broken(self) -> None:
        """The stream is gone: its open sessions are lost; their pumps stop."""
        legs = list(self.legs.values())
        self.legs.clear()
        for leg in legs:
            leg.broken()
            if leg.pump is not None:
                leg.pump.cancel()
        pumps = [leg.pump for leg in legs if leg.pump is not None]
        await asyncio.gather(*pumps, return_exceptions=True)
