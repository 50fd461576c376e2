"""`/mcp`: the MCP tools (cli.mcptools) as a remote MCP server on the HTTP listener.

Streamable HTTP from the official SDK, whose transport is an ASGI application: aiohttp-asgi
serves it on this listener, so `/mcp` has the same port, TLS front, PROXY v2 handling and
handshake limits as the export API (ADR 0031). Authorization follows MCP's spec (OAuth 2.0
protected resource, RFC 9728): a request without a valid bearer token gets 401 with
`WWW-Authenticate: Bearer resource_metadata="…"`, and that metadata names the OIDC issuer
the control plane trusts, so an MCP client can log the person in and come back with an
access token. Any token `gatehouse` accepts works: a login's access token, a delegated token
(the agent is the events' `actor`), a machine token.

Each tool call re-authenticates its request's token (a revoked token stops at its next call)
and runs inside the control plane: `ClientServicer.admit` then `serve` over an in-process
end (controlplane/relay/inprocess.py) — the same access rules, reviews, guardrails and audit
as a gRPC session, with the `mcp.call` event first.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, MutableMapping
from contextvars import ContextVar
from typing import Any

from aiohttp import web
from aiohttp_asgi import ASGIResource
from mcp.server import ServerRequestContext
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager

from cli.errors import CliError
from cli.mcptools import ToolError, Tools, build_server
from cli.session import Opened, ReviewPending
from controlplane.audit.writer import AuditUnavailable
from controlplane.auth.identity import Identity
from controlplane.auth.sources import SOURCE, http_remote
from controlplane.auth.tokens import TokenAuthenticator
from controlplane.errors import GatehouseError, Unauthenticated
from controlplane.policy.document import Review
from controlplane.relay.inprocess import InProcessSessions
from controlplane.relay.service import Asking, ClientServicer, pending_message
from controlplane.store.models import ReviewRow
from gatehouse.v1 import client_pb2

log = logging.getLogger(__name__)

PATH = "/mcp"
METADATA = "/.well-known/oauth-protected-resource"
MAX_SESSIONS = 1000
"""MCP sessions open at once on this replica."""
MAX_SESSIONS_PER_PERSON = 100
"""MCP sessions one person (or machine token) may hold open at once on this replica, under
any number of agent names, so that one cannot take all MAX_SESSIONS from everyone else."""
IDLE = 30 * 60.0
"""Seconds an MCP session may stay idle before it is closed."""
REMEMBERED = 10_000
"""MCP sessions whose pending reviews are remembered (the oldest forgotten first)."""
CALLER: ContextVar[Identity | None] = ContextVar("mcp_caller", default=None)
"""Who the request being served authenticated as (set by the authorization middleware)."""


class McpEndpoint:
    """The `/mcp` endpoint and its protected-resource metadata on one aiohttp application."""

    def __init__(
        self,
        sessions: ClientServicer,
        auth: TokenAuthenticator,
        issuer: str | None,
        secure: bool,
        version: str,
    ) -> None:
        self.sessions = sessions
        self.auth = auth
        self.issuer = issuer
        self.scheme = "https" if secure else "http"
        self.relays = InProcessSessions(sessions)
        self.held = HeldSessions()
        self.reviews: OrderedDict[str, dict[str, str]] = OrderedDict()
        self.server = build_server(self._tools_for, version)
        self.manager = StreamableHTTPSessionManager(
            app=self.server, session_idle_timeout=IDLE, max_sessions=MAX_SESSIONS
        )

    def mount(self, app: web.Application) -> None:
        app.router.add_get(METADATA, self._metadata)
        app.router.add_get(METADATA + PATH, self._metadata)
        asgi = _receive_settles(_owned(StreamableHTTPASGIApp(self.manager), self.held))
        app.router.register_resource(ASGIResource(asgi, PATH))
        app.middlewares.append(self._authorize)
        app.cleanup_ctx.append(self._running)

    async def _running(self, _app: web.Application) -> AsyncIterator[None]:
        """The SDK's session manager lives in a task of its own (its task group must be
        entered and left by one task); its sessions and relays stop with the listener."""
        ready, stop = asyncio.Event(), asyncio.Event()

        async def run() -> None:
            async with self.manager.run():
                ready.set()
                await stop.wait()

        task = asyncio.create_task(run(), name="mcp-sessions")
        started = asyncio.create_task(ready.wait())
        await asyncio.wait({task, started}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if task.done():
            task.result()  # it failed to start: say why
        try:
            yield
        finally:
            stop.set()
            await self.relays.close()
            await asyncio.wait({task}, timeout=10)

    def _resource(self, request: web.Request) -> str:
        return f"{self.scheme}://{request.host}{PATH}"

    async def _metadata(self, request: web.Request) -> web.Response:
        """RFC 9728 protected-resource metadata: where a client gets a token for `/mcp`."""
        document: dict[str, Any] = {
            "resource": self._resource(request),
            "authorization_servers": [self.issuer] if self.issuer else [],
            "bearer_methods_supported": ["header"],
            "resource_name": "Gatehouse",
        }
        return web.json_response(document)

    @web.middleware
    async def _authorize(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Nothing reaches the MCP transport without a token the control plane accepts."""
        if request.path != PATH and not request.path.startswith(PATH + "/"):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        metadata = f"{self.scheme}://{request.host}{METADATA}{PATH}"
        if not header.lower().startswith("bearer "):
            challenge = f'Bearer resource_metadata="{metadata}"'
            return _unauthorized("a bearer token is required", challenge)
        try:
            identity = await self.auth.identify((("authorization", header),))
        except Unauthenticated as exc:
            challenge = (
                f'Bearer error="invalid_token", error_description="{_quoted(str(exc))}", '
                f'resource_metadata="{metadata}"'
            )
            return _unauthorized(str(exc), challenge)
        CALLER.set(identity)
        return await handler(request)

    async def _tools_for(self, ctx: ServerRequestContext[Any, Any]) -> Tools:
        """The caller's tools: its token authenticated again for this very call."""
        request = ctx.request
        headers = getattr(request, "headers", None)
        header = headers.get("authorization", "") if headers is not None else ""
        client = getattr(request, "client", None)
        address = http_remote(getattr(client, "host", None))
        SOURCE.set(address)
        try:
            identity = await self.auth.identify((("authorization", header),))
        except Unauthenticated as exc:
            raise ToolError(f"not authenticated: {exc}") from None
        key = headers.get("mcp-session-id", "") if headers is not None else ""
        reviews = self.reviews.setdefault(f"{identity.subject}\0{identity.actor}\0{key}", {})
        self.reviews.move_to_end(f"{identity.subject}\0{identity.actor}\0{key}")
        while len(self.reviews) > REMEMBERED:
            self.reviews.popitem(last=False)
        source = {"ip": address, "client": "mcp over http"}
        tools = Tools(InProcessGateway(self.sessions, self.relays, identity, source))
        tools.reviews = reviews
        return tools


