"""Retention: remove a whole old prefix of the trail, and leave a signed anchor behind.

Two rules keep a prune from erasing history: it never touches events younger than the minimum
retention (GATEHOUSE_AUDIT_MIN_RETENTION, default 30 days), and it takes two admins. The first
records an `audit.prune_request` event (its id is the request's id, valid PRUNE_REQUEST_TTL);
a different admin approves it, which performs it. The request lives only in the trail itself:
no table an operator could edit, and the approval checks (not expired, not yours, not used)
run under the chain-head lock, so two approvals cannot both prune.

Nothing else deletes events. A prune, in one transaction holding the chain head: finds S, the
end of the longest prefix of events all older than the cutoff; opens the store's narrow
exception to the append-only trigger for seq <= S only (migration 0002); deletes those
events; closes the exception; stores the anchor (S, its hash, an Ed25519 signature over
"gatehouse-audit-anchor/v1\\n<S>\\n<hash>\\n"); and appends an `audit.prune` event naming who pruned
what, with the anchor. A verifier then starts from the anchor after checking its signature,
so the remainder verifies as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, text
from sqlmodel import Session, col, select

from controlplane.audit.checkpoints import SigningKey
from controlplane.audit.events import as_utc, draft, rfc3339, utc_now
from controlplane.audit.settings import DEFAULT_MIN_RETENTION, PRUNE_REQUEST_TTL
from controlplane.audit.writer import append_events
from controlplane.auth.identity import Identity
from controlplane.auth.makers import minted_by_either
from controlplane.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from controlplane.store.models import AnchorRow, ChainHeadRow, EventRow
from trail.signatures import PRUNE_TYPE

PG_SETTING = "gatehouse.prune_through"
REQUEST_TYPE = "audit.prune_request"
REFUSED_TYPE = "audit.prune_refused"


class SelfApproval(PermissionDenied):
    """An admin tried to approve their own prune request."""


def check_retention(before: datetime, min_retention: timedelta, now: datetime) -> None:
    """Refuse a cutoff that would remove events younger than the minimum retention."""
    limit = now - min_retention
    if before > limit:
        days = min_retention.total_seconds() / 86400
        raise InvalidArgument(
            f"--before {rfc3339(before)} is too recent: the minimum retention keeps every event "
            f"of the last {days:g} days (GATEHOUSE_AUDIT_MIN_RETENTION); pick a time on or "
            f"before {rfc3339(limit)}"
        )


@dataclass(frozen=True, slots=True)
class PruneRequestRecord:
    """A recorded request, as the requester sees it."""

    id: str
    event_seq: int
    before: datetime
    expires_at: datetime
    requested_by: str
    planned: PruneResult


@dataclass(frozen=True, slots=True)
class PruneResult:
    first_seq: int  # 0: nothing to remove
    through_seq: int
    removed: int
    anchor: AnchorRow | None = None  # None on a dry run or when nothing was removed
    event_seq: int = 0  # the audit.prune event


def prune_range(session: Session, before: datetime) -> PruneResult:
    """What a prune before `before` would remove: seq <= S, the longest prefix of events all
    older than it. Not up to the last event older than it: an event's time is its writer's
    clock, and one replica's clock far behind would take every younger event before it along.
    """
    young = session.exec(select(func.min(EventRow.seq)).where(col(EventRow.time) >= before)).one()
    if young is None:
        through = session.exec(select(func.max(EventRow.seq))).one()
    else:
        through = session.exec(select(func.max(EventRow.seq)).where(EventRow.seq < young)).one()
    if through is None:
        return PruneResult(0, 0, 0)
    first, removed = session.exec(
        select(func.min(EventRow.seq), func.count()).where(col(EventRow.seq) <= through)
    ).one()
    return PruneResult(int(first or 0), int(through), int(removed))


def request_prune(
    session: Session,
    before: datetime,
    by: Identity,
    signer: SigningKey | None = None,
    *,
    min_retention: timedelta = DEFAULT_MIN_RETENTION,
) -> PruneRequestRecord | PruneResult:
    """Record a request to prune before `before` (the writer's thread); nothing is removed.

    Returns the plain range when there is nothing to remove (no request is recorded then).
    """
    now = utc_now()
    check_retention(before, min_retention, now)
    _lock_head(session)
    planned = prune_range(session, before)
    if not planned.removed:
        return planned
    expires = now + PRUNE_REQUEST_TTL
    record = draft(
        REQUEST_TYPE,
        identity=by,
        prune_request={
            "before": rfc3339(before),
            "expires_at": rfc3339(expires),
            "first_seq": planned.first_seq,
            "through_seq": planned.through_seq,
            "removed": planned.removed,
        },
    )
    (event_seq,) = append_events(session, [record], signer=signer)
    request_id = str(record.body["id"])
    return PruneRequestRecord(request_id, event_seq, before, expires, by.subject, planned)


def approve_prune(
    session: Session,
    request_id: str,
    by: Identity,
    signer: SigningKey,
    *,
    min_retention: timedelta = DEFAULT_MIN_RETENTION,
) -> tuple[PruneResult, str]:
    """Perform another admin's request (the writer's thread); returns the result and who asked.

    Refused, with nothing changed: an unknown id, a request past its expiry, one already used,
    one made by `by` (SelfApproval), or one whose cutoff the minimum retention no longer allows.
    """
    _lock_head(session)
    row = session.exec(
        select(EventRow).where(EventRow.id == request_id, EventRow.type == REQUEST_TYPE)
    ).first()
    if row is None:
        raise NotFound(
            f"no prune request {request_id!r}: `gatehouse audit prune --before` makes one"
        )
    body = json.loads(row.body)
    asked = body.get("prune_request", {})
    requester = str(body.get("user", {}).get("sub", ""))
    if requester == by.subject:
        raise SelfApproval(
            f"prune request {request_id} was made by {requester}: another admin must approve it"
        )
    minted = minted_by_either(session, by.subject, requester)
    if minted is not None:
        token, creator = minted
        raise SelfApproval(
            f"prune request {request_id}: {token} is a token {creator} created; "
            "another admin must approve it"
        )
    now = utc_now()
    expires = datetime.fromisoformat(str(asked.get("expires_at", "")).replace("Z", "+00:00"))
    if now > expires:
        raise FailedPrecondition(
            f"prune request {request_id} expired at {rfc3339(expires)}: ask again"
        )
    for done in session.exec(
        select(EventRow.body).where(col(EventRow.seq) > row.seq, EventRow.type == PRUNE_TYPE)
    ):
        if json.loads(done).get("prune", {}).get("request") == request_id:
            raise FailedPrecondition(f"prune request {request_id} was already approved and done")
    before = datetime.fromisoformat(str(asked["before"]).replace("Z", "+00:00"))
    result = prune(
        session,
        before,
        by,
        signer,
        min_retention=min_retention,
        approval={"request": request_id, "requested_by": requester, "approved_by": by.subject},
    )
    return result, requester


def _lock_head(session: Session) -> None:
    """The chain-head lock: appends (from any replica) wait until this transaction commits."""
    session.exec(select(ChainHeadRow).where(ChainHeadRow.id == 1).with_for_update()).one()


def prune(
    session: Session,
    before: datetime,
    by: Identity,
    signer: SigningKey,
    *,
    min_retention: timedelta = DEFAULT_MIN_RETENTION,
    approval: dict[str, str] | None = None,
) -> PruneResult:
    """Prune in the caller's write transaction (the audit writer's thread); see the module.

    The service calls it only through `approve_prune`; the retention rule holds here too.
    """
    check_retention(before, min_retention, utc_now())
    _lock_head(session)
    planned = prune_range(session, before)
    if not planned.removed:
        return planned
    through = planned.through_seq
    anchor_hash = session.exec(select(EventRow.hash).where(EventRow.seq == through)).one()

    sqlite = session.get_bind().dialect.name == "sqlite"
    if sqlite:
        session.execute(
            text("INSERT INTO audit_prune_guard (through_seq) VALUES (:s)"), {"s": through}
        )
    else:
        session.execute(
            text("SELECT set_config(:name, :s, true)"), {"name": PG_SETTING, "s": str(through)}
        )
    result: Any = session.execute(
        delete(EventRow)
        .where(col(EventRow.seq) <= through)
        .execution_options(synchronize_session=False)
    )
    removed = int(result.rowcount)
    if sqlite:
        session.execute(text("DELETE FROM audit_prune_guard"))
    else:
        session.execute(text("SELECT set_config(:name, '', true)"), {"name": PG_SETTING})
    if removed != planned.removed:
        raise RuntimeError(f"the prune removed {removed} events, expected {planned.removed}")

    signed = signer.anchor(through, anchor_hash)
    now = utc_now()
    anchor = AnchorRow(
        seq=through,
        hash=anchor_hash,
        key_id=signed["key_id"],
        signature=signed["signature"],
        first_seq=planned.first_seq,
        removed=removed,
        pruned_at=now,
        pruned_by=by.subject,
    )
    session.add(anchor)
    record = draft(
        PRUNE_TYPE,
        identity=by,
        prune={
            "before": rfc3339(before),
            "first_seq": planned.first_seq,
            "through_seq": through,
            "removed": removed,
            "anchor": signed,
            **(approval or {}),
        },
    )
    (event_seq,) = append_events(session, [record], signer=signer)
    return PruneResult(planned.first_seq, through, removed, anchor, event_seq)


def latest_anchor(session: Session) -> AnchorRow | None:
    """The newest anchor: where the stored chain starts now (None: at genesis)."""
    query = select(AnchorRow).order_by(col(AnchorRow.seq).desc()).limit(1)
    return session.exec(query).first()


def anchor_document(anchor: AnchorRow) -> dict[str, Any]:
    return {
        "seq": anchor.seq,
        "hash": anchor.hash,
        "key_id": anchor.key_id,
        "signature": anchor.signature,
        "pruned_at": rfc3339(as_utc(anchor.pruned_at)),
        "pruned_by": anchor.pruned_by,
    }
