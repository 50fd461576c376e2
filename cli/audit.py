"""`gatehouse audit export | verify | checkpoint | public-key | prune`.

Export pulls (or follows) the trail in seq order. Verify never trusts the server: it
recomputes the chain here from the canonical bodies and checks every checkpoint's Ed25519
signature and what it vouches for, from the store or offline from an exported file.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import AsyncIterator, Iterable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import grpc
import typer

from cli.errors import USAGE, CliError
from cli.options import ControlplaneOpt, OutputOpt, call, run
from cli.output import Format, emit_json
from controlplane.audit.chain import export_line
from gatehouse.v1 import audit_pb2, audit_pb2_grpc

if TYPE_CHECKING:
    from controlplane.audit.checkpoints import TrailReport, TrailVerifier

PAGE = 1000
Metadata = tuple[tuple[str, str], ...]
# Follow mode: what a broken stream waits before it reconnects (doubling, with jitter).
RECONNECT_FIRST = 0.5
RECONNECT_MAX = 10.0
# A stream that ends with one of these will not do better on a retry.
FINAL_CODES = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
)

audit_app = typer.Typer(
    help="Export, follow, verify, sign and prune the audit trail.", no_args_is_help=True
)


class ExportFormat(StrEnum):
    json = "json"
    ocsf = "ocsf"


async def events(
    channel: grpc.aio.Channel,
    metadata: Metadata,
    *,
    after: int = 0,
    limit: int | None = None,
    types: list[str] | None = None,
    fmt: str = "",
) -> AsyncIterator[audit_pb2.AuditEvent]:
    """Every event with seq > after, page by page, in order."""
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    remaining = limit
    while remaining is None or remaining > 0:
        page = PAGE if remaining is None else min(PAGE, remaining)
        request = audit_pb2.ListEventsRequest(
            after=after, limit=page, types=types or [], format=fmt
        )
        response = await stub.ListEvents(request, metadata=metadata, timeout=30)
        for event in response.events:
            yield event
        if remaining is not None:
            remaining -= len(response.events)
        if len(response.events) < page:
            return
        after = response.next


def ndjson_line(event: audit_pb2.AuditEvent, fmt: str = "json") -> str:
    """The exported form: the stored body with its hash added (or the server's OCSF object)."""
    if fmt == ExportFormat.ocsf:
        return event.formatted
    return export_line(event.body, event.hash)


async def export_events(
    channel: grpc.aio.Channel,
    metadata: Metadata,
    *,
    after: int,
    limit: int | None,
    types: list[str] | None,
    fmt: str = "json",
) -> int:
    count = 0
    async for event in events(channel, metadata, after=after, limit=limit, types=types, fmt=fmt):
        sys.stdout.write(ndjson_line(event, fmt) + "\n")
        count += 1
    sys.stdout.flush()
    return count


async def follow_events(
    address: str,
    metadata: Metadata,
    *,
    after: int,
    limit: int | None,
    types: list[str] | None,
    fmt: str = "json",
    out: TextIO = sys.stdout,
) -> int:
    """Print events as they commit, for ever (or `limit` of them).

    When the stream breaks (a control-plane restart, a network cut), wait with backoff and
    resume after the last seq printed: every event is printed exactly once, in order. Each
    attempt opens a fresh channel, so a long outage does not leave us waiting on the
    channel's own reconnect backoff.
    """
    from cli import rpc

    last, printed, delay = after, 0, RECONNECT_FIRST
    while True:
        try:
            async with rpc.channel(address) as channel:
                stub = audit_pb2_grpc.AuditServiceStub(channel)
                request = audit_pb2.StreamEventsRequest(after=last, types=types or [], format=fmt)
                stream = stub.StreamEvents(request, metadata=metadata)
                await stream.initial_metadata()  # the server took the subscription
                delay = RECONNECT_FIRST
                async for response in stream:
                    for event in response.events:
                        if event.seq <= last:
                            continue  # never print twice, whatever the server sends
                        out.write(ndjson_line(event, fmt) + "\n")
                        last, printed = event.seq, printed + 1
                        if limit is not None and printed >= limit:
                            out.flush()
                            return printed
                    out.flush()
            reason = "the stream ended"
        except grpc.aio.AioRpcError as exc:
            if exc.code() in FINAL_CODES:
                with rpc.explained(address):
                    raise
            reason = _stream_break(exc, address)
        pause = delay * random.uniform(1.0, 1.5)
        sys.stderr.write(
            f"gatehouse: {reason}; reconnecting in {pause:.1f} s, resuming after seq {last}\n"
        )
        sys.stderr.flush()
        await asyncio.sleep(pause)
        delay = min(delay * 2, RECONNECT_MAX)


def _stream_break(exc: grpc.aio.AioRpcError, address: str) -> str:
    details = exc.details() or exc.code().name
    if exc.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details.lower():
        return f"cannot reach the control plane at {address}"
    return details


def _kinds(types: str | None) -> list[str] | None:
    return [t.strip() for t in types.split(",") if t.strip()] if types else None


@audit_app.command("export")
def audit_export(
    after: Annotated[int, typer.Option(help="Start after this seq (the cursor).")] = 0,
    limit: Annotated[int | None, typer.Option(help="At most this many events.")] = None,
    types: Annotated[
        str | None, typer.Option(help="Comma-separated event types, e.g. db.query,db.result.")
    ] = None,
    fmt: Annotated[
        ExportFormat,
        typer.Option("--format", help="json (stored events) or ocsf.", case_sensitive=False),
    ] = ExportFormat.json,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep printing new events; reconnect and resume on breaks."
        ),
    ] = False,
    controlplane: ControlplaneOpt = None,
) -> None:
    """Print audit events as NDJSON, in seq order.

    Example: gatehouse audit export --after 1042 --follow >> trail.ndjson
    """
    from cli import rpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()
    kinds = _kinds(types)
    if follow:
        run(follow_events(address, md, after=after, limit=limit, types=kinds, fmt=fmt.value))
        return

    async def work(channel: Any) -> int:
        return await export_events(
            channel, md, after=after, limit=limit, types=kinds, fmt=fmt.value
        )

    call(address, work)


