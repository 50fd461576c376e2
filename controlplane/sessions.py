"""SessionService: the recorded sessions, filtered, and one session's events in order."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc
from sqlmodel import Session, col, select

from controlplane.audit.events import as_utc, rfc3339
from controlplane.auth.identity import ADMIN, AUDIT_READER
from controlplane.auth.tokens import TokenAuthenticator
from controlplane.errors import InvalidArgument, NotFound, unary
from controlplane.store.database import Database
from controlplane.store.models import EventRow, SessionRow
from gatehouse.v1 import audit_pb2, sessions_pb2, sessions_pb2_grpc

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
    )
