# ruff: noqa: F811, ASYNC110  (fixtures imported from test_agent_leg; a polling wait)
"""The framed agent leg (decision 0035) holds against an enrolled but hostile agent.

The control plane counts what each session's agent sent against the credit it granted, bounds
the work of one batch, and cuts a leg whose instance was revoked while it was identified."""

from __future__ import annotations

import asyncio
import gc
import time

from controlplane.agents.leg import LegListener, LegServer
from controlplane.agents.mux import Leg as SessionLeg
from controlplane.agents.registry import AgentRegistry
from controlplane.auth.failures import AuthFailures
from controlplane.relay.tunnel import Tunnel, Tunnels
from gatehouse.v1 import agent_pb2, tunnel_pb2
from tests.unit.controlplane.test_agent_leg import (  # noqa: F401  (fixtures)
    attached,
    dial,
    enrolled,
    listener,
    serving,
    tunnels,
)
from wire.mux import WINDOW

FRAME = 32 * 1024  # under the fixture's max_frame of 64 KiB


def held(tunnel: Tunnel) -> int:
    """Bytes of the agent's frames the control plane holds for this session's client."""
    legs = [o for o in gc.get_objects() if isinstance(o, SessionLeg) and o.tunnel is tunnel]
    assert len(legs) == 1
    queued = [item for item in tunnel.to_client._queue if isinstance(item, tunnel_pb2.Frame)]  # type: ignore[attr-defined]
    backlog = [item for item in legs[0].backlog if item is not None]
    return sum(len(item.data) for item in queued + backlog)


async def test_an_agent_ignoring_its_credit_cannot_make_the_control_plane_buffer_without_bound(
    listener: tuple[LegListener, AgentRegistry], tunnels: Tunnels
) -> None:
    """The client takes nothing: the control plane holds at most WINDOW + one frame of this
    session's data (wire/mux.py, Credit); an agent that sends past it loses the leg."""
    leg, tunnel = await attached(*listener, tunnels, "s-flood")
    frame = agent_pb2.AgentEvent(session=1, frame=tunnel_pb2.Frame(data=b"x" * FRAME))
    for _ in range(64):  # 2 MiB, eight times the window, no grant ever received
        leg.send(agent_pb2.AgentBatch(events=[frame]))
    await leg.writer.drain()
    await asyncio.sleep(0.5)  # let the control plane read it all
    try:
        assert held(tunnel) <= WINDOW + FRAME, (
            f"the control plane holds {held(tunnel)} bytes for one session whose client took "
            f"nothing; it granted only {WINDOW}"
        )
    finally:
        tunnels.discard(tunnel)


async def test_a_flood_of_refused_attaches_does_not_stall_the_event_loop(
    db, writer, tunnels: Tunnels
) -> None:
    """One 1 MiB frame (an eighth of the 8 MiB maximum) full of attaches for sessions that do
    not exist ends the leg without stalling the event loop that every other leg and client of
    this control plane shares (MAX_EVENTS, MAX_REFUSED_ATTACHES)."""
    registry = AgentRegistry(db, writer)
    server = LegServer(registry, tunnels, AuthFailures(writer))  # MAX_FRAME: 8 MiB
    async with serving(server) as legs:
        credential, _ = await enrolled(registry)
        leg = await dial(legs)
        leg.send(agent_pb2.LegHello(credential=credential, version="1.0"))
        assert (await leg.welcome()).refused == ""
        one = agent_pb2.AgentEvent(session=1, attach=agent_pb2.SessionAttach(session_id="x"))
        count = (1024 * 1024 - 64) // (len(one.SerializeToString()) + 2)
        batch = agent_pb2.AgentBatch(events=[one] * count)
        assert len(batch.SerializeToString()) <= 1024 * 1024
        gaps: list[float] = []

        async def tick() -> None:
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        leg.send(batch)
        await leg.writer.drain()
        await asyncio.sleep(1.0)
        deadline = time.monotonic() + 30
        while max(gaps, default=0) < 0.05 and time.monotonic() < deadline and len(gaps) < 100:
            await asyncio.sleep(0.1)
        ticker.cancel()
        leg.writer.transport.abort()
        worst = max(gaps)
        print(f"{count} attaches in one frame; the event loop stalled for {worst:.2f} s")
        assert worst < 0.5, f"one agent frame stalled the control plane's event loop {worst:.2f} s"


