"""ClientService: one session from open to end, for `exec`, `connect` and `--pg-listen` alike.

open → identify the caller → find the connection and its online agent → commit
`session.start` → order the agent to dial back → relay, with the inspector of the connection's
type (relay/protocols.py) between the client and the agent → commit `session.end`. `admit`
does everything up to the relay and `serve` the relay itself, over a `ClientEnd`: the gRPC
stream here, a native client's socket in controlplane/relay/pg/listen.py. Errors before the
relay starts are gRPC statuses (pg-listen: FATAL ErrorResponses) with a message for the user;
after it starts, the protocol's own errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc

from controlplane.agents.registry import AgentRegistry
from controlplane.audit.events import SessionContext, as_utc, draft, rfc3339, utc_now
from controlplane.audit.writer import AuditUnavailable, AuditWriter, ResultLoss
from controlplane.auth.identity import USER, Identity
from controlplane.auth.sources import peer_ip
from controlplane.auth.tokens import TokenAuthenticator
from controlplane.errors import (
    FailedPrecondition,
    GatehouseError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    unary,
)
from controlplane.policy.access import MODES, AccessDecision, decide
from controlplane.policy.document import Connection, Review
from controlplane.policy.store import PolicyStore
from controlplane.relay import mcpcall
from controlplane.relay.ends import ClientEnd, GrpcEnd
from controlplane.relay.inspection import EndCause, Inspector, Opening
from controlplane.relay.protocols import INSPECTORS, SUPPORTED_TYPES
from controlplane.relay.reviews import Reviews, as_message, wait_timeout
from controlplane.relay.tunnel import CANCEL, Cancel, Fatal, Tunnel, Tunnels
from controlplane.store.database import Database
from controlplane.store.models import ApiTokenRow, ReviewRow, SessionRow
from gatehouse.v1 import agent_pb2, client_pb2, client_pb2_grpc, tunnel_pb2
from wire.errors import ProtocolError

log = logging.getLogger(__name__)

#: Seconds a refused caller's opening is waited for before the refusal is sent.
OPENING_GRACE = 2.0

Context = grpc.aio.ServicerContext[Any, Any]
ATTACH_TIMEOUT = 10.0
FORWARD_CHUNK = 1024 * 1024
REVOCATION_CHECK = 2.0  # seconds between checks that a delegated token still works
DEFAULT_DELEGATION = 8 * 3600
#: Told the client when its session waits for a review; may raise to refuse instead.
ReviewPending = Callable[[ReviewRow, Review, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Asking:
    """How a caller opens: whether it waits for a review, the review it retries after, and
    the MCP tool call it makes (recorded first)."""

    no_wait: bool = False
    retry: str | None = None
    mcp: client_pb2.McpCall | None = None


class ClientServicer(client_pb2_grpc.ClientServiceServicer):
    def __init__(
        self,
        auth: TokenAuthenticator,
        policy: PolicyStore,
        agents: AgentRegistry,
        tunnels: Tunnels,
        audit: AuditWriter,
        db: Database,
        login: client_pb2.LoginConfig | None = None,
    ) -> None:
        self._login = login
        self._auth = auth
        self._policy = policy
        self._agents = agents
        self._tunnels = tunnels
        self._audit = audit
        self._db = db
        self._reviews = Reviews(db, audit)

    async def _identify(self, context: Context) -> Identity:
        """The caller, judged before anything else (a refused one is counted and throttled
        at once, and held for no longer than OPENING_GRACE). A refusal waits for the client's
        opening first: sent while the client is still writing it, the refusal races that
        write, and grpc's client then reports "Internal error from Core" instead of it."""
        try:
            return await self._auth.identify(context.invocation_metadata())
        except GatehouseError:
            with contextlib.suppress(Exception):  # any end of the wait will do
                await asyncio.wait_for(context.read(), OPENING_GRACE)
            raise

    async def Session(  # type: ignore[override]  # read/write API, not a generator
        self, request_iterator: Any, context: Context
    ) -> None:
        end = GrpcEnd(context)
        try:
            identity = await self._identify(context)
            first = await asyncio.wait_for(context.read(), 30)
            if not isinstance(first, client_pb2.ClientFrame) or not first.HasField("open"):
                raise InvalidArgument("a session must start with open")
            opening = first.open
            tell = _review_pending_no_wait if opening.no_wait else _review_pending
            session = await self.admit(
                identity,
                opening.connection,
                opening.mode or "exec",
                {"ip": end.peer, "client": opening.client or "unknown"},
                functools.partial(tell, context),
                Asking(
                    no_wait=opening.no_wait,
                    retry=opening.review_id or None,
                    mcp=opening.mcp if opening.HasField("mcp") else None,
                ),
            )
        except GatehouseError as exc:
            await context.abort(exc.code, str(exc))
            return
        except AuditUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            return
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no open message within 30 s")
            return

        async def opened() -> None:
            await context.write(
                client_pb2.ServerFrame(
                    opened=client_pb2.SessionOpened(
                        session_id=session.ctx.session_id,
                        connection_type=session.connection.type,
                    )
                )
            )

        await self.serve(end, session, opened)

    async def admit(
        self,
        identity: Identity,
        name: str,
        mode: str,
        source: dict[str, Any],
        review_pending: ReviewPending,
        asking: Asking = Asking(),
        types: frozenset[str] | None = None,
    ) -> Admitted:
        """Everything before the relay: the MCP call's event, access, review,
        `session.start`, the agent attached. Raises a GatehouseError (or AuditUnavailable)
        that says why not. `types`: the connection types the caller's protocol speaks (a
        native listener of one protocol), refused before anything starts; None: any."""
        mcp_call = await self.mcp_call(identity, asking.mcp, source, name)
        connection, decision = await self._connection(name, identity, mode, mcp_call)
        if types is not None and connection.type not in types:
            raise FailedPrecondition(
                f"connection {name!r} is of type {connection.type}; this port speaks "
                f"{', '.join(sorted(types))}"
            )
        review_id = await self._review(review_pending, identity, connection, mode, decision, asking)
        ctx = SessionContext(
            session_id=str(uuid.uuid4()),
            identity=identity,
            connection={
                "name": connection.name,
                "type": connection.type,
                "agent": connection.agent,
            },
            audit_mode=connection.audit,
            source=source,
            mcp_call=mcp_call,
        )
        tunnel = await self._open(ctx, connection, identity, mode, review_id)
        inspector = self._inspector(ctx, connection, mode, tunnel)
        return Admitted(ctx, connection, identity, tunnel, inspector, self._audit)

    async def serve(
        self,
        end: ClientEnd,
        session: Admitted,
        opened: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Relay an admitted session until it ends, then record the results still in flight,
        tell the client why (when the control plane ended it) and record its end."""
        ctx, tunnel, inspector = session.ctx, session.tunnel, session.inspector
        started = time.monotonic()
        ending = Ending("closed")
        # Watched until session.end: results recorded while the session ends (finish) are
        # watched like those recorded while it runs, and a loss among them is in its end.
        with self._audit.watching(ctx.session_id) as loss:
            try:
                if opened is not None:
                    await opened()
                relay = _relay(end, session)
                ending = await self._relay_while_valid(relay, session.identity, loss, tunnel)
            finally:
                self._tunnels.discard(tunnel)
                try:
                    await _close(end, inspector, ending)
                finally:
                    await self._end(ctx, ending.reason, started, inspector.statements, loss)

    def _inspector(
        self, ctx: SessionContext, connection: Connection, mode: str, tunnel: Tunnel
    ) -> Inspector:
        """The protocol's inspector: what sits between the client and the agent."""
        opening = Opening(
            session=ctx,
            connection=connection,
            mode=mode,
            tunnel=tunnel,
            audit=self._audit,
            policy=self._policy,
            db=self._db,
            forward=functools.partial(_forward, tunnel),
        )
        return INSPECTORS[connection.type](opening)

    @unary
    async def GetLoginConfig(
        self, request: client_pb2.GetLoginConfigRequest, context: Context
    ) -> client_pb2.LoginConfig:
        if self._login is None:
            raise FailedPrecondition(
                "this control plane has no identity provider configured (GATEHOUSE_OIDC_ISSUER); "
                "use a token (GATEHOUSE_TOKEN) instead"
            )
        return self._login

    @unary
    async def ListConnections(
        self, request: client_pb2.ListMyConnectionsRequest, context: Context
    ) -> client_pb2.ListMyConnectionsResponse:
        identity = await self._auth.identify(context.invocation_metadata())
        mcp = request.mcp if request.HasField("mcp") else None
        await self.mcp_call(identity, mcp, {"ip": peer_ip(context.peer()), "client": "mcp"})
        return await self.connections_of(identity)

    async def connections_of(self, identity: Identity) -> client_pb2.ListMyConnectionsResponse:
        """The connections `identity` may use and how (modes now, modes after a review)."""
        await self._policy.load()
        rules = self._policy.document.access
        response = client_pb2.ListMyConnectionsResponse()
        for conn in self._policy.document.connections:
            item = client_pb2.MyConnection(name=conn.name, type=conn.type)
            for mode in MODES:
                decision = decide(identity, conn.name, mode, rules)
                if decision.allowed:
                    item.modes.append(mode)
                elif decision.needs_review is not None:
                    item.review_modes.append(mode)
                    for group in decision.needs_review.groups:
                        if group not in item.review_groups:
                            item.review_groups.append(group)
            if item.modes or item.review_modes:
                response.connections.append(item)
        return response

    @unary
    async def CreateDelegatedToken(
        self, request: client_pb2.CreateDelegatedTokenRequest, context: Context
    ) -> client_pb2.CreateDelegatedTokenResponse:
        person = await self._auth.identify(context.invocation_metadata())
        row, secret = await self._auth.delegate(
            person,
            request.actor,
            timedelta(seconds=request.ttl_seconds or DEFAULT_DELEGATION),
            list(request.connections) or None,
            request.role or USER,
        )
        return client_pb2.CreateDelegatedTokenResponse(token=_delegated(row), secret=secret)

    @unary
    async def ListMyTokens(
        self, request: client_pb2.ListMyTokensRequest, context: Context
    ) -> client_pb2.ListMyTokensResponse:
        person = await self._auth.identify(context.invocation_metadata())
        if person.actor is not None:
            raise PermissionDenied("a delegated token cannot list tokens; log in as yourself")
        rows = await self._auth.delegated(person)
        return client_pb2.ListMyTokensResponse(tokens=[_delegated(row) for row in rows])

    @unary
    async def RevokeMyToken(
        self, request: client_pb2.RevokeMyTokenRequest, context: Context
    ) -> client_pb2.RevokeMyTokenResponse:
        person = await self._auth.identify(context.invocation_metadata())
        if person.actor is not None and person.token_id != request.id:
            raise PermissionDenied("a delegated token can revoke only itself")
        row = await self._auth.revoke_delegated(request.id, person)
        return client_pb2.RevokeMyTokenResponse(token=_delegated(row))

    @unary
    async def ListReviews(
        self, request: client_pb2.ListReviewsRequest, context: Context
    ) -> client_pb2.ListReviewsResponse:
        identity = await self._auth.identify(context.invocation_metadata())
        mcp = request.mcp if request.HasField("mcp") else None
        await self.mcp_call(identity, mcp, {"ip": peer_ip(context.peer()), "client": "mcp"})
        return await self.reviews_of(identity)

    async def reviews_of(self, identity: Identity) -> client_pb2.ListReviewsResponse:
        """Pending reviews `identity` may decide, and `identity`'s own."""
        rows = await self._reviews.listing(identity)
        return client_pb2.ListReviewsResponse(reviews=[as_message(r, identity) for r in rows])

    async def mcp_call(
        self,
        identity: Identity,
        call: client_pb2.McpCall | None,
        source: dict[str, Any],
        connection: str | None = None,
    ) -> dict[str, Any] | None:
        """Record an MCP tool call's `mcp.call` event (none without a call); returns the
        reference its session's events carry."""
        if call is None or not mcpcall.present(call):
            return None
        detectors = None
        kind = None
        if connection:
            await self._policy.load()
            known = self._policy.connection(connection)
            detectors = self._policy.parameter_detectors(known) if known is not None else None
            kind = known.type if known is not None else None
        return await mcpcall.record(
            self._audit,
            identity,
            call,
            source,
            connection=connection,
            detectors=detectors,
            connection_type=kind,
        )

    @unary
    async def ApproveReview(
        self, request: client_pb2.ApproveReviewRequest, context: Context
    ) -> client_pb2.ApproveReviewResponse:
        identity = await self._auth.identify(context.invocation_metadata())
        row = await self._reviews.decide(identity, request.id, True, "")
        return client_pb2.ApproveReviewResponse(review=as_message(row, identity))

    @unary
    async def DenyReview(
        self, request: client_pb2.DenyReviewRequest, context: Context
    ) -> client_pb2.DenyReviewResponse:
        identity = await self._auth.identify(context.invocation_metadata())
        row = await self._reviews.decide(identity, request.id, False, request.reason)
        return client_pb2.DenyReviewResponse(review=as_message(row, identity))

    async def _review(
        self,
        pending: ReviewPending,
        identity: Identity,
        connection: Connection,
        mode: str,
        decision: AccessDecision,
        asking: Asking,
    ) -> str | None:
        """The review this session opens under: none when the rule needs none; the review a
        retry names, once approved (its denial refuses with the reason); an unexpired approval
        of the same connection and mode; else a new one — or, for a caller that does not
        wait, the one of theirs still pending — waited for here (`pending` tells the client,
        and may refuse instead of waiting)."""
        if decision.needs_review is None or decision.rule is None:
            return None
        row: ReviewRow | None = None
        if asking.retry is not None:
            row = await self._reviews.mine(identity, asking.retry, connection.name, mode)
            if await self._reviews.settled(row):
                held = await self._reviews.granted(identity, connection.name, mode)
                if held is not None:
                    return held.id
                row = None  # approved once, no longer held: ask again
        held = await self._reviews.granted(identity, connection.name, mode)
        if held is not None:
            return held.id
        if row is None and asking.no_wait:
            row = await self._reviews.pending_for(identity, connection.name, mode)
        if row is None:
            row = await self._reviews.request(
                identity, connection.name, mode, decision.rule, decision.needs_review
            )
        await pending(row, decision.needs_review, decision.rule)
        approved = await self._reviews.wait(row.id)
        return approved.id

    async def _connection(
        self, name: str, identity: Identity, mode: str, mcp_call: dict[str, Any] | None = None
    ) -> tuple[Connection, AccessDecision]:
        await self._policy.load()
        connection = self._policy.connection(name)
        # Refuse before saying whether the connection exists: names are not for everyone.
        decision = decide(identity, name, mode, self._policy.document.access)
        if not decision.allowed and decision.needs_review is None:
            reason = decision.reason or "no access rule grants it"
            # A refused attempt is part of the trail too: who tried what, and why not.
            await self._audit.commit(
                draft(
                    "session.start",
                    identity=identity,
                    connection={"name": name},
                    mode=mode,
                    decision={"result": "deny", "rule": decision.rule, "reason": reason},
                    mcp_call=mcp_call,
                )
            )
            raise PermissionDenied(reason)
        if connection is None:
            raise NotFound(
                f"no connection named {name!r}; `gatehouse connections list` shows the ones "
                "you can use"
            )
        if connection.type not in SUPPORTED_TYPES:
            raise Unavailable(
                f"connection {name!r} is of type {connection.type}, which this control plane "
                "cannot relay yet"
            )
        return connection, decision

    async def _open(
        self,
        ctx: SessionContext,
        connection: Connection,
        identity: Identity,
        mode: str,
        review_id: str | None = None,
    ) -> Tunnel:
        try:  # any online instance of the agent, on any replica (ADR 0023, 0024)
            route = await self._agents.route(connection.agent)
        except Unavailable:
            raise Unavailable(
                f"connection {connection.name!r} is served by agent {connection.agent!r}, "
                "which is offline; check it with `gatehouse admin agents list`"
            ) from None
        await self._audit.commit(draft("session.start", session=ctx, mode=mode, review=review_id))
        await self._db.write(
            lambda s: s.add(
                SessionRow(
                    id=ctx.session_id,
                    connection=connection.name,
                    connection_type=connection.type,
                    agent=connection.agent,
                    mode=mode,
                    subject=identity.subject,
                    actor=identity.actor,
                    source_ip=str(ctx.source.get("ip", "")),
                    client=str(ctx.source.get("client", "")),
                    started_at=utc_now(),
                )
            )
        )
        tunnel = self._tunnels.expect(ctx.session_id, connection.agent)
        try:
            order = agent_pb2.OpenSession(
                session_id=ctx.session_id, connection=connection.name, type=connection.type
            )
            await self._agents.order(route, order)
            await asyncio.wait_for(tunnel.attached.wait(), ATTACH_TIMEOUT)
        except BaseException as exc:
            self._tunnels.discard(tunnel)
            reason = "agent did not attach" if isinstance(exc, TimeoutError) else str(exc)
            await self._end(ctx, reason, time.monotonic(), 0, None)
            if isinstance(exc, TimeoutError):
                raise Unavailable(
                    f"agent {connection.agent!r} did not open the session within "
                    f"{ATTACH_TIMEOUT:.0f} s; check the agent's log"
                ) from None
            raise
        return tunnel

    async def _relay_while_valid(
        self,
        relay: Coroutine[Any, Any, str],
        identity: Identity,
        loss: ResultLoss,
        tunnel: Tunnel,
    ) -> Ending:
        """Relay until the session ends, its token stops working (revoked, expired), its agent
        is revoked or one of its result events could not be recorded: a revoked token's live
        sessions end within REVOCATION_CHECK seconds, the others at once. The pumps are stopped
        here; the caller records the results still in flight, then tells the client."""
        relaying = asyncio.create_task(relay)
        lost = asyncio.create_task(loss.lost.wait())
        revoked = tunnel.revoked
        cut = asyncio.create_task(revoked.wait())
        expires = identity.token_id is not None or identity.expires_at is not None
        try:
            while True:
                done, _ = await asyncio.wait(
                    {relaying, lost, cut},
                    timeout=REVOCATION_CHECK if expires else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if revoked.is_set():
                    # Checked first: revoking the agent closes its tunnel, which may also end
                    # the relay as if the session had simply closed.
                    why = tunnel.cut or "the agent serving it was revoked"
                    ending = Ending(AGENT_REVOKED, EndCause.SHUTDOWN, why)
                    break
                if relaying in done:
                    return Ending(relaying.result())
                if lost in done:
                    why = f"audit_lost: {loss.reason}"
                    ending = Ending(why, EndCause.AUDIT, why)
                    break
                invalid = await self._auth.still_valid(identity) if expires else None
                if invalid is not None:
                    ending = Ending(invalid, EndCause.SHUTDOWN, invalid)
                    break
        except BaseException:
            relaying.cancel()
            raise
        finally:
            lost.cancel()
            cut.cancel()
        relaying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relaying
        return ending

    async def _end(
        self,
        ctx: SessionContext,
        reason: str,
        started: float,
        count: int,
        loss: ResultLoss | None,
    ) -> None:
        """Record session.end; `results_lost` counts result events of the session that could
        not be recorded (the trail has that many holes, and says so)."""
        duration = round((time.monotonic() - started) * 1000, 3)
        try:
            await self._audit.commit(
                draft(
                    "session.end",
                    session=ctx,
                    reason=reason,
                    duration_ms=duration,
                    statements=count,
                    results_lost=loss.count if loss is not None and loss.count else None,
                )
            )

            def ended(session: Any) -> None:
                row = session.get(SessionRow, ctx.session_id)
                if row is not None:
                    row.ended_at = utc_now()
                    row.end_reason = reason
                    session.add(row)

            await self._db.write(ended)
        except Exception:
            log.exception("session %s: could not record its end", ctx.session_id)


@dataclass(frozen=True, slots=True)
class Ending:
    """Why a session ended and, when the control plane ended it (not the client or the
    agent), what the client is told: the protocol's fatal error for this cause."""

    reason: str
    cause: EndCause | None = None
    message: str = ""


async def _close(end: ClientEnd, inspector: Inspector, ending: Ending) -> None:
    """Record the results of every request still in flight, then (when the control plane
    ended the session) tell the client why: what the client hears is already in the trail."""
    await inspector.finish(ending.reason)
    if ending.cause is not None:
        fatal = inspector.fatal(f"session ended: {ending.message}", ending.cause)
        with contextlib.suppress(Exception):
            await end.write(fatal)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A session the control plane started (`session.start` committed, agent attached) and
    whose relay has not run yet: hand it to `ClientServicer.serve`."""

    ctx: SessionContext
    connection: Connection
    identity: Identity
    tunnel: Tunnel
    inspector: Inspector
    audit: AuditWriter

    async def cancel(self) -> None:
        """The client's cancel request: recorded (it changes what the target does), then
        sent to the agent, which cancels with the target's own key. In strict mode it is
        committed first; one the store refused is not sent (the statement runs on)."""
        event = self.inspector.cancel_event()
        if event is not None and await _recorded(self.audit, self.ctx, event):
            await self.tunnel.to_agent.put(CANCEL)


async def _review_pending(context: Context, row: ReviewRow, review: Review, rule: str) -> None:
    """A gRPC client waits for the review with a spinner: tell it whom it waits for."""
    await context.write(
        client_pb2.ServerFrame(
            review_pending=client_pb2.ReviewPending(
                review_id=row.id,
                reviewer_groups=list(review.groups),
                rule=rule,
                timeout_seconds=int(wait_timeout()),
            )
        )
    )


class StillPending(FailedPrecondition):
    """A caller that does not wait was told its review is pending: the review stays open
    for its reviewers, the call ends here."""


async def _review_pending_no_wait(
    context: Context, row: ReviewRow, review: Review, rule: str
) -> None:
    """`exec --no-wait` and MCP tools: tell the review's id, then end the call; the review
    stays pending (a waiting client's Ctrl-C withdraws it, this does not)."""
    await _review_pending(context, row, review, rule)
    raise StillPending(pending_message(row.id, review, rule))


def pending_message(review_id: str, review: Review, rule: str) -> str:
    groups = ", ".join(review.groups)
    return (
        f"review {review_id} is pending (access rule {rule!r}) for {groups}; once one of them "
        f"approves it (`gatehouse reviews approve {review_id}`), run it again"
    )


AGENT_LOST = "agent_lost"
AGENT_REVOKED = "agent_revoked"


class AgentLost(Exception):
    """The agent's stream broke mid-session: the client got a protocol error, the in-flight
    requests a result saying their outcome is unknown."""


PROTOCOL_ERRORS = (ProtocolError,)  # every protocol's codec raises a subclass


async def _relay(end: ClientEnd, session: Admitted) -> str:
    """Pump both directions until one side ends; returns why the session ended.

    Cancelled (the session ended by revocation or a lost result), it stops both pumps before
    it ends: nothing more is read from the client or recorded, and the inspector is left to
    `finish` alone.
    """
    tunnel, inspector = session.tunnel, session.inspector
    upstream = asyncio.create_task(_client_to_agent(end, session))
    downstream = asyncio.create_task(_agent_to_client(end, tunnel, inspector))
    try:
        done, _ = await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        if upstream in done and upstream.exception() is None:
            # The client finished sending; let the target's last answers through. A command
            # runs on after its input ended (`cmd < /dev/null`) for as long as it likes.
            # Whatever ends it (time, an AgentLost, a protocol error) is read below from gather.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(downstream), inspector.drain_timeout)
        elif upstream in done and isinstance(upstream.exception(), PROTOCOL_ERRORS):
            # The client writer sends the FATAL itself: one writer per call, never two at once.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(downstream), 10)
    finally:
        for task in (upstream, downstream):
            task.cancel()  # a pump that ended already is not affected
        results = await asyncio.gather(upstream, downstream, return_exceptions=True)
    for result in results:
        if isinstance(result, AgentLost):
            log.warning("session %s: agent %s lost", tunnel.session_id, tunnel.agent)
            return AGENT_LOST
        if isinstance(result, PROTOCOL_ERRORS):
            # Malformed input ends this session only, with the protocol's own fatal error.
            log.warning("session %s: protocol error: %s", tunnel.session_id, result)
            return f"protocol error: {result}"
        if isinstance(result, Exception) and not isinstance(result, asyncio.CancelledError):
            log.error("session %s failed: %r", tunnel.session_id, result)
            return f"error: {result}"
    return "closed"


async def _client_to_agent(end: ClientEnd, session: Admitted) -> None:
    tunnel, inspector = session.tunnel, session.inspector
    try:
        while True:
            data = await end.read()
            if data is None:  # end of stream
                if inspector.incomplete:
                    error = ProtocolError("the client left in the middle of a message")
                    await tunnel.to_client.put(Fatal(inspector.fatal(str(error))))
                    raise error
                break
            if isinstance(data, Cancel):
                await session.cancel()
                continue
            try:
                forward = await inspector.from_client(data)
            except PROTOCOL_ERRORS as exc:
                await tunnel.to_client.put(Fatal(inspector.fatal(str(exc))))
                raise
            await _forward(tunnel, forward)
    except BaseException:
        # Stopped (an error, or the session ends): never wait here for room in the queue of
        # an agent that may be gone; discarding the tunnel tells the agent anyway.
        if inspector.end_on_client_eof:
            with contextlib.suppress(asyncio.QueueFull):
                tunnel.to_agent.put_nowait(None)
        raise
    if inspector.end_on_client_eof:
        await tunnel.to_agent.put(None)  # the client is done: the agent ends the session


async def _recorded(audit: AuditWriter, session: SessionContext, event: Any) -> bool:
    """Record an event of the client's that is no statement (a cancel) as its statements are:
    committed first in strict mode, so that it never reaches the target unrecorded (a cancel
    the store refused is not sent: the statement runs on), queued in async mode."""
    try:
        if session.audit_mode == "strict":
            await audit.commit(event)
        else:
            await audit.submit(event)
    except AuditUnavailable as exc:
        log.warning("session %s: a cancel was not sent: %s", session.session_id, exc)
        return False
    return True


async def _forward(tunnel: Tunnel, data: bytes) -> None:
    """Send decided client bytes to the agent, in pieces: gRPC messages are bounded (a 20 MB
    parameter travels as several)."""
    for start in range(0, len(data), FORWARD_CHUNK):
        await tunnel.send_to_agent(data[start : start + FORWARD_CHUNK])


async def _agent_to_client(end: ClientEnd, tunnel: Tunnel, inspector: Inspector) -> None:
    while True:
        item = await tunnel.next_for_client()
        if item is None and tunnel.lost:
            await _agent_lost(end, tunnel, inspector)
        if item is None:
            chunks = inspector.closing()
        elif isinstance(item, tunnel_pb2.Frame):
            chunks = await inspector.from_agent(item)
        elif isinstance(item, Fatal):
            await end.write(item.data)
            return
        else:
            chunks = inspector.take_synthetic()
        if chunks:
            await end.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if item is None or inspector.finished:
            return


async def _agent_lost(end: ClientEnd, tunnel: Tunnel, inspector: Inspector) -> None:
    """Record every in-flight request's unknown outcome, then end the client's session with
    the protocol's fatal error (PostgreSQL: 08006 connection_failure)."""
    try:
        await inspector.agent_lost()
    finally:
        fatal = inspector.fatal(
            f"the connection to agent {tunnel.agent} was lost; the outcome of what was "
            "running is unknown",
            EndCause.AGENT_LOST,
        )
        with contextlib.suppress(Exception):
            await end.write(fatal)
    raise AgentLost(tunnel.agent)


def _delegated(row: ApiTokenRow) -> client_pb2.DelegatedToken:
    def moment(value: datetime | None) -> str:
        return rfc3339(as_utc(value)) if value else ""

    return client_pb2.DelegatedToken(
        id=row.id,
        actor=row.actor or "",
        user=row.subject,
        connections=json.loads(row.connections) if row.connections else [],
        created=moment(row.created_at),
        expires=moment(row.expires_at),
        revoked=moment(row.revoked_at),
        role=row.role,
    )
