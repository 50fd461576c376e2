"""A join token's uses hold when replicas enroll with it at once, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime

from controlplane.agents.certificates import AgentCertificates
from controlplane.agents.registry import AgentRegistry
from controlplane.audit.writer import AuditWriter
from controlplane.errors import PermissionDenied
from controlplane.store.database import Database
from tests.integration.store.conftest import Store
from tests.unit.controlplane.test_agent_enrollment import ROOT, SmallCA, request

REPLICAS = 4


async def test_replicas_enrolling_at_once_never_spend_more_uses_than_the_token_has(
    store: Store, db: Database
) -> None:
    ca = SmallCA()
    replicas = [db] + [Database(store.url) for _ in range(REPLICAS - 1)]
    writers = [AuditWriter(d) for d in replicas]
    for writer in writers:
        writer.start()
    try:
        registries = [
            AgentRegistry(d, w, AgentCertificates(ca, datetime.timedelta(minutes=5)))
            for d, w in zip(replicas, writers, strict=True)
        ]
        created = await registries[0].create("edge", ROOT, uses=2)
        results = await asyncio.gather(
            *(
                registries[i % REPLICAS].enroll(request(created.join_token), f"ipv4:10.0.0.{i}:1")
                for i in range(12)
            ),
            return_exceptions=True,
        )
    finally:
        for writer in writers:
            await writer.close()
        for replica in replicas[1:]:
            replica.dispose()
    enrolled = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, PermissionDenied)]
    assert len(enrolled) == 2, results
    assert len(refused) == 10, results
