"""One MySQL session on the agent: greet the client, log in to the target, then relay.

The server speaks first in MySQL, so the agent dials the target, reads its greeting and greets
the client with the target's version and the capabilities both the target and the gateway can
relay, under a nonce of its own. The client's answer gives its capabilities (and a password,
which is ignored: the agent logs in with the connection's credential), and the agent then logs
in to the target with the capabilities the two share, so that from here on the bytes can flow
unchanged. A client that logged in with ``caching_sha2_password`` (MySQL 8's clients) is told
its fast path succeeded before the OK, as a MySQL 8 server would.

Every server packet goes through a ``Follower`` that marks where each result ended (rows, affected
rows, error code and SQLSTATE) and where the response ended, so that the control plane does not
frame the target's bytes a second time. With masking rules, rows are rewritten on the way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Mapping

from agent.engines import Cancel, Receive, SendFrame
from agent.masking import MaskingError, MaskingPolicy
from agent.mysql.login import READ_SIZE, MysqlTarget, TargetError, dial, login, shared_capabilities
from agent.mysql.masking import RowMasker
from agent.secrets import SecretError, resolve
from gatehouse.v1 import tunnel_pb2
from gatehouse.v1.tunnel_pb2 import ResultMark as Mark
from wire.mysql import messages as msg
from wire.mysql.constants import (
    AUTH_MORE_DATA,
    CACHING_SHA2_PASSWORD,
    ER_ACCESS_DENIED,
    ER_HANDSHAKE,
    NATIVE_PASSWORD,
    SHA2_FAST_AUTH_OK,
    Capability,
    Command,
)
from wire.mysql.follow import Done, Follower, Row
from wire.mysql.packets import PacketFramer, ProtocolError, count, encode

log = logging.getLogger(__name__)


CANCEL_TIMEOUT = 10.0


def done_marks(done: Done, end: int, masked: bool = False) -> list[Mark]:
    """The marks of one ended result: its outcome, and READY when the response ended too."""
    marks: list[Mark] = []
    if done.kind == "error" and done.error is not None:
        marks.append(
            Mark(
                kind=Mark.ERROR,
                end=end,
                sqlstate=done.error.sqlstate,
                message=done.error.message,
                code=done.error.code,
                command=done.command,
            )
        )
    elif done.kind == "prepared" and done.prepared is not None:
        marks.append(
            Mark(
                kind=Mark.PARSE_COMPLETE,
                end=end,
                name=str(done.prepared.statement_id),
                value=str(done.prepared.params),
                command=done.command,
                rows=done.prepared.columns,
            )
        )
    else:
        command = "SELECT" if done.kind == "rows" else done.command
        marks.append(
            Mark(kind=Mark.COMPLETE, end=end, command=command, rows=done.rows, masked=masked)
        )
    if done.last:
        status = "T" if done.in_transaction else "I"
        marks.append(Mark(kind=Mark.READY, end=end, tx_status=status))
    return marks


def error_frame(code: int, sqlstate: str, message: str, seq: int) -> tunnel_pb2.Frame:
    data = encode(msg.err(code, sqlstate, message), seq)
    mark = Mark(kind=Mark.ERROR, end=len(data), sqlstate=sqlstate, message=message, code=code)
    return tunnel_pb2.Frame(data=data, marks=[mark])


async def run(
    target_spec: Mapping[str, object],
    secret: Mapping[str, str],
    receive: Receive,
    send: SendFrame,
    *,
    masking: Mapping[str, object] | None = None,
) -> str:
    """Serve one session until either side ends; returns why it ended."""
    try:
        policy = MaskingPolicy.from_spec(masking)
        target = MysqlTarget.from_spec(target_spec)
    except (MaskingError, ValueError) as exc:
        await send(error_frame(ER_HANDSHAKE, "08S01", f"gatehouse agent: {exc}", 0))
        return f"connection unusable: {exc}"
    try:
        conn = await dial(target)
    except TargetError as exc:
        await send(error_frame(exc.code, exc.sqlstate, str(exc), 0))
        return f"target unreachable: {exc}"
    greeting = conn.greeting
    nonce = secrets.token_bytes(20).replace(b"\x00", b"\x01")
    offered = shared_capabilities(target, greeting.capabilities, 0xFFFFFFFF) & ~Capability.SSL
    await send(
        tunnel_pb2.Frame(
            data=encode(
                msg.handshake(
                    server_version=greeting.server_version,
                    connection_id=greeting.connection_id,
                    scramble=nonce,
                    capabilities=offered,
                    plugin=NATIVE_PASSWORD,
                    charset=greeting.charset or 45,
                    status=greeting.status,
                ),
                0,
            )
        )
    )
    client = PacketFramer()
    response: msg.HandshakeResponse | None = None
    response_seq = 1
    while response is None:
        data = await receive()
        if data is None:
            conn.close()
            return "the client left before its login"
        if isinstance(data, Cancel):
            continue
        for packet in client.feed(data):
            try:
                response = msg.parse_handshake_response(packet.payload)
            except ProtocolError as exc:
                conn.close()
                await send(error_frame(ER_HANDSHAKE, "08S01", f"Bad handshake: {exc}", 2))
                return f"bad handshake: {exc}"
            response_seq = packet.last_seq
            if response.ssl_request:
                conn.close()
                await send(
                    error_frame(ER_HANDSHAKE, "08S01", "TLS is the job of the local listener", 2)
                )
                return "the client asked for TLS inside the tunnel"
            break
    caps = shared_capabilities(target, greeting.capabilities, response.capabilities)
    try:
        password = resolve(secret["password"]) if "password" in secret else None
        ok = await login(conn, target, password, caps, response.charset or 45)
    except (TargetError, SecretError) as exc:
        code, state = (
            (exc.code, exc.sqlstate)
            if isinstance(exc, TargetError)
            else (ER_ACCESS_DENIED, "28000")
        )
        await send(error_frame(code, state, str(exc), response_seq + 1))
        return f"target login failed: {exc}"
    del password
    seq = response_seq + 1
    welcome = b""
    if response.plugin == CACHING_SHA2_PASSWORD:
        welcome += encode(bytes((AUTH_MORE_DATA, SHA2_FAST_AUTH_OK)), seq)
        seq += 1
    welcome += encode(msg.ok(status=ok.status, warnings=ok.warnings), seq)
    await send(
        tunnel_pb2.Frame(
            data=welcome,
            marks=[
                Mark(kind=Mark.COMPLETE, end=len(welcome), command="Connect", rows=-1),
                Mark(kind=Mark.READY, end=len(welcome), tx_status="I"),
            ],
        )
    )
    pump = _Pump(conn.reader, conn.writer, caps, receive, send, policy)
    pump.canceller = _Canceller(target, secret, greeting.connection_id)
    return await pump.run()


class _Pump:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        capabilities: int,
        receive: Receive,
        send: SendFrame,
        policy: MaskingPolicy | None,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._receive, self._send = receive, send
        self._follower = Follower(capabilities)
        self._server = PacketFramer()
        self._client = PacketFramer()
        self._masker = RowMasker(policy) if policy is not None else None
        self._shift = 0  # how far masking moved the response's sequence ids
        self._masked = False  # a row of the current result was masked
        self.canceller: _Canceller | None = None
        self._answered = asyncio.Event()  # set while no answer is due

    async def run(self) -> str:
        tasks = [asyncio.create_task(self._to_client()), asyncio.create_task(self._to_target())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            first = done.pop()
            if first is tasks[1] and first.exception() is None and not self._follower.idle:
                # The client is done sending: let the answers still due out, then close.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._answered.wait(), 30)
            return first.result()
        except (OSError, ProtocolError) as exc:
            return f"relay failed: {exc}"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._writer.close()

    async def _to_target(self) -> str:
        while True:
            data = await self._receive()
            if data is None:
                return "the client closed the session"
            if isinstance(data, Cancel):
                if self.canceller is not None:
                    await self.canceller.cancel()
                continue
            for packet in self._client.feed(data):
                if packet.seq == 0:  # a command; anything else continues an exchange
                    self._follower.command(packet.payload)
                    if packet.first == Command.QUIT:
                        self._writer.write(data)
                        await self._writer.drain()
                        return "the client quit"
            self._writer.write(data)
            await self._writer.drain()

    async def _to_client(self) -> str:
        while True:
            data = await self._reader.read(READ_SIZE)
            if not data:
                return "the target closed the connection"
            self._answered.clear()
            if self._masker is None:
                marks: list[Mark] = []
                for packet in self._server.feed(data):
                    seen = self._follower.server(packet)
                    if isinstance(seen, Done):
                        marks.extend(done_marks(seen, packet.end))
                await self._send(tunnel_pb2.Frame(data=data, marks=marks))
            else:
                await self._send(self._masked_frame(data))
            if self._follower.idle:
                self._answered.set()

    def _masked_frame(self, data: bytes) -> tunnel_pb2.Frame:
        assert self._masker is not None
        out = bytearray()
        marks: list[Mark] = []
        for packet in self._server.feed(data):
            seen = self._follower.server(packet)
            payload = packet.payload
            if isinstance(seen, Row):
                new = self._masker.row(seen, payload)  # unreadable: the session ends
                if new is not None:
                    payload = new
                    self._masked = True
            out += encode(payload, packet.seq + self._shift)
            # A rewritten row may take another number of physical packets.
            self._shift += count(len(payload)) - count(len(packet.payload))
            if isinstance(seen, Done):
                marks.extend(done_marks(seen, len(out), self._masked))
                self._masked = False
                if seen.last:
                    self._shift = 0
        return tunnel_pb2.Frame(data=bytes(out), marks=marks)


class _Canceller:
    """Cancels the running statement of one session as MySQL clients do: ``KILL QUERY`` on a
    connection of its own, with the agent's credential."""

    def __init__(self, target: MysqlTarget, secret: Mapping[str, str], thread_id: int) -> None:
        self._target = target
        self._secret = secret
        self._thread = thread_id

    async def cancel(self) -> None:
        try:
            conn = await dial(self._target)
            password = resolve(self._secret["password"]) if "password" in self._secret else None
            caps = shared_capabilities(self._target, conn.greeting.capabilities, 0)
            await login(conn, self._target, password, caps)
            sql = f"KILL QUERY {self._thread}".encode()
            conn.writer.write(encode(msg.command(Command.QUERY, sql), 0))
            await conn.writer.drain()
            await asyncio.wait_for(conn.read(), CANCEL_TIMEOUT)
            conn.close()
        except (TargetError, SecretError, OSError, TimeoutError) as exc:
            log.warning("cancel of target thread %d failed: %s", self._thread, exc)
