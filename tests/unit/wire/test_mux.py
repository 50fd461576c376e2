"""Credit, grants and the batching outbox of the multiplexed agent leg (wire/mux.py), and a
control-plane leg whose client stops taking frames: the stream's reader never waits."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.agents.mux import (
    MAX_REFUSED_ATTACHES,
    MAX_UNSENT_REFUSALS,
    LegViolation,
    SessionStream,
)
from controlplane.relay.tunnel import CANCEL, QUEUE_FRAMES, Tunnels
from gatehouse.v1 import agent_pb2, tunnel_pb2
from wire.mux import MAX_EVENTS, WINDOW, Credit, Grants, Outbox, batch_bytes


async def test_a_sender_waits_once_its_window_is_spent_and_goes_on_when_granted() -> None:
    credit = Credit(100)
    await credit.spend(60)
    await credit.spend(60)  # one message may overdraw: a frame larger than what is left
    blocked = asyncio.create_task(credit.spend(10))
    await asyncio.sleep(0)
    assert not blocked.done()
    credit.grant(30)  # still -20 + 30 = 10 > 0: the sender goes on
    await asyncio.wait_for(blocked, 1)
    assert credit.available == 0


async def test_closing_releases_a_waiting_sender() -> None:
    credit = Credit(1)
    await credit.spend(1)
    blocked = asyncio.create_task(credit.spend(5))
    await asyncio.sleep(0)
    credit.close()
    await asyncio.wait_for(blocked, 1)


def test_grants_go_back_in_few_large_events_and_never_strand_a_sender() -> None:
    sent: list[int] = []
    grants = Grants(sent.append, threshold=100)
    for _ in range(9):
        grants.took(10)
    assert sent == []
    grants.took(10)
    assert sent == [100]
    # A sender that spent its whole window can send again once the consumer took it all.
    credit = Credit(WINDOW)
    grants = Grants(credit.grant)
    sent = 0
    while not credit.exhausted:
        credit.available -= 1000
        sent += 1000
    for _ in range(sent // 1000):
        grants.took(1000)
    assert not credit.exhausted


async def test_the_writer_takes_everything_queued_as_one_batch_within_a_size_limit() -> None:
    outbox: Outbox[str] = Outbox()
    for name in ("a", "b", "c"):
        outbox.put(name, 10)
    assert await outbox.take() == ["a", "b", "c"]
    outbox.put("big", 50)
    outbox.put("next", 50)
    assert await outbox.take(limit=60) == ["big"]
    assert await outbox.take(limit=60) == ["next"]
    waiting = asyncio.create_task(outbox.take())
    await asyncio.sleep(0)
    assert not waiting.done()
    outbox.put("late")
    assert await asyncio.wait_for(waiting, 1) == ["late"]


async def test_a_batch_never_holds_more_than_max_events_however_small_they_are() -> None:
    outbox: Outbox[int] = Outbox()
    for number in range(MAX_EVENTS + 10):
        outbox.put(number)
    assert await outbox.take() == list(range(MAX_EVENTS))
    assert await outbox.take() == list(range(MAX_EVENTS, MAX_EVENTS + 10))


def attach(number: int, session_id: str) -> agent_pb2.AgentEvent:
    return agent_pb2.AgentEvent(
        session=number, attach=agent_pb2.SessionAttach(session_id=session_id)
    )


def frame_event(number: int, size: int) -> agent_pb2.AgentEvent:
    return agent_pb2.AgentEvent(session=number, frame=tunnel_pb2.Frame(data=b"x" * size))


async def test_a_stalled_session_holds_its_frames_without_blocking_the_stream() -> None:
    tunnels = Tunnels()
    stalled, other = tunnels.expect("s-stalled", "a1"), tunnels.expect("s-other", "a1")
    stream = SessionStream(tunnels, "a1")
    stream.receive(
        agent_pb2.AgentBatch(
            events=[
                attach(1, "s-stalled"),
                attach(2, "s-other"),
            ]
        )
    )
    assert stalled.attached.is_set() and other.attached.is_set()
    # Nobody reads the stalled session's client queue: its frames pile up in its leg (the
    # agent sends 240,000 bytes, within its window).
    stream.receive(agent_pb2.AgentBatch(events=[frame_event(1, 6_000) for _ in range(40)]))
    # The stream's reader did not wait: the other session's frame is there at once.
    stream.receive(agent_pb2.AgentBatch(events=[frame_event(2, 10)]))
    got = other.to_client.get_nowait()
    assert isinstance(got, tunnel_pb2.Frame) and got.data == b"x" * 10
    assert stalled.to_client.full()
    assert len(stream.legs[1].backlog) == 40 - QUEUE_FRAMES
    # No credit goes back while the client's side takes nothing: neither the queue nor the
    # backlog can grow past the window.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(stream.outbox.take(), 0.05)
    # The client takes its frames: the backlog drains and the credit goes back.
    for _ in range(40):
        await asyncio.wait_for(stalled.next_for_client(), 1)
    draining = stream.legs[1].draining
    if draining is not None:
        await asyncio.wait_for(draining, 1)
    assert not stream.legs[1].backlog
    events = await asyncio.wait_for(stream.outbox.take(), 1)
    granted = sum(event.credit for event in events if event.session == 1)
    assert 0 < granted <= 40 * 6_000
    await stream.broken()
    tunnels.discard(stalled)
    tunnels.discard(other)


async def test_a_broken_stream_loses_the_sessions_the_agent_did_not_end() -> None:
    tunnels = Tunnels()
    ended, running = tunnels.expect("s-ended", "a1"), tunnels.expect("s-running", "a1")
    stream = SessionStream(tunnels, "a1")
    stream.receive(
        agent_pb2.AgentBatch(
            events=[
                attach(1, "s-ended"),
                attach(2, "s-running"),
                agent_pb2.AgentEvent(session=1, end=True),
            ]
        )
    )
    await stream.broken()
    assert not ended.lost and running.lost
    assert ended.to_client.get_nowait() is None
    assert running.to_client.get_nowait() is None


async def test_client_bytes_skip_the_queue_only_with_nothing_ahead_and_credit_left() -> None:
    tunnels = Tunnels()
    tunnel = tunnels.expect("s-direct", "agent-a")
    stream = SessionStream(tunnels, "agent-a")
    stream.receive(agent_pb2.AgentBatch(events=[attach(1, "s-direct")]))
    await asyncio.sleep(0)  # the leg's pump parks on the empty queue

    async def sent() -> list[tuple[str, bytes]]:
        """What the stream's writer would send now (a marker ends it: take never waits)."""
        mark = agent_pb2.GatewayEvent(session=0, close="mark")
        stream.outbox.put(mark)
        events = await stream.outbox.take()
        assert events[-1] is mark
        return [(e.WhichOneof("msg") or "", e.data) for e in events[:-1]]

    await tunnel.send_to_agent(b"first")
    assert tunnel.to_agent.empty()  # in the outbox before any task switch
    assert await sent() == [("data", b"first")]
    assert tunnel.to_agent.empty()

    # A cancel queued ahead keeps its place: later bytes wait behind it in the queue.
    tunnel.to_agent.put_nowait(CANCEL)
    await tunnel.send_to_agent(b"second")
    assert tunnel.to_agent.qsize() == 2
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert await sent() == [("cancel", b""), ("data", b"second")]

    # No credit left: the bytes go through the queue and wait for the agent's grant.
    leg = stream.legs[1]
    leg.credit.available = 0
    await tunnel.send_to_agent(b"third")
    await asyncio.sleep(0)
    assert await sent() == []
    stream.receive(agent_pb2.AgentBatch(events=[agent_pb2.AgentEvent(session=1, credit=WINDOW)]))
    for _ in range(5):
        await asyncio.sleep(0)
    assert await sent() == [("data", b"third")]
    tunnels.discard(tunnel)
    await stream.broken()


