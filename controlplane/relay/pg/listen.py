"""`--pg-listen HOST:PORT`: native PostgreSQL clients straight to the control plane.

Any client (psql, drivers, GUIs, pgbench) connects with `dbname=<connection>` and a Gatehouse
token as its password; each connection is one session of mode `connect` on the same path as
`gatehouse exec`/`connect` (`ClientServicer.admit` then `serve`), with this socket as its
`ClientEnd`. What happens before the session is this module's:

* PROXY v2 from a trusted proxy gives the client's address (as on the other listeners);
* SSLRequest → TLS with the listeners' certificate (renewals apply to the next connection);
  a StartupMessage without TLS is refused with 28000, except with `--dev` (loopback only);
  GSSENCRequest → 'N'. The preamble is read from the raw socket in exact sizes, so nothing a
  client sends before the TLS handshake can be taken for what it sends inside TLS;
* AuthenticationCleartextPassword (inside TLS): the password is the token. A wrong one is
  28P01 and an `auth.fail` event (aggregated and throttled per source, `AuthFailures`);
* limits: a whole handshake (PROXY header, TLS, startup, password) within `handshake_timeout`,
  at most `max_pending` connections in it at once, startup packets of at most 10000 bytes,
  password packets of at most MAX_PASSWORD bytes, at most `max_connections` connections;
* cancel: the client gets a BackendKeyData minted here (not the agent's, never the target's),
  mapped to its session; a CancelRequest with that exact key cancels that session's statement
  through its agent, any other key cancels nothing and counts as a failed authentication.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import socket
import ssl
import struct
from dataclasses import dataclass, field
from functools import cached_property

from controlplane.relay.native import (
    MAX_PASSWORD,
    READ_SIZE,
    Accepted,
    Denied,
    NativeListener,
    Reason,
    proxied_source,
    recv_exactly,
    send,
    wrap,
)
from controlplane.relay.service import Admitted
from controlplane.relay.tunnel import Cancel
from wire.pg import codes, framing
from wire.pg import messages as pgm

log = logging.getLogger(__name__)

ALPN_POSTGRES = ("postgresql",)  # what libpq 17+ offers; older clients offer none
VIA = "pg-listen"
_HEADER = struct.Struct("!i")
_TAGGED = struct.Struct("!ci")
PASSWORD = b"p"

TLS_HINT = (
    "connect with sslmode=verify-full and sslrootcert=<the control plane's CA, DATA_DIR/ca.pem>"
)
SQLSTATES = {
    Reason.TOO_MANY: codes.TOO_MANY_CONNECTIONS,
    Reason.PROTOCOL: codes.PROTOCOL_VIOLATION,
    Reason.TIMEOUT: codes.PROTOCOL_VIOLATION,
    Reason.PLAINTEXT: codes.INVALID_AUTHORIZATION,
    Reason.PASSWORD: codes.INVALID_PASSWORD,
    Reason.NO_NAME: codes.INVALID_CATALOG_NAME,
    Reason.NOT_FOUND: codes.INVALID_CATALOG_NAME,
    Reason.PRIVILEGE: codes.INSUFFICIENT_PRIVILEGE,
    Reason.REJECTED: codes.CONNECTION_REJECTED,
    Reason.UNAVAILABLE: codes.SYSTEM_ERROR,
}


class CancelKeys:
    """The cancel keys clients got from this listener, each mapped to its one session."""

    def __init__(self) -> None:
        self._keys: dict[int, tuple[bytes, Admitted]] = {}

    def issue(self, session: Admitted, length: int) -> tuple[int, bytes]:
        """A fresh (pid, secret) for `session`: random, unique among the live keys."""
        while True:
            pid = secrets.randbits(31)
            if pid and pid not in self._keys:
                break
        secret = secrets.token_bytes(length)
        self._keys[pid] = (secret, session)
        return pid, secret

    def find(self, pid: int, secret: bytes) -> Admitted | None:
        entry = self._keys.get(pid)
        if entry is None or not hmac.compare_digest(entry[0], secret):
            return None
        return entry[1]

    def forget(self, pid: int) -> None:
        self._keys.pop(pid, None)

    def __len__(self) -> int:
        return len(self._keys)


@dataclass
class SocketEnd:
    """A native client's socket as the session's `ClientEnd`.

    The first read is the StartupMessage this listener already read; the agent answers it.
    Until the first ReadyForQuery, what goes to the client is framed so that the agent's
    BackendKeyData is replaced by a key of this listener's (`CancelKeys`)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    address: str
    startup: bytes
    session: Admitted
    keys: CancelKeys
    pid: int | None = None
    _startup_phase: bool = True
    _pending: bytearray = field(default_factory=bytearray)

    @property
    def peer(self) -> str:
        return self.address

    async def read(self) -> bytes | Cancel | None:
        if self.startup:
            first, self.startup = self.startup, b""
            return first
        try:
            data = await self.reader.read(READ_SIZE)
        except (ConnectionError, ssl.SSLError):
            return None
        return data or None

    async def write(self, data: bytes) -> None:
        if self._startup_phase:
            data = self._rekey(data)
            if not data:
                return
        self.writer.write(data)
        await self.writer.drain()

    def _rekey(self, data: bytes) -> bytes:
        """Complete messages of the startup answer, BackendKeyData replaced; after the first
        ReadyForQuery everything passes as it comes."""
        self._pending += data
        out = bytearray()
        buffer = self._pending
        pos = 0
        while len(buffer) - pos >= 5:
            tag, length = _TAGGED.unpack_from(buffer, pos)
            end = pos + 1 + length
            if length < 4 or end > len(buffer):
                break
            if tag == b"K":
                _, secret = pgm.parse_backend_key_data(bytes(buffer[pos + 5 : end]))
                if self.pid is not None:
                    self.keys.forget(self.pid)
                self.pid, mine = self.keys.issue(self.session, len(secret))
                out += pgm.backend_key_data(self.pid, mine)
            else:
                out += buffer[pos:end]
            pos = end
            if tag == b"Z":
                self._startup_phase = False
                out += buffer[pos:]
                pos = len(buffer)
                break
        del buffer[:pos]
        return bytes(out)

    def close(self) -> None:
        if self.pid is not None:
            self.keys.forget(self.pid)
            self.pid = None


