"""Retention: remove a whole old prefix of the trail, and leave a signed anchor behind.

Nothing else deletes events. A prune, in one transaction holding the chain head: finds S, the
last event older than the cutoff; opens the store's narrow exception to the append-only
trigger for seq <= S only (migration 0002); deletes those events; closes the exception; stores
the anchor (S, its hash, an Ed25519 signature over "gatehouse-audit-anchor/v1\\n<S>\\n<hash>\\n");
and appends an `audit.prune` event naming who pruned what, with the anchor. A verifier then
starts from the anchor after checking its signature, so the remainder verifies as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, text
from sqlmodel import Session, col, select

from controlplane.audit.checkpoints import PRUNE_TYPE, SigningKey
from controlplane.audit.events import as_utc, draft, rfc3339, utc_now
from controlplane.audit.writer import append_events
from controlplane.auth.identity import Identity
from controlplane.store.models import AnchorRow, ChainHeadRow, EventRow

PG_SETTING = "gatehouse.prune_through"


@dataclass(frozen=True, slots=True)
class PruneResult:
    first_seq: int  # 0: nothing to remove
    through_seq: int
    removed: int
    anchor: AnchorRow | None = None  # None on a dry run or when nothing was removed
    event_seq: int = 0  # the audit.prune event


def prune_range(session: Session, before: datetime) -> PruneResult:
    """What a prune before `before` would remove: seq <= S, S the last event older than it."""
    through = session.exec(select(func.max(EventRow.seq)).where(col(EventRow.time) < before)).one()
    if through is None:
        return PruneResult(0, 0, 0)
    first, removed = session.exec(
        select(func.min(EventRow.seq), func.count()).where(col(EventRow.seq) <= through)
    ).one()
    return PruneResult(int(first or 0), int(through), int(removed))


def prune(session: Session, before: datetime, by: Identity, signer: SigningKey) -> PruneResult:
    """Prune in the caller's write transaction (the audit writer's thread); see the module."""
    # The chain-head lock first: appends (from any replica) wait until the prune commits.
    session.exec(select(ChainHeadRow).where(ChainHeadRow.id == 1).with_for_update()).one()
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
