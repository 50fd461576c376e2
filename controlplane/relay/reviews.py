"""Just-in-time access reviews: a rule with `review: {groups, ttl}` opens a session only after
someone of `groups` approves; the approval then holds for `ttl` on that connection and mode.

The state lives in the `reviews` table, and the waiting session polls it, so a decision taken
on any control-plane replica counts. Every step is an audit event: `review.request`,
`review.approve`, `review.deny` (and `review.expire` when nobody decided in time).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from controlplane.audit.events import as_utc, draft, rfc3339, utc_now
from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import Identity
from controlplane.auth.makers import minted_by_either
from controlplane.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from controlplane.policy.document import Review
from controlplane.store.database import Database
from controlplane.store.models import ReviewRow
from gatehouse.v1 import client_pb2

TIMEOUT_ENV = "GATEHOUSE_REVIEW_TIMEOUT"
DEFAULT_TIMEOUT = 600.0  # seconds a session waits for a decision
DECIDING = "deciding"  # claimed by one reviewer whose decision is being recorded
POLL = 0.5


def wait_timeout() -> float:
    """How long a session waits for a decision: GATEHOUSE_REVIEW_TIMEOUT seconds, else 10 min."""
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        return DEFAULT_TIMEOUT
    return seconds if seconds > 0 else DEFAULT_TIMEOUT


class ReviewDenied(PermissionDenied):
    """The review was denied, expired, or could not be completed."""


class Reviews:
    def __init__(self, db: Database, audit: AuditWriter) -> None:
        self._db = db
        self._audit = audit

    async def granted(self, identity: Identity, connection: str, mode: str) -> ReviewRow | None:
        """An unexpired approval of `identity` for `connection` and `mode`, if any.

        An approval covers exactly the person and actor it was granted to: one given to the
        person's own request does not cover their delegated tokens, and one given to a request
        made with actor devin's token covers neither the person nor another actor."""
        now = utc_now()

        def find(session: Session) -> ReviewRow | None:
            query = (
                _requested_by(identity, connection, mode)
                .where(ReviewRow.status == "approved")
                .order_by(col(ReviewRow.grant_until).desc())
            )
            for row in session.exec(query):
                if row.grant_until is not None and as_utc(row.grant_until) > now:
                    return row
            return None

        return await self._db.read(find)

    async def request(
        self, identity: Identity, connection: str, mode: str, rule: str, review: Review
    ) -> ReviewRow:
        """Create a pending review and record `review.request` before anyone sees it."""
        now = utc_now()
        row = ReviewRow(
            id=str(uuid.uuid4()),
            requester=identity.subject,
            requester_email=identity.email,
            requester_groups=json.dumps(list(identity.groups)),
            actor=identity.actor,
            connection=connection,
            mode=mode,
            rule=rule,
            reviewer_groups=json.dumps(list(review.groups)),
            ttl_seconds=int(review.ttl.total_seconds()),
            status="pending",
            created_at=now,
            expires_at=now + timedelta(seconds=wait_timeout()),
        )
        await self._audit.commit(
            draft(
                "review.request",
                identity=identity,
                connection={"name": connection},
                mode=mode,
                review=_event_review(row),
            )
        )
        await self._db.write(lambda s: s.add(ReviewRow.model_validate(row.model_dump())))
        return row

    async def wait(self, review_id: str) -> ReviewRow:
        """Poll until the review is decided; raise ReviewDenied on a denial or timeout.

        A cancelled wait (the requester pressed Ctrl-C) marks the review cancelled."""
        try:
            while True:
                row = await self._db.read(lambda s: s.get(ReviewRow, review_id))
                if row is None:
                    raise ReviewDenied(f"review {review_id} disappeared")
                if await self.settled(row):
                    return row
                await asyncio.sleep(POLL)
        except asyncio.CancelledError:
            await asyncio.shield(self._close(review_id, "cancelled"))
            raise

    async def settled(self, row: ReviewRow) -> bool:
        """True once `row` is approved, False while it is pending; raises ReviewDenied with
        the reason once it was denied, expired (recorded here when nobody recorded it yet)
        or cancelled."""
        if row.status == "approved":
            return True
        if row.status == "denied":
            who = row.decided_by_email or row.decided_by or "a reviewer"
            raise ReviewDenied(
                f"review {row.id} was denied by {who}: {row.reason or 'no reason given'}"
            )
        if row.status not in ("pending", DECIDING):
            raise ReviewDenied(f"review {row.id} is {row.status}")
        if row.status == "pending" and utc_now() >= as_utc(row.expires_at):
            await self._expire(row.id)  # raises, unless it was decided meanwhile
        return False

    async def mine(
        self, identity: Identity, review_id: str, connection: str, mode: str
    ) -> ReviewRow:
        """The caller's own review `review_id` of this connection and mode (a retry names
        it); NotFound for anyone else's, as if it did not exist."""
        row = await self._db.read(lambda s: s.get(ReviewRow, review_id))
        if (
            row is None
            or row.requester != identity.subject
            or (row.actor or None) != identity.actor
            or row.connection != connection
            or row.mode != mode
        ):
            raise NotFound(
                f"no review {review_id} of yours for {mode} on {connection}; "
                "`gatehouse reviews list` shows yours"
            )
        return row

    async def pending_for(self, identity: Identity, connection: str, mode: str) -> ReviewRow | None:
        """The caller's newest review of this connection and mode still waiting for a
        decision: a caller that does not wait asks again and again, one request stands."""

        def find(session: Session) -> ReviewRow | None:
            query = (
                _requested_by(identity, connection, mode)
                .where(col(ReviewRow.status).in_(("pending", DECIDING)))
                .order_by(col(ReviewRow.created_at).desc())
            )
            return session.exec(query).first()

        row = await self._db.read(find)
        if row is None or (row.status == "pending" and utc_now() >= as_utc(row.expires_at)):
            return None
        return row

    async def _expire(self, review_id: str) -> None:
        row = await self._close(review_id, "expired")
        if row is None:
            return
        await self._audit.commit(
            draft(
                "review.expire",
                connection={"name": row.connection},
                mode=row.mode,
                review=_event_review(row),
                reason="no reviewer decided in time",
            )
        )
        raise ReviewDenied(
            f"review {review_id} timed out: nobody of {_groups(row)} decided within "
            f"{(as_utc(row.expires_at) - as_utc(row.created_at)).total_seconds():.0f} s"
        )

    async def _close(self, review_id: str, status: str) -> ReviewRow | None:
        """Pending → `status`; None when it was decided meanwhile."""

        def close(session: Session) -> ReviewRow | None:
            row = session.get(ReviewRow, review_id)
            if row is None or row.status != "pending":
                return None
            row.status = status
            row.decided_at = utc_now()
            session.add(row)
            return ReviewRow.model_validate(row.model_dump())

        return await self._db.write(close)

    async def listing(self, identity: Identity) -> list[ReviewRow]:
        """Pending reviews `identity` may decide, and `identity`'s own."""

        def load(session: Session) -> list[ReviewRow]:
            query = select(ReviewRow).order_by(col(ReviewRow.created_at))
            return list(session.exec(query))

        now = utc_now()
        rows = []
        for row in await self._db.read(load):
            if row.requester == identity.subject or (
                row.status == "pending"
                and as_utc(row.expires_at) > now
                and _may_decide(identity, row)
            ):
                rows.append(row)
        return rows

    async def decide(
        self, identity: Identity, review_id: str, approve: bool, reason: str
    ) -> ReviewRow:
        if identity.actor is not None:
            raise PermissionDenied("a delegated token cannot decide reviews; log in as yourself")
        if not approve and not reason.strip():
            raise InvalidArgument("a denial needs a reason: --reason TEXT")
        row = await self._db.read(lambda s: s.get(ReviewRow, review_id))
        if row is None or not (row.requester == identity.subject or _may_decide(identity, row)):
            raise NotFound(f"no review {review_id} for you; see `gatehouse reviews list`")
        if row.requester == identity.subject:
            raise PermissionDenied(
                f"you cannot {'approve' if approve else 'deny'} your own review request "
                f"{review_id}; someone of {_groups(row)} must decide it"
            )
        minted = await self._db.read(lambda s: minted_by_either(s, identity.subject, row.requester))
        if minted is not None:  # whoever made a token can act as it: the same person
            token, maker = minted
            raise PermissionDenied(
                f"{token} is a token {maker} created, and {row.requester} asked for review "
                f"{review_id}: someone of {_groups(row)} must decide it"
            )
        if row.status != "pending" or as_utc(row.expires_at) <= utc_now():
            state = row.status if row.status != "pending" else "expired"
            raise FailedPrecondition(f"review {review_id} is already {state}")
        now = utc_now()
        status = "approved" if approve else "denied"
        grant = now + timedelta(seconds=row.ttl_seconds) if approve else None

        def claim(session: Session) -> None:
            """Only one reviewer gets to record a decision: pending → deciding, atomically."""
            current = session.get(ReviewRow, review_id)
            if current is None or current.status != "pending":
                raise FailedPrecondition(f"review {review_id} was decided meanwhile")
            current.status = DECIDING
            session.add(current)

        def release(session: Session) -> None:
            current = session.get(ReviewRow, review_id)
            if current is not None and current.status == DECIDING:
                current.status = "pending"
                session.add(current)

        await self._db.write(claim)
        try:
            # The decision takes effect only once its event is committed (fail closed).
            await self._audit.commit(
                draft(
                    "review.approve" if approve else "review.deny",
                    identity=identity,
                    connection={"name": row.connection},
                    mode=row.mode,
                    review=_event_review(row),
                    requester=_requester(row),
                    reason=reason.strip() or None,
                    grant_until=rfc3339(grant) if grant else None,
                )
            )
        except BaseException:
            await asyncio.shield(self._db.write(release))
            raise

        def record(session: Session) -> ReviewRow:
            current = session.get(ReviewRow, review_id)
            if current is None or current.status != DECIDING:
                raise FailedPrecondition(f"review {review_id} was decided meanwhile")
            current.status = status
            current.decided_by = identity.subject
            current.decided_by_email = identity.email
            current.decided_at = now
            current.reason = reason.strip() or None
            current.grant_until = grant
            session.add(current)
            return ReviewRow.model_validate(current.model_dump())

        return await self._db.write(record)


