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
from cli.protocols import Listening, ListenRequest
from cli.session import open_session, review_log
from cli.tcp import pump
from cli.tcp import serve as serve_tcp

log = logging.getLogger("gatehouse.connect")

DEFAULT_PORT = 8081


class HttpListener:
    def __init__(
        self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], connection: str
    ) -> None:
        self.channel = channel
        self.metadata = metadata
        self.connection = connection
        self.sessions = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
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


async def _answer(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    body = json.dumps({"error": f"gatehouse: {message}"}).encode() + b"\n"
    reason = "Forbidden" if status == 403 else "Bad Gateway"
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
        listener = HttpListener(channel, metadata, connection)

        def hint(bound: int) -> str:
            return f"curl http://{host}:{bound}/"

        await serve_tcp(listener.handle, host, port, connection, "request", hint)
