"""Explicit limits on connections that have not said who they are yet, for every listener.

A TCP connection that never sends a request costs a socket, a file descriptor and a protocol
object for as long as it stays open; without a limit, a few thousand of them exhaust the
process. PostgreSQL's answer is `authentication_timeout` (60 s); ours, per listener:

* gRPC: `grpc.server_handshake_timeout_ms` (the HTTP/2 preface and SETTINGS must arrive in
  time), `grpc.max_allowed_incoming_connections`, idle connections closed after
  `grpc.max_connection_idle_ms`, a cap on concurrent streams per connection and keepalive ping
  enforcement (see `grpc_options`);
* HTTP (aiohttp keeps a connection that sends nothing, or half a request line, forever):
  `HandshakeGuard` wraps the protocol factory, closes a connection whose first request's
  headers are not complete within the deadline, and refuses new connections while
  `max_pending` are still incomplete (those already accepted are unaffected).

`GATEHOUSE_HANDSHAKE_TIMEOUT` (seconds, default 10) and `GATEHOUSE_MAX_PENDING_HANDSHAKES`
(default 128) set both listeners' limits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

log = logging.getLogger(__name__)

TIMEOUT_ENV = "GATEHOUSE_HANDSHAKE_TIMEOUT"
PENDING_ENV = "GATEHOUSE_MAX_PENDING_HANDSHAKES"
DEFAULT_TIMEOUT = 10.0
DEFAULT_PENDING = 128
#: gRPC connections at once: room for a fleet of 10,000 agents (one connection each, ADR
#: 0009) and the people and listeners beside them; a bound, not a reservation.
MAX_CONNECTIONS = 20_000
#: Concurrent RPCs per gRPC connection. An agent carries every session's tunnel over its one
#: connection, and `gatehouse connect` every local client's session: generous, but finite.
MAX_STREAMS = 2048
IDLE_CONNECTION_MS = 15 * 60 * 1000  # a gRPC connection with no RPC for this long is closed
HEADERS_END = b"\r\n\r\n"


@dataclass(frozen=True)
class HandshakeLimits:
    timeout: float = DEFAULT_TIMEOUT
    max_pending: int = DEFAULT_PENDING


def grpc_options(limits: HandshakeLimits) -> list[tuple[str, int]]:
    """The gRPC server's connection limits (message sizes and keepalive are set beside)."""
    return [
        ("grpc.server_handshake_timeout_ms", int(limits.timeout * 1000)),
        ("grpc.max_allowed_incoming_connections", MAX_CONNECTIONS),
        ("grpc.max_concurrent_streams", MAX_STREAMS),
        ("grpc.max_connection_idle_ms", IDLE_CONNECTION_MS),
        # Keepalive enforcement: a client pinging more often than every 10 s without data
        # gets GOAWAY after two strikes (ping floods cost the server, not the client).
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
    ]


@dataclass
class HandshakeGuard:
    """Counts and bounds an HTTP listener's connections whose first request is incomplete."""

    limits: HandshakeLimits
    pending: int = 0
    expired: int = 0  # closed at the deadline
    refused: int = 0  # refused because max_pending were incomplete

    def wrap(self, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.Protocol]:
        def make() -> asyncio.Protocol:
            return _Guarded(factory(), self)

        return make


class _Guarded(asyncio.Protocol):
    """Forwards everything to the real protocol; watches only the first request's headers."""

    def __init__(self, inner: asyncio.BaseProtocol, guard: HandshakeGuard) -> None:
        self._inner: Any = inner
        self._guard = guard
        self._transport: Any = None  # asyncio's or uvloop's TCP transport: it has abort()
        self._timer: asyncio.TimerHandle | None = None
        self._waiting = False
        self._refused = False
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        if guard.pending >= guard.limits.max_pending:
            guard.refused += 1
            self._refused = True
            log.warning(
                "refusing an HTTP connection: %d connections have not sent a request yet",
                guard.pending,
            )
            cast(asyncio.Transport, transport).abort()
            return
        guard.pending += 1
        self._waiting = True
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(guard.limits.timeout, self._expire)
        self._inner.connection_made(transport)

    def _expire(self) -> None:
        if self._waiting and self._transport is not None:
            self._guard.expired += 1
            self._done()
            self._transport.abort()

    def _done(self) -> None:
        if self._waiting:
            self._waiting = False
            self._guard.pending -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def data_received(self, data: bytes) -> None:
        if self._waiting:
            window = self._tail + data
            if HEADERS_END in window:
                self._done()
            self._tail = window[-(len(HEADERS_END) - 1) :]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._refused:
            return None
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._done()
        if not self._refused:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self._refused:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            self._inner.resume_writing()
