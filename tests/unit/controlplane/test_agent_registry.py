"""Agents' last-seen: kept in memory, written in batches, never a transaction per heartbeat."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import pytest
from sqlmodel import Session, select

from controlplane.agents import registry as registry_module
from controlplane.agents.registry import AgentLink, AgentRegistry
from controlplane.audit.events import as_utc, utc_now
from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import Identity
from controlplane.errors import Unavailable
from controlplane.store.database import Database
from controlplane.store.models import AgentInstanceRow, AgentRow
from gatehouse.v1 import agent_pb2

T = TypeVar("T")


class CountingWrites:
    """Counts the registry's write transactions (the audit writer has its own path)."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        self.fail = False
        self._write = db.write

    async def __call__(self, fn: Callable[[Session], T]) -> T:
        self.count += 1
        if self.fail:
            raise OSError("the disk is gone")
        return await self._write(fn)


@pytest.fixture
def writes(db: Database, monkeypatch: pytest.MonkeyPatch) -> CountingWrites:
    counting = CountingWrites(db)
    monkeypatch.setattr(db, "write", counting)
    return counting


def enrolled(db: Database, count: int) -> list[AgentInstanceRow]:
    now = utc_now() - timedelta(days=1)
    agents = [
        AgentRow(id=str(uuid.uuid4()), name=f"edge-{i}", created_at=now, enrolled_at=now)
        for i in range(count)
    ]
    instances = [
        AgentInstanceRow(
            id=f"i{i}",
            agent_id=agent.id,
            name=agent.name,
            credential_hash=f"hash-{i}",
            enrolled_at=now,
        )
        for i, agent in enumerate(agents)
    ]

    with db.write_session() as session, session.begin():  # not counted: not the registry's
        session.add_all(agents)
        session.flush()
        session.add_all(instances)
    return instances


async def connect(
    registry: AgentRegistry, row: AgentInstanceRow, version: str = "1.2.3"
) -> AgentLink:
    hello = agent_pb2.Hello(name=row.name, version=version, hostname=f"host-{row.name}")
    return await registry.connected(row, hello, "ipv4:127.0.0.1:1")


async def stored(db: Database) -> dict[str, AgentInstanceRow]:
    rows: list[AgentInstanceRow] = await db.read(lambda s: list(s.exec(select(AgentInstanceRow))))
    return {row.name: row for row in rows}


async def test_heartbeats_are_stored_in_one_transaction_per_flush(
    db: Database, writer: AuditWriter, writes: CountingWrites
) -> None:
    rows = enrolled(db, 50)
    registry = AgentRegistry(db, writer)
    links = [await connect(registry, row) for row in rows]
    for _ in range(3):
        for link in links:
            registry.heartbeat(link)
    assert writes.count == 0  # neither connecting nor a heartbeat writes on its own

    await registry.flush()
    assert writes.count == 1
    after = await stored(db)
    for link in links:
        row = after[link.name]
        assert row.last_seen is not None and as_utc(row.last_seen) == link.last_seen
        assert (row.version, row.hostname) == ("1.2.3", f"host-{link.name}")

    await registry.flush()  # nothing changed: no transaction
    assert writes.count == 1


async def test_the_list_shows_the_in_memory_last_seen_before_any_flush(
    db: Database, writer: AuditWriter, writes: CountingWrites
) -> None:
    (row,) = enrolled(db, 1)
    registry = AgentRegistry(db, writer)
    link = await connect(registry, row)
    registry.heartbeat(link)

    (status,) = await registry.statuses()
    assert status.status == "online"
    assert status.last_seen == link.last_seen
    assert (status.version, status.hostname) == ("1.2.3", "host-edge-0")
    assert writes.count == 0
    assert (await stored(db))["edge-0"].last_seen is None  # the store is behind, by design


