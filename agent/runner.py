"""The agent process: enroll once, then hold one control stream, reconnecting with backoff.

The agent only dials out. It keeps the control stream open with heartbeats, applies the policy
pushed to it (its connections and secret references), and for every session order dials a
session stream back. When the control plane goes away it retries with exponential backoff and
full jitter, so a thousand agents do not stampede a restarted control plane.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import socket
from dataclasses import dataclass, field

import grpc

from agent import __version__, credentials
from agent.metrics import AgentStats, start_http
from agent.sessions import serve_session
from agent.settings import AgentSettings
from gatehouse.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)

JOIN_PREFIX = "ghj_"
BACKOFF_BASE = 0.5
BACKOFF_CAP = 15.0
STABLE_AFTER = 10.0  # a connection that lived this long resets the backoff


class AgentFatal(Exception):
    """Retrying cannot help (revoked, join token used up); the process should exit."""


@dataclass
class AgentState:
    policy_version: int = -1
    connections: dict[str, agent_pb2.ConnectionSpec] = field(default_factory=dict)
    sessions: set[asyncio.Task[None]] = field(default_factory=set)


def make_channel(settings: AgentSettings) -> grpc.aio.Channel:
    options = [
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ]
    if settings.insecure:
        return grpc.aio.insecure_channel(settings.controlplane, options=options)
    root = settings.ca_file.read_bytes() if settings.ca_file else None
    credentials_ = grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.aio.secure_channel(settings.controlplane, credentials_, options=options)


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.state = AgentState()
        self.connected = asyncio.Event()
        self.stats = AgentStats()

    async def credential(self, channel: grpc.aio.Channel) -> str:
        """The stored credential, or a new one in exchange for the join token."""
        settings = self.settings
        if not settings.token.startswith(JOIN_PREFIX):
            return settings.token
        stored = credentials.load(settings.data_dir, settings.name, settings.controlplane)
        if stored is not None:
            return stored.credential
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        request = agent_pb2.EnrollRequest(
            join_token=settings.token, name=settings.name, version=__version__
        )
        try:
            response = await stub.Enroll(request, timeout=15)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.INVALID_ARGUMENT,
            ):
                raise AgentFatal(f"enrollment refused: {exc.details()}") from None
            raise
        path = credentials.save(
            settings.data_dir,
            credentials.StoredCredential(
                settings.controlplane, settings.name, response.agent_id, response.credential
            ),
        )
        log.info("enrolled as %s; credential stored in %s", settings.name, path)
        return response.credential

    async def run(self) -> None:
        """Stay connected until cancelled; raises AgentFatal when retrying cannot help."""
        attempt = 0
        channel = make_channel(self.settings)
        try:
            while True:
                started = asyncio.get_running_loop().time()
                try:
                    credential = await self.credential(channel)
                    await self._control(channel, credential)
                    reason = "the control plane closed the stream"
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in (
                        grpc.StatusCode.UNAUTHENTICATED,
                        grpc.StatusCode.PERMISSION_DENIED,
                    ):
                        if self.settings.token.startswith(JOIN_PREFIX):
                            # The stored credential was refused (revoked): drop it, so that a
                            # new join token can enroll this agent again.
                            credentials.forget(self.settings.data_dir, self.settings.name)
                        raise AgentFatal(
                            f"the control plane refused this agent: {exc.details()}"
                        ) from None
                    reason = exc.details() or exc.code().name
                finally:
                    self.connected.clear()
                    self.stats.control_connected = False
                if asyncio.get_running_loop().time() - started > STABLE_AFTER:
                    attempt = 0
                delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
                attempt += 1
                log.warning("control stream lost (%s); reconnecting in %.1f s", reason, delay)
                await asyncio.sleep(delay)
        finally:
            for task in list(self.state.sessions):
                task.cancel()
            await asyncio.gather(*self.state.sessions, return_exceptions=True)
            await channel.close(None)

    async def _control(self, channel: grpc.aio.Channel, credential: str) -> None:
        metadata = (("authorization", f"Bearer {credential}"),)
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        call = stub.Control(metadata=metadata)  # type: ignore[call-arg]  # read/write API
        hello = agent_pb2.Hello(
            name=self.settings.name, version=__version__, hostname=socket.gethostname()
        )
        await call.write(agent_pb2.AgentMessage(hello=hello))
        heartbeat: asyncio.Task[None] | None = None
        try:
            while True:
                message = await call.read()
                if not isinstance(message, agent_pb2.ControlMessage):  # end of stream
                    return
                kind = message.WhichOneof("msg")
                if kind == "welcome":
                    interval = message.welcome.heartbeat_interval_ms / 1000 or 10.0
                    heartbeat = asyncio.create_task(self._heartbeats(call, interval))
                    self.connected.set()
                    self.stats.control_connected = True
                    self.stats.control_connects += 1
                    log.info(
                        "connected to %s as %s", self.settings.controlplane, self.settings.name
                    )
                elif kind == "policy":
                    self._apply(message.policy)
                elif kind == "open_session":
                    self._open(channel, metadata, message.open_session)
                # "heartbeat": an ack from an older control plane; nothing to do with it.
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
            call.cancel()

    @staticmethod
    async def _heartbeats(
        call: grpc.aio.StreamStreamCall[agent_pb2.AgentMessage, agent_pb2.ControlMessage],
        interval: float,
    ) -> None:
        """Tell the control plane this agent is alive (its last-seen). They are not answered:
        a dead stream is found by the channel's gRPC keepalive (`make_channel`: a ping every
        20 s, 10 s to answer), which fails the call and so starts a reconnect."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            beat = agent_pb2.Heartbeat(sent_unix_ms=int(loop.time() * 1000))
            await call.write(agent_pb2.AgentMessage(heartbeat=beat))

    def _apply(self, policy: agent_pb2.Policy) -> None:
        self.state.policy_version = policy.version
        self.stats.policy_version = policy.version
        self.state.connections = {c.name: c for c in policy.connections}
        log.info(
            "policy version %d: %d connection(s): %s",
            policy.version,
            len(policy.connections),
            ", ".join(sorted(self.state.connections)) or "none",
        )

    def _open(
        self,
        channel: grpc.aio.Channel,
        metadata: tuple[tuple[str, str], ...],
        order: agent_pb2.OpenSession,
    ) -> None:
        spec = self.state.connections.get(order.connection)
        task = asyncio.create_task(serve_session(channel, metadata, order, spec, self.stats))
        self.state.sessions.add(task)
        task.add_done_callback(self.state.sessions.discard)


async def run_agent(settings: AgentSettings) -> None:
    """Run until SIGINT/SIGTERM."""
    agent = Agent(settings)
    http = await start_http(agent.stats, settings.http_listen) if settings.http_listen else None
    task = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        log.info("agent stopped")
    finally:
        if http is not None:
            await http.cleanup()
