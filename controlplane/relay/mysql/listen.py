"""`--mysql-listen HOST:PORT`: native MySQL and MariaDB clients straight to the control plane.

Any client (`mysql`/`mariadb`, drivers, GUIs) connects with the connection's name as its
database (`mysql -h cp -P 3306 -D my-prod`) and a Gatehouse token as its password; the user name
is ignored. Each connection is one session of mode `connect` on the same path as `gatehouse
exec`/`connect`, admitted as `--pg-listen` admits (`controlplane/relay/native.py`). What happens
before the session is this module's:

* MySQL's server speaks first: from a trusted proxy the PROXY v2 header is read before the
  greeting (and is then required); the greeting offers TLS (the listeners' certificate) and
  ``caching_sha2_password`` under a nonce of this listener's;
* the token is needed in clear, so the listener answers "perform full authentication" (a client
  whose plugin is another is switched to ``caching_sha2_password`` first): over TLS the client
  sends the password as it is; on plaintext loopback with `--dev` it asks for the listener's RSA
  public key (a key made at start) and sends the password encrypted, as with a MySQL 8 server
  (libmariadb counts loopback as secure and sends it in clear there, which is taken too).
  ``mysql_clear_password`` is taken as well when a client answers with it over TLS. A login
  without TLS is refused (3159) except from loopback on a `--dev` control plane;
* a wrong token is 1045 (28000) and an `auth.fail` event; the same limits as `--pg-listen`.

Then the agent's own greeting (the target's version and capabilities) arrives through the
session: it is answered here with the client's capabilities, user, charset and attributes (no
password, no database: the agent logs in with the connection's credential into its database),
and the agent's OK goes to the client as the end of its login. From there bytes flow unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import ssl
from dataclasses import dataclass, field
from functools import cached_property

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from controlplane.relay.native import (
    MAX_PASSWORD,
    READ_SIZE,
    Accepted,
    Denied,
    NativeListener,
    Reason,
    proxied_source,
    recv_exactly,
    wrap,
)
from controlplane.relay.tunnel import Cancel
from wire.mysql import messages as msg
from wire.mysql.auth import rsa_decrypt_password
from wire.mysql.constants import (
    AUTH_MORE_DATA,
    CACHING_SHA2_PASSWORD,
    CLEAR_PASSWORD,
    ER_ACCESS_DENIED,
    ER_HANDSHAKE,
    ER_UNKNOWN_ERROR,
    ERR_HEADER,
    NATIVE_PASSWORD,
    OK_HEADER,
    RELAYED,
    SCRAMBLE_LENGTH,
    SHA2_FULL_AUTH,
    SHA2_REQUEST_PUBLIC_KEY,
    Capability,
)
from wire.mysql.packets import PacketFramer, ProtocolError, count, encode

log = logging.getLogger(__name__)

VIA = "mysql-listen"
SERVER_VERSION = "8.0.0-gatehouse"
"""What the greeting says before the target is known (the agent's greeting, with the target's
version, arrives only after the login)."""
MAX_LOGIN_PACKET = MAX_PASSWORD + 16 * 1024  # the password, user, attributes
RSA_BITS = 2048
OFFERED = RELAYED | Capability.LOCAL_FILES  # the connection decides whether it is used
FRAMING = (
    Capability.PROTOCOL_41
    | Capability.DEPRECATE_EOF
    | Capability.SESSION_TRACK
    | Capability.MULTI_RESULTS
    | Capability.PS_MULTI_RESULTS
)
"""Capabilities that change how responses are framed: the client's must be the target's."""
TLS_HINT = (
    "connect with --ssl-verify-server-cert --ssl-ca=<the control plane's CA, DATA_DIR/ca.pem>"
)
ER_CON_COUNT = 1040
ER_DBACCESS_DENIED = 1044
ER_NO_DB = 1046
ER_BAD_DB = 1049
ER_SECURE_TRANSPORT_REQUIRED = 3159
ERRORS = {
    Reason.TOO_MANY: (ER_CON_COUNT, "08004"),
    Reason.PROTOCOL: (ER_HANDSHAKE, "08S01"),
    Reason.TIMEOUT: (ER_HANDSHAKE, "08S01"),
    Reason.PLAINTEXT: (ER_SECURE_TRANSPORT_REQUIRED, "HY000"),
    Reason.PASSWORD: (ER_ACCESS_DENIED, "28000"),
    Reason.NO_NAME: (ER_NO_DB, "3D000"),
    Reason.NOT_FOUND: (ER_BAD_DB, "42000"),
    Reason.PRIVILEGE: (ER_DBACCESS_DENIED, "42000"),
    Reason.REJECTED: (ER_UNKNOWN_ERROR, "HY000"),
    Reason.UNAVAILABLE: (ER_UNKNOWN_ERROR, "HY000"),
}


@dataclass
class _Client(Accepted):
    """A MySQL client in its login, and the sequence id of the next packet either side sends."""

    seq: int = 0

    def packet(self, payload: bytes) -> bytes:
        """`payload` framed with the next sequence id (counted as sent)."""
        data = encode(payload, self.seq)
        self.seq = (self.seq + count(len(payload))) & 0xFF
        return data

    async def send(self, payload: bytes) -> None:
        await self.send_bytes(self.packet(payload))

    async def receive(self) -> bytes:
        """One login packet, in sequence and at most MAX_LOGIN_PACKET bytes."""
        if self.stream is None:
            header = await recv_exactly(self.conn, 4)
        else:
            header = await self.stream[0].readexactly(4)
        length = header[0] | header[1] << 8 | header[2] << 16
        if header[3] != self.seq:
            raise ProtocolError(f"packet sequence id {header[3]} where {self.seq} was due")
        if length > MAX_LOGIN_PACKET:
            raise ProtocolError(f"a login packet of {length} bytes (at most {MAX_LOGIN_PACKET})")
        if self.stream is None:
            payload = await recv_exactly(self.conn, length)
        else:
            payload = await self.stream[0].readexactly(length)
        self.seq = (self.seq + 1) & 0xFF
        return payload

    def refusal(self, denied: Denied) -> bytes:
        """An ERR packet in place of the next answer."""
        code, sqlstate = ERRORS[denied.reason]
        return self.packet(msg.err(code, sqlstate, str(denied)))


@dataclass(frozen=True)
class Hello:
    """A client that logged in to this listener, its token not yet checked."""

    client: _Client
    source: str
    response: msg.HandshakeResponse
    secret: bytes


@dataclass
class SocketEnd:
    """A native MySQL client's socket as the session's `ClientEnd`.

    The first read is the login this listener makes for the client; what the agent sends until
    its OK (its greeting, a fast-auth note) stays here, and the OK or ERR that ends the login
    goes to the client with the sequence id the client's own login is at."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    address: str
    login: bytes
    capabilities: int  # what the client took of this listener's offer
    seq: int
    _framer: PacketFramer | None = field(default_factory=PacketFramer)
    _greeted: bool = False
    _failed: bool = False

    @property
    def peer(self) -> str:
        return self.address

    async def read(self) -> bytes | Cancel | None:
        if self.login:
            first, self.login = self.login, b""
            return first
        if self._failed:
            return None
        try:
            data = await self.reader.read(READ_SIZE)
        except (ConnectionError, ssl.SSLError):
            return None
        return data or None

    async def write(self, data: bytes) -> None:
        if self._framer is not None:
            data = self._login_answer(data)
            if not data:
                return
        self.writer.write(data)
        await self.writer.drain()

    def _login_answer(self, data: bytes) -> bytes:
        assert self._framer is not None
        for packet in self._framer.feed(data):
            if not self._greeted:
                self._greeted = True
                problem = self._mismatch(packet.payload)
                if problem is None:
                    continue
                return self._fail(ER_HANDSHAKE, "08S01", problem)
            if packet.first == AUTH_MORE_DATA:
                continue  # the fast path's note to a caching_sha2_password client
            if packet.first not in (OK_HEADER, ERR_HEADER):
                return self._fail(ER_HANDSHAKE, "08S01", "the agent's login answer is unknown")
            self._framer = None
            return encode(packet.payload, self.seq) + data[packet.end :]
        return b""

    def _mismatch(self, greeting: bytes) -> str | None:
        """Why the client cannot be relayed to this target, or None: its greeting lacks a
        capability the client took that changes the framing (or is not a greeting)."""
        if greeting[:1] == bytes((ERR_HEADER,)):
            return msg.parse_err(greeting).message
        try:
            offered = msg.parse_handshake(greeting).capabilities
        except ProtocolError as exc:
            return f"the target's greeting: {exc}"
        missing = self.capabilities & FRAMING & ~offered
        if missing:
            return (
                f"gatehouse: the target does not speak {Capability(missing)!r} that the client "
                "asked for; connect through `gatehouse connect` instead"
            )
        return None

    def _fail(self, code: int, sqlstate: str, message: str) -> bytes:
        self._framer = None
        self._failed = True
        return encode(msg.err(code, sqlstate, message), self.seq)

    def close(self) -> None:
        self.writer.close()


