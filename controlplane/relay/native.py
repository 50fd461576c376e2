"""What the control plane's native database listeners (`--pg-listen`, `--mysql-listen`) share.

Each speaks its own protocol up to the point where the client has given a connection name and a
password; from there the admission is the same for both and lives here: the password is a
Gatehouse token (delegated, machine, or an OIDC access token), identified as a bearer token
(a wrong one counts as a failed authentication, recorded and throttled per source); the access
rules decide mode `connect` as for `gatehouse connect`; a review cannot be waited for (the
request is made and the client told to come back). The limits are shared too: at most
`max_connections` connections, at most `max_pending` of them in their handshake, each handshake
done within `handshake_timeout`, TLS required except from loopback on a `--dev` control plane.
Every refusal is a `Denied` with a `Reason` that each protocol turns into its own error code.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from controlplane.accept import Acceptor
from controlplane.audit.writer import AuditUnavailable
from controlplane.auth.sources import SOURCE
from controlplane.auth.tokens import TokenAuthenticator
from controlplane.errors import GatehouseError, NotFound, PermissionDenied, Unauthenticated
from controlplane.policy.document import Review
from controlplane.relay.service import Admitted, ClientServicer
from controlplane.store.models import ReviewRow
from controlplane.tls import proxy
from controlplane.tls.server import ServerTls
from wire import errors
from wire.addresses import is_loopback_host

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
MAX_PASSWORD = 16 * 1024  # a token, or an OIDC access token (a JWT of a few KB)
DEFAULT_MAX_CONNECTIONS = 1000
MODE = "connect"
T = TypeVar("T")


class Reason(enum.Enum):
    """Why a native client is refused; each listener maps it to its protocol's error."""

    TOO_MANY = "too many connections"
    PROTOCOL = "not the listener's protocol"
    TIMEOUT = "handshake not done in time"
    PLAINTEXT = "TLS required"
    PASSWORD = "wrong token"
    NO_NAME = "no connection named"
    NOT_FOUND = "no such connection"
    PRIVILEGE = "access denied"
    REJECTED = "session not started"
    UNAVAILABLE = "audit unavailable"


class Denied(Exception):
    """A refusal with a message for the user (already prefixed `gatehouse: `)."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Accepted:
    """One accepted connection during its handshake: the raw socket until it is wrapped in
    streams (TLS or not); a protocol says how it refuses (`refusal`)."""

    conn: socket.socket
    address: str
    stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send_bytes(self, data: bytes) -> None:
        if self.stream is None:
            await send(self.conn, data)
        else:
            self.stream[1].write(data)
            await self.stream[1].drain()

    def refusal(self, denied: Denied) -> bytes:
        """What the protocol says to a client it refuses (and then closes)."""
        raise NotImplementedError

    async def refuse(self, denied: Denied) -> None:
        """Tell the client why, inside TLS once TLS was negotiated (best effort, bounded)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.send_bytes(self.refusal(denied)), 5)

    def close(self) -> None:
        if self.stream is not None:
            self.stream[1].close()
        else:
            self.conn.close()