def test_a_batch_is_serialized_as_protobuf_would() -> None:
    """The writers join their events' serializations: the same bytes as the batch message."""
    frame = tunnel_pb2.Frame(data=b"x" * 300, marks=[tunnel_pb2.ResultMark(kind=1, end=3)])
    cases: list[list[agent_pb2.AgentEvent]] = [
        [],
        [agent_pb2.AgentEvent(session=1, credit=WINDOW)],
        [agent_pb2.AgentEvent(session=n, frame=frame) for n in range(5)],
        [agent_pb2.AgentEvent(session=2, frame=tunnel_pb2.Frame(data=b"y" * 70_000))],
        [agent_pb2.AgentEvent()],  # an empty event still counts as one
    ]
    for events in cases:
        data = batch_bytes(events)
        assert data == agent_pb2.AgentBatch(events=events).SerializeToString()
        assert list(agent_pb2.AgentBatch.FromString(data).events) == events
    gateway = [agent_pb2.GatewayEvent(session=3, credit=10)]
    assert batch_bytes(gateway) == agent_pb2.GatewayBatch(events=gateway).SerializeToString()


async def test_a_frame_sent_with_the_credit_already_spent_ends_the_leg() -> None:
    """One frame may overdraw the session's credit (as the agent's Credit allows); the next,
    with no grant in between, breaks the protocol."""
    tunnels = Tunnels()
    tunnel = tunnels.expect("s-greedy", "a1")
    stream = SessionStream(tunnels, "a1")
    stream.receive(agent_pb2.AgentBatch(events=[attach(1, "s-greedy")]))
    stream.receive(agent_pb2.AgentBatch(events=[frame_event(1, WINDOW - 1), frame_event(1, 9)]))
    with pytest.raises(LegViolation, match="credit already spent"):
        stream.receive(agent_pb2.AgentBatch(events=[frame_event(1, 1)]))
    await stream.broken()
    assert tunnel.lost
    tunnels.discard(tunnel)


