"""The agent's login to a MySQL or MariaDB target, with its own credential.

Two steps, because the client's capabilities are known only in between: ``dial`` opens the
connection and reads the server's greeting (whose version and capabilities the client is shown),
``login`` then answers it with the capabilities the client and the server share, over TLS when
the target offers it or the connection requires it, and runs whatever password plugin the
server asks for: ``mysql_native_password``, MariaDB's ``client_ed25519``, MySQL's
``caching_sha2_password`` (fast path, or the full path over TLS or under the server's RSA key)
and ``sha256_password``; ``mysql_clear_password`` only over TLS.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from agent.targettls import TLS_MODES, target_tls
from wire.mysql import auth
from wire.mysql import messages as msg
from wire.mysql.constants import (
    AUTH_MORE_DATA,
    AUTH_SWITCH,
    CACHING_SHA2_PASSWORD,
    CLEAR_PASSWORD,
    DEFAULT_CHARSET,
    ED25519,
    ERR_HEADER,
    NATIVE_PASSWORD,
    OK_HEADER,
    RELAYED,
    SHA2_FAST_AUTH_OK,
    SHA2_FULL_AUTH,
    SHA2_REQUEST_PUBLIC_KEY,
    SHA256_PASSWORD,
    Capability,
)
from wire.mysql.packets import Packet, PacketFramer, ProtocolError, encode

CONNECT_TIMEOUT = 10.0
LOGIN_TIMEOUT = 20.0
READ_SIZE = 256 * 1024
MAX_AUTH_ROUNDS = 8  # switches and more-data exchanges one login may take
TlsMode = Literal["disable", "prefer", "require", "verify-ca", "verify-full"]


class TargetError(Exception):
    """The target could not be reached or refused the agent's login; what the client is told."""

    def __init__(self, code: int, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.sqlstate = sqlstate


@dataclass(frozen=True, slots=True)
class MysqlTarget:
    host: str
    port: int
    user: str
    database: str | None = None
    tls: TlsMode = "prefer"
    tls_ca: str | None = None
    local_infile: bool = False

    @classmethod
    def from_spec(cls, target: Mapping[str, object]) -> MysqlTarget:
        tls = str(target.get("tls") or "prefer")
        if tls not in TLS_MODES:
            raise ValueError(
                f"tls must be disable, prefer, require, verify-ca or verify-full: {tls}"
            )
        return cls(
            host=str(target["host"]),
            port=int(str(target.get("port", 3306)).split(".")[0]),
            user=str(target["user"]),
            database=str(target["database"]) if target.get("database") else None,
            tls=tls,  # type: ignore[arg-type]  # checked above
            tls_ca=str(target["tls_ca"]) if target.get("tls_ca") else None,
            local_infile=bool(target.get("local_infile", False)),
        )


@dataclass(slots=True)
class Connection:
    """An open target connection: its streams and the framer of what it sends."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    greeting: msg.Handshake
    framer: PacketFramer = field(default_factory=PacketFramer)
    queued: list[Packet] = field(default_factory=list)
    tls: bool = False

    async def read(self) -> Packet:
        while not self.queued:
            data = await self.reader.read(READ_SIZE)
            if not data:
                raise TargetError(2013, "08S01", "the target closed the connection during login")
            self.queued.extend(self.framer.feed(data))
        return self.queued.pop(0)

    def close(self) -> None:
        self.writer.close()


async def dial(target: MysqlTarget) -> Connection:
    """Connect and read the server's greeting."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), CONNECT_TIMEOUT
        )
    except (OSError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise TargetError(
            2003,
            "08001",
            f"gatehouse agent could not connect to {target.host}:{target.port}: {reason}",
        ) from None
    conn = Connection(reader, writer, msg.Handshake("", 0, b"", 0, 0, 0, ""))
    try:
        first = await asyncio.wait_for(conn.read(), LOGIN_TIMEOUT)
        conn.greeting = msg.parse_handshake(first.payload)
    except BaseException as exc:
        writer.close()
        if isinstance(exc, TimeoutError):
            raise TargetError(2013, "08S01", "the target sent no greeting in time") from None
        if isinstance(exc, ProtocolError):
            raise TargetError(2027, "08S01", f"the target's greeting: {exc}") from None
        raise
    if not conn.greeting.capabilities & Capability.PROTOCOL_41:
        writer.close()
        raise TargetError(2027, "08S01", "the target does not speak the 4.1 protocol")
    return conn


def shared_capabilities(target: MysqlTarget, server: int, client: int) -> int:
    """What the agent asks the server for: what the client asked for, that both sides and the
    gateway's inspector can speak (LOCAL_FILES only when the connection allows it)."""
    relayed = RELAYED | (Capability.LOCAL_FILES if target.local_infile else 0)
    required = Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION | Capability.PLUGIN_AUTH
    return (client & relayed & server) | (required & server) | Capability.PROTOCOL_41


async def login(
    conn: Connection,
    target: MysqlTarget,
    password: str | None,
    capabilities: int,
    charset: int = DEFAULT_CHARSET,
    attributes: dict[str, str] | None = None,
) -> msg.Ok:
    """Authenticate on a dialed connection; returns the server's OK. Closes it on failure."""
    try:
        return await asyncio.wait_for(
            _login(conn, target, (password or "").encode(), capabilities, charset, attributes),
            LOGIN_TIMEOUT,
        )
    except BaseException as exc:
        conn.close()
        if isinstance(exc, TimeoutError):
            raise TargetError(
                2013, "08S01", "the target did not complete the login in time"
            ) from None
        if isinstance(exc, OSError | ssl.SSLError | ProtocolError):
            raise TargetError(2013, "08S01", f"login to the target failed: {exc}") from None
        raise


async def _login(
    conn: Connection,
    target: MysqlTarget,
    password: bytes,
    capabilities: int,
    charset: int,
    attributes: dict[str, str] | None,
) -> msg.Ok:
    greeting = conn.greeting
    caps = msg.response_capabilities(
        capabilities & ~Capability.SSL, database=target.database, attributes=attributes
    )
    seq = 1
    if target.tls != "disable":
        if greeting.capabilities & Capability.SSL:
            caps |= Capability.SSL
            conn.writer.write(encode(msg.ssl_request(caps, charset=charset), seq))
            await conn.writer.drain()
            context, hostname = target_tls(target.tls, target.tls_ca, target.host)
            await conn.writer.start_tls(context, server_hostname=hostname)
            conn.tls = True
            seq += 1
        elif target.tls != "prefer":
            raise TargetError(
                2026,
                "08004",
                f"the target does not offer TLS, but the connection's tls is {target.tls}",
            )
    plugin = greeting.plugin or NATIVE_PASSWORD
    nonce = greeting.scramble
    if plugin not in (NATIVE_PASSWORD, CACHING_SHA2_PASSWORD):
        plugin = NATIVE_PASSWORD  # the server switches us to its own, with a fresh nonce
    response = msg.handshake_response(
        capabilities=caps,
        user=target.user,
        auth_response=_first_answer(plugin, password, nonce),
        plugin=plugin,
        database=target.database,
        charset=charset,
        attributes=attributes,
    )
    conn.writer.write(encode(response, seq))
    await conn.writer.drain()
    public_key_requested = False
    for _round in range(MAX_AUTH_ROUNDS):
        packet = await conn.read()
        payload = packet.payload
        reply: bytes | None = None
        if packet.first == OK_HEADER:
            return msg.parse_ok(payload)
        if packet.first == ERR_HEADER:
            err = msg.parse_err(payload)
            raise TargetError(
                err.code, err.sqlstate, f"the target refused the agent's login: {err.message}"
            )
        if packet.first == AUTH_SWITCH:
            plugin, nonce = msg.parse_auth_switch(payload)
            reply = _switch_answer(plugin, password, nonce, conn.tls)
        elif packet.first == AUTH_MORE_DATA and plugin in (CACHING_SHA2_PASSWORD, SHA256_PASSWORD):
            data = payload[1:]
            if data == bytes((SHA2_FAST_AUTH_OK,)):
                continue  # the server's OK follows
            if data == bytes((SHA2_FULL_AUTH,)) and plugin == CACHING_SHA2_PASSWORD:
                if conn.tls:
                    reply = password + b"\x00"
                else:
                    reply = bytes((SHA2_REQUEST_PUBLIC_KEY,))
                    public_key_requested = True
            elif data.startswith(b"-----BEGIN") and (
                public_key_requested or plugin == SHA256_PASSWORD
            ):
                reply = auth.rsa_encrypt_password(password, nonce, data)
            else:
                raise TargetError(2027, "08S01", f"unexpected {plugin} answer from the target")
        else:
            raise TargetError(2027, "08S01", "the target sent an unexpected packet during login")
        conn.writer.write(encode(reply, packet.last_seq + 1))
        await conn.writer.drain()
    raise TargetError(2027, "08S01", "the target's login took too many rounds")


def _first_answer(plugin: str, password: bytes, nonce: bytes) -> bytes:
    if plugin == CACHING_SHA2_PASSWORD:
        return auth.caching_sha2_scramble(password, nonce)
    return auth.native_scramble(password, nonce)


def _switch_answer(plugin: str, password: bytes, nonce: bytes, tls: bool) -> bytes:
    if plugin == NATIVE_PASSWORD:
        return auth.native_scramble(password, nonce)
    if plugin == CACHING_SHA2_PASSWORD:
        return auth.caching_sha2_scramble(password, nonce)
    if plugin == ED25519:
        return auth.ed25519_sign(password, nonce)
    if plugin == SHA256_PASSWORD:
        # Over TLS the password itself; else ask for the server's key (answered with it).
        return password + b"\x00" if tls else bytes((AUTH_MORE_DATA,))
    if plugin == CLEAR_PASSWORD:
        if not tls:
            raise TargetError(
                2059,
                "08004",
                "the target asks for the clear-text password, which the agent sends only over TLS",
            )
        return password + b"\x00"
    raise TargetError(
        2059,
        "08004",
        f"the target asks for authentication plugin {plugin!r}, which the agent does not speak",
    )
