"""Exporting and verifying a trail of large events over gRPC: a page must fit in a message."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from cli import audit as cli_audit
from cli.errors import CliError
from controlplane.audit.events import draft
from controlplane.audit.service import AuditServicer
from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import AUDIT_READER, Identity
from controlplane.server import MAX_MESSAGE
from controlplane.store.database import Database
from gatehouse.v1 import audit_pb2_grpc
from tests.tampering import rewind


class Reader:
    async def require_role(self, metadata: Any, *roles: str) -> Identity:
        return Identity("siem", role=AUDIT_READER)


OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]


@pytest.fixture
async def address(db: Database, writer: AuditWriter) -> AsyncIterator[str]:
    """A control plane's AuditService, with its message limits, for a reader."""
    server = grpc.aio.server(options=OPTIONS)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(
        AuditServicer(Reader(), db, writer),  # type: ignore[arg-type]
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(None)


@pytest.fixture
async def channel(address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(address, options=OPTIONS) as chan:
        yield chan


async def test_a_trail_of_large_statements_exports_whole(
    writer: AuditWriter, channel: grpc.aio.Channel
) -> None:
    """40 statements of 512 KiB (a bulk INSERT's VALUES) are 20 MiB: more than one message."""
    statement = "INSERT INTO t VALUES " + "(1)," * (128 * 1024)
    await writer.commit_all(
        [draft("db.query", request={"statement": statement}) for _ in range(40)]
    )
    seqs = [e.seq async for e in cli_audit.events(channel, ())]
    assert seqs == list(range(1, 41))


@pytest.mark.parametrize("types", [None, ["db.query"]])
async def test_following_a_trail_of_large_statements_gets_every_one(
    writer: AuditWriter, address: str, types: list[str] | None
) -> None:
    """StreamEvents sends 500 events a message: 20 MiB of them must still arrive, in order."""
    statement = "INSERT INTO t VALUES " + "(1)," * (128 * 1024)
    await writer.commit_all(
        [draft("db.query", request={"statement": statement}) for _ in range(40)]
    )
    out = io.StringIO()
    printed = await asyncio.wait_for(
        cli_audit.follow_events(address, (), after=0, limit=40, types=types, out=out), 20
    )
    assert printed == 40
    assert [json.loads(line)["seq"] for line in out.getvalue().splitlines()] == list(range(1, 41))


@pytest.mark.parametrize("fmt", ["json", "ocsf"])
async def test_an_event_with_a_unicode_line_break_exports_as_one_line(
    writer: AuditWriter, channel: grpc.aio.Channel, fmt: str
) -> None:
    """`audit export` output read with str.splitlines: one line per event, in either format."""
    statement = "select 'a\u2028b\u2029c\u0085d'"
    await writer.commit_all([draft("db.query", request={"statement": statement}) for _ in "ab"])
    lines = [cli_audit.ndjson_line(e, fmt) async for e in cli_audit.events(channel, (), fmt=fmt)]
    read = "\n".join(lines).splitlines()
    assert len(read) == 2
    assert statement in json.dumps(json.loads(read[0]), ensure_ascii=False)


async def test_a_follow_stops_when_events_it_printed_are_replaced(
    db: Database, writer: AuditWriter, address: str, db_path: Path
) -> None:
    """A power loss of the machine that runs the store and the control plane may lose relaxed
    commits a follower already printed; the control plane started after it uses their seqs
    again (ADR 0026; one that lives on appends them again itself). The follower must say so,
    not go on as if nothing was missing."""
    for n in range(3):
        await writer.commit(draft("test.event", n=n))  # durable
    before = AuditWriter(db)  # the control plane that goes down with the machine
    before.start()
    for n in range(2):
        await (await before.submit(draft("db.result", ref=n)))  # relaxed: seq 4, 5
    await before.close()
    out = io.StringIO()
    follow = asyncio.create_task(
        cli_audit.follow_events(address, (), after=0, limit=10, types=None, out=out)
    )
    while out.getvalue().count("\n") < 5:
        assert not follow.done()
        await asyncio.sleep(0.05)
    rewind(db_path, 3)  # the crash lost seq 4 and 5
    for n in range(3):  # seq 4, 5, 6 again
        await writer.commit(draft("db.query", request={"statement": f"drop table t{n}"}))
    with pytest.raises(CliError, match="seq 6 does not continue seq 5"):
        await asyncio.wait_for(follow, 20)
    assert "drop table" not in out.getvalue()
