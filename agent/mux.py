"""The agent's end of the multiplexed session leg (docs/decisions/0027, 0035).

One leg per replica the agent serves sessions for, dialled when the first session order for
that replica arrives and kept open: a TLS connection with the agent's client certificate and
ALPN `gatehouse-leg/1` to the replica's gRPC port (--insecure: plaintext to the address the
order names), carrying length-prefixed AgentBatch / GatewayBatch frames (wire/frames.py) that
the event loop reads and writes itself. A session is a number on the stream:
`attach` opens it, frames and grants carry it, `end` (the agent's) or `close` (the control
plane's) finishes it. The writer sends everything queued as one message; each session's
credit bounds what it has in flight, so one stalled client stalls only its own session.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent import __version__
from agent.engines import CANCEL, Cancel
from agent.metrics import AgentStats
from gatehouse.v1 import agent_pb2, tunnel_pb2
from wire.frames import ALPN, READ_CHUNK, FrameReader, encode, keep_alive
from wire.mux import Credit, Grants, Outbox, batch_bytes

log = logging.getLogger(__name__)

Received = bytes | Cancel | None


class StreamLost(ConnectionError):
    """The session leg to the control plane broke: the session cannot go on."""


class MuxSession:
    """One session on a stream: what the engines read from and send to."""

    def __init__(self, mux: SessionMux, number: int) -> None:
        self._mux = mux
        self.number = number
        self.credit = Credit()  # the target's bytes we may still send
        self._inbox: asyncio.Queue[Received] = asyncio.Queue()  # bounded by our grants
        self._grants = Grants(self._grant)
        self.closed = False  # the control plane is done with it, or the stream broke
        self.lost = False  # the stream broke

    def _grant(self, size: int) -> None:
        self._mux.outbox.put(agent_pb2.AgentEvent(session=self.number, credit=size))

    async def receive(self) -> Received:
        """The next client bytes (a cancel; None: the end), granting credit for what is taken."""
        item = await self._inbox.get()
        if item is None:
            self._inbox.put_nowait(None)  # every later read sees the end too
        elif isinstance(item, bytes):
            self._mux.stats.bytes_to_targets += len(item)
            self._grants.took(len(item))
        return item

    async def send(self, frame: tunnel_pb2.Frame) -> None:
        """Queue the target's bytes, waiting while the client's side has not taken enough."""
        if self.lost:
            raise StreamLost("the session stream to the control plane broke")
        await self.credit.spend(len(frame.data))
        if self.closed:
            return  # the control plane is done with the session: nobody reads this
        self._mux.stats.bytes_from_targets += len(frame.data)
        event = agent_pb2.AgentEvent(session=self.number, frame=frame)
        self._mux.outbox.put(event, len(frame.data))

    def end(self, failure: str = "") -> None:
        """The engine finished (its last frame is queued before this), or failed: then the
        control plane ends the session as agent_lost, what ran having an unknown outcome."""
        if not self.closed:
            event = (
                agent_pb2.AgentEvent(session=self.number, lost=failure)
                if failure
                else agent_pb2.AgentEvent(session=self.number, end=True)
            )
            self._mux.outbox.put(event)
        self._finish()

    def _finish(self) -> None:
        self.closed = True
        self.credit.close()
        self._mux.sessions.pop(self.number, None)

    def deliver(self, event: agent_pb2.GatewayEvent) -> None:
        kind = event.WhichOneof("msg")
        if kind == "data":
            self._inbox.put_nowait(bytes(event.data))
        elif kind == "cancel":
            self._inbox.put_nowait(CANCEL)
        elif kind == "credit":
            self.credit.grant(event.credit)
        elif kind == "end":
            self._inbox.put_nowait(None)
        elif kind == "close":
            log.info("session %d closed by the control plane: %s", self.number, event.close)
            self._finish()
            self._inbox.put_nowait(None)

    def broke(self) -> None:
        self.lost = True
        self._finish()
        self._inbox.put_nowait(None)


Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
"""Opens the leg's connection (TLS or, with --insecure, plaintext)."""
CONNECT_TIMEOUT = 15.0


