"""SessionService: the recorded sessions, filtered, one session's events in order, and its
terminal recording — served only after it is checked against the digest in the hash chain."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import grpc
from sqlmodel import Session, col, select

from controlplane.audit.events import as_utc, rfc3339
from controlplane.auth.identity import ADMIN, AUDIT_READER
from controlplane.auth.tokens import TokenAuthenticator
from controlplane.errors import (
    DataLoss,
    FailedPrecondition,
    GatehouseError,
    InvalidArgument,
    NotFound,
    unary,
)
from controlplane.store.database import Database
from controlplane.store.models import EventRow, RecordingChunkRow, SessionRow
from gatehouse.v1 import audit_pb2, sessions_pb2, sessions_pb2_grpc
from trail.chain import check_link

Context = grpc.aio.ServicerContext[Any, Any]
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


class SessionServicer(sessions_pb2_grpc.SessionServiceServicer):
    def __init__(self, auth: TokenAuthenticator, db: Database) -> None:
        self._auth = auth
        self._db = db

    @unary
    async def ListSessions(
        self, request: sessions_pb2.ListSessionsRequest, context: Context
    ) -> sessions_pb2.ListSessionsResponse:
        await self._auth.require_role(context.invocation_metadata(), ADMIN, AUDIT_READER)
        since = _since(request.since) if request.since else None
        limit = min(request.limit or DEFAULT_LIMIT, MAX_LIMIT)

        def find(session: Session) -> list[SessionRow]:
            query = select(SessionRow)
            if request.user:
                query = query.where(SessionRow.subject == request.user)
            if request.connection:
                query = query.where(SessionRow.connection == request.connection)
            if request.type:
                query = query.where(SessionRow.connection_type == request.type)
            if since is not None:
                query = query.where(SessionRow.started_at >= since)
            query = query.order_by(col(SessionRow.started_at).desc()).limit(limit)
            return list(session.exec(query))

        rows = await self._db.read(find)
        return sessions_pb2.ListSessionsResponse(sessions=[_info(r) for r in rows])

    @unary
    async def GetSession(
        self, request: sessions_pb2.GetSessionRequest, context: Context
    ) -> sessions_pb2.GetSessionResponse:
        await self._auth.require_role(context.invocation_metadata(), ADMIN, AUDIT_READER)

        def load(session: Session) -> tuple[SessionRow | None, list[EventRow]]:
            row = session.get(SessionRow, request.id)
            query = select(EventRow).where(EventRow.session_id == request.id)
            return row, list(session.exec(query.order_by(col(EventRow.seq))))

        row, events = await self._db.read(load)
        if row is None:
            raise NotFound(f"no session {request.id}; see `gatehouse sessions list`")
        return sessions_pb2.GetSessionResponse(
            session=_info(row),
            events=[audit_pb2.AuditEvent(seq=e.seq, body=e.body, hash=e.hash) for e in events],
        )

    async def GetRecording(
        self, request: sessions_pb2.GetRecordingRequest, context: Context
    ) -> AsyncIterator[sessions_pb2.RecordingChunk]:
        try:
            await self._auth.require_role(context.invocation_metadata(), ADMIN, AUDIT_READER)
            seq, digest, size, count = await self._vouched(request.session_id)
        except GatehouseError as exc:
            await context.abort(exc.code, str(exc))
            return
        for idx in range(count):
            data = await self._db.read(
                functools.partial(_chunk, session_id=request.session_id, idx=idx)
            )
            if idx == 0:
                yield sessions_pb2.RecordingChunk(
                    data=data, sha256=digest, size=size, event_seq=seq
                )
            else:
                yield sessions_pb2.RecordingChunk(data=data)

    async def _vouched(self, session_id: str) -> tuple[int, str, int, int]:
        """The recording's (event seq, sha256, size, pieces), once its pieces are checked
        against the result event and that event against its place in the chain."""

        def load(session: Session) -> tuple[SessionRow | None, EventRow | None, EventRow | None]:
            row = session.get(SessionRow, session_id)
            if row is None or row.recording_seq is None:
                return row, None, None
            return (
                row,
                session.get(EventRow, row.recording_seq),
                session.get(EventRow, row.recording_seq - 1),
            )

        row, event, previous = await self._db.read(load)
        if row is None:
            raise NotFound(f"no session {session_id}; see `gatehouse sessions list`")
        if row.recording_seq is None:
            if row.ended_at is None:
                raise FailedPrecondition(
                    f"session {session_id} is still running; its recording is vouched for "
                    "when it ends"
                )
            raise NotFound(
                f"session {session_id} has no terminal recording (only interactive ssh "
                "sessions are recorded); `gatehouse sessions show` lists its events"
            )
        if event is None:
            raise DataLoss(
                f"the event that vouches for session {session_id}'s recording "
                f"(seq {row.recording_seq}) is gone from the store"
            )
        if previous is not None:
            problem = check_link(event.seq, event.body, event.hash, previous.seq, previous.hash)
            if problem is not None:
                raise DataLoss(
                    f"the recording's event (seq {event.seq}) fails the chain: {problem}"
                )
        recording = json.loads(event.body).get("recording") or {}
        digest, size = str(recording.get("sha256", "")), int(recording.get("bytes", 0))

        def measure(session: Session) -> tuple[str, int, int]:
            hasher, total, count = hashlib.sha256(), 0, 0
            query = (
                select(RecordingChunkRow.data)
                .where(RecordingChunkRow.session_id == session_id)
                .order_by(col(RecordingChunkRow.idx))
            )
            for data in session.exec(query):
                hasher.update(data)
                total += len(data)
                count += 1
            return hasher.hexdigest(), total, count

        found, total, count = await self._db.read(measure)
        if found != digest or total != size:
            raise DataLoss(
                f"session {session_id}'s recording does not match the digest in event "
                f"{event.seq} (stored {total} bytes, sha256 {found[:12]}…; the chain says "
                f"{size} bytes, {digest[:12]}…): it was altered or lost"
            )
        return event.seq, digest, size, count


def _chunk(session: Session, session_id: str, idx: int) -> bytes:
    row = session.get(RecordingChunkRow, (session_id, idx))
    if row is None:
        raise DataLoss(f"piece {idx} of session {session_id}'s recording is gone")
    return row.data


def _since(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"since {text!r} is not a date: use YYYY-MM-DD or an RFC 3339 time"
        ) from None
    return as_utc(moment)


def _info(row: SessionRow) -> sessions_pb2.SessionInfo:
    return sessions_pb2.SessionInfo(
        id=row.id,
        connection=row.connection,
        connection_type=row.connection_type,
        agent=row.agent,
        mode=row.mode,
        user=row.subject,
        actor=row.actor or "",
        source_ip=row.source_ip,
        client=row.client,
        started=rfc3339(as_utc(row.started_at)),
        ended=rfc3339(as_utc(row.ended_at)) if row.ended_at else "",
        end_reason=row.end_reason or "",
        recorded=row.recording_seq is not None,
    )
