"""AdminService: agents and the declarative policy. Every call needs an admin identity."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import grpc

from controlplane.agents.certificates import DEFAULT_JOIN_TTL
from controlplane.agents.registry import AgentRegistry
from controlplane.audit.events import as_utc, rfc3339
from controlplane.auth.tokens import TokenAuthenticator
from controlplane.errors import unary
from controlplane.policy.document import RUN_AS_AGENT, PolicyDocument, ShellConnection
from controlplane.policy.store import PolicyStore
from controlplane.replicas import Replicas, push_policy
from controlplane.store.models import ApiTokenRow
from gatehouse.v1 import admin_pb2, admin_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        auth: TokenAuthenticator,
        agents: AgentRegistry,
        policy: PolicyStore,
        replicas: Replicas | None = None,
    ) -> None:
        self._auth = auth
        self._agents = agents
        self._policy = policy
        self._replicas = replicas

    @unary
    async def CreateAgent(
        self, request: admin_pb2.CreateAgentRequest, context: Context
    ) -> admin_pb2.CreateAgentResponse:
        admin = await self._auth.require_admin(context.invocation_metadata())
        created = await self._agents.create(
            request.name,
            admin,
            uses=request.uses or 1,
            ttl=timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else DEFAULT_JOIN_TTL,
        )
        return admin_pb2.CreateAgentResponse(
            name=created.name,
            join_token=created.join_token,
            ca_pin=created.pin or "",
            uses=created.uses,
            expires=rfc3339(created.expires),
        )

    @unary
    async def ListAgents(
        self, request: admin_pb2.ListAgentsRequest, context: Context
    ) -> admin_pb2.ListAgentsResponse:
        await self._auth.require_admin(context.invocation_metadata())
        response = admin_pb2.ListAgentsResponse()
        for item in await self._agents.statuses():
            response.agents.append(
                admin_pb2.AgentInfo(
                    name=item.name,
                    instance_id=item.instance_id,
                    status=item.status,
                    version=item.version,
                    hostname=item.hostname,
                    replica=item.replica,
                    last_seen=rfc3339(as_utc(item.last_seen)) if item.last_seen else "",
                    created=rfc3339(as_utc(item.created_at)),
                    cert_serial=item.cert_serial,
                    cert_expires=(
                        rfc3339(as_utc(item.cert_not_after)) if item.cert_not_after else ""
                    ),
                )
            )
        return response

    @unary
    async def RevokeAgent(
        self, request: admin_pb2.RevokeAgentRequest, context: Context
    ) -> admin_pb2.RevokeAgentResponse:
        admin = await self._auth.require_admin(context.invocation_metadata())
        revoked = await self._agents.revoke(request.name, admin, request.instance_id)
        return admin_pb2.RevokeAgentResponse(name=request.name, instances=revoked)

    @unary
    async def Apply(
        self, request: admin_pb2.ApplyRequest, context: Context
    ) -> admin_pb2.ApplyResponse:
        admin = await self._auth.require_admin(context.invocation_metadata())
        applied = await self._policy.apply(
            request.content, request.filename or "gatehouse.yaml", admin
        )
        notified = await push_policy(self._agents.online(), self._policy)
        if self._replicas is not None:  # and the agents the other replicas hold
            self._replicas.pushed(applied.version)
            await self._replicas.policy_applied()
        return admin_pb2.ApplyResponse(
            version=applied.version,
            changes=applied.changes,
            agents_notified=notified,
            warnings=run_as_warnings(self._policy.document, self._agents),
        )

    @unary
    async def ListConnections(
        self, request: admin_pb2.ListConnectionsRequest, context: Context
    ) -> admin_pb2.ListConnectionsResponse:
        await self._auth.require_admin(context.invocation_metadata())
        await self._policy.load()
        online = await self._agents.online_names()
        response = admin_pb2.ListConnectionsResponse()
        for conn in self._policy.document.connections:
            response.connections.append(
                admin_pb2.ConnectionInfo(
                    name=conn.name,
                    type=conn.type,
                    agent=conn.agent,
                    agent_status="online" if conn.agent in online else "offline",
                    audit=conn.audit,
                )
            )
        return response

    @unary
    async def CreateToken(
        self, request: admin_pb2.CreateTokenRequest, context: Context
    ) -> admin_pb2.CreateTokenResponse:
        admin = await self._auth.require_admin(context.invocation_metadata())
        ttl = timedelta(seconds=request.ttl_seconds) if request.ttl_seconds else None
        row, secret = await self._auth.create(request.name, request.role, ttl, admin)
        return admin_pb2.CreateTokenResponse(token=_token_info(row), secret=secret)

    @unary
    async def ListTokens(
        self, request: admin_pb2.ListTokensRequest, context: Context
    ) -> admin_pb2.ListTokensResponse:
        await self._auth.require_admin(context.invocation_metadata())
        return admin_pb2.ListTokensResponse(
            tokens=[_token_info(row) for row in await self._auth.tokens()]
        )

    @unary
    async def RevokeToken(
        self, request: admin_pb2.RevokeTokenRequest, context: Context
    ) -> admin_pb2.RevokeTokenResponse:
        admin = await self._auth.require_admin(context.invocation_metadata())
        await self._auth.revoke(request.id, admin)
        return admin_pb2.RevokeTokenResponse()


def run_as_warnings(document: PolicyDocument, agents: AgentRegistry) -> list[str]:
    """Shell connections whose commands would run as root: `run_as: agent` on an agent that
    runs as root (as it must to switch to run_as accounts). Applied all the same, since the
    agent's account is its own to change; every command's event records the uid it ran as."""
    warnings = []
    for conn in document.connections:
        if not isinstance(conn, ShellConnection) or conn.target.run_as != RUN_AS_AGENT:
            continue
        links = agents.links(conn.agent)
        if not links:
            warnings.append(
                f"connection {conn.name!r} runs commands as agent {conn.agent!r}'s own user "
                "(run_as: agent), and no instance of that agent is connected to this replica, "
                "so which account that is cannot be told now; if the agent runs as root, so do "
                "its commands (each command's event records the uid)"
            )
        for link in links:
            where = f"agent {conn.agent!r} (instance {link.instance_id})"
            if link.uid is None:
                warnings.append(
                    f"{where} does not report its account (it is older than the control "
                    f"plane): connection {conn.name!r}'s commands are refused on it until it "
                    "is upgraded"
                )
            elif link.uid == 0:
                warnings.append(
                    f"connection {conn.name!r} runs commands as root: run_as: agent, and "
                    f"{where} runs as uid 0 ({link.user or 'root'}), so its commands can "
                    "read and change anything on that host; name an unprivileged account "
                    "(run_as: NAME) unless that is meant"
                )
    return warnings


def _token_info(row: ApiTokenRow) -> admin_pb2.TokenInfo:
    def moment(value: datetime | None) -> str:
        return rfc3339(as_utc(value)) if value else ""

    return admin_pb2.TokenInfo(
        id=row.id,
        name=row.subject.removeprefix("token:"),
        role=row.role,
        created=moment(row.created_at),
        expires=moment(row.expires_at),
        revoked=moment(row.revoked_at),
    )