def _requested_by(identity: Identity, connection: str, mode: str) -> SelectOfScalar[ReviewRow]:
    """Reviews `identity` requested for `connection` and `mode`: the same person and the same
    actor (none for the person's own requests)."""
    actor = identity.actor
    same_actor = col(ReviewRow.actor).is_(None) if actor is None else col(ReviewRow.actor) == actor
    return (
        select(ReviewRow)
        .where(ReviewRow.requester == identity.subject)
        .where(same_actor)
        .where(ReviewRow.connection == connection)
        .where(ReviewRow.mode == mode)
    )


def _may_decide(identity: Identity, row: ReviewRow) -> bool:
    return identity.is_admin or bool(set(identity.groups) & set(json.loads(row.reviewer_groups)))


def _groups(row: ReviewRow) -> str:
    groups = json.loads(row.reviewer_groups)
    return ("group " if len(groups) == 1 else "groups ") + ", ".join(groups)


def _requester(row: ReviewRow) -> dict[str, Any]:
    return {
        "sub": row.requester,
        "email": row.requester_email,
        "groups": json.loads(row.requester_groups),
    }


def _event_review(row: ReviewRow) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": row.id,
        "connection": row.connection,
        "mode": row.mode,
        "rule": row.rule,
        "groups": json.loads(row.reviewer_groups),
        "ttl_seconds": row.ttl_seconds,
        "requester": _requester(row),
    }
    if row.actor:
        document["actor"] = row.actor
    return document


def as_message(row: ReviewRow, identity: Identity) -> client_pb2.Review:
    def moment(value: datetime | None) -> str:
        return rfc3339(as_utc(value)) if value else ""

    return client_pb2.Review(
        id=row.id,
        requester=row.requester,
        requester_email=row.requester_email or "",
        connection=row.connection,
        mode=row.mode,
        rule=row.rule,
        reviewer_groups=json.loads(row.reviewer_groups),
        status=row.status,
        created=moment(row.created_at),
        expires=moment(row.expires_at),
        decided_by=row.decided_by_email or row.decided_by or "",
        reason=row.reason or "",
        grant_until=moment(row.grant_until),
        mine=row.requester == identity.subject,
        actor=row.actor or "",
    )
