"""`gatehouse audit export | verify`: pull the trail in seq order; verify it without trusting
the server (the chain is recomputed here from the stored canonical bodies)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from typing import Annotated, Any

import grpc
import typer

from cli.errors import CliError
from cli.options import ControlplaneOpt, OutputOpt, call
from cli.output import Format, emit_json
from controlplane.audit.chain import ChainReport, verify_chain
from gatehouse.v1 import audit_pb2, audit_pb2_grpc

PAGE = 1000

audit_app = typer.Typer(help="Export and verify the audit trail.", no_args_is_help=True)


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


async def export_events(
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


async def verify_store(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]
) -> ChainReport:
    triples = [(e.seq, e.body, e.hash) async for e in events(channel, metadata)]
    return verify_chain(triples)


@audit_app.command("export")
def audit_export(
    after: Annotated[int, typer.Option(help="Start after this seq (the cursor).")] = 0,
    limit: Annotated[int | None, typer.Option(help="At most this many events.")] = None,
    types: Annotated[
        str | None, typer.Option(help="Comma-separated event types, e.g. db.query,db.result.")
    ] = None,
    controlplane: ControlplaneOpt = None,
) -> None:
    """Print audit events as NDJSON, in seq order.

    Example: gatehouse audit export --after 1042 --limit 100
    """
    from cli import rpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()
    kinds = [t.strip() for t in types.split(",") if t.strip()] if types else None

    async def work(channel: Any) -> int:
        return await export_events(channel, md, after=after, limit=limit, types=kinds)

    call(address, work)


@audit_app.command("verify")
def audit_verify(controlplane: ControlplaneOpt = None, output: OutputOpt = Format.table) -> None:
    """Walk the hash chain; exit 1 naming the first broken link.

    Example: gatehouse audit verify
    """
    from cli import rpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        return await verify_store(channel, md)

    report = call(address, work)
    broken = report.broken
    document = {
        "ok": broken is None,
        "checked": report.checked,
        "last_seq": report.last_seq,
        "last_hash": report.last_hash,
        "broken": None if broken is None else {"seq": broken.seq, "reason": broken.reason},
    }
    if output is Format.json:
        emit_json(document)
    elif broken is None:
        typer.echo(f"ok: {report.checked} events, chain intact up to seq {report.last_seq}")
    if broken is not None:
        raise CliError(f"chain broken at seq {broken.seq}: {broken.reason}")
