"""`gatehouse connect NAME` for an http connection: a loopback HTTP listener.

curl, httpx, requests, browsers and SDKs whose base URL can be set talk to it unmodified.
Each TCP connection is one audited session; its bytes go to the control plane as they are
(keep-alive, chunked bodies, `Expect: 100-continue`, a WebSocket upgrade: the control plane
reads HTTP/1.1 and answers what is its to answer) and the answers stream back. When the
control plane refuses the session itself (no access, an offline agent), the client gets an
HTTP answer saying why: 403 for a refusal, 502 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import grpc

from cli import __version__
from cli.errors import USAGE, CliError
from cli.protocols import (
    HANDSHAKE_TIMEOUT,
    MAX_PENDING,
    Listening,
    ListenRequest,
    handshake_limits,
)
from cli.session import open_session, review_log
from cli.tcp import READ_SIZE, pump
from cli.tcp import serve as serve_tcp
from gatehouse.v1 import client_pb2
from wire.http.codec import MAX_HEAD

log = logging.getLogger("gatehouse.connect")

DEFAULT_PORT = 8081
HEAD_END = b"\r\n\r\n"
REASONS = {
    403: "Forbidden",
    408: "Request Timeout",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class HttpListener:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        metadata: tuple[tuple[str, str], ...],
        connection: str,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.channel = channel
        self.metadata = metadata
        self.connection = connection
        self.handshake_timeout = handshake_timeout
        self.max_pending = max_pending
        self.pending = 0  # connections whose first request head has not arrived yet
        self.expired = 0  # closed at the handshake deadline
        self.sessions = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await self._first_head(reader, writer)
            if not head:
                return
            try:
                opened = await open_session(
                    self.channel,
                    self.metadata,
                    self.connection,
                    "connect",
                    f"gatehouse-cli/{__version__} connect",
                    review_log,
                )
            except grpc.aio.AioRpcError as exc:
                denied = exc.code() in (
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.NOT_FOUND,
                    grpc.StatusCode.UNAUTHENTICATED,
                )
                await _answer(writer, 403 if denied else 502, exc.details() or str(exc.code()))
                return
            self.sessions += 1
            try:
                await opened.call.write(client_pb2.ClientFrame(data=head))
                await pump(opened.call, reader, writer)
            except grpc.aio.AioRpcError:
                pass  # answers may have gone out already: the connection just closes
            finally:
                opened.call.cancel()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _first_head(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes:
        """The client's bytes up to the end of its first request head (or MAX_HEAD of them),
        within the handshake deadline: no session opens for a client that sends no request.
        Empty when the client closed, was refused or was too slow (answered)."""
        if self.pending >= self.max_pending:
            log.warning("refusing a client: %d connections have not sent a request", self.pending)
            await _answer(writer, 503, "too many connections are starting; try again")
            return b""
        self.pending += 1
        head = b""
        try:
            async with asyncio.timeout(self.handshake_timeout):
                while HEAD_END not in head and len(head) <= MAX_HEAD:
                    data = await reader.read(READ_SIZE)
                    if not data:
                        return b""
                    head += data
        except TimeoutError:
            self.expired += 1
            log.info("closing a client: no request within %g s", self.handshake_timeout)
            await _answer(
                writer,
                408,
                f"no request within {self.handshake_timeout:g} s; send the request at once",
            )
            return b""
        finally:
            self.pending -= 1
        return head


async def _answer(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    body = json.dumps({"error": f"gatehouse: {message}"}).encode() + b"\n"
    reason = REASONS[status]
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()


def listen(request: ListenRequest) -> Listening:
    """`gatehouse connect` on an http connection: an HTTP listener on 8081 unless told
    otherwise."""
    if request.authorized_keys:
        raise CliError("--authorized-keys is for ssh connections", USAGE)
    port = DEFAULT_PORT if request.port is None else request.port
    serving = serve(request.address, request.metadata, request.connection, request.host, port)
    return Listening(port, serving)


async def serve(
    address: str, metadata: tuple[tuple[str, str], ...], connection: str, host: str, port: int
) -> None:
    from cli import rpc

    async with rpc.channel(address) as channel:
        timeout, pending = handshake_limits()
        listener = HttpListener(channel, metadata, connection, timeout, pending)

        def hint(bound: int) -> str:
            return f"curl http://{host}:{bound}/"

        await serve_tcp(listener.handle, host, port, connection, "request", hint)