async def test_a_disconnect_stores_last_seen_at_once(
    db: Database, writer: AuditWriter, writes: CountingWrites
) -> None:
    (row,) = enrolled(db, 1)
    registry = AgentRegistry(db, writer)
    link = await connect(registry, row, version="2.0.0")
    await registry.disconnected(link)

    stored_row = (await stored(db))["edge-0"]
    assert stored_row.last_seen is not None and as_utc(stored_row.last_seen) == link.last_seen
    assert stored_row.version == "2.0.0"
    (status,) = await registry.statuses()
    assert status.status == "offline"
    assert status.last_seen is not None and as_utc(status.last_seen) == link.last_seen


async def test_many_disconnecting_together_share_a_few_transactions(
    db: Database, writer: AuditWriter, writes: CountingWrites
) -> None:
    rows = enrolled(db, 200)
    registry = AgentRegistry(db, writer)
    links = [await connect(registry, row) for row in rows]
    await asyncio.gather(*(registry.disconnected(link) for link in links))

    assert writes.count <= 3
    assert all(row.last_seen is not None for row in (await stored(db)).values())


async def test_a_replaced_connection_does_not_overwrite_the_newer_one(
    db: Database, writer: AuditWriter, writes: CountingWrites
) -> None:
    (row,) = enrolled(db, 1)
    registry = AgentRegistry(db, writer)
    old = await connect(registry, row, version="1.0.0")
    new = await connect(registry, row, version="2.0.0")
    await registry.disconnected(old)
    await registry.flush()

    assert registry.links("edge-0") == [new]
    assert (await stored(db))["edge-0"].version == "2.0.0"


async def test_a_failed_flush_keeps_the_values_for_the_next_one(
    db: Database,
    writer: AuditWriter,
    writes: CountingWrites,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry_module, "FLUSH_EVERY", 0.05)
    (row,) = enrolled(db, 1)
    registry = AgentRegistry(db, writer)
    link = await connect(registry, row)
    writes.fail = True
    await registry.disconnected(link)  # logged, not raised: the disconnect is still audited
    assert (await stored(db))["edge-0"].last_seen is None
    (status,) = await registry.statuses()
    assert status.last_seen == link.last_seen  # still shown from memory

    writes.fail = False
    deadline = time.monotonic() + 30  # generous: a loaded machine delays the timer, not the rule
    while time.monotonic() < deadline:  # the timer retries on its own
        await asyncio.sleep(0.05)
        if (await stored(db))["edge-0"].last_seen is not None:
            break
    stored_row = (await stored(db))["edge-0"]
    assert stored_row.last_seen is not None and as_utc(stored_row.last_seen) == link.last_seen


async def test_the_timer_flushes_without_being_asked(
    db: Database, writer: AuditWriter, writes: CountingWrites, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "FLUSH_EVERY", 0.05)
    rows = enrolled(db, 3)
    registry = AgentRegistry(db, writer)
    for row in rows:
        await connect(registry, row)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if all(row.last_seen is not None for row in (await stored(db)).values()):
            break
    assert all(row.last_seen is not None for row in (await stored(db)).values())
    # One write per timer tick for whatever changed since the last (not one per agent); a
    # loaded machine may split the three connects over two ticks.
    flushed = writes.count
    assert 1 <= flushed <= 2
    await asyncio.sleep(0.2)  # nothing pending: the timer does not spin
    assert writes.count == flushed


async def test_send_queues_at_once_and_fails_only_when_the_agent_does_not_read(
    db: Database, writer: AuditWriter
) -> None:
    (row,) = enrolled(db, 1)
    link = await connect(AgentRegistry(db, writer), row)
    message = agent_pb2.ControlMessage(policy=agent_pb2.Policy(version=1))
    for _ in range(link.outbox.maxsize):
        await link.send(message)
    with pytest.raises(Unavailable, match="not reading its control stream"):
        await link.send(message, timeout=0.05)
    link.outbox.get_nowait()
    await link.send(message, timeout=0.05)  # room again
    link.close("test")
    with pytest.raises(Unavailable, match="offline"):
        await link.send(message)


