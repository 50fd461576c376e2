"""Delegated tokens against a real store: they never carry more than their person has today,
nor the admin role unless asked for; an approval covers exactly its person and actor; an
expired login's sessions are told to end."""

from __future__ import annotations

import json
import stat
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from controlplane.audit.events import utc_now
from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import ADMIN, USER, Identity
from controlplane.auth.oidc import Claims, OidcValidator
from controlplane.auth.tokens import TokenAuthenticator
from controlplane.errors import PermissionDenied, Unauthenticated
from controlplane.relay.reviews import Reviews
from controlplane.store.database import Database
from controlplane.store.models import PersonRow, ReviewRow


class FakeIssuer:
    """Stands in for the OIDC validator: `validate` returns the claims a test registered."""

    class settings:  # noqa: N801  (mirrors OidcValidator.settings)
        leeway = 0

    def __init__(self) -> None:
        self.tokens: dict[str, Claims] = {}
        self.calls = 0

    def issue(self, sub: str, groups: list[str], *, iat: float | None = None) -> str:
        now = time.time() if iat is None else iat
        token = f"h.{uuid.uuid4().hex}.s"
        self.tokens[token] = Claims(
            subject=sub,
            email=f"{sub}@example.com",
            groups=tuple(groups),
            expires_at=datetime.fromtimestamp(now + 300, UTC),
            issuer="https://idp",
            audience=("gatehouse",),
            token_type="at+jwt",
            client_id=None,
            raw={"iat": int(now)},
        )
        return token

    async def validate(self, token: str) -> Claims:
        self.calls += 1
        if token not in self.tokens:
            raise Unauthenticated("the signature does not verify")
        return self.tokens[token]


