"""The agent process: enroll once, then hold one control stream, reconnecting with backoff.

In production the agent verifies the control plane against the CA its join token pins (or its
--ca-file, or the system's CAs), enrolls with a CSR for a key it made, holds its streams with
mTLS and renews its short-lived certificate at 2/3 of its lifetime (docs/decisions/0016).

The agent only dials out. It keeps the control stream open with heartbeats, applies the policy
pushed to it (its connections and secret references), and for every session order attaches the
session on its session leg to that replica (one per replica, docs/decisions/0027 and 0035). When the
control plane goes away it retries with exponential backoff and full jitter, so a thousand agents
do not stampede a restarted control plane.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import signal
import socket
import time
from dataclasses import dataclass, field

import grpc

from agent import __version__, credentials, enrollment
from agent.metrics import AgentStats, start_http
from agent.mux import SessionMux, connector, tls_context
from agent.sessions import serve_session
from agent.settings import AgentSettings
from agent.term.shell import own_account
from gatehouse.v1 import agent_pb2, agent_pb2_grpc
from wire import jointoken
from wire.addresses import is_loopback
from wire.jointoken import JoinToken

log = logging.getLogger(__name__)

BACKOFF_BASE = 0.5
BACKOFF_CAP = 15.0
STABLE_AFTER = 10.0  # a connection that lived this long resets the backoff
RENEW_AT = 2 / 3  # of the certificate's lifetime
RENEW_RETRY = 30.0  # seconds between renewal attempts that failed (fewer when close to expiry)

OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]


class AgentFatal(Exception):
    """Retrying cannot help (revoked, join token used up, wrong pin); the process should exit."""


@dataclass
class AgentState:
    policy_version: int = -1
    connections: dict[str, agent_pb2.ConnectionSpec] = field(default_factory=dict)
    sessions: set[asyncio.Task[None]] = field(default_factory=set)


def make_channel(
    settings: AgentSettings,
    address: str,
    roots: bytes | None = None,
    key: bytes | None = None,
    certificate: bytes | None = None,
) -> grpc.aio.Channel:
    """A channel to `address`: plaintext with --insecure (loopback only); otherwise TLS
    verified against `roots` (the --ca-file, the pinned CA or the system's), with the client
    certificate if given. A new channel resolves the name anew."""
    if settings.insecure:
        return grpc.aio.insecure_channel(address, options=OPTIONS)
    credentials_ = grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key, certificate_chain=certificate
    )
    return grpc.aio.secure_channel(address, credentials_, options=OPTIONS)


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.state = AgentState()
        self.connected = asyncio.Event()
        self.stats = AgentStats()
        self.stored: credentials.StoredCredential | None = None
        self.channel: grpc.aio.Channel | None = None
        self._switch = asyncio.Event()  # a renewed certificate: move to a new channel
        self._next_channel: grpc.aio.Channel | None = None
        self._retired: set[asyncio.Task[None]] = set()
        # The replicas (or load balancer names) to try, in turn from a random start, so that
        # a fleet does not pile onto the first address of the list.
        self._addresses = settings.addresses or [settings.controlplane]
        self._at = random.randrange(len(self._addresses))
        # Channels to other replicas that hold the clients of sessions (their `dial`).
        self._dialed: dict[str, grpc.aio.Channel] = {}
        # The session leg to each replica (by the channel its orders concern and the address
        # the leg is dialled at), opened on first use, retired with its channel.
        self._muxes: dict[tuple[grpc.aio.Channel, str], SessionMux] = {}

    @property
    def address(self) -> str:
        """The control-plane address this agent dials now."""
        return self._addresses[self._at]

    def _note_certificate(self) -> None:
        """The expiry of the certificate in use, for /metrics."""
        stored = self.stored
        if stored is not None and stored.mtls:
            self.stats.certificate_not_after = enrollment.not_after(stored.certificate.encode())

    @property
    def serial(self) -> str:
        """The serial of the client certificate in use ("" with --dev)."""
        if self.stored is None or not self.stored.mtls:
            return ""
        return enrollment.serial(self.stored.certificate.encode())

    # ---- trust and enrollment -----------------------------------------------------------

    async def _roots(self, token: JoinToken | None) -> bytes | None:
        """What the control plane is verified against before enrollment."""
        settings = self.settings
        if settings.ca_file is not None:
            pem = settings.ca_file.read_bytes()
            if token is not None and token.pin is not None:
                try:
                    enrollment.check_ca_file(pem, token.pin, str(settings.ca_file))
                except (enrollment.PinMismatch, ValueError) as exc:
                    raise AgentFatal(str(exc)) from None
            return pem
        if token is not None and token.pin is not None:
            try:
                return await asyncio.to_thread(enrollment.pinned_root, self.address, token.pin)
            except enrollment.PinMismatch as exc:
                raise AgentFatal(str(exc)) from None
        return await asyncio.to_thread(enrollment.system_roots)

    async def credential(self) -> credentials.StoredCredential:
        """The stored credential, or a new one in exchange for the join token."""
        settings = self.settings
        if not jointoken.is_join_token(settings.token):
            if not settings.insecure:
                raise AgentFatal(
                    "--token must be a join token (ghj_…): outside --dev agents authenticate "
                    "with a client certificate they get by enrolling"
                )
            return credentials.StoredCredential(
                settings.controlplane, settings.name, "", settings.token
            )
        stored = credentials.load(settings.data_dir, settings.name, settings.controlplane)
        if stored is not None and (settings.insecure or self._usable(stored)):
            return stored
        try:
            token = jointoken.parse(settings.token)
        except jointoken.BadJoinToken as exc:
            raise AgentFatal(str(exc)) from None
        roots = None if settings.insecure else await self._roots(token)
        key = None if settings.insecure else enrollment.new_key()
        request = agent_pb2.EnrollRequest(
            join_token=token.secret,
            name=settings.name,
            version=__version__,
            hostname=socket.gethostname(),
            csr=enrollment.csr_pem(key, settings.name) if key is not None else b"",
        )
        channel = make_channel(settings, self.address, roots)
        try:
            response = await agent_pb2_grpc.AgentServiceStub(channel).Enroll(request, timeout=15)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.INVALID_ARGUMENT,
            ):
                raise AgentFatal(f"enrollment refused: {exc.details()}") from None
            raise
        finally:
            await channel.close(None)
        if key is not None and not response.certificate:
            raise AgentFatal(
                "the control plane sent no client certificate (is it an older version, or "
                "does it run with --dev? then use --insecure)"
            )
        stored = credentials.StoredCredential(
            settings.controlplane,
            settings.name,
            response.agent_id,
            response.credential,
            roots=(roots or b"").decode(),
            certificate=response.certificate.decode(),
            key=enrollment.key_pem(key).decode() if key is not None else "",
            obtained=time.time(),
            instance_id=response.instance_id,
        )
        path = credentials.save(settings.data_dir, stored)
        log.info(
            "enrolled as %s (instance %s)%s; credential stored in %s",
            settings.name,
            response.instance_id,
            f" (certificate serial {enrollment.serial(response.certificate)})"
            if response.certificate
            else "",
            path,
        )
        return stored

    @staticmethod
    def _usable(stored: credentials.StoredCredential) -> bool:
        """A certificate that has not expired yet (an expired one needs the join token)."""
        return stored.mtls and enrollment.not_after(stored.certificate.encode()) > time.time() + 5

    def _channel_for(
        self, stored: credentials.StoredCredential, address: str | None = None
    ) -> grpc.aio.Channel:
        target = address or self.address
        if not stored.mtls:
            return make_channel(self.settings, target, stored.roots.encode() or None)
        return make_channel(
            self.settings,
            target,
            stored.roots.encode() or None,
            stored.key.encode(),
            stored.certificate.encode(),
        )

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self.stored is None or self.stored.mtls:
            return ()
        return (("authorization", f"Bearer {self.stored.credential}"),)

    # ---- renewal ----------------------------------------------------------------------

    async def _renewals(self) -> None:
        """Renew the certificate at RENEW_AT of its lifetime, retrying until it expires."""
        while True:
            stored = self.stored
            if stored is None or not stored.mtls:
                return
            expires = enrollment.not_after(stored.certificate.encode())
            due = stored.obtained + (expires - stored.obtained) * RENEW_AT
            await asyncio.sleep(max(0.0, due - time.time()))
            try:
                await self._renew(stored)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ):
                    return  # revoked: the control stream learns it too and ends the agent
                left = expires - time.time()
                log.warning("certificate renewal failed (%s); %.0f s left", exc.details(), left)
                await asyncio.sleep(max(1.0, min(RENEW_RETRY, left / 10)))
                # `stored` still the same: the loop computes `due` in the past and retries.

    async def _renew(self, stored: credentials.StoredCredential) -> None:
        assert self.channel is not None
        key = enrollment.new_key()
        stub = agent_pb2_grpc.AgentServiceStub(self.channel)
        response = await stub.Renew(
            agent_pb2.RenewRequest(csr=enrollment.csr_pem(key, self.settings.name)), timeout=15
        )
        renewed = dataclasses.replace(
            stored,
            certificate=response.certificate.decode(),
            key=enrollment.key_pem(key).decode(),
            obtained=time.time(),
        )
        credentials.save(self.settings.data_dir, renewed)
        self.stored = renewed
        self.stats.certificate_renewals += 1
        self._note_certificate()
        log.info(
            "certificate renewed: serial %s, valid until %s",
            enrollment.serial(response.certificate),
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(response.not_after_unix)),
        )
        # Sessions keep the old channel (its TLS connection stays open) until they end; the
        # control stream ends and `run` moves it and new sessions to the new channel.
        self._next_channel = self._channel_for(renewed)
        for dialed in self._dialed.values():  # the next sessions dial with the new one
            self._retire(dialed)
        self._dialed.clear()
        self._switch.set()

    def _retire(self, channel: grpc.aio.Channel) -> None:
        running = set(self.state.sessions)
        # The next sessions open a leg for the new channel (with the renewed certificate).
        muxes = [self._muxes.pop(key) for key in list(self._muxes) if key[0] is channel]

        async def close_when_idle() -> None:
            if running:
                await asyncio.wait(running)
            for mux in muxes:
                await mux.close()
            await channel.close(None)

        task = asyncio.create_task(close_when_idle())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    # ---- the control stream -------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected until cancelled; raises AgentFatal when retrying cannot help."""
        attempt = 0
        renewals: asyncio.Task[None] | None = None
        moved = False  # the last stream was lost: dial the next address, resolved anew
        try:
            while True:
                started = asyncio.get_running_loop().time()
                try:
                    if moved and self.channel is not None and self.stored is not None:
                        self._retire(self.channel)  # its sessions end on their own
                        self.channel = self._channel_for(self.stored)
                    moved = False
                    if self.stored is None or (self.stored.mtls and not self._usable(self.stored)):
                        self.stored = await self.credential()
                        self._note_certificate()
                        if self.channel is not None:
                            self._retire(self.channel)
                        self.channel = self._channel_for(self.stored)
                        if renewals is not None:
                            renewals.cancel()
                        renewals = asyncio.create_task(self._renewals())
                    if self._next_channel is not None:  # no control stream on the old one now
                        if self.channel is not None:
                            self._retire(self.channel)
                        self.channel, self._next_channel = self._next_channel, None
                    assert self.channel is not None
                    self._switch.clear()
                    await self._control(self.channel, self._metadata())
                    reason = "the control plane closed the stream"
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in (
                        grpc.StatusCode.UNAUTHENTICATED,
                        grpc.StatusCode.PERMISSION_DENIED,
                    ):
                        if jointoken.is_join_token(self.settings.token):
                            # The stored credential was refused (revoked): drop it, so that a
                            # new join token can enroll this agent again.
                            credentials.forget(self.settings.data_dir, self.settings.name)
                        raise AgentFatal(
                            f"the control plane refused this agent: {exc.details()}"
                        ) from None
                    reason = exc.details() or exc.code().name
                except OSError as exc:  # the pin check's own TLS connection (refused, reset)
                    reason = f"cannot read the control plane's certificate chain: {exc}"
                finally:
                    self.connected.clear()
                    self.stats.control_connected = False
                if self._switch.is_set():
                    log.info("moving the control stream to the renewed certificate")
                    continue
                if asyncio.get_running_loop().time() - started > STABLE_AFTER:
                    attempt = 0
                delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
                attempt += 1
                lost = self.address
                self._at = (self._at + 1) % len(self._addresses)
                moved = True
                log.warning(
                    "control stream to %s lost (%s); reconnecting to %s in %.1f s",
                    lost,
                    reason,
                    self.address,
                    delay,
                )
                await asyncio.sleep(delay)
        finally:
            if renewals is not None:
                renewals.cancel()
            for task in list(self.state.sessions):
                task.cancel()
            await asyncio.gather(*self.state.sessions, return_exceptions=True)
            for task in list(self._retired):
                task.cancel()
            await asyncio.gather(*self._retired, return_exceptions=True)
            for mux in self._muxes.values():
                await mux.close()
            for channel in (self.channel, self._next_channel, *self._dialed.values()):
                if channel is not None:
                    await channel.close(None)

    async def _control(
        self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]
    ) -> None:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        call = stub.Control(metadata=metadata)  # type: ignore[call-arg]  # read/write API
        account = own_account()  # `admin apply` warns when run_as: agent would be root
        hello = agent_pb2.Hello(
            name=self.settings.name,
            version=__version__,
            hostname=socket.gethostname(),
            uid=account.uid,
            user=account.user or "",
            multiplexed=True,
            framed_leg=True,
        )
        await call.write(agent_pb2.AgentMessage(hello=hello))
        heartbeat: asyncio.Task[None] | None = None
        switch = asyncio.create_task(self._switch.wait())
        try:
            while True:
                read = asyncio.ensure_future(call.read())
                await asyncio.wait({read, switch}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():  # renewed: end this stream, the caller opens a new one
                    read.cancel()
                    return
                message = read.result()
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
                        "connected to %s as %s (instance %s)",
                        self.address,
                        self.settings.name,
                        message.welcome.instance_id,
                    )
                elif kind == "policy":
                    self._apply(message.policy)
                elif kind == "open_session":
                    self._open(channel, message.open_session)
                # "heartbeat": an ack from an older control plane; nothing to do with it.
        finally:
            switch.cancel()
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

    def _open(self, channel: grpc.aio.Channel, order: agent_pb2.OpenSession) -> None:
        spec = self.state.connections.get(order.connection)
        address = order.dial or self.address
        # The leg goes to the replica's gRPC port (TLS, told apart by ALPN), or with --dev to
        # the plaintext listener the order names (docs/decisions/0035).
        target = order.leg or address
        if self.settings.insecure and not is_loopback(target):
            log.warning(
                "session %s: refusing to dial %s in plaintext (--insecure: loopback only)",
                order.session_id,
                target,
            )
            return
        if order.dial:  # the client's session is held by another replica: dial it there
            channel = self._dial(order.dial)
        mux = self._muxes.get((channel, target))
        if mux is None:
            mux = self._muxes[(channel, target)] = self._leg(target)
        task = asyncio.create_task(serve_session(mux, order, spec, self.stats))
        self.state.sessions.add(task)
        task.add_done_callback(self.state.sessions.discard)

    def _leg(self, target: str) -> SessionMux:
        """A session leg to `target` with this agent's identity now."""
        stored = self.stored
        assert stored is not None  # orders come only over an authenticated stream
        if self.settings.insecure:
            return SessionMux(connector(target, None), stored.credential, self.stats)
        if not stored.mtls:
            raise AgentFatal("outside --dev the session leg needs the agent's client certificate")
        tls = tls_context(stored.roots, stored.key, stored.certificate)
        return SessionMux(connector(target, tls), "", self.stats)

    def _dial(self, address: str) -> grpc.aio.Channel:
        """A channel to another replica, with this agent's credential, kept for the next
        sessions there (until the certificate is renewed)."""
        channel = self._dialed.get(address)
        if channel is None:
            assert self.stored is not None  # orders come only over an authenticated stream
            channel = self._dialed[address] = self._channel_for(self.stored, address)
        return channel


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