async def test_a_revocation_landing_while_the_hello_is_checked_still_cuts_the_leg(
    db, writer, tunnels: Tunnels
) -> None:
    """A revocation that completes after `LegServer.serve` identified the instance but before
    the leg took its revocation event still cuts the leg: the instance attaches no session
    afterwards, with or without a replica's re-check (SQLite has none)."""
    from controlplane.auth.identity import ADMIN, Identity

    registry = AgentRegistry(db, writer)
    server = LegServer(registry, tunnels, AuthFailures(writer))
    credential, instance = await enrolled(registry)
    original = registry.identify

    async def identify(credential: str, certificate: bytes | None):
        row = await original(credential, certificate)  # the store said: not revoked
        # ... and before this task resumes, an administrator's revocation completes:
        assert await registry.revoke("edge", Identity(subject="root", role=ADMIN), instance)
        return row

    registry.identify = identify  # type: ignore[method-assign]
    async with serving(server) as legs:
        leg = await dial(legs)
        leg.send(agent_pb2.LegHello(credential=credential, version="1.0"))
        welcome = await leg.welcome()
        if welcome.refused:
            return  # refused: as it should be
        await asyncio.sleep(0.2)
        tunnel = tunnels.expect("s-after-revoke", "edge")  # an order that was in flight
        attach = agent_pb2.AgentEvent(
            session=1, attach=agent_pb2.SessionAttach(session_id="s-after-revoke")
        )
        leg.send(agent_pb2.AgentBatch(events=[attach]))
        await asyncio.sleep(5)  # longer than a replica's re-check (3 s)
        try:
            assert not tunnel.attached.is_set(), (
                "a revoked instance's leg attached a session 5 s after its revocation"
            )
        finally:
            tunnels.discard(tunnel)
            leg.writer.transport.abort()


async def test_an_agent_granting_itself_credit_cannot_make_the_control_plane_buffer_without_bound(
    listener: tuple[LegListener, AgentRegistry], tunnels: Tunnels
) -> None:
    """An agent grants back only bytes it was sent: one that grants more (uint32 credits it
    never earned) and reads nothing would have the client's bytes pile up in the control
    plane's memory. It loses the leg instead; what is queued stays within the window."""
    from controlplane.agents.mux import SessionStream

    leg, tunnel = await attached(*listener, tunnels, "s-greedy")
    grant = agent_pb2.AgentEvent(session=1, credit=2**32 - 1)
    leg.send(agent_pb2.AgentBatch(events=[grant] * 16))  # 64 GiB it was never sent
    await leg.writer.drain()
    await asyncio.sleep(0.2)
    chunk = b"y" * FRAME

    async def client() -> None:
        while not tunnel.closed.is_set():
            await tunnel.send_to_agent(chunk)
            await asyncio.sleep(0)  # a client's bytes come from its socket: it yields

    pushing = asyncio.create_task(client())
    await asyncio.sleep(2)  # the agent reads nothing meanwhile
    pushing.cancel()
    streams = [o for o in gc.get_objects() if isinstance(o, SessionStream)]
    queued = sum(size for stream in streams for _, size in stream.outbox._events)
    try:
        assert queued <= WINDOW + FRAME, (
            f"the control plane queued {queued} bytes of client data for an agent that reads "
            f"nothing; an honest agent's credit allows {WINDOW}"
        )
    finally:
        tunnels.discard(tunnel)
        leg.writer.transport.abort()


