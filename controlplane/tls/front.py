"""The TLS front of a listener: accept TCP, read a PROXY v2 header from a trusted proxy, do the
TLS handshake (requesting, not requiring, a client certificate), forward to the inner server.

gRPC's Python server can require a client certificate or not ask for one; agents must be able to
present one on the same port where CLIs present none, so TLS ends here (Python's ssl has
CERT_OPTIONAL) and the inner gRPC/HTTP server listens on a unix socket in a private directory.
Each forwarded connection comes from its own bound socket path, which `peers` maps back to the
client's address and certificate.

A connection that negotiates ALPN `gatehouse-leg/1` is an agent's session leg (decision 0035):
it is served here, by the `leg` handler, with the client certificate the handshake verified.

A client that does not start with a TLS ClientHello is refused: an HTTP client gets a plain
`400` saying to use https, anything else a closed connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from controlplane.accept import Acceptor
from controlplane.tls import peers, proxy
from controlplane.tls.server import ServerTls

log = logging.getLogger(__name__)

LegHandler = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter, str, bytes | None], Awaitable[None]
]
"""Serves a session leg: its stream, the client's address and verified certificate (DER)."""

TLS_HANDSHAKE = 0x16  # the first byte of a TLS record carrying a ClientHello
CHUNK = 256 * 1024
PLAINTEXT_REFUSAL = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    b"Content-Length: 63\r\n\r\n"
    b"this listener speaks TLS only: use https:// (and the CA file)\n\n"
)


class TlsFront(Acceptor):
    """One TCP listener that terminates TLS and forwards to a unix socket."""

    def __init__(
        self,
        name: str,
        tls: ServerTls,
        alpn: tuple[str, ...],
        inner: Path,
        run_dir: Path,
        *,
        trusted_proxies: tuple[proxy.Network, ...] = (),
        handshake_timeout: float = 10.0,
        max_pending: int = 1000,
        max_connections: int = 20_000,
        http: bool = False,
        leg: tuple[str, LegHandler] | None = None,
    ) -> None:
        super().__init__(name)
        self.tls = tls
        self.alpn = alpn
        self.inner = inner
        self.run_dir = run_dir
        self.trusted_proxies = trusted_proxies
        self.handshake_timeout = handshake_timeout
        self.max_pending = max_pending
        self.max_connections = max_connections
        self.http = http
        self.leg = leg  # (ALPN protocol, handler): connections that negotiate it stay here
        self.pending = 0
        self.refused_plaintext = 0
        self.failed_handshakes = 0
        self._ids = itertools.count(1)

    def _takes(self) -> bool:
        if self.pending >= self.max_pending or len(self._connections) >= self.max_connections:
            log.warning(
                "%s: refusing a connection: %d handshakes pending, %d connections open",
                self.name,
                self.pending,
                len(self._connections),
            )
            return False
        return True

    async def _serve(self, conn: socket.socket, client: tuple[str, int]) -> None:
        self.pending += 1
        pending = True
        writer: asyncio.StreamWriter | None = None
        path: str | None = None
        try:
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    source = await self._preamble(conn, client)
                    if source is None:
                        return
                    reader, writer = await self._handshake(conn)
            except (TimeoutError, OSError, ssl.SSLError, proxy.ProxyHeaderError) as exc:
                self.failed_handshakes += 1
                log.debug("%s: handshake from %s failed: %s", self.name, client[0], exc)
                conn.close()
                return
            self.pending -= 1
            pending = False
            ssl_object = writer.get_extra_info("ssl_object")
            der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if (
                self.leg is not None
                and ssl_object is not None
                and ssl_object.selected_alpn_protocol() == self.leg[0]
            ):
                await self.leg[1](reader, writer, source[0], der or None)
                return
            path = str(self.run_dir / f"{self.name.lower()}-{next(self._ids)}")
            peers.register(path, peers.Peer(source[0], der or None, source[1]))
            try:
                inner_reader, inner_writer = await self._open_inner(path)
            except OSError as exc:
                log.error("%s: cannot reach the inner server: %s", self.name, exc)
                return
            await _pipe(reader, writer, inner_reader, inner_writer)
        finally:
            if pending:
                self.pending -= 1
            if path is not None:
                peers.forget(path)
                with contextlib.suppress(OSError):
                    os.unlink(path)  # a directory entry: no I/O worth a thread
            if writer is not None:
                writer.close()
            else:  # refused, failed or cancelled before TLS took the socket over
                conn.close()

    async def _preamble(
        self, conn: socket.socket, client: tuple[str, int]
    ) -> tuple[str, int] | None:
        """The client's address and port (a trusted proxy's header wins); None when refused."""
        source = client
        if proxy.trusted(client[0], self.trusted_proxies):
            first = await _peek(conn, proxy.PREFIX)
            if first.startswith(proxy.SIGNATURE[: len(first)]) and len(first) >= proxy.PREFIX:
                length = proxy.body_length(first)
                header = proxy.parse(await _read_exactly(conn, proxy.PREFIX + length))
                if header.source is not None:
                    source = (header.source, header.port)
        first = await _peek(conn, 1)
        if not first or first[0] != TLS_HANDSHAKE:
            self.refused_plaintext += 1
            log.info("%s: refused a plaintext connection from %s", self.name, source[0])
            if self.http and first:
                with contextlib.suppress(OSError):
                    conn.send(PLAINTEXT_REFUSAL)
            conn.close()
            return None
        return source

    async def _handshake(
        self, conn: socket.socket
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=CHUNK, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol,
            conn,
            ssl=self.tls.context(self.alpn),
            ssl_handshake_timeout=self.handshake_timeout,
        )
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def _open_inner(self, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, str(self.inner))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_unix_connection(sock=sock, limit=CHUNK)


async def _wait_readable(conn: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def _peek(conn: socket.socket, size: int) -> bytes:
    """Up to `size` bytes without consuming them (fewer only at end of stream)."""
    while True:
        await _wait_readable(conn)
        data = conn.recv(size, socket.MSG_PEEK)
        if len(data) >= size or not data:
            return data
        await asyncio.sleep(0.005)  # the rest is in flight; don't spin on a readable socket


async def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        await _wait_readable(conn)
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise proxy.ProxyHeaderError("connection closed inside the PROXY header")
        data += chunk
    return data


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    inner_reader: asyncio.StreamReader,
    inner_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until either side ends; then end both."""

    async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(CHUNK):
                sink.write(data)
                await sink.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if sink.can_write_eof():
                    sink.write_eof()

    up = asyncio.ensure_future(copy(reader, inner_writer))
    down = asyncio.ensure_future(copy(inner_reader, writer))
    try:
        await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        # One side ended: give the other a moment to flush what it has, then stop it.
        await asyncio.wait((up, down), timeout=5)
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        inner_writer.close()
