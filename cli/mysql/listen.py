"""`gatehouse connect NAME --port P` on a `mysql` connection: a local listener for unmodified
MySQL and MariaDB clients (cli/listeners.py chooses it by the connection's type).

Each TCP connection becomes one audited session on the control plane, exactly like `exec`. In
MySQL the server speaks first: the agent's greeting comes through the session, offering
``mysql_native_password`` (a client that answers with ``caching_sha2_password``, as MySQL 8's
do, is told its fast path succeeded); the client's password is ignored, since the agent logs in
to the target with its own credential. This listener only moves bytes; TLS is not offered on
the loopback leg.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import grpc

from cli import __version__
from cli.errors import USAGE, CliError
from cli.protocols import HANDSHAKE_TIMEOUT, MAX_PENDING, Listening, ListenRequest, handshake_limits
from cli.session import Call, Opened, open_session, review_log
from cli.tcp import pump
from cli.tcp import serve as serve_tcp
from gatehouse.v1 import client_pb2
from wire.mysql import messages as msg
from wire.mysql.constants import ER_ACCESS_DENIED, ER_HANDSHAKE, ER_UNKNOWN_ERROR
from wire.mysql.packets import encode

log = logging.getLogger("gatehouse.connect")

DEFAULT_PORT = 3307


@dataclass
class Listener:
    metadata: tuple[tuple[str, str], ...]
    connection: str
    channel: grpc.aio.Channel
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    max_pending: int = MAX_PENDING
    pending: int = 0  # connections that have not finished their login yet
    expired: int = 0  # closed at the handshake deadline
    sessions: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.pending >= self.max_pending:
                await _refuse(
                    writer,
                    ER_UNKNOWN_ERROR,
                    "08004",
                    "too many connections are starting; try again",
                )
                return
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = f"mysql client via gatehouse-cli/{__version__} connect"
        self.pending += 1
        opened: Opened | None = None
        greeted = False
        try:
            async with asyncio.timeout(self.handshake_timeout):
                opened = await open_session(
                    self.channel, self.metadata, self.connection, "connect", client, review_log
                )
                writer.write(await _greeting(opened.call))
                await writer.drain()
                greeted = True
                # The session and the agent's target connection are open from the start: a
                # client that never logs in must not hold them past the deadline.
                header = await reader.readexactly(4)
                login = header + await reader.readexactly(int.from_bytes(header[:3], "little"))
                await opened.call.write(client_pb2.ClientFrame(data=login))
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            denied = code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
            await _refuse(
                writer,
                ER_ACCESS_DENIED if denied else ER_UNKNOWN_ERROR,
                "28000" if denied else "08004",
                exc.details() or str(code),
            )
            return
        except CliError as exc:
            await _refuse(writer, ER_UNKNOWN_ERROR, "08004", exc.message)
            return
        except TimeoutError:
            self.expired += 1
            if opened is None or not greeted:
                if opened is not None:
                    opened.call.cancel()
                await _refuse(writer, ER_UNKNOWN_ERROR, "08004", "the session did not open in time")
                return
            opened.call.cancel()
            log.info("session %s: the client did not log in in time", opened.session_id)
            await _refuse(
                writer,
                ER_HANDSHAKE,
                "08S01",
                f"the client did not log in within {self.handshake_timeout:g} s; "
                "connect again and log in at once",
                seq=2,
            )
            return
        except BaseException:
            if opened is not None:
                opened.call.cancel()
            raise
        finally:
            self.pending -= 1
        call = opened.call
        self.sessions += 1
        log.info("session %s opened (%s)", opened.session_id, self.sessions)
        try:
            await pump(call, reader, writer)
        except grpc.aio.AioRpcError as exc:
            await _refuse(writer, ER_UNKNOWN_ERROR, "08S01", exc.details() or "session failed")
        finally:
            call.cancel()
            log.info("session %s closed", opened.session_id)


async def _greeting(call: Call) -> bytes:
    """The session's first packet (the target's greeting, or an ERR) and whatever came with it."""
    data = b""
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:3], "little"):
        frame = await call.read()
        if not isinstance(frame, client_pb2.ServerFrame):
            raise ConnectionError("the session ended before the database greeted")
        data += frame.data
    return data


async def _refuse(
    writer: asyncio.StreamWriter, code: int, sqlstate: str, message: str, seq: int = 0
) -> None:
    """An ERR packet in place of the server's next one (before any greeting: seq 0)."""
    with contextlib.suppress(Exception):
        writer.write(encode(msg.err(code, sqlstate, f"gatehouse: {message}"), seq))
        await writer.drain()


async def serve(
    address: str, metadata: tuple[tuple[str, str], ...], connection: str, host: str, port: int
) -> None:
    from cli import rpc

    async with rpc.channel(address) as channel:
        timeout, pending = handshake_limits()
        listener = Listener(metadata, connection, channel, timeout, pending)

        def hint(bound: int) -> str:
            return f"mysql -h {host} -P {bound} -u any"

        await serve_tcp(listener.handle, host, port, connection, "session", hint)


def listen(request: ListenRequest) -> Listening:
    """`gatehouse connect` on a `mysql` connection: a listener for native MySQL clients, on
    3307 unless told otherwise."""
    if request.authorized_keys:
        raise CliError("--authorized-keys is for ssh connections", USAGE)
    port = DEFAULT_PORT if request.port is None else request.port
    serving = serve(request.address, request.metadata, request.connection, request.host, port)
    return Listening(port, serving)
