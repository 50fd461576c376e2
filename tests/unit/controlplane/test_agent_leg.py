"""The control plane's end of the session leg (controlplane/agents/leg.py, decision 0035), on
its --dev listener: the hello, refusals recorded as auth.fail, frames it will not take, and a
leg that breaks under its sessions."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlmodel import select

from controlplane.agents import leg as leg_module
from controlplane.agents.leg import MAX_HELLO, LegListener, LegServer
from controlplane.agents.registry import AgentRegistry
from controlplane.audit.events import draft
from controlplane.audit.writer import AuditWriter
from controlplane.auth.failures import AuthFailures
from controlplane.auth.identity import ADMIN, Identity
from controlplane.relay.tunnel import Tunnel, Tunnels
from controlplane.store.database import Database
from controlplane.store.models import EventRow
from gatehouse.v1 import agent_pb2
from wire import jointoken
from wire.frames import HEADER, MAX_FRAME, FrameReader, encode

ROOT = Identity(subject="root", role=ADMIN)


class Leg:
    """An agent's side of one leg, by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = FrameReader(reader)

    def send(self, message: Any) -> None:
        self.writer.write(encode(message.SerializeToString()))

    async def welcome(self) -> agent_pb2.LegWelcome:
        frame = await asyncio.wait_for(self.frames.next(), 5)
        assert frame is not None, "the leg closed without a welcome"
        return agent_pb2.LegWelcome.FromString(frame)

    async def closed(self) -> bool:
        """Whether the control plane ends the connection (within a bound)."""
        rest = await asyncio.wait_for(self.reader.read(), 5)
        return rest == b""


@pytest.fixture
def tunnels() -> Tunnels:
    return Tunnels()


@pytest.fixture
async def listener(
    db: Database, writer: AuditWriter, tunnels: Tunnels
) -> AsyncIterator[tuple[LegListener, AgentRegistry]]:
    registry = AgentRegistry(db, writer)  # --dev: bearer credentials
    server = LegServer(registry, tunnels, AuthFailures(writer), max_frame=64 * 1024)
    async with serving(server) as legs:
        yield legs, registry


@contextlib.asynccontextmanager
async def serving(server: LegServer) -> AsyncIterator[LegListener]:
    legs = LegListener(server)
    legs.listen("127.0.0.1", 0)
    legs.start()
    try:
        yield legs
    finally:
        await legs.close()


async def dial(legs: LegListener) -> Leg:
    reader, writer = await asyncio.open_connection("127.0.0.1", legs.port)
    return Leg(reader, writer)


async def enrolled(registry: AgentRegistry, name: str = "edge") -> tuple[str, str]:
    """A --dev agent's credential and instance id."""
    created = await registry.create(name, ROOT)
    request = agent_pb2.EnrollRequest(
        join_token=jointoken.parse(created.join_token).secret, name=name, version="1.0"
    )
    got = await registry.enroll(request, "ipv4:127.0.0.1:1")
    assert got.credential
    return got.credential, got.instance_id


async def attached(
    legs: LegListener, registry: AgentRegistry, tunnels: Tunnels, session_id: str
) -> tuple[Leg, Tunnel]:
    """An enrolled agent's leg, welcomed, with session 1 attached to a client's tunnel."""
    credential, _ = await enrolled(registry)
    tunnel = tunnels.expect(session_id, "edge")
    leg = await dial(legs)
    leg.send(agent_pb2.LegHello(credential=credential, version="1.0"))
    assert (await leg.welcome()).refused == ""
    attach = agent_pb2.AgentEvent(session=1, attach=agent_pb2.SessionAttach(session_id=session_id))
    leg.send(agent_pb2.AgentBatch(events=[attach]))
    await asyncio.wait_for(tunnel.attached.wait(), 5)
    return leg, tunnel


async def failures(db: Database, writer: AuditWriter) -> list[dict[str, Any]]:
    await writer.commit(draft("test.marker"))
    rows = await db.read(
        lambda s: list(s.exec(select(EventRow).where(EventRow.type == "auth.fail")))
    )
    return [json.loads(row.body) for row in rows]


async def test_garbage_first_bytes_get_no_answer_and_a_closed_connection(
    listener: tuple[LegListener, AgentRegistry],
) -> None:
    legs, _ = listener
    leg = await dial(legs)
    leg.writer.write(b"GET / HTTP/1.1\r\nHost: gatehouse\r\n\r\n")
    assert await leg.closed()
    assert legs.server.open == 0


