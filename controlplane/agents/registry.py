"""Enrolled agents and the ones online now.

An agent is created with a join token (N uses until it expires), exchanges it for a credential,
and then holds one control stream. In production the credential is a short-lived client
certificate for a key the agent made (the store keeps its SHA-256, and the one it renewed from);
with --dev, a bearer credential. Only hashes of secrets are stored. The live link of an online
agent has a small bounded outbox: a wedged agent makes `send` fail, never memory grow.

Last-seen is kept in memory and written for all agents that changed in one transaction every
FLUSH_EVERY seconds, and at once when an agent disconnects: a write per heartbeat per agent
was most of the control plane's load with thousands of agents (docs/decisions/0009). This
process's readers see the in-memory value; the store (other replicas) lags by FLUSH_EVERY.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import bindparam, update
from sqlmodel import Session, col, select

from controlplane.agents.certificates import (
    DEFAULT_JOIN_TTL,
    MAX_JOIN_TTL,
    MAX_JOIN_USES,
    AgentCertificates,
    Issued,
    describe,
)
from controlplane.audit.events import as_utc, draft, rfc3339, utc_now
from controlplane.audit.writer import AuditUnavailable, AuditWriter, append_events
from controlplane.auth.identity import Identity
from controlplane.auth.sources import current_source
from controlplane.auth.tokens import AGENT_PREFIX, JOIN_PREFIX, bearer, new_token, token_hash
from controlplane.errors import (
    AlreadyExists,
    GatehouseError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from controlplane.store.database import Database
from controlplane.store.models import AgentRow
from gatehouse.v1 import agent_pb2
from wire import jointoken

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
FLUSH_EVERY = 5.0  # seconds between batched last-seen writes
T = TypeVar("T")


class AgentLink:
    """The control stream of one online agent, as seen by the rest of the control plane."""

    def __init__(self, row: AgentRow, hello: agent_pb2.Hello, peer: str) -> None:
        self.agent_id = row.id
        self.name = row.name
        self.version = hello.version
        self.hostname = hello.hostname
        self.peer = peer
        self.outbox: asyncio.Queue[agent_pb2.ControlMessage] = asyncio.Queue(64)
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.last_seen = utc_now()

    async def send(self, message: agent_pb2.ControlMessage, timeout: float = 5.0) -> None:
        if self.closed.is_set():
            raise Unavailable(f"agent {self.name!r} is offline")
        try:  # the common case, without the task and timer of wait_for (a push sends 10,000)
            self.outbox.put_nowait(message)
            return
        except asyncio.QueueFull:
            pass
        try:
            await asyncio.wait_for(self.outbox.put(message), timeout)
        except TimeoutError:
            raise Unavailable(f"agent {self.name!r} is not reading its control stream") from None

    def close(self, reason: str) -> None:
        self.close_reason = reason
        self.closed.set()


@dataclass(frozen=True, slots=True)
class AgentStatus:
    row: AgentRow
    status: str  # online | offline | pending | revoked
    version: str
    hostname: str


@dataclass(frozen=True, slots=True)
class CreatedAgent:
    name: str
    join_token: str  # the secret and, when the control plane has its own CA, the CA pin
    pin: str | None
    uses: int
    expires: datetime


@dataclass(frozen=True, slots=True)
class Enrolled:
    agent_id: str
    name: str
    credential: str | None  # --dev: a bearer credential
    certificate: Issued | None  # production: the client certificate


class AgentRegistry:
    def __init__(
        self, db: Database, audit: AuditWriter, certificates: AgentCertificates | None = None
    ) -> None:
        self._db = db
        self._audit = audit
        # Production: agents get client certificates and are known by them. None (--dev):
        # bearer credentials, as plaintext on loopback has no TLS to carry a certificate.
        self.certificates = certificates
        self._links: dict[str, AgentLink] = {}
        self._revocations: dict[str, asyncio.Event] = {}
        # Links whose last-seen (version, hostname) the store does not have yet, by agent id;
        # `_writing` is the batch a flush is storing right now (readers still overlay it).
        self._pending: dict[str, AgentLink] = {}
        self._writing: dict[str, AgentLink] = {}
        self._flush_lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None

    # ---- administration -------------------------------------------------------------------

    async def create(
        self,
        name: str,
        by: Identity,
        *,
        uses: int = 1,
        ttl: timedelta = DEFAULT_JOIN_TTL,
    ) -> CreatedAgent:
        """Create (or re-create a revoked) agent; returns its join token, usable `uses` times
        (a pod without a volume re-joins with another use). An agent that exists and is not
        revoked is refused (AlreadyExists): revoke it first."""
        if not NAME_RE.match(name):
            raise InvalidArgument(
                f"invalid agent name {name!r}: use lowercase letters, digits, '.', '_' or '-'"
            )
        if not 1 <= uses <= MAX_JOIN_USES:
            raise InvalidArgument(f"--uses must be from 1 to {MAX_JOIN_USES}, not {uses}")
        if not timedelta(seconds=1) <= ttl <= MAX_JOIN_TTL:
            raise InvalidArgument(
                f"--ttl must be from 1s to {MAX_JOIN_TTL.days}d, not {ttl.total_seconds():g}s"
            )
        secret = new_token(JOIN_PREFIX)
        expires = utc_now() + ttl

        def create(session: Session) -> None:
            row = session.exec(select(AgentRow).where(AgentRow.name == name)).first()
            if row is not None and row.revoked_at is None:
                raise AlreadyExists(
                    f"agent {name!r} already exists; revoke it first with "
                    f"`gatehouse admin agents revoke {name}` to enroll it again"
                )
            if row is not None:
                session.delete(row)
                session.flush()
            session.add(
                AgentRow(
                    id=str(uuid.uuid4()),
                    name=name,
                    join_token_hash=token_hash(secret),
                    join_uses_left=uses,
                    join_expires_at=expires,
                    created_at=utc_now(),
                )
            )

        await self._db.write(create)
        await self._audit.commit(
            draft(
                "admin.change",
                identity=by,
                change={
                    "action": "agent.create",
                    "agent": name,
                    "join_uses": uses,
                    "join_expires": rfc3339(expires),
                },
            )
        )
        pin = self.certificates.pin if self.certificates else None
        return CreatedAgent(name, jointoken.format_token(secret, pin), pin, uses, expires)

    async def revoke(self, name: str, by: Identity) -> None:
        def revoke(session: Session) -> None:
            row = session.exec(select(AgentRow).where(AgentRow.name == name)).first()
            if row is None:
                raise NotFound(f"no agent named {name!r}; see `gatehouse admin agents list`")
            row.revoked_at = utc_now()
            row.credential_hash = None
            row.join_token_hash = None
            row.join_uses_left = 0
            row.cert_fingerprint = None
            row.prev_cert_fingerprint = None
            session.add(row)

        await self._db.write(revoke)
        await self._audit.commit(
            draft("admin.change", identity=by, change={"action": "agent.revoke", "agent": name})
        )
        link = self._links.get(name)
        if link is not None:
            link.close("the agent was revoked")
        cut = self._revocations.pop(name, None)
        if cut is not None:  # its sessions on this process end now, not when they finish
            cut.set()

    def revocation(self, name: str) -> asyncio.Event:
        """Set when the agent is revoked: its open session streams end then."""
        return self._revocations.setdefault(name, asyncio.Event())

    async def statuses(self) -> list[AgentStatus]:
        rows = await self._db.read(lambda s: list(s.exec(select(AgentRow).order_by(AgentRow.name))))
        result = []
        for row in rows:
            link = self._links.get(row.name)
            if row.revoked_at is not None:
                status = "revoked"
            elif link is not None:
                status = "online"
            elif row.enrolled_at is None:
                status = "pending"
            else:
                status = "offline"
            # This process may know a newer last-seen than the store (not flushed yet).
            unsaved = link or self._pending.get(row.id) or self._writing.get(row.id)
            if unsaved is not None and unsaved.agent_id == row.id:
                row.last_seen = max(unsaved.last_seen, as_utc(row.last_seen or unsaved.last_seen))
            version = link.version if link else row.version
            hostname = link.hostname if link else row.hostname
            result.append(AgentStatus(row, status, version, hostname))
        return result

    # ---- the agent's side -------------------------------------------------------------------

    async def enroll(self, request: agent_pb2.EnrollRequest, peer: str) -> Enrolled:
        """Spend one use of a join token: a client certificate for the request's key (or, with
        --dev, a bearer credential). Each use is an `agent.enroll` event; the certificate (or
        credential) of an earlier use stops working."""
        try:
            token = jointoken.parse(request.join_token)
        except jointoken.BadJoinToken as exc:
            raise Unauthenticated(str(exc)) from None
        certs = self.certificates
        if certs is not None and not request.csr:
            raise InvalidArgument(
                "this control plane gives agents client certificates: the enrollment must carry "
                "a certificate request (upgrade the agent)"
            )
        digest = token_hash(token.secret)
        # Only the name is checked before signing, so a bad CSR does not spend a use.
        row = await self._db.read(
            lambda s: s.exec(select(AgentRow).where(AgentRow.join_token_hash == digest)).first()
        )
        if row is None:
            raise Unauthenticated(
                "unknown or revoked join token; create a new one with "
                "`gatehouse admin agents create NAME`"
            )
        if request.name and request.name != row.name:
            raise PermissionDenied(
                f"this join token is for agent {row.name!r}, not {request.name!r}"
            )
        issued: Issued | None = None
        credential: str | None = None
        if certs is not None:
            pem = certs.ca.sign_csr(request.csr, row.name, certs.lifetime, client=True)
            issued = describe(pem)
        else:
            credential = new_token(AGENT_PREFIX)

        address = current_source()

        def enroll(session: Session) -> tuple[str, int]:
            # FOR UPDATE: two replicas spending the last use at once must not both succeed.
            row = session.exec(
                select(AgentRow).where(AgentRow.join_token_hash == digest).with_for_update()
            ).first()
            if row is None or row.revoked_at is not None:
                raise Unauthenticated("unknown or revoked join token")
            now = utc_now()
            if row.join_expires_at is not None and as_utc(row.join_expires_at) <= now:
                raise PermissionDenied(
                    f"this join token expired at {as_utc(row.join_expires_at):%Y-%m-%d %H:%M:%S}"
                    f" UTC; create a new one with `gatehouse admin agents revoke {row.name}` and "
                    f"`gatehouse admin agents create {row.name} --ttl …`"
                )
            if row.join_uses_left < 1:
                when = as_utc(row.enrolled_at or now)
                raise PermissionDenied(
                    f"this join token was already used (agent {row.name!r} last enrolled at "
                    f"{when:%Y-%m-%d %H:%M:%S} UTC) and has no uses left; revoke and re-create "
                    f"the agent (with --uses N for a token that enrolls N times)"
                )
            row.join_uses_left -= 1
            row.enrolled_at = now
            row.version = request.version
            row.hostname = request.hostname[:255]
            # A new use replaces the earlier instance's credential or certificate.
            row.credential_hash = token_hash(credential) if credential else None
            row.cert_fingerprint = issued.fingerprint if issued else None
            row.cert_serial = issued.serial if issued else None
            row.cert_not_after = issued.not_after if issued else None
            row.prev_cert_fingerprint = None
            row.prev_cert_not_after = None
            session.add(row)
            event = draft(
                "agent.enroll",
                agent={
                    "name": row.name,
                    "version": request.version[:100],
                    "hostname": request.hostname[:255],
                    "peer": peer,
                    "address": address,
                },
                join={"uses_left": row.join_uses_left},
                certificate=(
                    {"serial": issued.serial, "not_after": rfc3339(issued.not_after)}
                    if issued
                    else None
                ),
            )
            append_events(session, [event], signer=self._audit.signer)
            return row.id, row.join_uses_left

        agent_id, _ = await self._granting("enrollment", enroll)
        if self._links.get(row.name) is not None:  # the earlier instance's credential is gone
            self._links[row.name].close("replaced by a new enrollment of the same agent")
        return Enrolled(agent_id, row.name, credential, issued)

    async def renew(self, row: AgentRow, csr: bytes, peer: str) -> Issued:
        """A new certificate for the agent authenticated by its current one; the current one
        keeps opening sessions until it expires, so nothing running is dropped."""
        certs = self.certificates
        if certs is None:
            raise InvalidArgument("this control plane does not issue certificates (--dev)")
        issued = describe(certs.ca.sign_csr(csr, row.name, certs.lifetime, client=True))
        old = row.cert_fingerprint

        def renew(session: Session) -> None:
            current = session.get(AgentRow, row.id, with_for_update=True)
            if current is None or current.revoked_at is not None or current.cert_fingerprint != old:
                raise Unauthenticated("this certificate was revoked or replaced")
            current.prev_cert_fingerprint = current.cert_fingerprint
            current.prev_cert_not_after = current.cert_not_after
            current.cert_fingerprint = issued.fingerprint
            current.cert_serial = issued.serial
            current.cert_not_after = issued.not_after
            session.add(current)
            event = draft(
                "agent.renew",
                agent={"name": row.name, "peer": peer},
                certificate={"serial": issued.serial, "not_after": rfc3339(issued.not_after)},
            )
            append_events(session, [event], signer=self._audit.signer)

        await self._granting("renewal", renew)
        return issued

    async def _granting(self, what: str, grant: Callable[[Session], T]) -> T:
        """Store a credential and its audit event in one transaction (the audit writer's, so
        the event joins the chain in order): the credential is granted only if its event is
        recorded, and an event is never recorded for a credential that was not stored."""
        try:
            return await self._audit.transact(grant)
        except Exception as exc:
            if isinstance(exc, GatehouseError) and not isinstance(exc, AuditUnavailable):
                raise  # refused (a used-up token, a replaced certificate): nothing was stored
            # The event could not be appended, or the store failed: rolled back, both.
            log.error("agent %s refused: it could not be recorded: %s", what, exc)
            raise Unavailable(
                f"the {what} could not be recorded in the audit trail, so no credential was "
                "issued; the join token or certificate is unchanged: try again once the "
                "control plane's store is available"
            ) from None

    async def authenticate(self, context: Any) -> AgentRow:
        """The agent this call comes from: by the verified client certificate in production,
        by the bearer credential with --dev (and only there)."""
        if self.certificates is not None:
            return await self._by_certificate(context)
        credential = bearer(context.invocation_metadata())
        if jointoken.is_join_token(credential):
            raise Unauthenticated("a join token must first be exchanged with Enroll")
        digest = token_hash(credential)
        row = await self._db.read(
            lambda s: s.exec(select(AgentRow).where(AgentRow.credential_hash == digest)).first()
        )
        if row is None or row.revoked_at is not None:
            raise Unauthenticated(
                "the agent credential is unknown or was revoked; enroll the agent again with a "
                "new join token"
            )
        return row

    async def _by_certificate(self, context: Any) -> AgentRow:
        assert self.certificates is not None
        found = self.certificates.peer_fingerprint(context)
        if found is None:
            raise Unauthenticated(
                "agents authenticate with their client certificate: this call carried none "
                "(enroll the agent with a join token)"
            )
        now = utc_now()

        def lookup(s: Session) -> AgentRow | None:
            current = s.exec(select(AgentRow).where(AgentRow.cert_fingerprint == found)).first()
            if current is not None and as_utc(current.cert_not_after or now) > now:
                return current
            previous = s.exec(
                select(AgentRow).where(AgentRow.prev_cert_fingerprint == found)
            ).first()
            if previous is not None and as_utc(previous.prev_cert_not_after or now) > now:
                return previous
            return None

        row = await self._db.read(lookup)
        if row is None or row.revoked_at is not None:
            raise Unauthenticated(
                "this agent certificate is unknown, replaced or revoked; enroll the agent again "
                "with a new join token"
            )
        return row

    async def connected(self, row: AgentRow, hello: agent_pb2.Hello, peer: str) -> AgentLink:
        link = AgentLink(row, hello, peer)
        previous = self._links.get(row.name)
        if previous is not None:
            previous.close("replaced by a newer connection of the same agent")
        self._links[row.name] = link
        self._unsaved(link)  # last-seen, version and hostname go with the next flush
        await self._audit.commit(draft("agent.connect", agent=self._describe(link)))
        return link

    async def disconnected(self, link: AgentLink) -> None:
        link.close(link.close_reason or "the control stream ended")
        if self._links.get(link.name) is link:
            del self._links[link.name]
            link.last_seen = utc_now()
            self._unsaved(link)
            # Now, not at the next tick: many disconnecting together share one transaction.
            try:
                await asyncio.shield(self.flush())
            except Exception as exc:  # kept pending: the next flush tries again
                log.warning("could not store the last-seen of agent %s: %s", link.name, exc)
        await self._audit.commit(
            draft("agent.disconnect", agent=self._describe(link), reason=link.close_reason)
        )

    def heartbeat(self, link: AgentLink) -> None:
        """Note the agent alive; the store gets it with the next batched flush."""
        link.last_seen = utc_now()
        self._unsaved(link)

    def link(self, name: str) -> AgentLink | None:
        return self._links.get(name)

    def online(self) -> list[AgentLink]:
        return list(self._links.values())

    async def flush(self) -> None:
        """Store every pending last-seen in one transaction. Concurrent callers take turns,
        and the later ones find their agents already written by an earlier batch; a failed
        batch stays pending for the next flush."""
        async with self._flush_lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            rows = [
                {"b_id": k, "b_seen": v.last_seen, "b_version": v.version, "b_host": v.hostname}
                for k, v in batch.items()
            ]
            self._writing = batch
            try:
                await self._db.write(lambda session: _store_seen(session, rows))
            except Exception:
                for agent_id, link in batch.items():
                    self._pending.setdefault(agent_id, link)
                self._schedule()
                raise
            finally:
                self._writing = {}

    def _unsaved(self, link: AgentLink) -> None:
        self._pending[link.agent_id] = link
        self._schedule()

    def _schedule(self) -> None:
        """One timer task at most, and only while something is pending: no task to stop."""
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(FLUSH_EVERY)
        try:
            await self.flush()
        except Exception as exc:  # the store is down: keep the values, try again later
            log.warning("could not store the agents' last-seen times: %s", exc)
        if self._pending:
            self._flusher = asyncio.create_task(self._flush_later())

    @staticmethod
    def _describe(link: AgentLink) -> dict[str, str]:
        return {
            "name": link.name,
            "version": link.version,
            "hostname": link.hostname,
            "peer": link.peer,
        }


def _store_seen(session: Session, rows: list[dict[str, Any]]) -> None:
    """One executemany UPDATE by primary key; a row deleted meanwhile is simply skipped."""
    statement = (
        update(AgentRow)
        .where(col(AgentRow.id) == bindparam("b_id"))
        .values(
            last_seen=bindparam("b_seen"),
            version=bindparam("b_version"),
            hostname=bindparam("b_host"),
        )
    )
    session.connection().execute(statement, rows)