def _read_keys(paths: Iterable[Path]) -> dict[str, Any]:
    from controlplane.audit.checkpoints import SigningKeyError, keyring, load_public_key

    keys = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read the key {path}: {exc.strerror}", USAGE) from None
        try:
            keys.append(load_public_key(data, str(path)))
        except SigningKeyError as exc:
            raise CliError(str(exc), USAGE) from None
    return keyring(keys)


async def verify_store(
    channel: grpc.aio.Channel, metadata: Metadata, keys: dict[str, Any] | None = None
) -> TrailReport:
    """Walk the stored trail from genesis, or from the newest prune anchor once its signature
    is checked, with the given keys or the one the server reports."""
    from controlplane.audit.checkpoints import (
        SigningKeyError,
        Start,
        TrailVerifier,
        anchor_start,
        keyring,
        load_public_key,
    )

    stub = audit_pb2_grpc.AuditServiceStub(channel)
    if not keys:
        reported = await stub.GetPublicKey(
            audit_pb2.GetPublicKeyRequest(), metadata=metadata, timeout=30
        )
        try:
            keys = keyring([load_public_key(reported.public_key_pem.encode(), "the server's key")])
        except SigningKeyError as exc:
            raise CliError(str(exc)) from None
    found = await stub.GetAnchor(audit_pb2.GetAnchorRequest(), metadata=metadata, timeout=30)
    start = Start.genesis()
    if found.HasField("anchor"):
        anchor = found.anchor
        document = {
            "seq": anchor.seq,
            "hash": anchor.hash,
            "key_id": anchor.key_id,
            "signature": anchor.signature,
        }
        try:
            start = anchor_start(keys, document)
        except ValueError as exc:
            raise CliError(f"chain broken at seq {anchor.seq}: {exc}") from None
    verifier = TrailVerifier(keys, start)
    async for event in events(channel, metadata, after=start.seq):
        if not verifier.add_stored(event.seq, event.body, event.hash):
            break
    return verifier.report()


def verify_file(handle: TextIO, keys: dict[str, Any]) -> TrailReport:
    """Walk an export (`gatehouse audit export` lines) offline."""
    from controlplane.audit.checkpoints import TrailVerifier

    verifier: TrailVerifier = TrailVerifier(keys)
    for number, line in enumerate(handle, start=1):
        if not verifier.add_line(number, line):
            break
    return verifier.report()


