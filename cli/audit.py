"""`gatehouse audit export | verify | checkpoint | public-key | prune [approve]`.

Export pulls (or follows) the trail in seq order. Verify never trusts the server: it
recomputes the chain here from the canonical bodies and checks every checkpoint's Ed25519
signature and what it vouches for, from the store or offline from an exported file; it says
how far the signatures reach, and with a witness file, whether the store was rewound.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import grpc

from cli.errors import USAGE, CliError
from cli.output import Format, echo, emit_json
from cli.rpc import call, run
from gatehouse.v1 import audit_pb2, audit_pb2_grpc
from trail.chain import export_line

if TYPE_CHECKING:
    from trail.verify import TailAllowance, TrailReport, TrailVerifier
    from trail.witness import WitnessEntry, WitnessReport

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


async def events(
    channel: grpc.aio.Channel,
    metadata: Metadata,
    *,
    after: int = 0,
    limit: int | None = None,
    types: list[str] | None = None,
    fmt: str = "",
) -> AsyncIterator[audit_pb2.AuditEvent]:
    """Every event with seq > after, page by page, in order.

    A page of large events (bulk statements) can exceed the largest gRPC message: the server
    then refuses it with RESOURCE_EXHAUSTED, and the same page is asked for again half as long
    (down to one event), or the export and `audit verify` could never get past it.
    """
    stub = audit_pb2_grpc.AuditServiceStub(channel)
    remaining = limit
    size = PAGE
    while remaining is None or remaining > 0:
        page = size if remaining is None else min(size, remaining)
        request = audit_pb2.ListEventsRequest(
            after=after, limit=page, types=types or [], format=fmt
        )
        try:
            response = await stub.ListEvents(request, metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or page == 1:
                raise
            size = max(1, page // 2)
            continue
        for event in response.events:
            yield event
        if remaining is not None:
            remaining -= len(response.events)
        if len(response.events) < page:
            return
        after = response.next


def ndjson_line(event: audit_pb2.AuditEvent, fmt: str = "json") -> str:
    """The exported form: the stored body with its hash added (or the server's OCSF object)."""
    if fmt == "ocsf":
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

    Without a type filter, each event must link to the one this follow printed before it
    (`prev_hash`, docs/decisions/0006): an event printed and then lost by the store (a relaxed
    commit a crash took, its seq reused) or rewritten stops the follow with an error, rather
    than the events after it being printed as if nothing was missing.
    """
    from cli import rpc

    last, printed, delay = after, 0, RECONNECT_FIRST
    linked: str | None = None  # the hash of `last`, once this follow printed it
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
                        if linked is not None:
                            _check_link(event, last, linked)
                        if not types:
                            linked = event.hash
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


def _check_link(event: audit_pb2.AuditEvent, last: int, linked: str) -> None:
    """The event after seq `last` (whose hash was `linked`) must be seq `last` + 1 and link to
    it; otherwise the trail changed under the follower."""
    prev = json.loads(event.body).get("prev_hash")
    if event.seq == last + 1 and prev == linked:
        return
    raise CliError(
        f"the trail changed under this follow: seq {event.seq} does not continue seq {last} as "
        "printed (the store lost events it had shown, in a crash, and reused their seqs, or it "
        f"was rewritten); run `gatehouse audit verify` and export again from seq {last} or "
        "from the last checkpoint before it"
    )


def _stream_break(exc: grpc.aio.AioRpcError, address: str) -> str:
    details = exc.details() or exc.code().name
    if exc.code() == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details.lower():
        return f"cannot reach the control plane at {address}"
    return details


def _kinds(types: str | None) -> list[str] | None:
    return [t.strip() for t in types.split(",") if t.strip()] if types else None


def audit_export(
    after: int,
    limit: int | None,
    types: str | None,
    fmt: str,
    follow: bool,
    controlplane: str | None,
) -> None:
    """NDJSON in seq order; `fmt` is json (the stored bodies) or ocsf."""
    from cli import rpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()
    kinds = _kinds(types)
    if follow:
        run(follow_events(address, md, after=after, limit=limit, types=kinds, fmt=fmt))
        return

    async def work(channel: Any) -> int:
        return await export_events(channel, md, after=after, limit=limit, types=kinds, fmt=fmt)

    call(address, work)


def _read_keys(paths: Iterable[Path]) -> dict[str, Any]:
    from trail.signatures import PublicKeyError, keyring, load_public_key

    keys = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read the key {path}: {exc.strerror}", USAGE) from None
        try:
            keys.append(load_public_key(data, str(path)))
        except PublicKeyError as exc:
            raise CliError(str(exc), USAGE) from None
    return keyring(keys)


async def verify_store(
    channel: grpc.aio.Channel,
    metadata: Metadata,
    keys: dict[str, Any] | None = None,
    witnessed: dict[int, dict[str, Any] | None] | None = None,
) -> TrailReport:
    """Walk the stored trail from genesis, or from the newest prune anchor once its signature
    is checked, with the given keys or the one the server reports. The `checkpoint` of every
    event whose seq is a key of `witnessed` is filled in (None: that event is no checkpoint)."""
    from trail.signatures import PublicKeyError, keyring, load_public_key
    from trail.verify import Start, TrailVerifier, anchor_start

    stub = audit_pb2_grpc.AuditServiceStub(channel)
    if not keys:
        reported = await stub.GetPublicKey(
            audit_pb2.GetPublicKeyRequest(), metadata=metadata, timeout=30
        )
        try:
            pem = reported.public_key_pem.encode()
            served = keyring([load_public_key(pem, "the server's key")])
        except PublicKeyError as exc:
            raise CliError(str(exc)) from None
        if keys is None:
            keys = served
        else:
            keys.update(served)  # the caller checks witnessed signatures with it too
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
        if witnessed is not None and event.seq in witnessed:
            found = json.loads(event.body).get("checkpoint")
            witnessed[event.seq] = found if isinstance(found, dict) else None
    return verifier.report()


def verify_file(handle: TextIO, keys: dict[str, Any]) -> TrailReport:
    """Walk an export (`gatehouse audit export` lines) offline."""
    from trail.verify import TrailVerifier

    verifier: TrailVerifier = TrailVerifier(keys)
    for number, line in enumerate(handle, start=1):
        if not verifier.add_line(number, line):
            break
    return verifier.report()


def audit_verify(
    file: Path | None,
    key: list[Path] | None,
    allow_unsigned_tail: str | None,
    witness: Path | None,
    controlplane: str | None,
    output: Format,
) -> None:
    """Never trusts the server: the chain is recomputed here, every signature checked."""
    from trail.verify import TailAllowance

    keys = _read_keys(key or [])
    pinned = dict(keys) if key else None
    allowance: TailAllowance | None = None
    if allow_unsigned_tail is not None:
        try:
            allowance = TailAllowance.parse(allow_unsigned_tail)
        except ValueError as exc:
            raise CliError(str(exc), USAGE) from None
    entries = _read_witness(witness) if witness is not None else None
    witness_report: WitnessReport | None = None
    if file is not None:
        if not keys:
            raise CliError(
                "--file needs --key PEM: the public key from `gatehouse audit public-key`", USAGE
            )
        if entries is not None:
            raise CliError("--witness checks the store: leave out --file", USAGE)
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
        wanted: dict[int, dict[str, Any] | None] | None = None
        if entries is not None:
            wanted = {e.event_seq: None for e in entries}

        async def work(channel: Any) -> TrailReport:
            return await verify_store(channel, md, keys, wanted)

        report = call(address, work)
        if entries is not None and wanted is not None:
            witness_report = _check_witness(entries, report, wanted, keys)
    _print_report(report, output, pinned, allowance, witness_report)


def _read_witness(path: Path) -> list[WitnessEntry]:
    from trail.witness import read_witness

    try:
        with path.open(encoding="utf-8") as handle:
            return read_witness(handle)
    except OSError as exc:
        raise CliError(f"cannot read the witness {path}: {exc.strerror}", USAGE) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: {exc}", USAGE) from None


def _check_witness(
    entries: list[WitnessEntry],
    report: TrailReport,
    found: dict[int, dict[str, Any] | None],
    keys: dict[str, Any],
) -> WitnessReport:
    from trail.signatures import checkpoint_note, signature_problem
    from trail.witness import check_witness

    def signed(document: dict[str, Any]) -> str | None:
        if not keys:
            return None
        note = checkpoint_note(int(document["seq"]), str(document["hash"]))
        return signature_problem(keys, document, note)

    return check_witness(
        entries,
        start_seq=report.start.seq if report.start is not None else 0,
        head_seq=report.last_seq,
        stored=found,
        signature_problem=signed,
    )


def _print_report(
    report: TrailReport,
    output: Format,
    keys: dict[str, Any] | None = None,
    allowance: TailAllowance | None = None,
    witness: WitnessReport | None = None,
) -> None:
    from trail.verify import tail_problem

    broken = report.broken
    start = report.start
    unsigned = None
    if keys is not None and broken is None and report.unvouched is None:
        unsigned = tail_problem(report, keys, allowance, datetime.now(UTC))
    ok = report.ok and unsigned is None and (witness is None or witness.ok)
    document = {
        "ok": ok,
        "checked": report.checked,
        "first_seq": report.first_seq,
        "last_seq": report.last_seq,
        "last_hash": report.last_hash,
        "start": None
        if start is None
        else {"seq": start.seq, "hash": start.hash, "vouched_by": start.vouched_by or None},
        "checkpoints": report.checkpoints,
        "signed_through": report.signed_through,
        "last_checkpoint": report.last_checkpoint,
        "unsigned": report.unsigned,
        "unsigned_since": report.unsigned_since,
        "unsigned_problem": unsigned,
        "broken": None if broken is None else {"seq": broken.seq, "reason": broken.reason},
        "unverified": report.unvouched,
        "witness": None
        if witness is None
        else {
            "witnessed": witness.witnessed,
            "matched": witness.matched,
            "pruned": witness.pruned,
            "newest": witness.newest,
            "problem": witness.problem,
        },
    }
    if output is Format.json:
        emit_json(document)
    elif report.ok:
        if not report.checked:
            echo("ok: no events")
        else:
            tail = report.unsigned
            echo(
                f"{'ok' if ok else 'chain intact'}: {report.checked} events, chain intact up to "
                f"seq {report.last_seq} (from seq {report.first_seq}, vouched for by "
                f"{start.vouched_by if start else 'nothing'}); {report.checkpoints} signed "
                f"checkpoints verified, signed through seq {report.signed_through}, "
                f"{tail} unsigned event{'' if tail == 1 else 's'} after the last checkpoint"
            )
        if witness is not None and witness.ok:
            echo(
                f"witness: {witness.matched} checkpoints found in the store unchanged"
                + (f", {witness.pruned} before its start (pruned)" if witness.pruned else "")
                + f"; the store is not behind the newest (seq {witness.newest})"
            )
    if broken is not None:
        raise CliError(f"chain broken at seq {broken.seq}: {broken.reason}")
    if report.unvouched is not None:
        raise CliError(f"not verified: {report.unvouched}")
    if witness is not None and witness.problem is not None:
        raise CliError(f"the witness disagrees with the store: {witness.problem}")
    if unsigned is not None:
        raise CliError(f"not verified: {unsigned}")


def audit_checkpoint(controlplane: str | None, output: Format) -> None:
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
    echo(
        f"checkpoint at seq {made.event_seq}: vouches for seq {made.seq} (hash {made.hash}), "
        f"signed by key {made.key_id}"
    )


def audit_public_key(controlplane: str | None, output: Format) -> None:
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


def audit_prune(
    before: str | None, dry_run: bool, controlplane: str | None, output: Format
) -> None:
    """One admin asks (this), another approves (`audit_prune_approve`): nobody removes
    history alone."""
    if before is None:
        raise CliError("--before DATE is required (or `audit prune approve ID`)", USAGE)
    from cli import rpc
    from trail.times import parse_cutoff

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
    if output is Format.json:
        emit_json(_prune_document(result, dry_run))
    elif not result.removed:
        echo(f"nothing to prune: no event is older than {before}")
    elif dry_run:
        echo(f"would remove {result.removed} events, seq {result.first_seq}..{result.through_seq}")
    else:
        echo(
            f"prune request {result.request_id} recorded as seq {result.event_seq}: it would "
            f"remove {result.removed} events, seq {result.first_seq}..{result.through_seq}.\n"
            f"Another admin performs it with `gatehouse audit prune approve "
            f"{result.request_id}` before {result.expires_at}."
        )


def audit_prune_approve(request_id: str, controlplane: str | None, output: Format) -> None:
    from cli import rpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: grpc.aio.Channel) -> audit_pb2.PruneResponse:
        stub = audit_pb2_grpc.AuditServiceStub(channel)
        request = audit_pb2.ApprovePruneRequest(request_id=request_id)
        return await stub.ApprovePrune(request, metadata=md, timeout=600)

    result = call(address, work)
    if output is Format.json:
        emit_json(_prune_document(result, False))
    elif not result.removed:
        echo(f"approved {request_id}: nothing was left to prune")
    else:
        echo(
            f"removed {result.removed} events, seq {result.first_seq}..{result.through_seq} "
            f"(asked by {result.requested_by}, approved by {result.approved_by}); the trail now "
            f"starts after the signed anchor at seq {result.through_seq}; recorded as seq "
            f"{result.event_seq}"
        )


def _prune_document(result: audit_pb2.PruneResponse, dry_run: bool) -> dict[str, Any]:
    anchor = result.anchor if result.HasField("anchor") else None
    return {
        "dry_run": dry_run,
        "request_id": result.request_id or None,
        "requested_by": result.requested_by or None,
        "approved_by": result.approved_by or None,
        "expires_at": result.expires_at or None,
        "before": result.before or None,
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
