"""AgentService: enrollment and the control stream (sessions ride the leg: agents/leg.py)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc

from controlplane.agents.certificates import Issued
from controlplane.agents.registry import AgentLink, AgentRegistry
from controlplane.auth.failures import AuthFailures
from controlplane.auth.sources import current_source
from controlplane.errors import (
    FailedPrecondition,
    GatehouseError,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    unary,
)
from controlplane.policy.store import PolicyStore
from controlplane.store.models import AgentInstanceRow
from controlplane.tls.peers import grpc_peer
from gatehouse import __version__
from gatehouse.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
# A refused Enroll or Renew, whatever the reason (the credential, or the certificate request
# it brought), is a failed authentication: it asked for a credential and got none.
GRANT_REFUSALS: tuple[type[GatehouseError], ...] = (
    Unauthenticated,
    PermissionDenied,
    InvalidArgument,
)


def revoked_message(name: str) -> str:
    """What a revoked agent is told as its streams are cut: it exits with this."""
    return (
        f"agent {name!r} was revoked: to bring it back, an admin creates a new join token "
        f"with `gatehouse admin agents create {name}` and the agent is started with it"
    )


def outdated_message(version: str) -> str:
    """What an agent too old for the framed session leg is told (decisions 0027, 0035)."""
    return (
        f"agent version {version or 'unknown'} carries sessions on gRPC streams, "
        f"which this control plane (version {__version__}) no longer serves: upgrade the "
        "agent to the control plane's version (agents and control plane ship together)"
    )


async def guarded(
    failures: AuthFailures | None,
    kind: str,
    work: Awaitable[T],
    refusals: tuple[type[GatehouseError], ...] = (Unauthenticated, PermissionDenied),
) -> T:
    """Run `work`; a refusal among `refusals` is a failed authentication (`auth.fail`) of the
    current source, throttled per source like people's tokens."""
    if failures is None:
        return await work
    source = current_source()
    throttled = failures.throttled(source)
    if throttled is not None:
        if inspect.iscoroutine(work):
            work.close()
        await failures.failed(source, throttled, kind, True)
        raise Unauthenticated(throttled)
    try:
        return await work
    except refusals as exc:
        await failures.failed(source, str(exc), kind, False)
        raise


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        registry: AgentRegistry,
        policy: PolicyStore,
        *,
        heartbeat_interval: float = 10.0,
        failures: AuthFailures | None = None,
    ) -> None:
        self._registry = registry
        self._policy = policy
        self._heartbeat_interval = heartbeat_interval
        # Refused join tokens and agent credentials are `auth.fail` events, throttled per
        # source like people's tokens: spent, expired or guessed tokens show in the trail.
        self._failures = failures

    async def _guarded(
        self,
        kind: str,
        work: Awaitable[T],
        refusals: tuple[type[GatehouseError], ...] = (Unauthenticated, PermissionDenied),
    ) -> T:
        return await guarded(self._failures, kind, work, refusals)

    async def _authenticate(self, context: Context) -> AgentInstanceRow:
        kind = "agent_certificate" if self._registry.certificates else "agent_credential"
        return await self._guarded(kind, self._registry.authenticate(context))

    @unary
    async def Enroll(
        self, request: agent_pb2.EnrollRequest, context: Context
    ) -> agent_pb2.EnrollResponse:
        enrolled = await self._guarded(
            "join_token", self._registry.enroll(request, grpc_peer(context)), GRANT_REFUSALS
        )
        response = agent_pb2.EnrollResponse(
            agent_id=enrolled.agent_id,
            instance_id=enrolled.instance_id,
            credential=enrolled.credential or "",
        )
        if enrolled.certificate is not None:
            certs = self._registry.certificates
            assert certs is not None  # a certificate is issued only with a CA
            response.certificate = enrolled.certificate.pem
            response.ca = certs.ca.cert_pem
            response.not_after_unix = int(enrolled.certificate.not_after.timestamp())
        return response

    @unary
    async def Renew(
        self, request: agent_pb2.RenewRequest, context: Context
    ) -> agent_pb2.RenewResponse:
        async def renew() -> Issued:
            row = await self._registry.authenticate(context)
            return await self._registry.renew(row, request.csr, grpc_peer(context))

        # One auth.fail for any refusal: an unknown, expired, revoked or replaced certificate,
        # or a certificate request the CA will not sign.
        issued = await self._guarded("agent_certificate", renew(), GRANT_REFUSALS)
        return agent_pb2.RenewResponse(
            certificate=issued.pem, not_after_unix=int(issued.not_after.timestamp())
        )

    async def Control(  # type: ignore[override]  # read/write API, not a generator
        self, request_iterator: Any, context: Context
    ) -> None:
        try:
            row = await self._authenticate(context)
            first = await asyncio.wait_for(context.read(), 10)
            if not isinstance(first, agent_pb2.AgentMessage) or not first.HasField("hello"):
                raise InvalidArgument("the control stream must start with hello")
            if not (first.hello.multiplexed and first.hello.framed_leg):
                raise FailedPrecondition(outdated_message(first.hello.version))
            link = await self._registry.connected(row, first.hello, grpc_peer(context))
        except GatehouseError as exc:
            await context.abort(exc.code, str(exc))
            return
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no hello within 10 s")
            return
        log.info("agent %s (instance %s) connected from %s", link.name, link.instance_id, link.peer)
        try:
            await self._policy.load()
            await context.write(
                agent_pb2.ControlMessage(
                    welcome=agent_pb2.Welcome(
                        agent_id=link.agent_id,
                        heartbeat_interval_ms=int(self._heartbeat_interval * 1000),
                        instance_id=link.instance_id,
                    )
                )
            )
            await context.write(agent_pb2.ControlMessage(policy=self._policy.for_agent(link.name)))
            reader = asyncio.create_task(self._read_control(link, context))
            writer = asyncio.create_task(self._write_control(link, context))
            closed = asyncio.create_task(link.closed.wait())
            await asyncio.wait({reader, writer, closed}, return_when=asyncio.FIRST_COMPLETED)
            for task in (reader, writer, closed):
                task.cancel()
            await asyncio.gather(reader, writer, closed, return_exceptions=True)
        finally:
            await self._registry.disconnected(link)
            log.info(
                "agent %s (instance %s) disconnected: %s",
                link.name,
                link.instance_id,
                link.close_reason,
            )
        if link.close_reason == "the agent was revoked":
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, revoked_message(link.name))

    async def _read_control(self, link: AgentLink, context: Context) -> None:
        while True:
            message = await context.read()
            if not isinstance(message, agent_pb2.AgentMessage):  # end of stream
                link.close_reason = "the agent closed its control stream"
                return
            if message.HasField("heartbeat"):
                # Not acknowledged: agents never used the ack, and gRPC keepalive already
                # finds a dead stream; a write per heartbeat cost a quarter of the CPU at
                # 10,000 agents (docs/decisions/0009).
                self._registry.heartbeat(link)

    @staticmethod
    async def _write_control(link: AgentLink, context: Context) -> None:
        while True:
            await context.write(await link.outbox.get())