@audit_app.command("verify")
def audit_verify(
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", help="Verify this export (NDJSON, `-` for stdin) offline, not the store."
        ),
    ] = None,
    key: Annotated[
        list[Path] | None,
        typer.Option(
            "--key",
            help="Public key(s) checkpoints must verify with (PEM, from `audit public-key`); "
            "with the store, default: the key the server reports.",
        ),
    ] = None,
    controlplane: ControlplaneOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Walk the hash chain and check every signed checkpoint; exit 1 naming the first broken
    link or bad signature.

    Example: gatehouse audit verify --file trail.ndjson --key pub.pem
    """
    keys = _read_keys(key or [])
    if file is not None:
        if not keys:
            raise CliError(
                "--file needs --key PEM: the public key from `gatehouse audit public-key`", USAGE
            )
        if str(file) == "-":
            report = verify_file(sys.stdin, keys)
        else:
            try:
                with file.open(encoding="utf-8") as handle:
                    report = verify_file(handle, keys)
            except OSError as exc:
                raise CliError(f"cannot read {file}: {exc.strerror}", USAGE) from None
            except UnicodeDecodeError:
                raise CliError(f"{file} is not UTF-8 text: not an export") from None
    else:
        from cli import rpc

        address = rpc.controlplane_address(controlplane)
        md = rpc.metadata()

        async def work(channel: Any) -> TrailReport:
            return await verify_store(channel, md, keys)

        report = call(address, work)
    _print_report(report, output)


def _print_report(report: TrailReport, output: Format) -> None:
    broken = report.broken
    start = report.start
    document = {
        "ok": report.ok,
        "checked": report.checked,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "last_hash": report.last_hash,
        "start": None
        if start is None
        else {"seq": start.seq, "hash": start.hash, "vouched_by": start.vouched_by or None},
        "checkpoints": report.checkpoints,
        "signed_through": report.signed_through,
        "broken": None if broken is None else {"seq": broken.seq, "reason": broken.reason},
        "unverified": report.unvouched,
    }
    if output is Format.json:
        emit_json(document)
    elif report.ok:
        if not report.checked:
            typer.echo("ok: no events")
        else:
            unsigned = report.last_seq - report.signed_through
            typer.echo(
                f"ok: {report.checked} events, chain intact up to seq {report.last_seq} "
                f"(from seq {report.first_seq}, vouched for by "
                f"{start.vouched_by if start else 'nothing'}); {report.checkpoints} signed "
                f"checkpoints verified, signed through seq {report.signed_through}, "
                f"{unsigned} event{'' if unsigned == 1 else 's'} after it"
            )
    if broken is not None:
        raise CliError(f"chain broken at seq {broken.seq}: {broken.reason}")
    if report.unvouched is not None:
        raise CliError(f"not verified: {report.unvouched}")


@audit_app.command("checkpoint")
def audit_checkpoint(
    controlplane: ControlplaneOpt = None, output: OutputOpt = Format.table
) -> None:
    """Append a signed checkpoint of the trail now (admin). Keep its output: it vouches for
    everything up to it.

    Example: gatehouse audit checkpoint -o json >> checkpoints.ndjson
    """
    from cli import rpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: grpc.aio.Channel) -> audit_pb2.CheckpointResponse:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        return await stub.Checkpoint(audit_pb2.CheckpointRequest(), metadata=md, timeout=30)

    made = call(address, work)
    if output is Format.json:
        emit_json(
            {
                "event_seq": made.event_seq,
                "seq": made.seq,
                "hash": made.hash,
                "key_id": made.key_id,
                "signature": made.signature,
            }
        )
        return
    typer.echo(
        f"checkpoint at seq {made.event_seq}: vouches for seq {made.seq} (hash {made.hash}), "
        f"signed by key {made.key_id}"
    )


@audit_app.command("public-key")
def audit_public_key(
    controlplane: ControlplaneOpt = None, output: OutputOpt = Format.table
) -> None:
    """Print the Ed25519 public key that signs checkpoints and prune anchors (PEM).

    Example: gatehouse audit public-key > pub.pem
    """
    from cli import rpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: grpc.aio.Channel) -> audit_pb2.GetPublicKeyResponse:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        return await stub.GetPublicKey(audit_pb2.GetPublicKeyRequest(), metadata=md, timeout=30)

    key = call(address, work)
    if output is Format.json:
        emit_json(
            {"key_id": key.key_id, "algorithm": key.algorithm, "public_key_pem": key.public_key_pem}
        )
        return
    sys.stdout.write(key.public_key_pem)


@audit_app.command("prune")
def audit_prune(
    before: Annotated[
        str,
        typer.Option(
            "--before",
            help="Remove every event up to the last one older than this date (YYYY-MM-DD, "
            "UTC) or RFC 3339 time.",
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")
    ] = False,
    controlplane: ControlplaneOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Remove an old range of the trail (admin), leaving a signed anchor so that what remains
    still verifies, and an audit.prune event saying who removed what.

    Example: gatehouse audit prune --before 2026-01-01 --dry-run
    """
    from cli import rpc
    from controlplane.audit.checkpoints import parse_cutoff

    try:
        parse_cutoff(before)
    except ValueError as exc:
        raise CliError(str(exc), USAGE) from None
    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: grpc.aio.Channel) -> audit_pb2.PruneResponse:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        request = audit_pb2.PruneRequest(before=before, dry_run=dry_run)
        return await stub.Prune(request, metadata=md, timeout=600)

    result = call(address, work)
    anchor = result.anchor if result.HasField("anchor") else None
    if output is Format.json:
        emit_json(
            {
                "dry_run": dry_run,
                "first_seq": result.first_seq,
                "through_seq": result.through_seq,
                "removed": result.removed,
                "event_seq": result.event_seq or None,
                "anchor": None
                if anchor is None
                else {
                    "seq": anchor.seq,
                    "hash": anchor.hash,
                    "key_id": anchor.key_id,
                    "signature": anchor.signature,
                    "pruned_at": anchor.pruned_at,
                    "pruned_by": anchor.pruned_by,
                },
            }
        )
    elif not result.removed:
        typer.echo(f"nothing to prune: no event is older than {before}")
    elif dry_run:
        typer.echo(
            f"would remove {result.removed} events, seq {result.first_seq}..{result.through_seq}"
        )
    else:
        typer.echo(
            f"removed {result.removed} events, seq {result.first_seq}..{result.through_seq}; "
            f"the trail now starts after the signed anchor at seq {result.through_seq}; "
            f"recorded as seq {result.event_seq}"
        )
