"""`gatehouse audit export | verify`: pull the trail in seq order; verify it without trusting
the server (the chain is recomputed here from the stored canonical bodies)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator

import grpc

from controlplane.audit.chain import ChainReport, verify_chain
from gatehouse.v1 import audit_pb2, audit_pb2_grpc

PAGE = 1000


async def events(
    channel: grpc.aio.Channel,
    metadata: tuple[tuple[str, str], ...],
    *,
    after: int = 0,
    limit: int | None = None,
    types: list[str] | None = None,
) -> AsyncIterator[audit_pb2.AuditEvent]:
    """Every event with seq > after, page by page, in order."""
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    remaining = limit
    while remaining is None or remaining > 0:
        page = PAGE if remaining is None else min(PAGE, remaining)
        request = audit_pb2.ListEventsRequest(after=after, limit=page, types=types or [])
        response = await stub.ListEvents(request, metadata=metadata, timeout=30)
        for event in response.events:
            yield event
        if remaining is not None:
            remaining -= len(response.events)
        if len(response.events) < page:
            return
        after = response.next


def ndjson_line(event: audit_pb2.AuditEvent) -> str:
    """The exported form: the stored body with its hash added."""
    body = json.loads(event.body)
    body["hash"] = event.hash
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


async def export(
    channel: grpc.aio.Channel,
    metadata: tuple[tuple[str, str], ...],
    *,
    after: int,
    limit: int | None,
    types: list[str] | None,
) -> int:
    count = 0
    async for event in events(channel, metadata, after=after, limit=limit, types=types):
        sys.stdout.write(ndjson_line(event) + "\n")
        count += 1
    sys.stdout.flush()
    return count


async def verify(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> ChainReport:
    triples = [(e.seq, e.body, e.hash) async for e in events(channel, metadata)]
    return verify_chain(triples)