class NativeListener(Acceptor):
    """The limits, counters and admission of one native listener of this process; a
    protocol says how a connection starts (`_client`), shakes hands (`_handshake`, within the
    deadline; None: nothing more to do) and becomes a session (`_session`)."""

    protocol = ""  # "pg-listen", "mysql-listen": in logs and `source.client`
    types: frozenset[str] | None = None  # connection types it serves (None: any)

    def __init__(
        self,
        sessions: ClientServicer,
        auth: TokenAuthenticator,
        tls: ServerTls | None,
        *,
        trusted_proxies: tuple[proxy.Network, ...] = (),
        handshake_timeout: float = 10.0,
        max_pending: int = 128,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        super().__init__(self.protocol)
        self.sessions = sessions
        self.auth = auth
        self.tls = tls  # None: --dev, plaintext (the listen address is loopback)
        self.trusted_proxies = trusted_proxies
        self.handshake_timeout = handshake_timeout
        self.max_pending = max_pending
        self.max_connections = max_connections
        self.pending = 0
        self.accepted = 0  # connections taken since start (refused ones included)
        self.refused = 0  # over a limit
        self.expired = 0  # handshake not done in time
        self.refused_plaintext = 0

    @property
    def connections(self) -> int:
        return len(self._connections)

    def _client(self, conn: socket.socket, address: str) -> Accepted:
        raise NotImplementedError

    async def _handshake(self, client: Any) -> Any:
        raise NotImplementedError

    async def _session(self, hello: Any) -> None:
        raise NotImplementedError

    async def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        address = peer[0]
        client = self._client(conn, address)
        try:
            self.take(address)
            hello = await self.within_deadline(self._handshake(client))
            if hello is not None:
                await self._session(hello)
        except Denied as exc:
            await client.refuse(exc)
        except errors.ProtocolError as exc:
            log.info("%s: %s broke the protocol: %s", self.protocol, address, exc)
            await client.refuse(Denied(Reason.PROTOCOL, f"gatehouse: {exc}"))
        except proxy.ProxyHeaderError as exc:
            log.info("%s: bad PROXY header from %s: %s", self.protocol, address, exc)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            log.debug("%s: connection from %s ended: %s", self.protocol, address, exc)
        finally:
            client.close()

    def counters(self) -> dict[str, float]:
        """What /metrics shows of this listener, keyed `<protocol>_<counter>`."""
        prefix = self.protocol.replace("-", "_")
        return {
            f"{prefix}_accepted": self.accepted,
            f"{prefix}_active": self.connections,
            f"{prefix}_refused_limit": self.refused,
            f"{prefix}_refused_timeout": self.expired,
            f"{prefix}_refused_plaintext": self.refused_plaintext,
        }

    def take(self, address: str) -> None:
        """Count a new connection; Denied(TOO_MANY) when it is over a limit."""
        self.accepted += 1
        if len(self._connections) > self.max_connections or self.pending >= self.max_pending:
            self.refused += 1
            log.warning(
                "%s: refusing %s: %d connections, %d of them starting",
                self.protocol,
                address,
                len(self._connections) - 1,
                self.pending,
            )
            raise Denied(
                Reason.TOO_MANY,
                "gatehouse: too many connections to this listener right now; try again later",
            )

    async def within_deadline(self, handshake: Awaitable[T]) -> T:
        """The handshake, counted among the pending ones and bounded by the deadline."""
        self.pending += 1
        try:
            async with asyncio.timeout(self.handshake_timeout):
                return await handshake
        except TimeoutError:
            self.expired += 1
            raise Denied(
                Reason.TIMEOUT,
                f"gatehouse: the connection did not start up and authenticate within "
                f"{self.handshake_timeout:g} s",
            ) from None
        finally:
            self.pending -= 1

    def require_tls(self, address: str, source: str, hint: str) -> None:
        """Plaintext only on a --dev control plane (no TLS material), and only from loopback."""
        if self.tls is None and is_loopback_host(address):
            return
        self.refused_plaintext += 1
        log.info("%s: refused a plaintext login from %s", self.protocol, source)
        raise Denied(
            Reason.PLAINTEXT,
            "gatehouse: TLS required: this listener takes only encrypted connections; " + hint,
        )

    async def admit(self, secret: bytes, name: str, source: str, app: str, hint: str) -> Admitted:
        """The token checked, then the session admitted on the connection `name` (mode
        `connect`), recorded as coming from `source` through this listener. `hint` says how
        this protocol names the connection, for a client that gave none."""
        SOURCE.set(source)  # failed authentications are counted per client address
        try:
            token = secret.decode("utf-8")
        except UnicodeDecodeError:
            token = ""
        try:
            try:
                identity = await self.auth.identify((("authorization", f"Bearer {token}"),))
            except Unauthenticated as exc:
                raise Denied(
                    Reason.PASSWORD,
                    f"gatehouse: password authentication failed ({exc}); the password must be "
                    "a Gatehouse token (`gatehouse tokens create`) or an access token of a login",
                ) from None
            if not name:
                raise Denied(Reason.NO_NAME, f"gatehouse: no database given: use {hint}")
            return await self.sessions.admit(
                identity,
                name,
                MODE,
                {"ip": source, "client": f"{app} via {self.protocol}"},
                refuse_review,
                types=self.types,
            )
        except NotFound as exc:
            raise Denied(Reason.NOT_FOUND, f"gatehouse: {exc}") from None
        except PermissionDenied as exc:
            raise Denied(Reason.PRIVILEGE, f"gatehouse: {exc}") from None
        except GatehouseError as exc:
            raise Denied(Reason.REJECTED, f"gatehouse: {exc}") from None
        except AuditUnavailable as exc:
            raise Denied(Reason.UNAVAILABLE, f"gatehouse: {exc}") from None


async def refuse_review(row: ReviewRow, review: Review, rule: str) -> None:
    """A native client cannot show a spinner: the request is made, the client told to come
    back once it is approved (an approval holds for the rule's ttl)."""
    raise PermissionDenied(
        f"access needs a review (rule {rule!r}): request {row.id} is pending for "
        f"{', '.join(review.groups)}; once one of them approves it "
        f"(`gatehouse reviews approve {row.id}`), connect again"
    )


async def recv_exactly(conn: socket.socket, size: int) -> bytes:
    """Exactly `size` bytes from the raw socket, never more (nothing is buffered ahead, so
    nothing a client sends before a TLS handshake can be taken for what it sends inside)."""
    loop = asyncio.get_running_loop()
    data = bytearray()
    while len(data) < size:
        chunk = await loop.sock_recv(conn, size - len(data))
        if not chunk:
            raise ConnectionError("the client closed the connection")
        data += chunk
    return bytes(data)


async def send(conn: socket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(conn, data)


async def proxied_source(
    conn: socket.socket, address: str, trusted: tuple[proxy.Network, ...], peek: int
) -> tuple[str, bytes]:
    """The client's address (a trusted proxy's PROXY v2 header wins), and the bytes read
    while looking for that header (the start of the client's first message). `peek`: how
    many bytes to read first (at most the size of the shortest first message); 0 when the
    server speaks first, so that from a trusted proxy the header is required."""
    if not proxy.trusted(address, trusted):
        return address, b""
    start = await recv_exactly(conn, peek or proxy.PREFIX)
    if start[: len(proxy.SIGNATURE)] != proxy.SIGNATURE[: len(start)]:
        return address, start
    prefix = start + await recv_exactly(conn, proxy.PREFIX - len(start))
    header = proxy.parse(prefix + await recv_exactly(conn, proxy.body_length(prefix)))
    return header.source or address, b""


async def wrap(
    conn: socket.socket, context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams over the socket: TLS (server side) when `context` is given. The caller's
    deadline bounds the TLS handshake."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_SIZE, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn, ssl=context)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