async def test_a_frame_within_credit_granted_back_is_accepted() -> None:
    tunnels = Tunnels()
    tunnel = tunnels.expect("s-steady", "a1")
    stream = SessionStream(tunnels, "a1")
    stream.receive(agent_pb2.AgentBatch(events=[attach(1, "s-steady")]))
    for _ in range(3):  # three windows, each taken by the client before the next
        stream.receive(agent_pb2.AgentBatch(events=[frame_event(1, WINDOW // 4)] * 4))
        for _ in range(4):
            await asyncio.wait_for(tunnel.next_for_client(), 1)
    await stream.broken()
    tunnels.discard(tunnel)


async def test_a_batch_of_too_many_refused_attaches_ends_the_leg(caplog) -> None:
    """A few refusals are a client that gave up; a batch of them is a broken agent: the leg
    ends before the control plane refuses them all."""
    stream = SessionStream(Tunnels(), "a1")
    stream.receive(agent_pb2.AgentBatch(events=[attach(n, f"gone-{n}") for n in range(3)]))
    assert [r.getMessage().count("3 session attach(es) refused") for r in caplog.records] == [1]
    flood = [attach(n, f"gone-{n}") for n in range(MAX_REFUSED_ATTACHES + 1)]
    with pytest.raises(LegViolation, match="refused in one batch"):
        stream.receive(agent_pb2.AgentBatch(events=flood))


async def test_refused_attaches_do_not_pile_up_for_an_agent_that_does_not_read() -> None:
    """Batches of a few refusals each, while the leg's writer cannot send (the agent does not
    read): their closes would queue without bound. While the writer takes them, they go on."""
    stream = SessionStream(Tunnels(), "a1")
    batch = agent_pb2.AgentBatch(events=[attach(n, f"gone-{n}") for n in range(8)])
    for _ in range(MAX_UNSENT_REFUSALS // 8 * 3):
        stream.receive(batch)
        assert len(await stream.take()) == 8  # the writer sent the closes
    for _ in range(MAX_UNSENT_REFUSALS // 8):
        stream.receive(batch)  # nobody takes them
    with pytest.raises(LegViolation, match="without reading the answers"):
        stream.receive(batch)


def test_a_batch_of_more_events_than_an_agent_sends_ends_the_leg() -> None:
    stream = SessionStream(Tunnels(), "a1")
    credit = agent_pb2.AgentEvent(session=7, credit=1)
    with pytest.raises(LegViolation, match="events in one batch"):
        stream.receive(agent_pb2.AgentBatch(events=[credit] * (MAX_EVENTS + 1)))