ASGIApp = Callable[
    [dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


class HeldSessions:
    """The MCP sessions each person holds, followed from the requests that use them as the
    SDK ends them: at a DELETE, or once no request has been in flight on one for IDLE (its
    id then answers 404)."""

    def __init__(self) -> None:
        self._owner: dict[str, tuple[str, str]] = {}  # session: (person, the owning token)
        self._busy: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._opening: dict[str, int] = {}

    def count(self, person: str) -> int:
        """The person's sessions open or being opened (forgetting every one gone idle)."""
        now = asyncio.get_running_loop().time()
        for session in [s for s, busy in self._busy.items() if not busy]:
            if now - self._last[session] >= IDLE:
                self.forget(session)
        held = sum(1 for owner in self._owner.values() if owner[0] == person)
        return held + self._opening.get(person, 0)

    def opening(self, person: str, delta: int) -> None:
        self._opening[person] = self._opening.get(person, 0) + delta
        if not self._opening[person]:
            del self._opening[person]

    def opened(self, session: str, owner: tuple[str, str]) -> None:
        self._owner[session] = owner
        self._busy[session] = 0
        self._last[session] = asyncio.get_running_loop().time()

    def owned_by(self, session: str, owner: tuple[str, str]) -> bool:
        return self._owner.get(session) == owner

    def using(self, session: str, delta: int) -> None:
        if session in self._owner:
            self._busy[session] += delta
            self._last[session] = asyncio.get_running_loop().time()

    def forget(self, session: str) -> None:
        self._owner.pop(session, None)
        self._busy.pop(session, None)
        self._last.pop(session, None)


def _owned(app: Any, held: HeldSessions) -> Callable[..., Coroutine[Any, Any, None]]:
    """The SDK's session manager gives a session to the principal of the request that opened
    it (ASGI's `user`) and answers any other "Session not found": here that principal is the
    caller's person, agent and stored token (a login's: its person). Without it, another
    token presenting the session id could end the session, cancel its calls, or take the
    answer of its call in flight by sending a request of the same id (answers are routed by
    id within a session). A person holding MAX_SESSIONS_PER_PERSON sessions is refused
    another (429)."""

    async def wrapped(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Any],
    ) -> None:
        identity = CALLER.get()
        if identity is None:  # the authorization middleware lets no such request through
            await app(scope, receive, send)
            return
        # A stored token's sessions are that token's: another of the same person and agent
        # name may have other connections. A login's are the person's (its token refreshes).
        owner = json.dumps([identity.actor, identity.token_id])
        principal = AccessToken(token="", client_id=owner, scopes=[], subject=identity.subject)
        scope = {**scope, "user": AuthenticatedUser(principal)}
        mine = (identity.subject, owner)
        # The first one, as the SDK reads it (aiohttp-asgi lowercases the names).
        session = next(
            (bytes(v) for k, v in scope.get("headers") or () if k == b"mcp-session-id"), b""
        ).decode("latin-1")
        status = 0

        async def watched(message: MutableMapping[str, Any]) -> Any:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 0))
                if not session and status < 400:
                    for name, value in message.get("headers") or ():
                        if bytes(name).lower() == b"mcp-session-id":
                            held.opened(bytes(value).decode("latin-1"), mine)
            return await send(message)

        if session:
            held.using(session, 1)
            try:
                await app(scope, receive, watched)
            finally:
                held.using(session, -1)
                # Gone (the SDK answers another token's request for it 404 too: not that).
                if held.owned_by(session, mine) and (
                    status == 404 or (scope.get("method") == "DELETE" and status < 300)
                ):
                    held.forget(session)
            return
        if held.count(identity.subject) >= MAX_SESSIONS_PER_PERSON:
            await _refuse(
                send,
                429,
                f"{identity.email or identity.subject} already holds {MAX_SESSIONS_PER_PERSON} "
                "MCP sessions on this control plane (with all its agents): end the ones not in "
                "use (an MCP client ends its session when it closes) or wait for idle ones to "
                f"close after {IDLE / 60:.0f} minutes",
            )
            return
        held.opening(identity.subject, 1)
        try:
            await app(scope, receive, watched)
        finally:
            held.opening(identity.subject, -1)

    return wrapped


