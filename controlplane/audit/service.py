"""AuditService: read and follow the trail in seq order, sign it, prune old ranges of it.

No API changes or deletes a single event: a prune removes only a whole prefix older than the
minimum retention, asked for by one admin and approved by another, leaving a signed anchor and
an `audit.prune` event (retention.py). Readers (admin, audit-reader) list, follow, and fetch the
public key and the anchor; only an admin asks for a checkpoint, or asks for or approves a prune.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any, cast

import grpc
from sqlalchemy import func
from sqlmodel import Session, col, select

from controlplane.audit.checkpoints import SigningKey
from controlplane.audit.events import draft, rfc3339, utc_now
from controlplane.audit.reader import check_request, read_page
from controlplane.audit.retention import (
    REFUSED_TYPE,
    PruneRequestRecord,
    PruneResult,
    SelfApproval,
    anchor_document,
    approve_prune,
    check_retention,
    latest_anchor,
    prune_range,
    request_prune,
)
from controlplane.audit.settings import DEFAULT_MIN_RETENTION
from controlplane.audit.writer import AuditUnavailable, AuditWriter
from controlplane.auth.identity import ADMIN, AUDIT_READER
from controlplane.auth.tokens import TokenAuthenticator
from controlplane.errors import (
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    streaming,
    unary,
)
from controlplane.store.database import Database
from controlplane.store.models import AnchorRow, EventRow
from gatehouse.v1 import audit_pb2, audit_pb2_grpc
from trail.chain import escape_line_breaks, export_line
from trail.signatures import ALGORITHM
from trail.times import parse_cutoff

Context = grpc.aio.ServicerContext[Any, Any]
FORMATS = ("json", "ocsf")
STREAM_PAGE = 500
# The stored bodies one stream message carries (at least one event): with each one's OCSF form
# beside it, a message stays well under the 16 MiB gRPC limit (controlplane/server.py). A page
# of 500 bulk statements did not, and `audit export --follow` retried it for ever.
STREAM_BYTES = 4 * 1024 * 1024
POLL_SECONDS = 1.0  # also see what other replicas commit, which no in-process signal tells

Formatter = Callable[[Mapping[str, Any]], dict[str, Any]]


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(
        self,
        auth: TokenAuthenticator,
        db: Database,
        writer: AuditWriter,
        *,
        min_retention: timedelta = DEFAULT_MIN_RETENTION,
    ) -> None:
        self._auth = auth
        self._db = db
        self._writer = writer
        self._min_retention = min_retention

    @unary
    async def ListEvents(
        self, request: audit_pb2.ListEventsRequest, context: Context
    ) -> audit_pb2.ListEventsResponse:
        await self._auth.require_role(context.invocation_metadata(), ADMIN, AUDIT_READER)
        formatter = _formatter(request.format)
        page = await read_page(self._db, request.after, request.limit, list(request.types))
        return audit_pb2.ListEventsResponse(events=_render(page.events, formatter), next=page.next)

    @streaming
    async def StreamEvents(
        self, request: audit_pb2.StreamEventsRequest, context: Context
    ) -> AsyncIterator[audit_pb2.StreamEventsResponse]:
        """Catch up from the cursor in pages, then send each commit as it happens."""
        await self._auth.require_role(context.invocation_metadata(), ADMIN, AUDIT_READER)
        formatter = _formatter(request.format)
        types = list(request.types)
        cursor = request.after
        check_request(cursor, 0, types)
        await context.send_initial_metadata(())  # tells the client it is subscribed
        while True:
            if self._writer.followers_stopped:
                raise Unavailable("the control plane is stopping")
            signal = self._writer.commit_signal()  # before the read: no commit slips between
            rows, cursor = await self._db.read(_follow_page(cursor, types))
            if rows:
                yield audit_pb2.StreamEventsResponse(events=_render(rows, formatter))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(signal.wait(), POLL_SECONDS)

    @unary
    async def Checkpoint(
        self, request: audit_pb2.CheckpointRequest, context: Context
    ) -> audit_pb2.CheckpointResponse:
        admin = await self._auth.require_role(context.invocation_metadata(), ADMIN)
        self._signer()
        try:
            seq = await self._writer.checkpoint(admin)
        except AuditUnavailable as exc:
            raise Unavailable(str(exc)) from None
        row = await self._db.read(lambda s: s.get(EventRow, seq))
        if row is None:  # pruned in the meantime: the caller can list the trail instead
            return audit_pb2.CheckpointResponse(event_seq=seq)
        checkpoint = json.loads(row.body)["checkpoint"]
        return audit_pb2.CheckpointResponse(
            event_seq=seq,
            seq=checkpoint["seq"],
            hash=checkpoint["hash"],
            key_id=checkpoint["key_id"],
            signature=checkpoint["signature"],
        )

    @unary
    async def GetPublicKey(
        self, request: audit_pb2.GetPublicKeyRequest, context: Context
    ) -> audit_pb2.GetPublicKeyResponse:
        await self._auth.require_role(context.invocation_metadata(), ADMIN, AUDIT_READER)
        signer = self._signer()
        return audit_pb2.GetPublicKeyResponse(
            key_id=signer.key_id, algorithm=ALGORITHM, public_key_pem=signer.public_pem()
        )

    @unary
    async def GetAnchor(
        self, request: audit_pb2.GetAnchorRequest, context: Context
    ) -> audit_pb2.GetAnchorResponse:
        await self._auth.require_role(context.invocation_metadata(), ADMIN, AUDIT_READER)
        anchor = await self._db.read(latest_anchor)
        if anchor is None:
            return audit_pb2.GetAnchorResponse()
        return audit_pb2.GetAnchorResponse(anchor=_anchor(anchor))

    @unary
    async def Prune(
        self, request: audit_pb2.PruneRequest, context: Context
    ) -> audit_pb2.PruneResponse:
        """Record a prune request (or, dry, say what it would remove); never removes."""
        admin = await self._auth.require_role(context.invocation_metadata(), ADMIN)
        if not request.before:
            raise InvalidArgument("before is required: prune events older than this date")
        try:
            before = parse_cutoff(request.before)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        check_retention(before, self._min_retention, utc_now())
        if request.dry_run:
            return _prune_response(await self._db.read(lambda s: prune_range(s, before)))
        signer = self._writer.signer
        retention = self._min_retention
        try:
            made = await self._writer.transact(
                lambda s: request_prune(s, before, admin, signer, min_retention=retention)
            )
        except AuditUnavailable as exc:
            raise Unavailable(str(exc)) from None
        if isinstance(made, PruneResult):
            return _prune_response(made)
        return _request_response(made)

    @unary
    async def ApprovePrune(
        self, request: audit_pb2.ApprovePruneRequest, context: Context
    ) -> audit_pb2.PruneResponse:
        """A second admin performs a recorded prune request."""
        admin = await self._auth.require_role(context.invocation_metadata(), ADMIN)
        request_id = request.request_id.strip()
        if not request_id or len(request_id) > 64 or not request_id.isascii():
            raise InvalidArgument("request_id is required: the id `audit prune --before` printed")
        signer = self._signer()
        retention = self._min_retention
        try:
            result, requester = await self._writer.transact(
                lambda s: approve_prune(s, request_id, admin, signer, min_retention=retention)
            )
        except SelfApproval as exc:
            # Refused and rolled back; the attempt itself is part of the record.
            refusal = draft(REFUSED_TYPE, identity=admin, request=request_id, reason=str(exc))
            try:
                await self._writer.commit(refusal)
            except AuditUnavailable as error:
                raise Unavailable(str(error)) from None
            raise
        except AuditUnavailable as exc:
            raise Unavailable(str(exc)) from None
        response = _prune_response(result)
        response.request_id = request_id
        response.requested_by = requester
        response.approved_by = admin.subject
        return response

    def _signer(self) -> SigningKey:
        signer = self._writer.signer
        if signer is None:
            raise FailedPrecondition("this control plane has no audit signing key")
        return signer


def _formatter(name: str) -> Formatter | None:
    """None for json (the stored body is the export); the mapping function for the others."""
    fmt = name or "json"
    if fmt not in FORMATS:
        raise InvalidArgument(f"format must be one of {', '.join(FORMATS)}, not {name!r}")
    if fmt == "json":
        return None
    # Imported when asked for: the mapping is a pure function kept beside the trail.
    try:
        module = importlib.import_module("controlplane.audit.ocsf")
    except ModuleNotFoundError as exc:
        if exc.name != "controlplane.audit.ocsf":
            raise
        raise FailedPrecondition("OCSF export is not available in this build") from None
    return cast(Formatter, module.to_ocsf)


def _render(rows: Sequence[EventRow], formatter: Formatter | None) -> list[audit_pb2.AuditEvent]:
    events = []
    for row in rows:
        formatted = ""
        if formatter is not None:
            document = formatter(json.loads(export_line(row.body, row.hash)))
            formatted = escape_line_breaks(
                json.dumps(document, separators=(",", ":"), ensure_ascii=False)
            )
        events.append(
            audit_pb2.AuditEvent(seq=row.seq, body=row.body, hash=row.hash, formatted=formatted)
        )
    return events


def _follow_page(cursor: int, types: list[str]) -> Callable[[Session], tuple[list[EventRow], int]]:
    """The next events after `cursor` and the cursor after them.

    With a type filter, the cursor moves to the newest seq that was visible even when none of
    the events matched, so a quiet filter does not rescan the trail on every wake-up. That is
    safe because seq becomes visible in commit order (docs/decisions/0003).
    """

    def read(session: Session) -> tuple[list[EventRow], int]:
        query = select(EventRow).where(EventRow.seq > cursor)
        if not types:
            rows = _fitting(session.exec(query.order_by(col(EventRow.seq)).limit(STREAM_PAGE)))
            return rows, rows[-1].seq if rows else cursor
        newest = session.exec(select(func.max(EventRow.seq))).one() or cursor
        query = query.where(EventRow.seq <= newest, col(EventRow.type).in_(types))
        found = list(session.exec(query.order_by(col(EventRow.seq)).limit(STREAM_PAGE)))
        rows = _fitting(found)
        full = len(found) == STREAM_PAGE or len(rows) < len(found)
        return rows, rows[-1].seq if full else max(newest, cursor)

    return read


def _fitting(rows: Iterable[EventRow]) -> list[EventRow]:
    """The first rows whose bodies fit in one stream message (STREAM_BYTES), at least one."""
    kept: list[EventRow] = []
    size = 0
    for row in rows:
        size += len(row.body.encode("utf-8"))
        if kept and size > STREAM_BYTES:
            break
        kept.append(row)
    return kept


def _anchor(anchor: AnchorRow) -> audit_pb2.Anchor:
    return audit_pb2.Anchor(**anchor_document(anchor))


def _request_response(made: PruneRequestRecord) -> audit_pb2.PruneResponse:
    planned = made.planned
    return audit_pb2.PruneResponse(
        first_seq=planned.first_seq,
        through_seq=planned.through_seq,
        removed=planned.removed,
        event_seq=made.event_seq,
        request_id=made.id,
        requested_by=made.requested_by,
        expires_at=rfc3339(made.expires_at),
        before=rfc3339(made.before),
    )


def _prune_response(result: PruneResult) -> audit_pb2.PruneResponse:
    response = audit_pb2.PruneResponse(
        first_seq=result.first_seq,
        through_seq=result.through_seq,
        removed=result.removed,
        event_seq=result.event_seq,
    )
    if result.anchor is not None:
        response.anchor.CopyFrom(_anchor(result.anchor))
    return response
