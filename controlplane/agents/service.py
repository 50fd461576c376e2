"""AgentService: enrollment, the control stream, and the agent's end of each session."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc

from controlplane.agents.certificates import Issued
from controlplane.agents.mux import SessionStream
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
from controlplane.relay.tunnel import Tunnels
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
    """What an agent too old for the multiplexed session stream is told (decision 0027)."""
    return (
        f"agent version {version or 'unknown'} carries sessions on per-session streams, "
        f"which this control plane (version {__version__}) no longer serves: upgrade the "
        "agent to the control plane's version (agents and control plane ship together)"
    )


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(
        self,
        registry: AgentRegistry,
        policy: PolicyStore,
        tunnels: Tunnels,
        *,
        heartbeat_interval: float = 10.0,
        failures: AuthFailures | None = None,
    ) -> None:
        self._registry = registry
        self._policy = policy
        self._tunnels = tunnels
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
        """Run `work`; a refusal among `refusals` is a failed authentication (`auth.fail`)."""
        failures = self._failures
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
            if not first.hello.multiplexed:
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

    async def Sessions(  # type: ignore[override]  # read/write API, not a generator
        self, request_iterator: Any, context: Context
    ) -> None:
        """The agent's half of its sessions on this replica, multiplexed (decision 0027)."""
        try:
            row = await self._authenticate(context)
        except GatehouseError as exc:
            await context.abort(exc.code, str(exc))
            return
        stream = SessionStream(self._tunnels, row.name)
        revoked = self._registry.revocation(row.id)
        reader = asyncio.create_task(self._read_sessions(stream, context))
        writer = asyncio.create_task(_write_sessions(stream, context))
        cut = asyncio.create_task(revoked.wait())
        try:
            await asyncio.wait({reader, writer, cut}, return_when=asyncio.FIRST_COMPLETED)
            if cut.done():
                # Revoked: end its sessions at once (not when they are done: then cancelled),
                # each telling its client why (57P01, after its in-flight results).
                stream.revoke(
                    f"agent {row.name!r} (instance {row.id}) serving this session was revoked; "
                    "run it again to have another instance serve it"
                )
        finally:
            for task in (reader, writer, cut):
                task.cancel()
            # Ended, broken or cancelled (gRPC cancels the handler when the agent's connection
            # drops): a session the agent did not end has an unknown outcome (agent_lost).
            await stream.broken()
            await asyncio.gather(reader, writer, cut, return_exceptions=True)
        if revoked.is_set():
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, revoked_message(row.name))
        for task in (reader, writer):
            if not task.cancelled() and task.exception() is not None:
                log.warning("agent %s: session stream failed: %r", row.name, task.exception())

    @staticmethod
    async def _read_sessions(stream: SessionStream, context: Context) -> None:
        while True:
            message = await context.read()
            if not isinstance(message, agent_pb2.AgentBatch):  # end of stream
                return
            stream.receive(message)


async def _write_sessions(stream: SessionStream, context: Context) -> None:
    """Everything queued for the agent, across sessions, as one message per write."""
    while True:
        events = await stream.outbox.take()
        await context.write(agent_pb2.GatewayBatch(events=events))