async def _refuse(send: Callable[[MutableMapping[str, Any]], Any], status: int, why: str) -> None:
    """A JSON-RPC error answered before the SDK sees the request, shaped as its own."""
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": why}})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


def _receive_settles(app: Any) -> Callable[..., Coroutine[Any, Any, None]]:
    """aiohttp-asgi answers every `receive` after the request body with another empty body
    at once, where ASGI servers wait until the client disconnects; the SSE response's
    disconnect watcher then spins. Here the receive after the body's last part waits (the
    response ends the watcher's task group; a gone client fails the next write)."""

    async def wrapped(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Any],
    ) -> None:
        settled = False

        async def settling() -> MutableMapping[str, Any]:
            nonlocal settled
            if settled:
                await asyncio.Event().wait()
            message = await receive()
            if message.get("type") == "http.request" and not message.get("more_body"):
                settled = True
            return message

        await app(scope, settling, send)

    return wrapped


class InProcessGateway:
    """A tool's requests straight to the ClientServicer, as `identity`."""

    def __init__(
        self,
        sessions: ClientServicer,
        relays: InProcessSessions,
        identity: Identity,
        source: dict[str, Any],
    ) -> None:
        self.sessions = sessions
        self.relays = relays
        self.identity = identity
        self.source = source

    async def open(self, connection: str, call: client_pb2.McpCall, retry: str) -> Opened:
        async def refuse(row: ReviewRow, review: Review, rule: str) -> None:
            pending = client_pb2.ReviewPending(
                review_id=row.id, reviewer_groups=list(review.groups), rule=rule
            )
            raise _Pending(pending, pending_message(row.id, review, rule))

        try:
            admitted = await self.sessions.admit(
                self.identity,
                connection,
                "exec",
                self.source,
                refuse,
                Asking(no_wait=True, retry=retry or None, mcp=call),
            )
        except _Pending as pending:
            raise ReviewPending(pending.pending, connection) from None
        except (GatehouseError, AuditUnavailable) as exc:
            raise CliError(str(exc)) from None
        call_ = self.relays.start(admitted, str(self.source["ip"]))
        return Opened(call_, admitted.ctx.session_id, admitted.connection.type)

    async def connections(self, call: client_pb2.McpCall) -> client_pb2.ListMyConnectionsResponse:
        await self._record(call)
        return await self.sessions.connections_of(self.identity)

    async def reviews(self, call: client_pb2.McpCall) -> client_pb2.ListReviewsResponse:
        await self._record(call)
        return await self.sessions.reviews_of(self.identity)

    async def _record(self, call: client_pb2.McpCall) -> None:
        try:
            await self.sessions.mcp_call(self.identity, call, self.source)
        except (GatehouseError, AuditUnavailable) as exc:
            raise CliError(str(exc)) from None


class _Pending(Exception):
    """The review is pending and the tool does not wait: raised out of `admit`."""

    def __init__(self, pending: client_pb2.ReviewPending, message: str) -> None:
        super().__init__(message)
        self.pending = pending


def _unauthorized(message: str, challenge: str) -> web.Response:
    return web.json_response(
        {"error": message}, status=401, headers={"WWW-Authenticate": challenge}
    )


def _quoted(text: str) -> str:
    """Text for a quoted-string of a header: no quotes, backslashes or control characters."""
    return "".join(c for c in text if c.isprintable() and c not in '"\\')[:200]
