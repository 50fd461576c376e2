"""The TCP side the PostgreSQL, MySQL and HTTP listeners of `gatehouse connect` share.

`serve` accepts the native clients' connections on loopback; once a connection's session is
open, `pump` moves its bytes: what the client sends goes up as it arrives, and what the session
sends comes down, until either side ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import grpc

from cli.output import echo
from cli.session import Call
from gatehouse.v1 import client_pb2

__all__ = ["READ_SIZE", "pump", "serve"]

READ_SIZE = 256 * 1024
"""Most bytes read from the client at once (and a listener's stream buffer)."""


async def pump(
    call: Call,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    watch: Callable[[bytes], None] | None = None,
) -> None:
    """Move bytes both ways until the session ends or the client finished and was answered.

    `watch` sees the session's bytes before the client does (PostgreSQL's listener learns the
    cancel keys from them). Raises what broke either direction (grpc.aio.AioRpcError: the
    session failed), so the listener can tell the client in its protocol.
    """

    async def upstream() -> None:
        while data := await reader.read(READ_SIZE):
            await call.write(client_pb2.ClientFrame(data=data))
        with contextlib.suppress(grpc.aio.UsageError):
            await call.done_writing()

    async def downstream() -> None:
        while True:
            frame = await call.read()
            if not isinstance(frame, client_pb2.ServerFrame):
                return
            if watch is not None:
                watch(frame.data)
            writer.write(frame.data)
            await writer.drain()

    tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks[0] in done and tasks[0].exception() is None:
            await tasks[1]  # the client finished sending: let the last answers out
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(
    handle: Handler,
    host: str,
    port: int,
    connection: str,
    unit: str,
    hint: Callable[[int], str],
) -> None:
    """Accept connections on host:port (0: any free port) until cancelled. Says on stderr
    where to point a client: `hint`, given the port bound, is the command to try; `unit` what
    is recorded one by one (a session, a request)."""
    server = await asyncio.start_server(handle, host, port, limit=READ_SIZE)
    bound = server.sockets[0].getsockname()[1]
    echo(
        f"Listening on {host}:{bound} for connection {connection!r}; every {unit} is "
        f"recorded.\n  {hint(bound)}\nPress Ctrl-C to stop.",
        err=True,
    )
    async with server:
        await server.serve_forever()
