"""Who may decide a review: someone else than the person who asked, and not through a token
either of them made (whoever made a token saw its secret and can act as it)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from controlplane.audit.events import utc_now
from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import ADMIN, Identity
from controlplane.auth.tokens import TokenAuthenticator
from controlplane.errors import PermissionDenied
from controlplane.relay.reviews import Reviews
from controlplane.store.database import Database
from controlplane.store.models import ReviewRow

ALICE = Identity("alice", email="alice@example.com", groups=("dba",), role=ADMIN)
BOB = Identity("bob", email="bob@example.com", groups=("security",))


async def pending(db: Database, requester: str) -> str:
    now = utc_now()
    row = ReviewRow(
        id=f"r-{requester}",
        requester=requester,
        connection="pg-prod",
        mode="exec",
        rule="oncall",
        reviewer_groups=json.dumps(["security"]),
        ttl_seconds=3600,
        created_at=now,
        expires_at=now + timedelta(minutes=5),
    )
    await db.write(lambda s: s.add(row))
    return row.id


async def test_a_token_the_requester_made_cannot_approve_their_review(
    db: Database, writer: AuditWriter
) -> None:
    tokens = TokenAuthenticator(db, writer)
    await tokens.create("ci", ADMIN, None, ALICE)  # alice holds its secret
    reviews = Reviews(db, writer)
    review = await pending(db, "alice")
    machine = Identity("token:ci", role=ADMIN)
    with pytest.raises(PermissionDenied, match="token:ci is a token alice created"):
        await reviews.decide(machine, review, True, "")
    decided = await reviews.decide(BOB, review, True, "")  # another person may
    assert decided.status == "approved"


async def test_the_maker_of_a_token_cannot_approve_what_the_token_asked(
    db: Database, writer: AuditWriter
) -> None:
    tokens = TokenAuthenticator(db, writer)
    await tokens.create("ci", ADMIN, None, ALICE)
    reviews = Reviews(db, writer)
    review = await pending(db, "token:ci")
    with pytest.raises(PermissionDenied, match="token:ci is a token alice created"):
        await reviews.decide(ALICE, review, True, "")
