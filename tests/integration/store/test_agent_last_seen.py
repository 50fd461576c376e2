"""Agents' batched last-seen on every store: one statement for the fleet, values exact in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlmodel import Session, select

from controlplane.agents.registry import AgentRegistry
from controlplane.audit.writer import AuditWriter
from controlplane.store.database import Database
from controlplane.store.models import AgentInstanceRow, AgentRow
from gatehouse.v1 import agent_pb2


async def test_a_flush_stores_every_agents_last_seen_version_and_host(db: Database) -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    agents = [
        AgentRow(id=f"a{i}", name=f"edge-{i}", created_at=created, enrolled_at=created)
        for i in range(3)
    ]
    rows = [
        AgentInstanceRow(id=f"i{i}", agent_id=a.id, name=a.name, enrolled_at=created)
        for i, a in enumerate(agents)
    ]

    def add(session: Session) -> None:
        session.add_all(agents)
        session.flush()
        session.add_all(rows)

    await db.write(add)
    writer = AuditWriter(db)
    writer.start()
    try:
        registry = AgentRegistry(db, writer)
        links = []
        for row in rows[:2]:
            hello = agent_pb2.Hello(name=row.name, version="9.9.9", hostname=f"h-{row.name}")
            links.append(await registry.connected(row, hello, "ipv4:127.0.0.1:1"))
        # A moment from another zone, with microseconds: stored in UTC, exactly.
        links[0].last_seen = datetime(
            2026, 11, 27, 12, 0, 1, 654321, tzinfo=timezone(timedelta(hours=-5))
        )
        registry.heartbeat(links[1])
        await registry.flush()
    finally:
        await writer.close()

    stored = {
        row.name: row
        for row in await db.read(
            lambda s: list(s.exec(select(AgentInstanceRow).order_by(AgentInstanceRow.name)))
        )
    }
    first = stored["edge-0"]
    assert first.last_seen is not None
    assert first.last_seen.isoformat().replace("+00:00", "") == "2026-11-27T17:00:01.654321"
    assert (first.version, first.hostname) == ("9.9.9", "h-edge-0")
    second = stored["edge-1"]
    assert second.last_seen is not None
    assert second.last_seen.replace(tzinfo=UTC) == links[1].last_seen
    assert stored["edge-2"].last_seen is None  # never connected: untouched
