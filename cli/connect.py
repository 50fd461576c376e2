"""`gatehouse connect NAME --port P`: a local listener for unmodified PostgreSQL clients.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer

from cli import __version__
from cli.options import ControlplaneOpt, run
from gatehouse.v1 import client_pb2, client_pb2_grpc
from wire.pg import framing
from wire.pg import messages as pgm

log = logging.getLogger("gatehouse.connect")

READ_SIZE = 256 * 1024
Call = grpc.aio.StreamStreamCall[client_pb2.ClientFrame, client_pb2.ServerFrame]


@dataclass
class Listener:
    address: str
    metadata: tuple[tuple[str, str], ...]
    connection: str
    channel: grpc.aio.Channel
    tls: ssl.SSLContext | None
    cancel_keys: dict[tuple[int, bytes], Call] = field(default_factory=dict)
    sessions: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except framing.ProtocolError as exc:
            log.warning("client %s sent something that is not PostgreSQL: %s", peer, exc)
            await _fatal(writer, "08P01", f"gatehouse: {exc}")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            raw = await _read_untagged(reader)
            message = pgm.parse_startup(raw[4:])
            if isinstance(message, pgm.SSLRequest):
                if self.tls is None:
                    writer.write(b"N")
                    continue
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self.tls)
            elif isinstance(message, pgm.GSSENCRequest):
                writer.write(b"N")
            elif isinstance(message, pgm.CancelRequest):
                await self._cancel(message)
                return
            else:
                await self._session(message, raw, reader, writer)
                return

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
        stub = client_pb2_grpc.ClientServiceStub(self.channel)
        call: Call = stub.Session(metadata=self.metadata)  # type: ignore[call-arg]
        opening = client_pb2.SessionOpen(
            connection=self.connection,
            mode="connect",
            client=f"{app} via gatehouse-cli/{__version__} connect",
        )
        try:
            with contextlib.suppress(grpc.aio.AioRpcError):
                # If the control plane refused first, read() below raises its reason.
                await call.write(client_pb2.ClientFrame(open=opening))
            first = await call.read()
            while isinstance(first, client_pb2.ServerFrame) and first.HasField("review_pending"):
                pending = first.review_pending
                log.warning(
                    "session for %s waits for review %s by %s (they run `gatehouse reviews "
                    "approve %s`)",
                    app,
                    pending.review_id,
                    ", ".join(pending.reviewer_groups),
                    pending.review_id,
                )
                first = await call.read()
            if not isinstance(first, client_pb2.ServerFrame) or not first.HasField("opened"):
                await call.code()
                raise ConnectionError("the control plane closed the session")
        except grpc.aio.AioRpcError as exc:
            await _fatal(writer, _sqlstate(exc.code()), f"gatehouse: {exc.details()}")
            return
        session_id = first.opened.session_id
        self.sessions += 1
        log.info("session %s opened for %s (%s)", session_id, app, self.sessions)
        keys: list[tuple[int, bytes]] = []
        try:
            await call.write(client_pb2.ClientFrame(data=raw))
            await _pump(call, reader, writer, lambda key: self._remember(key, call, keys))
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


async def _pump(
    call: Call,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    on_key: Any,
) -> None:
    async def upstream() -> None:
        while data := await reader.read(READ_SIZE):
            await call.write(client_pb2.ClientFrame(data=data))
        with contextlib.suppress(grpc.aio.UsageError):
            await call.done_writing()

    async def downstream() -> None:
        startup = framing.MessageFramer()  # only until the first ReadyForQuery
        watching = True
        while True:
            frame = await call.read()
            if not isinstance(frame, client_pb2.ServerFrame):
                return
            data = frame.data
            if watching:
                for message in startup.feed(data):
                    if message.tag == ord("K"):
                        on_key(pgm.parse_backend_key_data(message.body))
                    elif message.tag == ord("Z"):
                        watching = False
            writer.write(data)
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
        return "28000"  # invalid_authorization_specification
    if code == grpc.StatusCode.NOT_FOUND:
        return "3D000"  # invalid_catalog_name: no such database (connection)
    return "08001"  # sqlclient_unable_to_establish_sqlconnection


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
        listener = Listener(address, metadata, connection, channel, local_tls_context())
        server = await asyncio.start_server(listener.handle, host, port, limit=READ_SIZE)
        bound = server.sockets[0].getsockname()[1]
        typer.echo(
            f"Listening on {host}:{bound} for connection {connection!r}; every session is "
            f"recorded.\n  psql 'host={host} port={bound} dbname={connection}'\n"
            "Press Ctrl-C to stop.",
            err=True,
        )
        async with server:
            await server.serve_forever()


def connect(
    connection: Annotated[str, typer.Argument(help="Connection name.")],
    port: Annotated[int, typer.Option(help="Local port; 0 picks a free one.")] = 5433,
    host: Annotated[str, typer.Option(help="Local address (loopback only).")] = "127.0.0.1",
    controlplane: ControlplaneOpt = None,
) -> None:
    """Listen locally for native clients (psql, psycopg, asyncpg, GUIs); each connection is
    one audited session.

    Example: gatehouse connect pg-prod --port 5433   # then: psql -h 127.0.0.1 -p 5433
    """
    from cli import rpc
    from cli.errors import USAGE, CliError
    from cli.options import setup_logging

    if not rpc.is_loopback(f"{host}:0"):
        raise CliError(
            f"--host {host}: the listener accepts anyone who can reach it, so it only binds "
            "to loopback",
            USAGE,
        )
    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()
    setup_logging(False)
    try:
        run(serve(address, md, connection, host, port))
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    except KeyboardInterrupt:
        pass
