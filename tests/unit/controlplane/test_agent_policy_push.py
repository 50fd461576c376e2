"""A policy push never waits on an agent that does not read its control stream.

`push_policy` runs on the replica bus's listener and in the heartbeat's re-check: while it
waits, no revocation, session order or heartbeat of this replica goes through."""

from __future__ import annotations

import asyncio
import time

from controlplane.agents.registry import AgentLink
from controlplane.replicas import push_policy
from controlplane.store.models import AgentInstanceRow
from gatehouse.v1 import agent_pb2


class Policy:
    """The one method of PolicyStore a push uses."""

    def for_agent(self, agent: str) -> agent_pb2.Policy:
        return agent_pb2.Policy(version=2)


def link(name: str, instance: str) -> AgentLink:
    row = AgentInstanceRow(id=instance, agent_id=name, name=name)
    return AgentLink(row, agent_pb2.Hello(version="1.0"), "ipv4:127.0.0.1:1")


async def test_an_agent_not_reading_its_control_stream_does_not_hold_up_a_push() -> None:
    stalled = [link(f"stalled{n}", f"i{n}") for n in range(3)]
    for one in stalled:  # it read nothing: its queue is full (orders, earlier pushes)
        while not one.outbox.full():
            one.outbox.put_nowait(agent_pb2.ControlMessage())
    honest = link("honest", "h")
    started = time.monotonic()
    notified = await asyncio.wait_for(push_policy([*stalled, honest], Policy()), 60)  # type: ignore[arg-type]
    took = time.monotonic() - started
    assert took < 1, f"three agents not reading held a policy push (and the bus) for {took:.1f} s"
    assert notified == ["honest"]
    assert honest.outbox.get_nowait().policy.version == 2
    for one in stalled:  # cut: it gets the current policy when it connects again
        assert one.closed.is_set()
