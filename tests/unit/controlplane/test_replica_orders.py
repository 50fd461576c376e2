"""Session orders between replicas: the ack, the reroute, and no order delivered twice.

Three replicas' registries and bus ends on one store; their notifications travel through an
in-memory bus in place of PostgreSQL's LISTEN/NOTIFY (tests/e2e/test_replicas_network.py runs
the real one), which can hold back what one replica hears, as a replica that died, stalled or
lost its listener would.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from controlplane import replicas as replicas_module
from controlplane.agents.registry import AgentLink, AgentRegistry
from controlplane.audit.events import utc_now
from controlplane.audit.writer import AuditWriter
from controlplane.policy.store import PolicyStore
from controlplane.replicas import Replicas
from controlplane.store.database import Database
from controlplane.store.models import ReplicaRow
from gatehouse.v1 import agent_pb2
from tests.unit.controlplane.test_agent_registry import connect, pool


class Bus:
    """Every replica hears every notification, in order, unless it is deaf for now."""

    def __init__(self) -> None:
        self.members: dict[str, Replicas] = {}
        self.deaf: set[str] = set()
        self.held: dict[str, list[str]] = {}

    def join(self, replica: Replicas) -> None:
        self.members[replica.id] = replica

        async def publish(message: dict[str, Any]) -> None:
            payload = json.dumps({**message, "from": replica.id})
            for member in self.members.values():
                if member.id in self.deaf:
                    self.held.setdefault(member.id, []).append(payload)
                else:
                    asyncio.get_running_loop().call_soon(self._hear, member, payload)

        replica.publish = publish  # type: ignore[method-assign]

    def _hear(self, member: Replicas, payload: str) -> None:
        asyncio.get_running_loop().create_task(member._dispatch(payload))

    async def wake(self, replica_id: str) -> None:
        """The deaf replica hears what it missed, late."""
        self.deaf.discard(replica_id)
        for payload in self.held.pop(replica_id, []):
            await self.members[replica_id]._dispatch(payload)


@pytest.fixture
async def cluster(
    db: Database, writer: AuditWriter, monkeypatch: pytest.MonkeyPatch
) -> tuple[Bus, dict[str, Replicas], list[AgentLink]]:
    """Replicas ra (no agent), rb and rc (one instance of `vpc` each)."""
    monkeypatch.setattr(replicas_module, "ORDER_ACK", 0.3)
    monkeypatch.setattr(replicas_module, "ORDER_TTL", 0.15)
    now = utc_now()
    names = ("ra", "rb", "rc")
    await db.write(
        lambda s: s.add_all(
            ReplicaRow(id=n, advertise=f"{n}:8443", started_at=now, seen_at=now) for n in names
        )
    )
    bus = Bus()
    members = {}
    for name in names:
        registry = AgentRegistry(db, writer, replica_id=name)
        member = Replicas(db, registry, PolicyStore(db, writer), writer, f"{name}:8443")
        registry.forward = member.forward
        bus.join(member)
        members[name] = member
    rows = await pool(db, "vpc", 2)  # ids vpc-0 (on rb) and vpc-1 (on rc)
    links = [
        await connect(members["rb"]._registry, rows[0]),
        await connect(members["rc"]._registry, rows[1]),
    ]
    return bus, members, links


def _orders(link: AgentLink) -> list[str]:
    taken = []
    while not link.outbox.empty():
        taken.append(link.outbox.get_nowait().open_session.session_id)
    return taken


async def test_an_acked_order_is_delivered_once_and_not_rerouted(
    cluster: tuple[Bus, dict[str, Replicas], list[AgentLink]],
) -> None:
    _, members, (on_b, on_c) = cluster
    origin = members["ra"]._registry
    origin._turn["vpc"] = 0  # vpc-0, held by rb
    origin.leg_address = "127.0.0.1:7001"  # --dev: the origin's plaintext leg listener
    route = await origin.route("vpc")
    assert (route.instance_id, route.replica) == ("vpc-0", "rb")
    await origin.order(
        route, agent_pb2.OpenSession(session_id="s1", connection="pg", type="postgres")
    )
    delivered = on_b.outbox.get_nowait().open_session
    assert (delivered.session_id, delivered.connection, delivered.type) == ("s1", "pg", "postgres")
    assert _orders(on_b) == [] and _orders(on_c) == []
    # The agent dials its session leg at the origin: its advertised address, and with --dev
    # the origin's leg listener.
    assert (delivered.dial, delivered.leg) == ("ra:8443", "127.0.0.1:7001")
    assert not origin._suspect


async def test_an_order_that_is_not_acked_goes_to_another_instance_and_never_twice(
    cluster: tuple[Bus, dict[str, Replicas], list[AgentLink]],
) -> None:
    bus, members, (on_b, on_c) = cluster
    origin = members["ra"]._registry
    bus.deaf.add("rb")  # rb stalls: its listener hears nothing for now
    origin._turn["vpc"] = 0
    route = await origin.route("vpc")
    assert route.replica == "rb"
    order = agent_pb2.OpenSession(session_id="s2", connection="pg")
    started = asyncio.get_running_loop().time()
    await origin.order(route, order)
    waited = asyncio.get_running_loop().time() - started
    assert _orders(on_c) == ["s2"]  # rerouted after ORDER_ACK
    assert 0.3 <= waited < 2
    # rb hears the order late, after the origin gave up on it: refused, not delivered.
    await bus.wake("rb")
    await asyncio.sleep(0.05)
    assert _orders(on_b) == [] and _orders(on_c) == []
    # Until rb's heartbeat would have said it is gone, the origin passes it over.
    for session_id in ("s3", "s4"):
        next_route = await origin.route("vpc")
        assert next_route.replica == "rc"
        await origin.order(next_route, agent_pb2.OpenSession(session_id=session_id))
    assert _orders(on_c) == ["s3", "s4"] and _orders(on_b) == []


async def test_an_order_for_an_instance_that_went_offline_here_goes_to_another(
    db: Database, writer: AuditWriter
) -> None:
    rows = await pool(db, "vpc", 2)
    registry = AgentRegistry(db, writer)
    gone, stays = [await connect(registry, row) for row in rows]
    registry._turn["vpc"] = 0
    route = await registry.route("vpc")
    assert route.instance_id == gone.instance_id
    await registry.disconnected(gone)  # between choosing it and sending the order
    await registry.order(route, agent_pb2.OpenSession(session_id="s5", connection="pg"))
    assert _orders(stays) == ["s5"] and _orders(gone) == []