class PgListener(NativeListener):
    """The `--pg-listen` listener of one control-plane process."""

    protocol = VIA
    types = frozenset({"postgres"})

    @cached_property
    def keys(self) -> CancelKeys:
        return CancelKeys()

    def _client(self, conn: socket.socket, address: str) -> _Client:
        return _Client(conn, address)

    async def _handshake(self, client: _Client) -> Hello | None:
        """PROXY header, SSL negotiation, StartupMessage (or CancelRequest), password.
        None when the connection was a cancel request (answered: nothing to say)."""
        conn, address = client.conn, client.address
        # every startup-phase message is at least 8 bytes
        source, prefix = await proxied_source(conn, address, self.trusted_proxies, 8)
        while client.stream is None:
            raw = await _recv_untagged(conn, prefix)
            prefix = b""
            message = pgm.parse_startup(raw[4:])
            if isinstance(message, pgm.SSLRequest):
                if self.tls is None:
                    await send(conn, codes.SSL_REFUSED)
                    continue
                await send(conn, codes.SSL_ACCEPTED)
                client.stream = await wrap(conn, self.tls.context(ALPN_POSTGRES))
            elif isinstance(message, pgm.GSSENCRequest):
                await send(conn, codes.SSL_REFUSED)
            elif isinstance(message, pgm.CancelRequest):
                await self._cancel(message, source)
                return None
            else:
                self.require_tls(address, source, TLS_HINT)
                client.stream = await wrap(conn, None)
                return await self._authenticate(client.stream, source, message, raw)
        raw = await _read_untagged(client.stream[0])
        message = pgm.parse_startup(raw[4:])
        if isinstance(message, pgm.CancelRequest):
            await self._cancel(message, source)
            return None
        if not isinstance(message, pgm.StartupMessage):
            raise framing.ProtocolError("a second SSL or GSSAPI request inside TLS")
        return await self._authenticate(client.stream, source, message, raw)

    async def _cancel(self, request: pgm.CancelRequest, source: str) -> None:
        """A key this listener gave out cancels its session's statement; any other key is a
        failed authentication (counted, recorded, throttled per source)."""
        failures = self.auth.failures
        throttled = failures.throttled(source)
        session = None if throttled is not None else self.keys.find(request.pid, request.key)
        if session is None:
            reason = throttled or "a cancel request with a key this listener did not give out"
            await failures.failed(source, reason, "cancel key", throttled is not None)
            log.info("pg-listen: cancel request from %s with an unknown key ignored", source)
            return
        await session.cancel()

    async def _authenticate(
        self,
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        source: str,
        startup: pgm.StartupMessage,
        raw: bytes,
    ) -> Hello:
        reader, writer = stream
        writer.write(pgm.authentication_request(pgm.AUTH_CLEARTEXT_PASSWORD))
        await writer.drain()
        header = await reader.readexactly(5)
        tag, length = _TAGGED.unpack(header)
        if tag != PASSWORD:
            raise framing.ProtocolError(
                f"expected a password message, got message type {tag.decode('latin-1')!r}"
            )
        if not 4 < length <= MAX_PASSWORD:
            raise framing.ProtocolError(
                f"a password message of {length} bytes (at most {MAX_PASSWORD})"
            )
        secret = pgm.parse_password_message(await reader.readexactly(length - 4))
        return Hello(reader, writer, source, startup, raw, secret)

    async def _session(self, hello: Hello) -> None:
        params = hello.startup.params
        name = params.get("database") or params.get("user") or ""
        app = params.get("application_name") or "unknown"
        session = await self.admit(hello.secret, name, hello.source, app, "dbname=<connection>")
        end = SocketEnd(hello.reader, hello.writer, hello.source, hello.raw, session, self.keys)
        try:
            await self.sessions.serve(end, session)
        finally:
            end.close()


class _Client(Accepted):
    """A PostgreSQL client in its startup."""

    def refusal(self, denied: Denied) -> bytes:
        """A FATAL ErrorResponse."""
        return pgm.error_response(
            severity="FATAL", sqlstate=SQLSTATES[denied.reason], message=str(denied)
        )


@dataclass(frozen=True)
class Hello:
    """A client that started up and sent its password, not yet authenticated."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    source: str
    startup: pgm.StartupMessage
    raw: bytes
    secret: bytes


def _startup_length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length < 8 or length > framing.MAX_STARTUP_LENGTH:
        raise framing.ProtocolError(f"invalid startup packet length {length}")
    return int(length)


async def _recv_untagged(conn: socket.socket, prefix: bytes) -> bytes:
    """One startup-phase message from the raw socket (`prefix`: its first bytes, read)."""
    if len(prefix) < 4:
        prefix += await recv_exactly(conn, 4 - len(prefix))
    length = _startup_length(prefix[:4])
    if len(prefix) > length:
        raise framing.ProtocolError("a startup message shorter than the bytes before it")
    return prefix + await recv_exactly(conn, length - len(prefix))


async def _read_untagged(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(4)
    return header + await reader.readexactly(_startup_length(header) - 4)