async def test_before_its_hello_is_checked_a_peer_cannot_make_us_buffer_a_large_frame(
    db: Database, writer: AuditWriter, tunnels: Tunnels
) -> None:
    """A batch may be 8 MiB; a hello may not: an unauthenticated peer announcing a frame over
    MAX_HELLO is closed before any of it is buffered."""
    server = LegServer(AgentRegistry(db, writer), tunnels, AuthFailures(writer))
    assert MAX_HELLO < MAX_FRAME
    async with serving(server) as legs:
        leg = await dial(legs)
        leg.writer.write(HEADER.pack(MAX_HELLO + 1) + b"\0" * 1024)
        assert await leg.closed()
        assert server.open == 0


async def test_an_unknown_or_revoked_agent_is_refused_and_recorded_as_auth_fail(
    listener: tuple[LegListener, AgentRegistry], db: Database, writer: AuditWriter
) -> None:
    legs, registry = listener
    leg = await dial(legs)
    leg.send(agent_pb2.LegHello(credential="gha_" + "x" * 40, version="1.0"))
    welcome = await leg.welcome()
    assert "unknown or was revoked" in welcome.refused
    assert await leg.closed()

    credential, instance = await enrolled(registry)
    assert await registry.revoke("edge", ROOT, instance) == [instance]
    leg = await dial(legs)
    leg.send(agent_pb2.LegHello(credential=credential, version="1.0"))
    assert "unknown or was revoked" in (await leg.welcome()).refused
    assert await leg.closed()

    failed = await failures(db, writer)
    assert [event["credential"] for event in failed] == ["agent_credential"] * len(failed)
    assert failed and all("unknown or was revoked" in event["reason"] for event in failed)


async def test_a_leg_dropped_mid_session_loses_the_session(
    listener: tuple[LegListener, AgentRegistry], tunnels: Tunnels
) -> None:
    leg, tunnel = await attached(*listener, tunnels, "s-1")
    leg.writer.transport.abort()  # the agent's host vanished: no end for the session
    assert await asyncio.wait_for(tunnel.to_client.get(), 5) is None
    assert tunnel.lost
    tunnels.discard(tunnel)


async def test_a_leg_that_breaks_after_another_replica_revoked_its_agent_ends_revoked(
    listener: tuple[LegListener, AgentRegistry], tunnels: Tunnels, db: Database, writer: AuditWriter
) -> None:
    """Revoked through another replica, the agent exits at once: its leg here may break
    before this replica hears of the revocation. Its sessions end as revoked (their clients
    told so), not as lost to an agent that died."""
    legs, registry = listener
    leg, tunnel = await attached(legs, registry, tunnels, "s-3")
    (instance,) = registry.held()
    other_replica = AgentRegistry(db, writer)  # same store, no notification to this one
    assert await other_replica.revoke("edge", ROOT, instance) == [instance]
    leg.writer.transport.abort()
    assert await asyncio.wait_for(tunnel.to_client.get(), 5) is None
    assert tunnel.revoked.is_set() and not tunnel.lost
    assert "serving this session was revoked" in tunnel.cut
    tunnels.discard(tunnel)


async def test_a_leg_that_breaks_while_the_store_does_not_answer_still_ends_its_sessions(
    listener: tuple[LegListener, AgentRegistry],
    tunnels: Tunnels,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whether the agent was revoked is asked of the store, which may hang (a partition that
    took the agent's leg may take the store too): the sessions end as lost, not never."""
    legs, registry = listener
    leg, tunnel = await attached(legs, registry, tunnels, "s-4")

    async def unanswered(instance_id: str) -> bool:
        await asyncio.Event().wait()
        return False

    monkeypatch.setattr(registry, "was_revoked", unanswered)
    monkeypatch.setattr(leg_module, "REVOCATION_CHECK_TIMEOUT", 0.1)
    leg.writer.transport.abort()
    assert await asyncio.wait_for(tunnel.to_client.get(), 5) is None
    assert tunnel.lost and not tunnel.revoked.is_set()
    tunnels.discard(tunnel)


async def test_a_frame_over_the_maximum_ends_the_leg_with_a_clear_log_line(
    listener: tuple[LegListener, AgentRegistry],
    tunnels: Tunnels,
    caplog: pytest.LogCaptureFixture,
) -> None:
    leg, tunnel = await attached(*listener, tunnels, "s-2")
    leg.writer.write(HEADER.pack(64 * 1024 + 1) + b"x" * 100)
    assert await asyncio.wait_for(tunnel.to_client.get(), 5) is None
    assert tunnel.lost
    while await leg.frames.next() is not None:  # what was queued for the agent, then the end
        pass
    assert "65537 bytes is over the maximum of 65536" in caplog.text
    tunnels.discard(tunnel)