def md(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer()


@pytest.fixture
def auth(db: Database, writer: AuditWriter, issuer: FakeIssuer) -> TokenAuthenticator:
    return TokenAuthenticator(
        db, writer, cast(OidcValidator, issuer), admin_groups=frozenset({"admins"})
    )


async def delegate(
    auth: TokenAuthenticator, token: str, role: str = USER, actor: str = "devin"
) -> str:
    person = await auth.identify(md(token))
    _, secret = await auth.delegate(person, actor, timedelta(hours=1), None, role)
    return secret


async def test_an_admins_delegated_token_is_a_user_unless_asked(
    auth: TokenAuthenticator, issuer: FakeIssuer
) -> None:
    carol = issuer.issue("carol", ["dba", "admins"])
    assert (await auth.identify(md(carol))).role == ADMIN
    plain = await auth.identify(md(await delegate(auth, carol)))
    assert (plain.role, plain.actor, plain.groups) == (USER, "devin", ("dba", "admins"))
    with pytest.raises(PermissionDenied, match="may open sessions only"):
        await auth.require_admin(md(await delegate(auth, carol)))
    explicit = await delegate(auth, carol, ADMIN)
    agent_admin = await auth.require_admin(md(explicit))
    assert agent_admin.role == ADMIN
    # Not a way to mint credentials that are never re-checked against carol.
    with pytest.raises(PermissionDenied, match="cannot create tokens"):
        await auth.create("backdoor", ADMIN, None, agent_admin)
    with pytest.raises(PermissionDenied, match="cannot create further tokens"):
        await auth.delegate(agent_admin, "devin", timedelta(hours=1), None, ADMIN)

    alice = issuer.issue("alice", ["dba"])
    with pytest.raises(PermissionDenied, match="may not delegate the admin role"):
        await delegate(auth, alice, ADMIN)


async def test_delegated_tokens_follow_the_persons_newest_login(
    auth: TokenAuthenticator, issuer: FakeIssuer
) -> None:
    first = issuer.issue("carol", ["dba", "admins", "ops"], iat=time.time() - 60)
    plain, admin = await delegate(auth, first), await delegate(auth, first, ADMIN)
    # Carol loses admins and ops at the identity provider; her next login says so.
    await auth.identify(md(issuer.issue("carol", ["dba", "new"])))
    assert (await auth.identify(md(plain))).groups == ("dba",)  # never a group gained later
    demoted = await auth.identify(md(admin))
    assert (demoted.role, demoted.groups) == (USER, ("dba",))
    # Her older, still unexpired token does not bring the groups back.
    await auth.identify(md(first))
    assert (await auth.identify(md(admin))).role == USER


async def test_a_person_who_stopped_logging_in_no_longer_vouches(
    auth: TokenAuthenticator, issuer: FakeIssuer, db: Database
) -> None:
    secret = await delegate(auth, issuer.issue("dave", ["dba"]))
    identity = await auth.identify(md(secret))
    assert await auth.still_valid(identity) is None

    def age(session: Any) -> None:
        row = session.get(PersonRow, "dave")
        row.last_seen_at = utc_now() - auth.login_max_age - timedelta(hours=1)
        session.add(row)

    await db.write(age)
    with pytest.raises(Unauthenticated, match="dave has not logged in for 25 h"):
        await auth.identify(md(secret))
    why = await auth.still_valid(identity)
    assert why is not None and "has not logged in" in why


async def test_a_token_delegated_with_a_stored_token_dies_with_it(
    auth: TokenAuthenticator, writer: AuditWriter, db: Database
) -> None:
    admin = Identity(subject="admin", groups=("admins",), role=ADMIN)
    row, machine = await auth.create("ops-bot", ADMIN, None, admin)
    secret = await delegate(auth, machine)
    delegated = await auth.identify(md(secret))
    assert (delegated.role, delegated.groups) == (USER, ())
    await auth.revoke(row.id, admin)
    with pytest.raises(Unauthenticated, match="delegated from was revoked"):
        await auth.identify(md(secret))
    assert await auth.still_valid(delegated) == "the token this one was delegated from was revoked"


async def test_an_expired_login_is_no_longer_valid(auth: TokenAuthenticator) -> None:
    live = Identity(subject="alice", expires_at=utc_now() + timedelta(seconds=30))
    assert await auth.still_valid(live) is None
    gone = Identity(subject="alice", expires_at=utc_now() - timedelta(seconds=1))
    why = await auth.still_valid(gone)
    assert why is not None and why.startswith("the login expired at ")


async def test_an_approval_covers_exactly_its_person_and_actor(
    db: Database, writer: AuditWriter
) -> None:
    reviews = Reviews(db, writer)
    now = utc_now()

    def approve(actor: str | None) -> None:
        def add(session: Any) -> None:
            session.add(
                ReviewRow(
                    id=str(uuid.uuid4()),
                    requester="alice",
                    actor=actor,
                    connection="pg",
                    mode="exec",
                    rule="oncall",
                    reviewer_groups=json.dumps(["security"]),
                    ttl_seconds=3600,
                    status="approved",
                    created_at=now,
                    expires_at=now,
                    grant_until=now + timedelta(hours=1),
                )
            )

        return add

    alice = Identity(subject="alice", groups=("dba",))
    devin = Identity(subject="alice", groups=("dba",), actor="devin")
    cursor = Identity(subject="alice", groups=("dba",), actor="cursor")
    await db.write(approve(None))
    assert await reviews.granted(alice, "pg", "exec") is not None
    assert await reviews.granted(devin, "pg", "exec") is None
    assert await reviews.granted(cursor, "pg", "exec") is None
    await db.write(approve("devin"))
    held = await reviews.granted(devin, "pg", "exec")
    assert held is not None and held.actor == "devin"
    assert await reviews.granted(cursor, "pg", "exec") is None
    bob = Identity(subject="bob", groups=("dba",), actor="devin")
    assert await reviews.granted(bob, "pg", "exec") is None


async def test_the_admin_token_file_is_private_even_over_an_old_readable_one(
    auth: TokenAuthenticator, tmp_path: Path
) -> None:
    path = tmp_path / "admin.token"
    path.write_text("gh_from_another_database\n")
    path.chmod(0o644)  # left by hand, or by an older version
    await auth.bootstrap_admin(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert token != "gh_from_another_database"
    assert (await auth.identify(md(token))).role == ADMIN