async def pool(db: Database, name: str, size: int) -> list[AgentInstanceRow]:
    """`size` instances enrolled under one agent name."""
    now = utc_now()
    agent = AgentRow(id=str(uuid.uuid4()), name=name, created_at=now, enrolled_at=now)
    rows = [
        AgentInstanceRow(
            id=f"{name}-{i}",
            agent_id=agent.id,
            name=name,
            credential_hash=f"{name}-{i}",
            enrolled_at=now,
        )
        for i in range(size)
    ]

    def add(session: Session) -> None:
        session.add(agent)
        session.flush()
        session.add_all(rows)

    await db.write(add)
    return rows


async def test_instances_of_one_name_stay_connected_together_and_take_turns(
    db: Database, writer: AuditWriter
) -> None:
    rows = await pool(db, "vpc", 3)
    registry = AgentRegistry(db, writer)
    links = [await connect(registry, row) for row in rows]
    assert not any(link.closed.is_set() for link in links)  # nobody knocked off
    assert {s.instance_id: s.status for s in await registry.statuses()} == {
        row.id: "online" for row in rows
    }
    chosen = [(await registry.route("vpc")).instance_id for _ in range(9)]
    assert sorted(chosen) == sorted([row.id for row in rows] * 3)  # each gets its third

    order = agent_pb2.OpenSession(session_id="s1", connection="pg")
    route = await registry.route("vpc")
    await registry.order(route, order)
    (target,) = [link for link in links if link.instance_id == route.instance_id]
    assert target.outbox.get_nowait().open_session.session_id == "s1"


async def test_revoking_one_instance_cuts_only_its_streams(
    db: Database, writer: AuditWriter
) -> None:
    rows = await pool(db, "vpc", 2)
    registry = AgentRegistry(db, writer)
    first, second = [await connect(registry, row) for row in rows]
    sessions = [registry.revocation(row.id) for row in rows]
    root = Identity(subject="root", role="admin")
    assert await registry.revoke("vpc", root, rows[0].id) == [rows[0].id]
    assert first.closed.is_set() and first.close_reason == "the agent was revoked"
    assert sessions[0].is_set()
    assert not second.closed.is_set() and not sessions[1].is_set()
    await registry.disconnected(first)
    for _ in range(4):
        assert (await registry.route("vpc")).instance_id == rows[1].id

    assert await registry.revoke("vpc", root) == [r.id for r in rows]
    assert second.closed.is_set() and sessions[1].is_set()


async def test_a_missed_revocation_is_found_by_the_recheck(
    db: Database, writer: AuditWriter
) -> None:
    rows = await pool(db, "vpc", 2)
    registry = AgentRegistry(db, writer)
    first, second = [await connect(registry, row) for row in rows]
    held = registry.revocation(rows[0].id)

    def revoke_behind_its_back(session: Session) -> None:  # as another replica does
        row = session.get(AgentInstanceRow, rows[0].id)
        assert row is not None
        row.revoked_at = utc_now()
        session.add(row)

    await db.write(revoke_behind_its_back)
    await registry.recheck()
    assert first.closed.is_set() and held.is_set()
    assert not second.closed.is_set()


async def test_an_offline_agent_is_refused_with_what_to_do(
    db: Database, writer: AuditWriter
) -> None:
    await pool(db, "vpc", 1)
    registry = AgentRegistry(db, writer)
    with pytest.raises(Unavailable, match="agents list"):
        await registry.route("vpc")


async def test_an_instance_revoked_while_it_was_being_authenticated_is_cut_when_it_registers(
    db: Database, writer: AuditWriter
) -> None:
    """Its credential was checked before the revocation, its stream registers after it: the
    control stream is closed and its session legs' revocation is already set."""
    rows = await pool(db, "vpc", 2)
    registry = AgentRegistry(db, writer)
    root = Identity(subject="root", role="admin")
    assert await registry.revoke("vpc", root, rows[0].id) == [rows[0].id]
    first, second = [await connect(registry, row) for row in rows]
    assert first.closed.is_set() and first.close_reason == "the agent was revoked"
    assert registry.revocation(rows[0].id).is_set()
    assert not second.closed.is_set() and not registry.revocation(rows[1].id).is_set()