class MysqlListener(NativeListener):
    """The `--mysql-listen` listener of one control-plane process."""

    protocol = VIA
    types = frozenset({"mysql"})

    @cached_property
    def rsa_key(self) -> rsa.RSAPrivateKey:
        """caching_sha2_password's key for clients without TLS (loopback, --dev only): made
        at the first such login."""
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)

    @cached_property
    def public_pem(self) -> bytes:
        return self.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def _client(self, conn: socket.socket, address: str) -> _Client:
        return _Client(conn, address)

    async def _handshake(self, client: _Client) -> Hello:
        """PROXY header, greeting, TLS, handshake response, the password in clear."""
        conn, address = client.conn, client.address
        source, early = await proxied_source(conn, address, self.trusted_proxies, 0)
        if early:
            raise ProtocolError("the client spoke before the server's greeting")
        nonce = bytes(secrets.choice(range(1, 128)) for _ in range(SCRAMBLE_LENGTH))
        offered = OFFERED | (Capability.SSL if self.tls is not None else 0)
        await client.send(
            msg.handshake(
                server_version=SERVER_VERSION,
                connection_id=secrets.randbits(31) or 1,
                scramble=nonce,
                capabilities=offered,
                plugin=CACHING_SHA2_PASSWORD,
            )
        )
        response = msg.parse_handshake_response(await client.receive())
        secure = response.ssl_request
        if secure:
            if self.tls is None:
                raise ProtocolError("TLS was not offered")
            client.stream = await wrap(conn, self.tls.context(()))
            response = msg.parse_handshake_response(await client.receive())
            if response.ssl_request:
                raise ProtocolError("a second TLS request inside TLS")
        else:
            self.require_tls(address, source, TLS_HINT)
            client.stream = await wrap(conn, None)
        secret = await self._password(client, response, nonce, secure)
        return Hello(client, source, response, secret)

    async def _password(
        self, client: _Client, response: msg.HandshakeResponse, nonce: bytes, secure: bool
    ) -> bytes:
        """The password in clear: caching_sha2_password's full authentication (after a switch
        to it when the client began with another plugin), or mysql_clear_password over TLS.
        Empty when the client has none (a wrong token like any other)."""
        if response.plugin == CLEAR_PASSWORD and secure:
            return _without_nul(response.auth_response)
        proof = response.auth_response
        if response.plugin != CACHING_SHA2_PASSWORD:
            await client.send(msg.auth_switch(CACHING_SHA2_PASSWORD, nonce))
            proof = await client.receive()
        if not proof:
            return b""  # no password: the client expects the verdict now
        await client.send(bytes((AUTH_MORE_DATA, SHA2_FULL_AUTH)))
        answer = await client.receive()
        if answer == bytes((SHA2_REQUEST_PUBLIC_KEY,)) and not secure:
            await client.send(bytes((AUTH_MORE_DATA,)) + self.public_pem)
            answer = await client.receive()
        if not secure and len(answer) == RSA_BITS // 8:
            with contextlib.suppress(ValueError):
                return rsa_decrypt_password(answer, nonce, self.rsa_key)
        # In clear: over TLS, or from a client that counts loopback as secure (libmariadb).
        return _without_nul(answer)

    async def _session(self, hello: Hello) -> None:
        response, client = hello.response, hello.client
        name = response.database or ""
        attributes = response.attributes
        app = attributes.get("program_name") or attributes.get("_client_name") or "unknown"
        session = await self.admit(hello.secret, name, hello.source, app, "-D <connection>")
        assert client.stream is not None
        reader, writer = client.stream
        login = msg.handshake_response(
            capabilities=response.capabilities & ~Capability.SSL,
            user=response.user,
            auth_response=b"",
            plugin=NATIVE_PASSWORD,
            charset=response.charset,
            max_packet=response.max_packet,
            attributes=attributes or None,
        )
        end = SocketEnd(
            reader,
            writer,
            hello.source,
            encode(login, 1),
            response.capabilities & OFFERED,
            client.seq,
        )
        try:
            await self.sessions.serve(end, session)
        finally:
            end.close()


def _without_nul(password: bytes) -> bytes:
    return password[:-1] if password.endswith(b"\x00") else password
