"""caching_sha2_password, which MariaDB does not speak and no MySQL 8 server can be installed
here to test against: a small server written from the published algorithm (MySQL's
sha2_password.cc: a SHA-256 scramble on the fast path; on the full path the password over TLS,
or RSA-OAEP encrypted with the server's key) checks the agent's client side, and PyMySQL's
client side checks that server (the same algorithm functions, wire/mysql/auth.py)."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pymysql
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.mysql.login import MysqlTarget, TargetError, dial, login, shared_capabilities
from devenv.mariadb import _certificate
from wire.mysql import auth
from wire.mysql import messages as msg
from wire.mysql.constants import CACHING_SHA2_PASSWORD, Capability
from wire.mysql.packets import encode

PASSWORD = b"s3cret-sha2"
CAPS = int(
    Capability.LONG_PASSWORD
    | Capability.PROTOCOL_41
    | Capability.SECURE_CONNECTION
    | Capability.PLUGIN_AUTH
    | Capability.PLUGIN_AUTH_LENENC_DATA
    | Capability.CONNECT_WITH_DB
    | Capability.TRANSACTIONS
    | Capability.SSL
    | Capability.DEPRECATE_EOF
)


class Sha2Server:
    """One MySQL 8-style account, `sha2`, behind caching_sha2_password; `cached` says whether
    the fast path can succeed (the server holds SHA256(SHA256(password)) in its cache)."""

    def __init__(self, base: Path, *, cached: bool) -> None:
        _certificate(base)
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(base / "server.pem", base / "server.key")
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.cached = cached
        self.stored = hashlib.sha256(hashlib.sha256(PASSWORD).digest()).digest()
        self.paths: list[str] = []  # how each login succeeded
        self.port = 0

    def handle(self, sock: socket.socket) -> None:
        """One client, on a blocking socket read one packet at a time, as a server must: a
        client sends its TLS hello right behind the SSLRequest, and those bytes belong to TLS."""
        stream: list[socket.socket] = [sock]

        def read() -> bytes:
            header = _exactly(stream[0], 4)
            payload = _exactly(stream[0], int.from_bytes(header[:3], "little"))
            self.seq = header[3] + 1
            return payload

        def send(payload: bytes) -> None:
            stream[0].sendall(encode(payload, self.seq))
            self.seq += 1

        nonce = secrets.token_bytes(20).replace(b"\x00", b"\x01")
        self.seq = 0
        try:
            send(
                msg.handshake(
                    server_version="8.4.0",
                    connection_id=9,
                    scramble=nonce,
                    capabilities=CAPS,
                    plugin=CACHING_SHA2_PASSWORD,
                )
            )
            response = msg.parse_handshake_response(read())
            tls = response.ssl_request
            if tls:
                stream[0] = self.tls.wrap_socket(sock, server_side=True)
                response = msg.parse_handshake_response(read())
            scramble = response.auth_response
            if response.plugin != CACHING_SHA2_PASSWORD:
                send(msg.auth_switch(CACHING_SHA2_PASSWORD, nonce))
                scramble = read()
            if self.cached and auth.caching_sha2_verify(self.stored, nonce, scramble):
                send(b"\x01\x03")
                self.paths.append("fast")
                send(msg.ok())
                self._commands(read, send)
                return
            send(b"\x01\x04")
            answer = read()
            if tls:
                password, path = answer.rstrip(b"\x00"), "full over TLS"
            else:
                if answer == b"\x02":
                    pem = self.key.public_key().public_bytes(
                        serialization.Encoding.PEM,
                        serialization.PublicFormat.SubjectPublicKeyInfo,
                    )
                    send(b"\x01" + pem)
                    answer = read()
                password = auth.rsa_decrypt_password(answer, nonce, self.key)
                path = "full under RSA"
            if password == PASSWORD:
                self.paths.append(path)
                send(msg.ok())
                self._commands(read, send)
            else:
                send(msg.err(1045, "28000", "Access denied for user 'sha2'"))
        except (OSError, ValueError):
            pass
        finally:
            stream[0].close()

    @staticmethod
    def _commands(read: Callable[[], bytes], send: Callable[[bytes], None]) -> None:
        """After the login: every command gets an OK (a client's SET NAMES) until COM_QUIT."""
        while read()[:1] != b"\x01":
            send(msg.ok())


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the client went away")
        data += chunk
    return data


@pytest.fixture(params=[True, False], ids=["cached", "uncached"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sha2Server]:
    sha2 = Sha2Server(tmp_path, cached=request.param)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sha2.handle(self.request)

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler) as listening:
        listening.daemon_threads = True
        sha2.port = listening.server_address[1]
        thread = threading.Thread(target=listening.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        yield sha2
        listening.shutdown()
        thread.join(10)


def _agent_login(server: Sha2Server, tls: str, password: str) -> None:
    async def run() -> None:
        target = MysqlTarget("127.0.0.1", server.port, "sha2", "app", tls=tls)  # type: ignore[arg-type]
        conn = await dial(target)
        await login(
            conn, target, password, shared_capabilities(target, conn.greeting.capabilities, CAPS)
        )
        conn.close()

    asyncio.run(run())


@pytest.mark.parametrize("tls", ["disable", "require"])
def test_the_agent_logs_in_by_every_path(server: Sha2Server, tls: str) -> None:
    _agent_login(server, tls, PASSWORD.decode())
    want = "fast" if server.cached else ("full over TLS" if tls == "require" else "full under RSA")
    assert server.paths == [want]


def test_the_agent_with_a_wrong_password_is_refused(server: Sha2Server) -> None:
    with pytest.raises(TargetError) as refused:
        _agent_login(server, "disable", "wrong")
    assert refused.value.code == 1045


@pytest.mark.parametrize("tls", [False, True])
def test_pymysqls_client_side_agrees_with_the_server_side(server: Sha2Server, tls: bool) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    ssl_options: dict[str, object] = {"ssl": context} if tls else {"ssl_disabled": True}
    conn = pymysql.connect(
        host="127.0.0.1",
        port=server.port,
        user="sha2",
        password=PASSWORD.decode(),
        database="app",
        autocommit=None,
        init_command=None,
        **ssl_options,  # type: ignore[arg-type]
    )
    conn.close()
    want = "fast" if server.cached else ("full over TLS" if tls else "full under RSA")
    assert server.paths == [want]
