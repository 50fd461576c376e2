"""The HTTP listener's handshake limits, with real sockets and a real aiohttp server: a
connection that sends nothing (or half a request) is closed at the deadline, at most
`max_pending` connections may be incomplete at once, and connections that did send a request
are unaffected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from controlplane.handshakes import HandshakeGuard, HandshakeLimits, grpc_options


async def hello(_request: web.Request) -> web.Response:
    return web.Response(text="hello")


@pytest.fixture
async def served() -> AsyncIterator[tuple[HandshakeGuard, int]]:
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert runner.server is not None
    guard = HandshakeGuard(HandshakeLimits(timeout=0.5, max_pending=3))
    server = await asyncio.get_running_loop().create_server(
        guard.wrap(runner.server), "127.0.0.1", 0
    )
    yield guard, server.sockets[0].getsockname()[1]
    server.close()
    await runner.cleanup()


async def closed_after(reader: asyncio.StreamReader, since: float | None = None) -> float:
    """Seconds until the server closes the connection (EOF or reset), from `since` (a
    `time.monotonic()` reading; now by default)."""
    started = time.monotonic() if since is None else since
    try:
        while await reader.read(1024):
            pass
    except ConnectionError:
        pass
    return time.monotonic() - started


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    return head + await reader.readexactly(5)


async def test_idle_and_half_sent_requests_are_closed_at_the_deadline(
    served: tuple[HandshakeGuard, int],
) -> None:
    guard, port = served
    opened = time.monotonic()  # the deadline runs from the accept, not from the wait below
    idle = await asyncio.open_connection("127.0.0.1", port)
    half = await asyncio.open_connection("127.0.0.1", port)
    half[1].write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the blank line never comes
    talking = await asyncio.open_connection("127.0.0.1", port)
    assert (await get(*talking)).endswith(b"hello")
    waited = await asyncio.wait_for(
        asyncio.gather(closed_after(idle[0], opened), closed_after(half[0], opened)), timeout=5
    )
    assert all(0.3 < w < 2.0 for w in waited), waited
    assert guard.expired == 2 and guard.pending == 0
    # The connection that sent its request is still served, past the deadline.
    assert (await get(*talking)).endswith(b"hello")
    talking[1].close()


async def test_at_most_max_pending_connections_may_be_incomplete(
    served: tuple[HandshakeGuard, int],
) -> None:
    guard, port = served
    talking = await asyncio.open_connection("127.0.0.1", port)
    assert (await get(*talking)).endswith(b"hello")
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert guard.pending == 3
    refused = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(closed_after(refused[0]), timeout=1) < 0.3
    assert guard.refused == 1
    assert (await get(*talking)).endswith(b"hello")  # already accepted: unaffected
    for reader, _ in idle:
        await asyncio.wait_for(closed_after(reader), timeout=5)
    later = await asyncio.open_connection("127.0.0.1", port)
    assert (await get(*later)).endswith(b"hello")  # room again once they expired


def test_grpc_listener_limits_are_explicit() -> None:
    options = dict(grpc_options(HandshakeLimits(timeout=10, max_pending=8)))
    assert options["grpc.server_handshake_timeout_ms"] == 10_000
    assert options["grpc.max_concurrent_streams"] > 0
    assert options["grpc.max_connection_idle_ms"] > 0
    assert options["grpc.max_allowed_incoming_connections"] > 0


def test_limits_are_validated_from_the_settings() -> None:
    from controlplane.errors import InvalidArgument
    from controlplane.settings import Settings

    Settings(dev=True, handshake_timeout=2.5, max_pending_handshakes=7).validate()
    with pytest.raises(InvalidArgument, match=r"handshake_timeout must be between 0\.1 and 600"):
        Settings(dev=True, handshake_timeout=0).validate()
