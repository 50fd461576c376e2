"""Bearer tokens: generated with a kind prefix, stored only as SHA-256 hashes.

Prefixes (`ghu_` people and automation, `ghj_` agent join tokens, `gha_` agent credentials)
make a leaked token easy to recognise for secret scanners and for the person who finds it. The
tokens carry 256 bits of randomness, so a fast hash is enough: there is nothing to brute-force.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from controlplane.audit.events import as_utc, draft, utc_now
from controlplane.audit.writer import AuditWriter
from controlplane.auth.failures import AuthFailures
from controlplane.auth.identity import ADMIN, AUDIT_READER, USER, Identity
from controlplane.auth.oidc import Claims, OidcValidator
from controlplane.auth.sources import current_source
from controlplane.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from controlplane.store.database import Database
from controlplane.store.models import ApiTokenRow, PersonRow
from wire.atomicfile import write_atomic

USER_PREFIX = "ghu_"
JOIN_PREFIX = "ghj_"
AGENT_PREFIX = "gha_"
ADMIN_GROUPS_ENV = "GATEHOUSE_ADMIN_GROUPS"
MAX_DELEGATION = timedelta(days=30)
LOGIN_MAX_AGE_ENV = "GATEHOUSE_DELEGATION_LOGIN_MAX_AGE"
#: A delegated token works only while its person has logged in within this long.
DEFAULT_LOGIN_MAX_AGE = timedelta(hours=24)
DEFAULT_ADMIN_GROUPS = frozenset({"admins"})
#: The person's row is rewritten at most this often when nothing about them changed.
SEEN_WRITE_INTERVAL = timedelta(seconds=60)


def new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer(metadata: Any) -> str:
    """The token from `authorization: Bearer …`, or a refusal that says how to provide one.

    `metadata` is what gRPC hands a servicer: pairs of key and value (typed as Any because
    gRPC's stubs describe it as a mapping, which it is not at run time).
    """
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    raise Unauthenticated(
        "no credential: log in with `gatehouse login`, or set GATEHOUSE_TOKEN to a token"
    )


class TokenAuthenticator:
    """Resolves people's and automation's bearer tokens to an Identity."""

    def __init__(
        self,
        db: Database,
        audit: AuditWriter,
        oidc: OidcValidator | None = None,
        admin_groups: frozenset[str] | None = None,
        failures: AuthFailures | None = None,
        login_max_age: timedelta | None = None,
    ) -> None:
        self._db = db
        self._audit = audit
        self._oidc = oidc
        self.admin_groups = DEFAULT_ADMIN_GROUPS if admin_groups is None else admin_groups
        self.failures = failures if failures is not None else AuthFailures(audit)
        self.login_max_age = DEFAULT_LOGIN_MAX_AGE if login_max_age is None else login_max_age

    async def identify(self, metadata: Any) -> Identity:
        """The caller; a refusal is recorded as an `auth.fail` event (the reason, never the
        token), aggregated per source (see `AuthFailures`) before it is raised.

        A source over its failure budget is refused at once, without any token work."""
        source = current_source()
        throttled = self.failures.throttled(source)
        if throttled is not None:
            await self.failures.failed(source, throttled, _credential_kind(metadata), True)
            raise Unauthenticated(throttled)
        try:
            return await self._identify(metadata)
        except Unauthenticated as exc:
            await self.failures.failed(source, str(exc), _credential_kind(metadata), False)
            raise

    async def _identify(self, metadata: Any) -> Identity:
        token = bearer(metadata)
        if self._oidc is not None and token.count(".") == 2:
            claims = await self._oidc.validate(token)
            await self._seen(claims)
            person = dataclasses.replace(
                claims.identity(),
                expires_at=claims.expires_at + timedelta(seconds=self._oidc.settings.leeway),
            )
            if self.admin_groups & set(person.groups):
                return dataclasses.replace(person, role=ADMIN)
            return person
        if not token.startswith(USER_PREFIX):
            raise Unauthenticated(
                "the credential is not a Gatehouse user token (it should start with "
                f"{USER_PREFIX!r}); check GATEHOUSE_TOKEN"
            )
        digest = token_hash(token)
        row = await self._db.read(
            lambda s: s.exec(select(ApiTokenRow).where(ApiTokenRow.token_hash == digest)).first()
        )
        now = utc_now()
        if row is None:
            raise Unauthenticated("the token is not known to this control plane")
        if row.revoked_at is not None:
            raise Unauthenticated("the token was revoked")
        if row.expires_at is not None and as_utc(row.expires_at) <= now:
            raise Unauthenticated("the token expired; create a new one")
        groups, role = tuple(json.loads(row.groups)), row.role
        if row.actor is not None:
            groups, role = await self._current(row)
        return Identity(
            subject=row.subject,
            email=row.email,
            groups=groups,
            actor=row.actor,
            role=role,
            scope=tuple(json.loads(row.connections)) if row.connections is not None else None,
            token_id=row.id,
            expires_at=as_utc(row.expires_at) if row.expires_at is not None else None,
        )

    async def _seen(self, claims: Claims) -> None:
        """Remember what the identity provider says about the person now: the groups of their
        newest token. An older token (issued before the one remembered) changes nothing, so
        a person removed from a group cannot restore it with a token from before."""
        now = utc_now()
        issued = (
            datetime.fromtimestamp(float(claims.raw["iat"]), UTC)
            if isinstance(claims.raw.get("iat"), int | float)
            else now
        )
        groups = json.dumps(sorted(set(claims.groups)))

        def upsert(session: Session) -> None:
            row = session.get(PersonRow, claims.subject)
            if row is None:
                session.add(
                    PersonRow(
                        subject=claims.subject,
                        email=claims.email,
                        groups=groups,
                        issued_at=issued,
                        last_seen_at=now,
                    )
                )
                return
            if issued < as_utc(row.issued_at):
                return
            same = row.groups == groups and row.email == claims.email
            if same and now - as_utc(row.last_seen_at) < SEEN_WRITE_INTERVAL:
                return
            row.groups, row.email = groups, claims.email
            row.issued_at, row.last_seen_at = issued, now
            session.add(row)

        def fresh(session: Session) -> bool:
            row = session.get(PersonRow, claims.subject)
            return (
                row is not None
                and (issued < as_utc(row.issued_at) or row.groups == groups)
                and now - as_utc(row.last_seen_at) < SEEN_WRITE_INTERVAL
            )

        if not await self._db.read(fresh):  # the common case writes nothing
            try:
                await self._db.write(upsert)
            except IntegrityError:  # a replica recorded the person's first login meanwhile
                await self._db.write(upsert)

    async def _current(self, row: ApiTokenRow) -> tuple[tuple[str, ...], str]:
        """A delegated token's groups and role now: never more than it was made with, nor
        than its person (or the token it was made with) has today. Unauthenticated when the
        person can no longer vouch for it."""
        why, groups, role = await self._delegator(row)
        if why is not None:
            raise Unauthenticated(why)
        kept = tuple(g for g in json.loads(row.groups) if g in groups)
        if row.role == ADMIN and role == ADMIN:
            return kept, ADMIN
        return kept, USER

    async def _delegator(self, row: ApiTokenRow) -> tuple[str | None, frozenset[str], str]:
        """(why the delegating person or token no longer vouches, or None; their groups and
        role today)."""
        if row.delegated_from is not None:
            parent_id = row.delegated_from
            parent = await self._db.read(lambda s: s.get(ApiTokenRow, parent_id))
            if parent is None or parent.revoked_at is not None:
                return "the token this one was delegated from was revoked", frozenset(), USER
            if parent.expires_at is not None and as_utc(parent.expires_at) <= utc_now():
                return "the token this one was delegated from expired", frozenset(), USER
            return None, frozenset(json.loads(parent.groups)), parent.role
        subject = row.subject
        person = await self._db.read(lambda s: s.get(PersonRow, subject))
        if person is None:
            return (
                f"{subject} has not logged in since this control plane began re-checking "
                "delegated tokens; they must log in again (`gatehouse login`)",
                frozenset(),
                USER,
            )
        age = utc_now() - as_utc(person.last_seen_at)
        if age > self.login_max_age:
            hours = self.login_max_age.total_seconds() / 3600
            return (
                f"{subject} has not logged in for {age.total_seconds() / 3600:.0f} h: a "
                f"delegated token works only while its person logs in at least every "
                f"{hours:g} h; they must log in again (`gatehouse login`)",
                frozenset(),
                USER,
            )
        groups = frozenset(json.loads(person.groups))
        return None, groups, ADMIN if self.admin_groups & groups else USER

    async def require_admin(self, metadata: Any) -> Identity:
        return await self.require_role(metadata, ADMIN)

    async def require_role(self, metadata: Any, *roles: str) -> Identity:
        """The caller, if their role is one of `roles`; refused otherwise, naming the need."""
        identity = await self.identify(metadata)
        if identity.actor is not None and not (identity.role == ADMIN and ADMIN in roles):
            raise PermissionDenied(
                f"a delegated token (actor {identity.actor!r}, role {identity.role!r}) may open "
                f"sessions only; {identity.subject} must do this with their own login (or "
                "create the token with --role admin, if they are an admin)"
            )
        if identity.role not in roles:
            needed = " or ".join(repr(r) for r in roles)
            raise PermissionDenied(
                f"{identity.subject} (role {identity.role!r}) may not do this: it needs {needed}"
            )
        return identity

    async def create(
        self, name: str, role: str, ttl: timedelta | None, by: Identity
    ) -> tuple[ApiTokenRow, str]:
        """A token for a machine (a SIEM's audit-reader, say); returns its row and secret.

        Not with a delegated token, even an admin one: a machine token is never re-checked
        against a person, so minting one would let the delegation outlive its person."""
        if by.actor is not None:
            raise PermissionDenied(
                f"a delegated token (actor {by.actor!r}) cannot create tokens; "
                f"{by.subject} must do this with their own login"
            )
        if role not in (ADMIN, AUDIT_READER):
            raise InvalidArgument(
                f"role {role!r} cannot be given to a token; use {AUDIT_READER} or {ADMIN}"
            )
        if not name.strip():
            raise InvalidArgument("a token needs a name that says who holds it, e.g. splunk")
        secret = new_token(USER_PREFIX)
        now = utc_now()
        row = ApiTokenRow(
            id=str(uuid.uuid4()),
            token_hash=token_hash(secret),
            subject=f"token:{name}",
            groups="[]",
            role=role,
            created_at=now,
            expires_at=now + ttl if ttl else None,
        )
        await self._db.write(lambda s: s.add(row))
        await self._audit.commit(
            draft(
                "admin.change",
                identity=by,
                change={"action": "token.create", "token": row.id, "name": name, "role": role},
            )
        )
        return row, secret

    async def delegate(
        self,
        person: Identity,
        actor: str,
        ttl: timedelta,
        connections: list[str] | None,
        role: str = USER,
    ) -> tuple[ApiTokenRow, str]:
        """A token that acts as `person` for `actor` (an AI agent), limited to `connections`
        (globs; None: whatever the person may use) and to `ttl`. Returns its row and secret.

        It has the `user` role unless `role` is `admin`, which only an admin may ask for (and
        which holds only while the person is still an admin)."""
        if person.actor is not None:
            raise PermissionDenied(
                "a delegated token cannot create further tokens; log in as yourself"
            )
        if person.role not in (ADMIN, USER):
            raise PermissionDenied(
                f"{person.subject} (role {person.role!r}) may not delegate: only people can"
            )
        role = role or USER
        if role not in (ADMIN, USER):
            raise InvalidArgument(f"--role must be {USER} or {ADMIN}, not {role!r}")
        if role == ADMIN and not person.is_admin:
            raise PermissionDenied(
                f"{person.subject} (role {person.role!r}) may not delegate the admin role"
            )
        actor = actor.strip()
        if not actor:
            raise InvalidArgument("a delegated token needs --actor: who uses it, e.g. devin")
        if ttl <= timedelta(0) or ttl > MAX_DELEGATION:
            raise InvalidArgument(
                f"--ttl must be between 1 s and {MAX_DELEGATION.days} days for a delegated token"
            )
        scope = None
        if connections is not None:
            scope = [c.strip() for c in connections if c.strip()]
            if not scope:
                raise InvalidArgument("--connections names no connection")
            if person.scope is not None:
                raise InvalidArgument("a scoped identity cannot delegate")
        secret = new_token(USER_PREFIX)
        now = utc_now()
        row = ApiTokenRow(
            id=str(uuid.uuid4()),
            token_hash=token_hash(secret),
            subject=person.subject,
            email=person.email,
            groups=json.dumps(list(person.groups)),
            actor=actor,
            role=role,
            created_at=now,
            expires_at=now + ttl,
            connections=json.dumps(scope) if scope is not None else None,
            created_by=person.subject,
            delegated_from=person.token_id,
        )
        await self._db.write(lambda s: s.add(row))
        await self._audit.commit(
            draft(
                "admin.change",
                identity=person,
                change={
                    "action": "token.delegate",
                    "token": row.id,
                    "actor": actor,
                    "role": role,
                    "connections": scope,
                    "expires": row.expires_at.isoformat() if row.expires_at else None,
                },
            )
        )
        return row, secret

    async def delegated(self, person: Identity) -> list[ApiTokenRow]:
        """The delegated tokens `person` made (an admin sees everyone's)."""

        def mine(session: Session) -> list[ApiTokenRow]:
            query = select(ApiTokenRow).where(col(ApiTokenRow.created_by).is_not(None))
            if not person.is_admin:
                query = query.where(ApiTokenRow.created_by == person.subject)
            return list(session.exec(query.order_by(col(ApiTokenRow.created_at))))

        return await self._db.read(mine)

    async def revoke_delegated(self, token_id: str, by: Identity) -> ApiTokenRow:
        """Revoke one of `by`'s delegated tokens (an admin: anyone's)."""

        def revoke(session: Session) -> ApiTokenRow:
            row = session.get(ApiTokenRow, token_id)
            if (
                row is None
                or row.created_by is None
                or not (by.is_admin or row.created_by == by.subject)
            ):
                raise NotFound(
                    f"you have no delegated token {token_id}; see `gatehouse tokens list`"
                )
            if row.revoked_at is None:
                row.revoked_at = utc_now()
                session.add(row)
            return row

        row = await self._db.write(revoke)
        await self._audit.commit(
            draft(
                "admin.change",
                identity=by,
                change={"action": "token.revoke", "token": token_id, "actor": row.actor},
            )
        )
        return row

    async def still_valid(self, identity: Identity) -> str | None:
        """None while the credential of a session's caller works; otherwise why it stopped:
        the login (OIDC token) expired, the token was revoked or expired, or the person who
        delegated it can no longer vouch for it."""
        now = utc_now()
        if identity.token_id is None:
            if identity.expires_at is not None and identity.expires_at <= now:
                return f"the login expired at {identity.expires_at:%Y-%m-%dT%H:%M:%SZ}"
            return None
        token_id = identity.token_id
        row = await self._db.read(lambda s: s.get(ApiTokenRow, token_id))
        if row is None or row.revoked_at is not None:
            return "the token was revoked"
        if row.expires_at is not None and as_utc(row.expires_at) <= now:
            return "the token expired"
        if row.actor is not None:
            why, _, _ = await self._delegator(row)
            return why
        return None

    async def tokens(self) -> list[ApiTokenRow]:
        """Machine tokens (delegated ones are listed by `delegated`)."""
        query = select(ApiTokenRow).where(col(ApiTokenRow.created_by).is_(None))
        return await self._db.read(
            lambda s: list(s.exec(query.order_by(col(ApiTokenRow.created_at))))
        )

    async def revoke(self, token_id: str, by: Identity) -> None:
        def revoke(session: Session) -> None:
            row = session.get(ApiTokenRow, token_id)
            if row is None:
                raise NotFound(f"no token {token_id}; see `gatehouse admin tokens list`")
            row.revoked_at = utc_now()
            session.add(row)

        await self._db.write(revoke)
        await self._audit.commit(
            draft("admin.change", identity=by, change={"action": "token.revoke", "token": token_id})
        )

    async def bootstrap_admin(self, token_file: Path) -> None:
        """Dev mode: make sure `token_file` holds a working admin token (0600)."""
        existing = await asyncio.to_thread(_read_token, token_file)
        if existing is not None:
            digest = token_hash(existing)

            def known(session: Session) -> bool:
                query = select(ApiTokenRow).where(ApiTokenRow.token_hash == digest)
                return session.exec(query).first() is not None

            if await self._db.read(known):
                return
        token = new_token(USER_PREFIX)

        def add(session: Session) -> None:
            session.add(
                ApiTokenRow(
                    id=str(uuid.uuid4()),
                    token_hash=token_hash(token),
                    subject="admin",
                    groups=json.dumps(["admins"]),
                    role=ADMIN,
                    created_at=utc_now(),
                )
            )

        await self._db.write(add)
        await asyncio.to_thread(_write_secret, token_file, token)


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def _write_secret(path: Path, value: str) -> None:
    """Write a secret readable by the owner only, created so from the start (a file already
    there, whatever its mode, is replaced, not written into)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (value + "\n").encode(), 0o600)


def _credential_kind(metadata: Any) -> str:
    """What kind of credential was shown, for the record: never the credential itself."""
    try:
        token = bearer(metadata)
    except Unauthenticated:
        return "none"
    for prefix, kind in ((USER_PREFIX, "gatehouse token"), (AGENT_PREFIX, "agent credential")):
        if token.startswith(prefix):
            return kind
    if token.startswith(JOIN_PREFIX):
        return "join token"
    return "jwt" if token.count(".") == 2 else "unknown"
