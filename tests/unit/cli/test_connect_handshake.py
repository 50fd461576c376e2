"""`gatehouse connect`'s handshake limits, with real sockets: a client that never sends its
startup (before or after TLS) is told why and closed at the deadline, at most `max_pending`
connections may be starting at once, and a client that finished its startup is not affected."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest

from cli.errors import CliError
from cli.pg.listen import Listener, local_tls_context
from cli.protocols import handshake_limits


@pytest.fixture
async def listening() -> AsyncIterator[tuple[Listener, int]]:
    listener = Listener(
        "127.0.0.1:1",
        (),
        "pg",
        cast(grpc.aio.Channel, object()),  # never reached: no test opens a session
        local_tls_context(),
        handshake_timeout=0.5,
        max_pending=3,
    )
    server = await asyncio.start_server(listener.handle, "127.0.0.1", 0)
    yield listener, server.sockets[0].getsockname()[1]
    server.close()


async def until_closed(reader: asyncio.StreamReader) -> tuple[float, bytes]:
    started, said = time.monotonic(), b""
    try:
        while chunk := await reader.read(1024):
            said += chunk
    except ConnectionError:
        pass
    return time.monotonic() - started, said


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, 80877103)


def cancel_request() -> bytes:
    return struct.pack("!iii", 16, 80877102, 7) + b"\0\0\0\1"


async def test_an_idle_client_is_closed_at_the_deadline(listening: tuple[Listener, int]) -> None:
    listener, port = listening
    idle = await asyncio.open_connection("127.0.0.1", port)
    half = await asyncio.open_connection("127.0.0.1", port)
    half[1].write(struct.pack("!i", 40))  # a length, and then nothing
    (waited, said), (half_waited, _) = await asyncio.wait_for(
        asyncio.gather(until_closed(idle[0]), until_closed(half[0])), timeout=5
    )
    assert 0.3 < waited < 2 and 0.3 < half_waited < 2
    assert b"no startup message within 0.5 s" in said
    assert listener.expired == 2 and listener.pending == 0


async def test_tls_negotiated_then_silent_is_closed_too(listening: tuple[Listener, int]) -> None:
    listener, port = listening
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(ssl_request())
    assert await reader.readexactly(1) == b"S"
    waited, _ = await asyncio.wait_for(until_closed(reader), timeout=5)
    assert waited < 2  # the TLS handshake itself never happened: the deadline still holds
    assert listener.expired == 1


async def test_at_most_max_pending_clients_may_be_starting(listening: tuple[Listener, int]) -> None:
    listener, port = listening
    idle: list[Any] = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
    await asyncio.sleep(0.05)
    assert listener.pending == 3
    reader, _ = await asyncio.open_connection("127.0.0.1", port)
    waited, said = await asyncio.wait_for(until_closed(reader), timeout=1)
    assert waited < 0.3 and b"53300" in said and b"too many connections" in said
    assert listener.refused == 1
    for idle_reader, _ in idle:
        await asyncio.wait_for(until_closed(idle_reader), timeout=5)
    # Room again: a client that finishes its startup in time is served (a cancel request
    # for an unknown key is ignored and the connection closed, as PostgreSQL does).
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(cancel_request())
    waited, said = await asyncio.wait_for(until_closed(reader), timeout=1)
    assert waited < 0.3 and said == b""
    assert listener.expired == 3


def test_limits_from_the_environment() -> None:
    assert handshake_limits({}) == (10.0, 64)
    assert handshake_limits({"GATEHOUSE_HANDSHAKE_TIMEOUT": "3"}) == (3.0, 64)
    with pytest.raises(CliError):
        handshake_limits({"GATEHOUSE_MAX_PENDING_HANDSHAKES": "0"})
