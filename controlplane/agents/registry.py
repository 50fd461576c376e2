"""Enrolled agents, their instances, and the ones online now.

An agent name is created with a join token (N uses until it expires). Each use enrolls one
instance of the agent — a process with its own credential — so several processes can serve
one name (a pool, ADR 0024). In production the credential is a short-lived client certificate
for a key the instance made (the store keeps its SHA-256, and the one it renewed from); with
--dev, a bearer credential. Only hashes of secrets are stored. Each instance holds one control
stream on one replica; the store records which (`agent_instances.replica`), so a session on
any replica can be routed to it (ADR 0023). The live link of an online instance has a small
bounded outbox: a wedged agent makes `send` fail, never memory grow.

Last-seen is kept in memory and written for all instances that changed in one transaction
every FLUSH_EVERY seconds, and at once when an instance connects or disconnects: a write per
heartbeat per agent was most of the control plane's load with thousands of agents
(docs/decisions/0009). This process's readers see the in-memory value; the store (other
replicas) lags by FLUSH_EVERY.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import bindparam, delete, or_, update
from sqlmodel import Session, col, select

from controlplane.agents.certificates import (
    DEFAULT_JOIN_TTL,
    MAX_JOIN_TTL,
    MAX_JOIN_USES,
    AgentCertificates,
    Issued,
    describe,
    fingerprint,
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
from controlplane.store.models import AgentInstanceRow, AgentRow, ReplicaRow
from gatehouse.v1 import agent_pb2
from wire import jointoken

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
FLUSH_EVERY = 5.0  # seconds between batched last-seen writes
REPLICA_TIMEOUT = 5.0  # seconds without a heartbeat after which a replica counts as gone
# Revoked instance ids remembered so a leg or control stream identified just before its
# revocation is cut when it registers; only that window matters, so the oldest may go.
REMEMBERED_REVOCATIONS = 10_000
# Replicas: how long a session waits for an instance of its agent to come (back) online, as
# when the replica that held them stops and they reconnect to another; and how often it looks.
ROUTE_WAIT = 5.0
ROUTE_POLL = 0.2
T = TypeVar("T")


class AgentLink:
    """The control stream of one online agent instance, as seen by the rest of the control
    plane."""

    def __init__(self, instance: AgentInstanceRow, hello: agent_pb2.Hello, peer: str) -> None:
        self.agent_id = instance.agent_id
        self.instance_id = instance.id
        self.name = instance.name
        self.version = hello.version
        self.hostname = hello.hostname
        # The account the agent runs as (None: an agent older than Hello.uid).
        self.uid = hello.uid if hello.HasField("uid") else None
        self.user = hello.user or None
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
    """One line of `agents list`: an instance of an agent, or a name with none yet."""

    name: str
    instance_id: str  # "" for a name no instance has enrolled under yet
    status: str  # online | offline | pending | revoked
    version: str
    hostname: str
    replica: str  # the replica holding its control stream ("" when not online)
    created_at: datetime
    last_seen: datetime | None
    cert_serial: str
    cert_not_after: datetime | None


@dataclass(frozen=True, slots=True)
class Route:
    """Where a session order for an agent goes: the chosen instance and the replica holding
    its control stream."""

    name: str
    instance_id: str
    replica: str


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
    instance_id: str
    name: str
    credential: str | None  # --dev: a bearer credential
    certificate: Issued | None  # production: the client certificate


#: Sends a session order to an instance held by another replica (the replica bus); None
#: while this process is the only replica.
Forward = Callable[[Route, agent_pb2.OpenSession], Awaitable[None]]


class AgentRegistry:
    def __init__(
        self,
        db: Database,
        audit: AuditWriter,
        certificates: AgentCertificates | None = None,
        *,
        replica_id: str = "",
    ) -> None:
        self._db = db
        self._audit = audit
        # Production: agents get client certificates and are known by them. None (--dev):
        # bearer credentials, as plaintext on loopback has no TLS to carry a certificate.
        self.certificates = certificates
        #: This process's id in `replicas`, recorded on the instances whose streams it holds.
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        # --dev: host:port of this replica's plaintext session-leg listener, put in every
        # session order for its clients (OpenSession.leg). Empty: agents dial the gRPC address.
        self.leg_address = ""
        #: Seconds after which a replica that stopped saying it is alive counts as gone.
        self.replica_timeout = REPLICA_TIMEOUT
        #: How a session order reaches an instance held by another replica (replica bus).
        self.forward: Forward | None = None
        #: Tells the other replicas which instances were revoked (replica bus).
        self.on_revoked: Callable[[list[str]], Awaitable[None]] | None = None
        self._links: dict[str, AgentLink] = {}  # by instance id
        self._revocations: dict[str, asyncio.Event] = {}  # by instance id
        # Instance ids cut by this process, oldest first (a dict keeps insertion order).
        self._revoked: dict[str, None] = {}
        self._turn: dict[str, int] = {}  # round robin over a name's instances
        self._suspect: dict[str, float] = {}  # replicas that failed an order, until when
        # Links whose last-seen (version, hostname, replica) the store does not have yet, by
        # instance id; `_writing` is the batch a flush is storing (readers still overlay it).
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
        """Create (or re-create a revoked) agent; returns its join token, usable `uses` times:
        each use enrolls one instance of the agent (a pool), or re-joins a pod without a
        volume. An agent that exists and is not revoked is refused (AlreadyExists).

        Not with a delegated token, even an admin one: an enrolled agent's credential is never
        re-checked against a person, so it would outlive the delegation (ADR 0014)."""
        if by.actor is not None:
            raise PermissionDenied(
                f"a delegated token (actor {by.actor!r}) cannot create agents or join tokens; "
                f"{by.subject} must do this with their own login"
            )
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
                session.connection().execute(
                    delete(AgentInstanceRow).where(col(AgentInstanceRow.agent_id) == row.id)
                )
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
            event = draft(
                "admin.change",
                identity=by,
                change={
                    "action": "agent.create",
                    "agent": name,
                    "join_uses": uses,
                    "join_expires": rfc3339(expires),
                },
            )
            append_events(session, [event], signer=self._audit.signer)

        # A join token is a credential: stored only with its event, like enroll's certificate.
        await self._granting(
            "agent's creation", create, "no join token was issued and the agent is unchanged"
        )
        pin = self.certificates.pin if self.certificates else None
        return CreatedAgent(name, jointoken.format_token(secret, pin), pin, uses, expires)

    async def revoke(self, name: str, by: Identity, instance: str = "") -> list[str]:
        """Revoke the agent (its join token and every instance) or, with `instance`, that one
        instance; returns the instance ids revoked. Their credentials stop working at their
        next call; the streams this process holds end now, other replicas' within seconds."""

        def revoke(session: Session) -> list[str]:
            row = session.exec(select(AgentRow).where(AgentRow.name == name)).first()
            if row is None:
                raise NotFound(f"no agent named {name!r}; see `gatehouse admin agents list`")
            query = select(AgentInstanceRow).where(AgentInstanceRow.agent_id == row.id)
            if instance:
                query = query.where(AgentInstanceRow.id == instance)
            found = list(session.exec(query))
            if instance and not found:
                raise NotFound(
                    f"agent {name!r} has no instance {instance!r}; see `gatehouse admin agents "
                    "list` for its instances"
                )
            now = utc_now()
            if not instance:
                row.revoked_at = now
                row.join_token_hash = None
                row.join_uses_left = 0
                session.add(row)
            for item in found:
                item.revoked_at = item.revoked_at or now
                item.credential_hash = None
                item.cert_fingerprint = None
                item.prev_cert_fingerprint = None
                session.add(item)
            return [item.id for item in found]

        revoked = await self._db.write(revoke)
        change: dict[str, Any] = {"action": "agent.revoke", "agent": name}
        if instance:
            change["instance"] = instance
        await self._audit.commit(draft("admin.change", identity=by, change=change))
        self.cut(revoked)
        if self.on_revoked is not None:
            await self.on_revoked(revoked)
        return revoked

    def cut(self, instances: Iterable[str]) -> None:
        """End what this process holds of revoked instances: control streams and sessions."""
        for instance_id in instances:
            # Remembered first: a stream identified before this revocation but registering
            # after it (`revocation`, `connected`) is cut then, not left running.
            self._revoked[instance_id] = None
            if len(self._revoked) > REMEMBERED_REVOCATIONS:
                del self._revoked[next(iter(self._revoked))]
            link = self._links.get(instance_id)
            if link is not None:
                link.close("the agent was revoked")
            cut = self._revocations.pop(instance_id, None)
            if cut is not None:  # its sessions on this process end now, not when they finish
                cut.set()

    def revocation(self, instance_id: str) -> asyncio.Event:
        """Set when the instance is revoked: its open session legs end then. Already set for
        an instance revoked before (its leg was identified just before the revocation)."""
        if instance_id in self._revoked:
            revoked = asyncio.Event()
            revoked.set()
            return revoked
        return self._revocations.setdefault(instance_id, asyncio.Event())

    async def was_revoked(self, instance_id: str) -> bool:
        """Whether the store says the instance is revoked (and if so, cut it here now). A
        revoked agent exits at once: its session legs on another replica may break before
        that replica hears of the revocation, and their sessions end as revoked, not lost."""
        if instance_id in self._revoked:
            return True

        def revoked(session: Session) -> bool:
            row = session.get(AgentInstanceRow, instance_id)
            return row is not None and row.revoked_at is not None

        if not await self._db.read(revoked):
            return False
        self.cut([instance_id])
        return True

    def held(self) -> list[str]:
        """Instance ids with a control stream or a session leg on this process."""
        return sorted({*self._links, *self._revocations})

    async def recheck(self) -> None:
        """Cut every instance this process holds whose credential was revoked meanwhile: a
        revocation whose notification this replica missed still ends within one re-check."""
        held = self.held()
        if not held:
            return

        def revoked(session: Session) -> list[str]:
            query = select(AgentInstanceRow.id, AgentInstanceRow.revoked_at).where(
                col(AgentInstanceRow.id).in_(held)
            )
            alive = {i for i, gone in session.exec(query) if gone is None}
            return [i for i in held if i not in alive]

        gone = await self._db.read(revoked)
        if gone:
            log.info("cutting %d revoked agent instance(s)", len(gone))
            self.cut(gone)

    async def statuses(self) -> list[AgentStatus]:
        """Every agent's instances (and names none enrolled under yet), from the store: the
        same on every replica, but for a last-seen this process has not stored yet."""
        now = utc_now()

        def load(
            session: Session,
        ) -> tuple[list[AgentRow], list[AgentInstanceRow], set[str]]:
            agents = list(session.exec(select(AgentRow).order_by(AgentRow.name)))
            instances = list(
                session.exec(
                    select(AgentInstanceRow).order_by(
                        col(AgentInstanceRow.name), col(AgentInstanceRow.enrolled_at)
                    )
                )
            )
            return agents, instances, self._live_replicas(session, now)

        agents, instances, live = await self._db.read(load)
        by_agent: dict[str, list[AgentInstanceRow]] = {}
        for item in instances:
            by_agent.setdefault(item.agent_id, []).append(item)
        result = []
        for row in agents:
            mine = by_agent.get(row.id, [])
            if not mine:
                status = "revoked" if row.revoked_at is not None else "pending"
                result.append(
                    AgentStatus(row.name, "", status, "", "", "", row.created_at, None, "", None)
                )
                continue
            for item in mine:
                link = self._links.get(item.id)
                online = (link is not None and not link.closed.is_set()) or (
                    item.replica is not None
                    and item.replica != self.replica_id
                    and item.replica in live
                )
                holder = self.replica_id if link is not None else item.replica or ""
                if row.revoked_at is not None or item.revoked_at is not None:
                    status = "revoked"
                else:
                    status = "online" if online else "offline"
                last_seen = item.last_seen
                # This process may know a newer last-seen than the store (not flushed yet).
                unsaved = (
                    self._links.get(item.id)
                    or self._pending.get(item.id)
                    or self._writing.get(item.id)
                )
                if unsaved is not None:
                    last_seen = max(unsaved.last_seen, as_utc(last_seen or unsaved.last_seen))
                result.append(
                    AgentStatus(
                        name=row.name,
                        instance_id=item.id,
                        status=status,
                        version=link.version if link is not None else item.version,
                        hostname=link.hostname if link is not None else item.hostname,
                        replica=holder if status == "online" else "",
                        created_at=row.created_at,
                        last_seen=last_seen,
                        cert_serial=item.cert_serial or "",
                        cert_not_after=item.cert_not_after,
                    )
                )
        return result

    # ---- routing sessions -------------------------------------------------------------------

    async def route(
        self, name: str, wait: float | None = None, exclude: frozenset[str] = frozenset()
    ) -> Route:
        """The instance of `name` the next session goes to: its online instances (on any live
        replica) take turns. When none is online, waits up to `wait` seconds (default: while
        several replicas share the store, ROUTE_WAIT) for one to reconnect, then raises
        Unavailable (a message for the user). Instances in `exclude`, and those of replicas
        that just failed to take an order, are passed over."""
        if wait is None:
            wait = ROUTE_WAIT if self.forward is not None else 0.0
        now = utc_now()
        clock = time.monotonic()
        suspect = {r for r, until in self._suspect.items() if until > clock}
        local = {
            link.instance_id: Route(name, link.instance_id, self.replica_id)
            for link in self._links.values()
            if link.name == name and not link.closed.is_set()
        }

        def online(session: Session) -> list[Route]:
            query = select(AgentInstanceRow.id, AgentInstanceRow.replica).where(
                AgentInstanceRow.name == name,
                col(AgentInstanceRow.revoked_at).is_(None),
                col(AgentInstanceRow.replica).is_not(None),
            )
            rows = list(session.exec(query))
            if not rows:
                return []
            live = self._live_replicas(session, now)
            return [
                Route(name, i, replica)
                for i, replica in rows
                if replica in live
                and replica != self.replica_id
                and replica is not None
                and replica not in suspect
            ]

        remote = await self._db.read(online) if self.forward is not None else []
        candidates = sorted(
            (r for r in [*local.values(), *remote] if r.instance_id not in exclude),
            key=lambda r: r.instance_id,
        )
        if not candidates and wait > 0:
            # A replica restarting or dying: its instances are reconnecting elsewhere now.
            await asyncio.sleep(ROUTE_POLL)
            return await self.route(name, wait - ROUTE_POLL, exclude)
        if not candidates:
            raise Unavailable(
                f"agent {name!r} is offline (no instance of it is connected); check it with "
                "`gatehouse admin agents list`"
            )
        turn = self._turn.get(name, random.randrange(len(candidates)))
        self._turn[name] = turn + 1
        return candidates[turn % len(candidates)]

    async def order(self, route: Route, order: agent_pb2.OpenSession) -> None:
        """Send a session order to the routed instance, here or through its replica. When it
        cannot take it (its stream closed a moment ago, or another replica died or no longer
        holds it), the order goes to another online instance instead."""
        if self.leg_address and not order.leg:
            order.leg = self.leg_address  # where the agent dials this replica's leg (--dev)
        tried: set[str] = set()
        while True:
            try:
                await self._send(route, order)
                return
            except Unavailable:
                # Nothing was queued for that instance: another one may take the session.
                tried.add(route.instance_id)
                if route.replica != self.replica_id:
                    # Pass that replica over until its heartbeat would have told us anyway.
                    self._suspect[route.replica] = time.monotonic() + self.replica_timeout
                log.warning(
                    "session %s: replica %s did not take the order for instance %s (gone or "
                    "not reading); rerouting",
                    order.session_id,
                    route.replica,
                    route.instance_id,
                )
                route = await self.route(route.name, exclude=frozenset(tried))

    async def _send(self, route: Route, order: agent_pb2.OpenSession) -> None:
        if route.replica == self.replica_id:
            link = self._links.get(route.instance_id)
            if link is None:
                raise Unavailable(f"agent {route.name!r} went offline; try again")
            await link.send(agent_pb2.ControlMessage(open_session=order))
            return
        if self.forward is None:
            raise Unavailable(f"agent {route.name!r} is held by another replica")
        await self.forward(route, order)

    def deliver(self, instance_id: str, order: agent_pb2.OpenSession) -> bool:
        """An order another replica routed to an instance held here; False if it is not."""
        link = self._links.get(instance_id)
        if link is None or link.closed.is_set():
            return False
        try:
            link.outbox.put_nowait(agent_pb2.ControlMessage(open_session=order))
        except asyncio.QueueFull:
            return False  # the origin's attach times out and the client is told
        return True

    def _live_replicas(self, session: Session, now: datetime) -> set[str]:
        """Replicas that said they are alive within `replica_timeout` (and this one)."""
        since = now - timedelta(seconds=self.replica_timeout)
        query = select(ReplicaRow.id).where(
            col(ReplicaRow.seen_at) > since, col(ReplicaRow.stopped_at).is_(None)
        )
        return {*session.exec(query), self.replica_id}

    # ---- the agent's side -------------------------------------------------------------------

    async def enroll(self, request: agent_pb2.EnrollRequest, peer: str) -> Enrolled:
        """Spend one use of a join token: a new instance of the agent with a client certificate
        for the request's key (or, with --dev, a bearer credential). Each use is an
        `agent.enroll` event; instances enrolled earlier keep working (a pool)."""
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
            pem = certs.ca.sign_csr(request.csr, row.name, certs.lifetime)
            issued = describe(pem)
        else:
            credential = new_token(AGENT_PREFIX)
        instance_id = uuid.uuid4().hex[:12]

        address = current_source()

        def enroll(session: Session) -> str:
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
            session.add(row)
            # Instances that are gone for good (offline, every certificate expired) leave the
            # list: a pod that re-joins without a volume would otherwise pile them up.
            session.connection().execute(
                delete(AgentInstanceRow).where(
                    col(AgentInstanceRow.agent_id) == row.id,
                    col(AgentInstanceRow.replica).is_(None),
                    col(AgentInstanceRow.cert_not_after) < now,
                    or_(
                        col(AgentInstanceRow.prev_cert_not_after).is_(None),
                        col(AgentInstanceRow.prev_cert_not_after) < now,
                    ),
                )
            )
            session.add(
                AgentInstanceRow(
                    id=instance_id,
                    agent_id=row.id,
                    name=row.name,
                    hostname=request.hostname[:255],
                    version=request.version[:100],
                    enrolled_at=now,
                    credential_hash=token_hash(credential) if credential else None,
                    cert_fingerprint=issued.fingerprint if issued else None,
                    cert_serial=issued.serial if issued else None,
                    cert_not_after=issued.not_after if issued else None,
                )
            )
            event = draft(
                "agent.enroll",
                agent={
                    "name": row.name,
                    "instance": instance_id,
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
            return row.id

        agent_id = await self._granting(
            "enrollment", enroll, "no credential was issued; the join token is unchanged"
        )
        return Enrolled(agent_id, instance_id, row.name, credential, issued)

    async def renew(self, instance: AgentInstanceRow, csr: bytes, peer: str) -> Issued:
        """A new certificate for the instance authenticated by its current one; the current one
        keeps opening sessions until it expires, so nothing running is dropped."""
        certs = self.certificates
        if certs is None:
            raise InvalidArgument("this control plane does not issue certificates (--dev)")
        issued = describe(certs.ca.sign_csr(csr, instance.name, certs.lifetime))
        old = instance.cert_fingerprint

        def renew(session: Session) -> None:
            current = session.get(AgentInstanceRow, instance.id, with_for_update=True)
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
                agent={"name": instance.name, "instance": instance.id, "peer": peer},
                certificate={"serial": issued.serial, "not_after": rfc3339(issued.not_after)},
            )
            append_events(session, [event], signer=self._audit.signer)

        await self._granting(
            "renewal", renew, "no credential was issued; the current certificate is unchanged"
        )
        return issued

    async def _granting(self, what: str, grant: Callable[[Session], T], kept: str) -> T:
        """Store a credential (a join token, an instance's certificate) and its audit event in
        one transaction (the audit writer's, so the event joins the chain in order): the
        credential is granted only if its event is recorded, and an event is never recorded
        for a credential that was not stored. `kept` tells the caller what stayed as it was."""
        try:
            return await self._audit.transact(grant)
        except Exception as exc:
            if isinstance(exc, GatehouseError) and not isinstance(exc, AuditUnavailable):
                raise  # refused (a used-up token, a replaced certificate): nothing was stored
            # The event could not be appended, or the store failed: rolled back, both.
            log.error("the %s was refused: it could not be recorded: %s", what, exc)
            raise Unavailable(
                f"the {what} could not be recorded in the audit trail, so {kept}: try again "
                "once the control plane's store is available"
            ) from None

    async def authenticate(self, context: Any) -> AgentInstanceRow:
        """The agent instance this call comes from: by the verified client certificate in
        production, by the bearer credential with --dev (and only there)."""
        if self.certificates is not None:
            return await self._by_fingerprint(self.certificates.peer_fingerprint(context))
        return await self._by_credential(bearer(context.invocation_metadata()))

    async def identify(self, credential: str, certificate_der: bytes | None) -> AgentInstanceRow:
        """The same check for a session leg (docs/decisions/0035): its TLS client certificate
        (verified by the front against our CA) in production, its LegHello's credential with
        --dev."""
        if self.certificates is not None:
            found = fingerprint(certificate_der) if certificate_der is not None else None
            return await self._by_fingerprint(found)
        return await self._by_credential(credential)

    async def _by_credential(self, credential: str) -> AgentInstanceRow:
        if jointoken.is_join_token(credential):
            raise Unauthenticated("a join token must first be exchanged with Enroll")
        digest = token_hash(credential)
        row = await self._db.read(
            lambda s: s.exec(
                select(AgentInstanceRow).where(AgentInstanceRow.credential_hash == digest)
            ).first()
        )
        if row is None or row.revoked_at is not None:
            raise Unauthenticated(
                "the agent credential is unknown or was revoked; enroll the agent again with a "
                "new join token"
            )
        return row

    async def _by_fingerprint(self, found: str | None) -> AgentInstanceRow:
        if found is None:
            raise Unauthenticated(
                "agents authenticate with their client certificate: this call carried none "
                "(enroll the agent with a join token)"
            )
        now = utc_now()

        def lookup(s: Session) -> AgentInstanceRow | None:
            current = s.exec(
                select(AgentInstanceRow).where(AgentInstanceRow.cert_fingerprint == found)
            ).first()
            if current is not None and as_utc(current.cert_not_after or now) > now:
                return current
            previous = s.exec(
                select(AgentInstanceRow).where(AgentInstanceRow.prev_cert_fingerprint == found)
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

    async def connected(
        self, instance: AgentInstanceRow, hello: agent_pb2.Hello, peer: str
    ) -> AgentLink:
        """The instance holds its control stream here now. Another instance of the same name
        is not touched (a pool); a newer stream of the same instance replaces its older one.
        The store learns at once that this replica holds it, so every replica can route to it."""
        link = AgentLink(instance, hello, peer)
        previous = self._links.get(instance.id)
        if previous is not None:
            previous.close("replaced by a newer connection of the same agent instance")
        self._links[instance.id] = link
        if instance.id in self._revoked:  # revoked after it was authenticated: cut it now
            link.close("the agent was revoked")
        self._unsaved(link)  # last-seen, version, hostname and replica go with the next flush
        if self.forward is not None:
            # Other replicas route sessions by the store: tell it now, not at the next tick
            # (many connecting together share one transaction).
            try:
                await asyncio.shield(self.flush())
            except Exception as exc:  # kept pending: the next flush tries again
                log.warning("could not store that agent %s is online: %s", link.name, exc)
        await self._audit.commit(draft("agent.connect", agent=self._describe(link)))
        return link

    async def disconnected(self, link: AgentLink) -> None:
        link.close(link.close_reason or "the control stream ended")
        if self._links.get(link.instance_id) is link:
            del self._links[link.instance_id]
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

    def links(self, name: str) -> list[AgentLink]:
        """The instances of `name` holding a control stream on this process."""
        return [link for link in self._links.values() if link.name == name]

    def online(self) -> list[AgentLink]:
        return list(self._links.values())

    async def online_names(self) -> set[str]:
        """Names with at least one instance online on any replica."""
        return {s.name for s in await self.statuses() if s.status == "online"}

    async def flush(self) -> None:
        """Store every pending last-seen (and which replica holds each instance) in one
        transaction. Concurrent callers take turns, and the later ones find their instances
        already written by an earlier batch; a failed batch stays pending for the next flush."""
        async with self._flush_lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            seen = [
                {"b_id": k, "b_seen": v.last_seen, "b_version": v.version, "b_host": v.hostname}
                for k, v in batch.items()
            ]
            # A replica marks only instances it holds; it unmarks one only while the store
            # still names it (the instance may have moved to another replica meanwhile).
            held = [
                {"b_id": k, "b_replica": self.replica_id, "b_at": v.last_seen}
                for k, v in batch.items()
                if self._links.get(k) is v
            ]
            left = [
                {"b_id": k, "b_replica": self.replica_id}
                for k, v in batch.items()
                if self._links.get(k) is not v
            ]
            self._writing = batch
            try:
                await self._db.write(lambda session: _store_seen(session, seen, held, left))
            except Exception:
                for instance_id, link in batch.items():
                    self._pending.setdefault(instance_id, link)
                self._schedule()
                raise
            finally:
                self._writing = {}

    def _unsaved(self, link: AgentLink) -> None:
        self._pending[link.instance_id] = link
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
            "instance": link.instance_id,
            "version": link.version,
            "hostname": link.hostname,
            "peer": link.peer,
        }


def _store_seen(
    session: Session,
    seen: list[dict[str, Any]],
    held: list[dict[str, Any]],
    left: list[dict[str, Any]],
) -> None:
    """executemany UPDATEs by primary key; a row deleted meanwhile is simply skipped."""
    table = AgentInstanceRow
    connection = session.connection()
    connection.execute(
        update(table)
        .where(col(table.id) == bindparam("b_id"))
        .values(
            last_seen=bindparam("b_seen"),
            version=bindparam("b_version"),
            hostname=bindparam("b_host"),
        ),
        seen,
    )
    if held:
        connection.execute(
            update(table)
            .where(col(table.id) == bindparam("b_id"))
            .where(or_(col(table.replica).is_(None), col(table.replica) != bindparam("b_replica")))
            .values(replica=bindparam("b_replica"), connected_at=bindparam("b_at")),
            held,
        )
    if left:
        connection.execute(
            update(table)
            .where(col(table.id) == bindparam("b_id"), col(table.replica) == bindparam("b_replica"))
            .values(replica=None),
            left,
        )
