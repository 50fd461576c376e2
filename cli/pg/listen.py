"""`gatehouse connect NAME --port P` on a `postgres` connection: a local listener for
unmodified PostgreSQL clients (cli/listeners.py chooses it by the connection's type).

Each TCP connection becomes one audited session on the control plane, exactly like `exec`.
The local leg is negotiated here: TLS with a throwaway self-signed certificate when the client
asks (so `sslmode=require` works; the certificate only protects the loopback hop), no GSSAPI.
The client's password, if it sends one, is never asked for: the agent logs in to the target.

A CancelRequest arrives on a new connection carrying the key the client got at startup. The
agent hands out keys of its own; this listener remembers which session got which key and
sends the cancel through that session, so it reaches the right backend — with the target's
real key, which never leaves the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import ssl
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
from cli.session import Call, open_session, review_log
from cli.tcp import pump
from cli.tcp import serve as serve_tcp
from gatehouse.v1 import client_pb2
from wire.pg import codes, framing
from wire.pg import messages as pgm

log = logging.getLogger("gatehouse.connect")


@dataclass
class Listener:
    address: str
    metadata: tuple[tuple[str, str], ...]
    connection: str
    channel: grpc.aio.Channel
    tls: ssl.SSLContext | None
    cancel_keys: dict[tuple[int, bytes], Call] = field(default_factory=dict)
    sessions: int = 0
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    max_pending: int = MAX_PENDING
    pending: int = 0  # connections that have not finished their startup yet
    expired: int = 0  # closed at the handshake deadline
    refused: int = 0  # refused while max_pending connections were starting

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            if self.pending >= self.max_pending:
                self.refused += 1
                log.warning("refusing %s: %d connections are still starting", peer, self.pending)
                await _fatal(
                    writer,
                    codes.TOO_MANY_CONNECTIONS,
                    "gatehouse: too many connections are starting; try again",
                )
                return
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except framing.ProtocolError as exc:
            log.warning("client %s sent something that is not PostgreSQL: %s", peer, exc)
            await _fatal(writer, codes.PROTOCOL_VIOLATION, f"gatehouse: {exc}")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.pending += 1
        try:
            async with asyncio.timeout(self.handshake_timeout):
                message, raw = await self._startup(reader, writer)
        except TimeoutError:
            self.expired += 1
            peer = writer.get_extra_info("peername")
            log.info("closing %s: no startup within %g s", peer, self.handshake_timeout)
            await _fatal(
                writer,
                codes.PROTOCOL_VIOLATION,
                f"gatehouse: no startup message within {self.handshake_timeout:g} s",
            )
            return
        finally:
            self.pending -= 1
        if isinstance(message, pgm.CancelRequest):
            await self._cancel(message)
        else:
            await self._session(message, raw, reader, writer)

    async def _startup(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[pgm.StartupMessage | pgm.CancelRequest, bytes]:
        """Negotiate SSL/GSSAPI until the client sends its StartupMessage or CancelRequest."""
        while True:
            raw = await _read_untagged(reader)
            message = pgm.parse_startup(raw[4:])
            if isinstance(message, pgm.SSLRequest):
                if self.tls is None:
                    writer.write(codes.SSL_REFUSED)
                    continue
                writer.write(codes.SSL_ACCEPTED)
                await writer.drain()
                await writer.start_tls(self.tls)
            elif isinstance(message, pgm.GSSENCRequest):
                writer.write(codes.SSL_REFUSED)
            else:
                return message, raw

    async def _cancel(self, request: pgm.CancelRequest) -> None:
        call = self.cancel_keys.get((request.pid, request.key))
        if call is None:
            log.info("cancel request for an unknown session ignored")
            return
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
            await call.write(client_pb2.ClientFrame(cancel=client_pb2.Cancel()))

    async def _session(
        self,
        startup: pgm.StartupMessage,
        raw: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        app = startup.params.get("application_name") or "unknown"
        client = f"{app} via gatehouse-cli/{__version__} connect"
        try:
            opened = await open_session(
                self.channel, self.metadata, self.connection, "connect", client, review_log
            )
        except grpc.aio.AioRpcError as exc:
            await _fatal(writer, _sqlstate(exc.code()), f"gatehouse: {exc.details()}")
            return
        except CliError as exc:
            await _fatal(writer, codes.CLIENT_UNABLE_TO_CONNECT, f"gatehouse: {exc.message}")
            return
        call, session_id = opened.call, opened.session_id
        self.sessions += 1
        log.info("session %s opened for %s (%s)", session_id, app, self.sessions)
        keys: list[tuple[int, bytes]] = []
        try:
            await call.write(client_pb2.ClientFrame(data=raw))
            await pump(call, reader, writer, _KeyWatch(lambda key: self._remember(key, call, keys)))
        except grpc.aio.AioRpcError as exc:
            await _fatal(writer, _sqlstate(exc.code()), f"gatehouse: {exc.details()}")
        finally:
            for key in keys:
                self.cancel_keys.pop(key, None)
            call.cancel()
            log.info("session %s closed", session_id)

    def _remember(self, key: tuple[int, bytes], call: Call, keys: list[tuple[int, bytes]]) -> None:
        self.cancel_keys[key] = call
        keys.append(key)


class _KeyWatch:
    """Finds the BackendKeyData the session sends during startup; looks no further than the
    first ReadyForQuery."""

    def __init__(self, on_key: Callable[[tuple[int, bytes]], None]) -> None:
        self._on_key = on_key
        self._framer: framing.MessageFramer | None = framing.MessageFramer()

    def __call__(self, data: bytes) -> None:
        if self._framer is None:
            return
        for message in self._framer.feed(data):
            if message.tag == codes.BACKEND_KEY_DATA:
                self._on_key(pgm.parse_backend_key_data(message.body))
            elif message.tag == codes.READY_FOR_QUERY:
                self._framer = None
                return


async def _read_untagged(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(4)
    (length,) = struct.unpack("!i", header)
    if length < 8 or length > framing.MAX_STARTUP_LENGTH:
        raise framing.ProtocolError(f"invalid startup packet length {length}")
    return header + await reader.readexactly(length - 4)


async def _fatal(writer: asyncio.StreamWriter, sqlstate: str, message: str) -> None:
    with contextlib.suppress(Exception):
        writer.write(pgm.error_response(severity="FATAL", sqlstate=sqlstate, message=message))
        await writer.drain()


def _sqlstate(code: grpc.StatusCode) -> str:
    """The PostgreSQL error class a client best understands for a refusal."""
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return codes.INVALID_AUTHORIZATION
    if code == grpc.StatusCode.NOT_FOUND:
        return codes.INVALID_CATALOG_NAME  # no such database: no such connection
    return codes.CLIENT_UNABLE_TO_CONNECT


def local_tls_context() -> ssl.SSLContext:
    """A throwaway self-signed certificate for the loopback leg (clients with sslmode=require)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gatehouse connect (local)")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context.load_cert_chain(cert_file, key_file)
    return context


async def serve(
    address: str, metadata: tuple[tuple[str, str], ...], connection: str, host: str, port: int
) -> None:
    from cli import rpc

    async with rpc.channel(address) as channel:
        timeout, pending = handshake_limits()
        listener = Listener(
            address,
            metadata,
            connection,
            channel,
            local_tls_context(),
            handshake_timeout=timeout,
            max_pending=pending,
        )

        def hint(bound: int) -> str:
            return f"psql 'host={host} port={bound} dbname={connection}'"

        await serve_tcp(listener.handle, host, port, connection, "session", hint)


def listen(request: ListenRequest) -> Listening:
    """`gatehouse connect` on a `postgres` connection: a listener for native PostgreSQL
    clients, on 5433 unless told otherwise."""
    if request.authorized_keys:
        raise CliError("--authorized-keys is for ssh connections", USAGE)
    port = 5433 if request.port is None else request.port
    serving = serve(request.address, request.metadata, request.connection, request.host, port)
    return Listening(port, serving)