async def test_one_instance_cannot_hold_legs_without_bound(
    listener: tuple[LegListener, AgentRegistry],
) -> None:
    """Each leg may hold a frame of up to the maximum (8 MiB) while it arrives, and takes one
    of the front's connections: an agent dials one leg per replica, so one instance that
    dials hundreds is hostile, and its oldest legs are let go."""
    from controlplane.agents.leg import MAX_LEGS_PER_INSTANCE

    legs, registry = listener
    credential, _ = await enrolled(registry)
    dialled = []
    for _ in range(MAX_LEGS_PER_INSTANCE + 8):
        leg = await dial(legs)
        leg.send(agent_pb2.LegHello(credential=credential, version="1.0"))
        assert (await leg.welcome()).refused == ""
        dialled.append(leg)
    await asyncio.sleep(0.3)
    try:
        assert legs.server.open <= MAX_LEGS_PER_INSTANCE, (
            f"one agent instance holds {legs.server.open} session legs on this replica"
        )
    finally:
        for leg in dialled:
            leg.writer.transport.abort()


async def test_an_agent_repeating_lost_does_not_pile_up_ends_for_the_client(
    listener: tuple[LegListener, AgentRegistry], tunnels: Tunnels
) -> None:
    """A session ends once: an agent that says `lost` for it over and over, while its client
    takes nothing, must not have the control plane queue one end per event (outside the
    credit, without bound)."""
    leg, tunnel = await attached(*listener, tunnels, "s-lost")
    lost = agent_pb2.AgentEvent(session=1, lost="gone")
    for _ in range(20):
        leg.send(agent_pb2.AgentBatch(events=[lost] * 4096))
    await leg.writer.drain()
    await asyncio.sleep(0.5)
    legs = [o for o in gc.get_objects() if isinstance(o, SessionLeg) and o.tunnel is tunnel]
    try:
        waiting = sum(len(one.backlog) for one in legs) + tunnel.to_client.qsize()
        assert waiting <= 2, f"the control plane queued {waiting} ends for one session's client"
    finally:
        tunnels.discard(tunnel)
        leg.writer.transport.abort()


async def test_empty_frames_cost_no_credit_and_are_not_queued(
    listener: tuple[LegListener, AgentRegistry], tunnels: Tunnels
) -> None:
    """A frame without data spends no credit: an agent sending them by the thousand, for a
    client that takes nothing, must not have the control plane queue each one."""
    leg, tunnel = await attached(*listener, tunnels, "s-empty")
    empty = agent_pb2.AgentEvent(session=1, frame=tunnel_pb2.Frame())
    for _ in range(20):
        leg.send(agent_pb2.AgentBatch(events=[empty] * 4096))
    await leg.writer.drain()
    await asyncio.sleep(0.5)
    legs = [o for o in gc.get_objects() if isinstance(o, SessionLeg) and o.tunnel is tunnel]
    try:
        waiting = sum(len(one.backlog) for one in legs) + tunnel.to_client.qsize()
        assert waiting <= 16, f"the control plane queued {waiting} empty frames for a client"
    finally:
        tunnels.discard(tunnel)
        leg.writer.transport.abort()


async def test_refused_attaches_do_not_echo_long_session_ids_back_into_memory(
    listener: tuple[LegListener, AgentRegistry],
) -> None:
    """A refused attach's close waits in the leg's outbox for an agent that may read nothing;
    it must not quote the agent's session id whole (up to a frame long)."""
    from controlplane.agents.mux import MAX_UNSENT_REFUSALS, SessionStream

    legs, registry = listener
    credential, _ = await enrolled(registry)
    leg = await dial(legs)
    leg.send(agent_pb2.LegHello(credential=credential, version="1.0"))
    assert (await leg.welcome()).refused == ""
    long_id = "z" * (60 * 1024)  # under the fixture's 64 KiB frames; 8 MiB in production
    for number in range(MAX_UNSENT_REFUSALS):
        attach = agent_pb2.SessionAttach(session_id=long_id)
        leg.send(agent_pb2.AgentBatch(events=[agent_pb2.AgentEvent(session=number, attach=attach)]))
    await leg.writer.drain()
    await asyncio.sleep(0.5)
    streams = [o for o in gc.get_objects() if isinstance(o, SessionStream)]
    queued = sum(len(e.close) for s in streams for e, _ in s.outbox._events)
    try:
        assert queued <= MAX_UNSENT_REFUSALS * 1024, (
            f"the control plane holds {queued} bytes of refusals echoing the agent's session ids"
        )
    finally:
        leg.writer.transport.abort()