def tls_context(roots: str, key: str, certificate: str) -> ssl.SSLContext:
    """The leg's TLS: the control plane verified against `roots` (empty: the system's CAs),
    this agent's client certificate, ALPN `gatehouse-leg/1`."""
    context = ssl.create_default_context(cadata=roots or None)
    context.set_alpn_protocols([ALPN])
    # ssl loads a certificate chain only from a file: a private one, gone once read.
    with tempfile.TemporaryDirectory(prefix="gatehouse-leg-") as directory:
        path = Path(directory) / "client.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(key + "\n" + certificate)
        context.load_cert_chain(path)
    return context


def connector(address: str, tls: ssl.SSLContext | None) -> Connect:
    """How to open a leg to `address` (host:port)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            if tls is None:
                return await asyncio.open_connection(host, int(port), limit=READ_CHUNK)
            reader, writer = await asyncio.open_connection(
                host, int(port), ssl=tls, server_hostname=host, limit=READ_CHUNK
            )
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != ALPN:
            writer.close()
            raise ConnectionError(
                f"{address} does not take session legs (no ALPN {ALPN}): is it a Gatehouse "
                "control plane of this version?"
            )
        return reader, writer

    return connect


class SessionMux:
    """The session leg to one replica, opened on first use and reopened after a break."""

    def __init__(self, connect: Connect, credential: str, stats: AgentStats) -> None:
        self._connect = connect
        self._credential = credential  # --insecure: the bearer credential; else empty
        self.stats = stats
        self.outbox: Outbox[agent_pb2.AgentEvent] = Outbox()
        self.sessions: dict[int, MuxSession] = {}
        self._numbers = itertools.count(1)
        self._task: asyncio.Task[None] | None = None

    def open(self, attach: agent_pb2.SessionAttach) -> MuxSession:
        """A new session on the leg (dialled now if it is not open): `attach` goes first."""
        if self._task is None or self._task.done():
            self.outbox = Outbox()
            self._task = asyncio.create_task(self._run())
        session = MuxSession(self, next(self._numbers))
        self.sessions[session.number] = session
        self.outbox.put(agent_pb2.AgentEvent(session=session.number, attach=attach))
        return session

    async def _run(self) -> None:
        writer: asyncio.StreamWriter | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            reader, writer = await self._connect()
            keep_alive(writer)
            hello = agent_pb2.LegHello(credential=self._credential, version=__version__)
            writer.write(encode(hello.SerializeToString()))
            tasks = [
                asyncio.create_task(self._write(writer, self.outbox)),
                asyncio.create_task(self._read(FrameReader(reader))),
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except (OSError, TimeoutError) as exc:
            log.warning("cannot open the session leg: %s", exc or "timeout")
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            if writer is not None:
                writer.close()
            for session in list(self.sessions.values()):
                session.broke()
            self.sessions.clear()
        for result in results:
            if isinstance(result, Exception):
                log.warning("session leg failed: %s", result)

    @staticmethod
    async def _write(writer: asyncio.StreamWriter, outbox: Outbox[agent_pb2.AgentEvent]) -> None:
        while True:
            events = await outbox.take()
            writer.write(encode(batch_bytes(events)))
            await writer.drain()

    async def _read(self, frames: FrameReader) -> None:
        first = await frames.next()
        if first is None:
            log.warning("the control plane closed the session leg before answering")
            return
        welcome = agent_pb2.LegWelcome.FromString(first)
        if welcome.refused:
            log.warning("the control plane refused the session leg: %s", welcome.refused)
            return
        while (frame := await frames.next()) is not None:
            for event in agent_pb2.GatewayBatch.FromString(frame).events:
                session = self.sessions.get(event.session)
                if session is not None:  # else: ended here already; what came late is moot
                    session.deliver(event)
        log.info("the control plane closed the session leg")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
