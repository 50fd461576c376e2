"""AuditService: read the trail in seq order. No API changes or deletes an event."""

from __future__ import annotations

from typing import Any

import grpc
from sqlmodel import Session, col, select

from controlplane.auth.tokens import TokenAuthenticator
from controlplane.errors import unary
from controlplane.store.database import Database
from controlplane.store.models import EventRow
from gatehouse.v1 import audit_pb2, audit_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]
DEFAULT_LIMIT = 500
MAX_LIMIT = 5000


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, auth: TokenAuthenticator, db: Database) -> None:
        self._auth = auth
        self._db = db

    @unary
    async def ListEvents(
        self, request: audit_pb2.ListEventsRequest, context: Context
    ) -> audit_pb2.ListEventsResponse:
        await self._auth.require_admin(context.invocation_metadata())
        limit = min(request.limit or DEFAULT_LIMIT, MAX_LIMIT)
        types = list(request.types)

        def page(session: Session) -> list[EventRow]:
            query = select(EventRow).where(EventRow.seq > request.after)
            if types:
                query = query.where(col(EventRow.type).in_(types))
            return list(session.exec(query.order_by(col(EventRow.seq)).limit(limit)))

        rows = await self._db.read(page)
        return audit_pb2.ListEventsResponse(
            events=[audit_pb2.AuditEvent(seq=r.seq, body=r.body, hash=r.hash) for r in rows],
            next=rows[-1].seq if rows else request.after,
        )
