"""The control plane's end of an agent's session leg (docs/decisions/0035).

The multiplexed sessions of decision 0027 (`SessionStream`, controlplane/agents/mux.py) ride
length-prefixed frames (wire/frames.py) on a stream the event loop reads and writes itself:
no gRPC call, no completion-queue thread. The agent dials it:

- production: TLS to the gRPC port with ALPN `gatehouse-leg/1`; the TLS front
  (controlplane/tls/front.py) hands the decrypted stream to `LegServer.serve` with the client
  certificate it verified, instead of forwarding it to gRPC;
- --dev: a plaintext listener on loopback (`LegListener`) whose address every session order
  carries (`OpenSession.leg`); the agent's credential is in its first frame.

Either way the first frame is the agent's `LegHello`, the identity is checked like the gRPC
calls' (`AgentRegistry.identify`, a refusal is an `auth.fail`), and the control plane answers
with a `LegWelcome` before the batches flow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque

from google.protobuf.message import DecodeError

from controlplane.accept import Acceptor
from controlplane.agents.mux import SessionStream
from controlplane.agents.registry import AgentRegistry
from controlplane.agents.service import guarded, revoked_message
from controlplane.auth.failures import AuthFailures
from controlplane.auth.sources import SOURCE
from controlplane.errors import GatehouseError
from controlplane.relay.tunnel import Tunnels
from gatehouse.v1 import agent_pb2
from wire.frames import MAX_FRAME, READ_CHUNK, FrameError, FrameReader, encode, keep_alive
from wire.mux import batch_bytes

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0
"""Seconds for a new leg's first frame, as for the control stream's hello."""
REVOCATION_CHECK_TIMEOUT = 2.0
"""Seconds a broken leg's sessions wait for the store to say whether the agent was revoked."""
MAX_HELLO = 64 * 1024
"""Bytes of the hello at most: before it is checked, a peer may make us buffer no more."""
MAX_LEGS_PER_INSTANCE = 8
"""Legs of one agent instance on this replica at most: it dials one per replica (two while its
certificate is renewed; stale ones until TCP gives up on them). Each may hold a frame of up to
MAX_FRAME as it arrives; one more lets the oldest go (its sessions: agent_lost)."""


class LegServer:
    """Serves session legs, whoever accepted their connection (the TLS front, `LegListener`)."""

    def __init__(
        self,
        registry: AgentRegistry,
        tunnels: Tunnels,
        failures: AuthFailures | None = None,
        *,
        max_frame: int = MAX_FRAME,
    ) -> None:
        self._registry = registry
        self._tunnels = tunnels
        self._failures = failures
        self._max_frame = max_frame
        self.open = 0  # legs serving sessions now
        self._held: dict[str, deque[asyncio.StreamWriter]] = {}  # by instance, oldest first

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: str,
        certificate_der: bytes | None,
    ) -> None:
        """One leg, from its hello to its end; the caller closes the connection."""
        SOURCE.set(address)  # refusals are counted and throttled per source
        keep_alive(writer)
        frames = FrameReader(reader, MAX_HELLO)
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                first = await frames.next()
            if first is None:
                return
            hello = agent_pb2.LegHello.FromString(first)
        except (TimeoutError, FrameError, DecodeError, OSError) as exc:
            log.info("refused a session leg from %s: no hello (%s)", address, exc or "timeout")
            return
        kind = "agent_certificate" if self._registry.certificates else "agent_credential"
        try:
            row = await guarded(
                self._failures,
                kind,
                self._registry.identify(hello.credential, certificate_der),
            )
        except GatehouseError as exc:
            log.info("refused a session leg from %s: %s", address, exc)
            with contextlib.suppress(OSError):
                writer.write(encode(agent_pb2.LegWelcome(refused=str(exc)).SerializeToString()))
                await writer.drain()
            return
        writer.write(encode(agent_pb2.LegWelcome().SerializeToString()))
        frames.limit = self._max_frame
        held = self._held.setdefault(row.id, deque())
        held.append(writer)
        if len(held) > MAX_LEGS_PER_INSTANCE:
            oldest = held.popleft()
            log.warning(
                "agent %s (instance %s) holds more than %d session legs here: the oldest is let go",
                row.name,
                row.id,
                MAX_LEGS_PER_INSTANCE,
            )
            oldest.transport.abort()
        self.open += 1
        try:
            await self._run(row.id, row.name, frames, writer)
        finally:
            self.open -= 1
            with contextlib.suppress(ValueError):
                held.remove(writer)
            if not held and self._held.get(row.id) is held:
                del self._held[row.id]

    async def _run(
        self, instance: str, name: str, frames: FrameReader, writer: asyncio.StreamWriter
    ) -> None:
        stream = SessionStream(self._tunnels, name)
        revoked = self._registry.revocation(instance)
        reader = asyncio.create_task(_read(stream, frames))
        sender = asyncio.create_task(_write(stream, writer))
        cut = asyncio.create_task(revoked.wait())
        try:
            await asyncio.wait({reader, sender, cut}, return_when=asyncio.FIRST_COMPLETED)
            if cut.done() or await self._was_revoked(instance):
                # Revoked: end its sessions at once (not when they are done: then cancelled),
                # each telling its client why (57P01, after its in-flight results). A leg
                # that broke is asked too: a revoked agent exits before this replica may
                # have heard of it.
                stream.revoke(
                    f"agent {name!r} (instance {instance}) serving this session was revoked; "
                    "run it again to have another instance serve it"
                )
        finally:
            for task in (reader, sender, cut):
                task.cancel()
            # Ended, broken or cancelled: a session the agent did not end has an unknown
            # outcome (agent_lost).
            await stream.broken()
            await asyncio.gather(reader, sender, cut, return_exceptions=True)
        if revoked.is_set():
            log.info("session leg of %s cut: %s", name, revoked_message(name))
            return
        for task in (reader, sender):
            if not task.cancelled() and task.exception() is not None:
                log.warning("agent %s: session leg failed: %s", name, task.exception())

    async def _was_revoked(self, instance: str) -> bool:
        """The store's word; one it cannot give in time leaves the sessions lost (agent_lost):
        a store that hangs (the partition that broke the leg) must not hold them open."""
        try:
            async with asyncio.timeout(REVOCATION_CHECK_TIMEOUT):
                return await self._registry.was_revoked(instance)
        except Exception as exc:  # any store failure or TimeoutError: not known revoked
            why = str(exc) or f"no answer in {REVOCATION_CHECK_TIMEOUT:g} s"
            log.warning("could not learn whether agent instance %s was revoked: %s", instance, why)
            return False


async def _read(stream: SessionStream, frames: FrameReader) -> None:
    while (frame := await frames.next()) is not None:
        stream.receive(agent_pb2.AgentBatch.FromString(frame))


async def _write(stream: SessionStream, writer: asyncio.StreamWriter) -> None:
    """Everything queued for the agent, across sessions, as one frame per write."""
    while True:
        events = await stream.take()
        writer.write(encode(batch_bytes(events)))  # a GatewayBatch, serialized
        await writer.drain()


class LegListener(Acceptor):
    """--dev: session legs in plaintext on loopback (production takes them on the TLS front)."""

    def __init__(self, server: LegServer) -> None:
        super().__init__("session leg")
        self.server = server

    async def _serve(self, conn: socket.socket, client: tuple[str, int]) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=READ_CHUNK)
        except OSError:
            conn.close()
            return
        try:
            await self.server.serve(reader, writer, client[0], None)
        finally:
            writer.close()
