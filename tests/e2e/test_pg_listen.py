"""`--pg-listen` on a production control plane: TLS against its own CA, a token as the password,
refusals in PostgreSQL's own words, cancel keys that belong to one session, PROXY v2, limits."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from controlplane.tls import proxy
from devenv.postgres import PostgresServer
from tests.e2e.conftest import AGENT, PG_PASSWORD, POLICY, Stack, WayIn, psql, start_stack
from wire.pg import messages as pgm

HANDSHAKE_TIMEOUT = "5"
MAX_CONNECTIONS = 8


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory, pg: PostgresServer) -> Iterator[Stack]:
    """Production mode: TLS on every listener; 127.0.0.1 is a trusted proxy (its PROXY v2
    header is read when it sends one)."""
    extra = ("--trusted-proxies", "127.0.0.1", "--pg-listen-max-connections", str(MAX_CONNECTIONS))
    started = start_stack(
        tmp_path_factory.mktemp("pglisten"),
        pg,
        tls=True,
        extra=(*extra, "--handshake-timeout", HANDSHAKE_TIMEOUT),
    )
    yield started
    started.stop()


@pytest.fixture(scope="module")
def way(tls_stack: Stack) -> WayIn:
    cp = tls_stack.controlplane
    return WayIn("pg-listen", cp.pg_port, cp.token, cp.ca_file)


def client_tls(stack: Stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=stack.controlplane.ca_file)


async def startup_error(way: WayIn, stack: Stack, **kwargs: Any) -> asyncpg.PostgresError:
    """The error asyncpg gets when it starts up with these arguments (it keeps the SQLSTATE)."""
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": way.port,
        "user": "anyone",
        "database": "pg",
        "password": way.password,
        "ssl": client_tls(stack),
    }
    options.update(kwargs)
    with pytest.raises(asyncpg.PostgresError) as caught:
        conn = await asyncpg.connect(**options)
        await conn.close()
    return caught.value


def new_events(stack: Stack, after: int, kind: str) -> list[dict[str, Any]]:
    return [e for e in stack.events(after) if e["type"] == kind]


def last_seq(stack: Stack) -> int:
    return int(stack.events()[-1]["seq"])


def test_psql_verifies_the_control_plane_and_runs_a_statement(tls_stack: Stack, way: WayIn) -> None:
    after = last_seq(tls_stack)
    result = psql(way.dsn(application_name="report"), "select 41+1, current_user")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42|app"
    (start,) = [e for e in new_events(tls_stack, after, "session.start") if "decision" not in e]
    assert start["source"] == {"ip": "127.0.0.1", "client": "report via pg-listen"}
    assert start["user"]["sub"] == "admin"


def test_plaintext_is_refused_before_anything_opens(tls_stack: Stack, way: WayIn) -> None:
    after = last_seq(tls_stack)
    result = psql(way.dsn(sslmode="disable"), "select 1")
    assert result.returncode != 0
    assert "TLS required" in result.stderr
    error = asyncio.run(startup_error(way, tls_stack, ssl=False))
    assert error.sqlstate == "28000"
    assert new_events(tls_stack, after, "session.start") == []


def test_a_wrong_token_is_28P01_and_an_auth_fail_event(tls_stack: Stack, way: WayIn) -> None:
    after = last_seq(tls_stack)
    error = asyncio.run(startup_error(way, tls_stack, password="ghu_not-a-real-token"))
    assert error.sqlstate == "28P01"
    assert "the token is not known" in str(error)
    reason = "the token is not known to this control plane"
    (fail,) = [e for e in new_events(tls_stack, after, "auth.fail") if e["reason"] == reason]
    assert fail["source"]["ip"] == "127.0.0.1"
    assert fail["credential"] == "gatehouse token"
    assert "ghu_not-a-real-token" not in str(fail)
    assert new_events(tls_stack, after, "session.start") == []


def test_unknown_database_and_no_access_say_what_to_do(tls_stack: Stack, way: WayIn) -> None:
    error = asyncio.run(startup_error(way, tls_stack, database="nope"))
    assert error.sqlstate == "3D000"
    assert "gatehouse connections list" in str(error)
    created = tls_stack.cli("admin", "tokens", "create", "siem", "--role", "audit-reader")
    assert created.returncode == 0, created.stderr
    reader = created.stdout.strip().split()[-1]
    assert reader.startswith("ghu_")
    error = asyncio.run(startup_error(way, tls_stack, password=reader))
    assert error.sqlstate == "42501"
    assert "may not open sessions" in str(error)


def test_a_connection_of_another_type_is_refused_before_it_starts(
    tls_stack: Stack, way: WayIn
) -> None:
    """`dbname` naming an HTTP (or MySQL, ssh, shell) connection: this port speaks only
    PostgreSQL, so nothing opens, and the client is told why."""
    policy = POLICY.format(agent=AGENT, port=tls_stack.pg.port) + (
        f"  - name: api-elsewhere\n    type: http\n    agent: {AGENT}\n"
        "    target: {url: 'http://127.0.0.1:9'}\n"
    )
    applied = tls_stack.apply(policy)
    assert applied.returncode == 0, applied.stderr
    after = last_seq(tls_stack)
    error = asyncio.run(startup_error(way, tls_stack, database="api-elsewhere"))
    assert error.sqlstate == "08004"
    assert "is of type http; this port speaks postgres" in str(error)
    assert new_events(tls_stack, after, "session.start") == []


# ---- cancel keys ---------------------------------------------------------------------------


class RawSession:
    """A PostgreSQL session spoken by hand over TLS, to see (and misuse) its cancel key."""

    def __init__(self, way: WayIn, stack: Stack) -> None:
        plain = socket.create_connection(("127.0.0.1", way.port), timeout=30)
        plain.sendall(pgm.ssl_request())
        assert plain.recv(1) == b"S"
        self.sock = client_tls(stack).wrap_socket(plain, server_hostname="127.0.0.1")
        self.sock.sendall(pgm.startup_message({"user": "anyone", "database": "pg"}))
        assert self.message()[0] == "R"  # cleartext password, please
        self.sock.sendall(pgm.password_message(way.password.encode()))
        self.pid, self.key = 0, b""
        while (message := self.message())[0] != "Z":
            if message[0] == "K":
                self.pid, self.key = pgm.parse_backend_key_data(message[1])
        self.buffer = b""

    def message(self) -> tuple[str, bytes]:
        header = self._exactly(5)
        (length,) = struct.unpack("!i", header[1:])
        return chr(header[0]), self._exactly(length - 4)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, "the gateway closed the session"
            data += chunk
        return data

    def query(self, sql: str) -> None:
        self.sock.sendall(pgm.query(sql))

    def outcome(self) -> str:
        """The SQLSTATE of the query's error, or 'ok'."""
        result = "ok"
        while (message := self.message())[0] != "Z":
            if message[0] == "E":
                result = pgm.parse_error_fields(message[1]).sqlstate
        return result

    def close(self) -> None:
        self.sock.close()


def send_cancel(port: int, pid: int, key: bytes) -> None:
    """A CancelRequest as libpq sends it: plaintext, on a connection of its own."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(pgm.cancel_request(pid, key))
        assert sock.recv(1) == b""  # the server closes it, saying nothing


def wait_running(pg: PostgresServer, needle: str) -> int:
    """The target's backend pid running a statement containing `needle`, once it runs."""
    dsn = pg.dsn(user="app", password=PG_PASSWORD, database="app")
    deadline = time.monotonic() + 30
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "select pid from pg_stat_activity where state = 'active' and query like %s "
                "and pid <> pg_backend_pid()",
                (f"%{needle}%",),
            ).fetchone()
            if row is not None:
                return int(row[0])
            time.sleep(0.05)
    raise AssertionError(f"{needle} never ran")


def test_a_cancel_key_cancels_its_own_session_only(
    tls_stack: Stack, way: WayIn, pg: PostgresServer
) -> None:
    a, b = RawSession(way, tls_stack), RawSession(way, tls_stack)
    try:
        assert a.key and b.key and a.pid != b.pid
        after = last_seq(tls_stack)
        tag = f"sleep_{uuid.uuid4().hex[:8]}"
        a.query(f"select pg_sleep(2) as {tag}")
        target_pid = wait_running(pg, tag)
        assert target_pid != a.pid  # the key the client got is not the target's
        # B's key, A's pid with B's secret, and the target's own pid: none of them is A's key.
        send_cancel(way.port, b.pid, b.key)
        send_cancel(way.port, a.pid, b.key)
        send_cancel(way.port, target_pid, a.key)
        assert a.outcome() == "ok"  # A's statement ran to its end
        b.query("select 1")
        assert b.outcome() == "ok"  # B had nothing running: its key cancelled nothing of A's
        fails = new_events(tls_stack, after, "auth.fail")
        assert fails and all(f["credential"] == "cancel key" for f in fails)
        assert new_events(tls_stack, after, "db.cancel") != []  # B's own (idle) session
        tag = f"sleep_{uuid.uuid4().hex[:8]}"
        a.query(f"select pg_sleep(30) as {tag}")
        wait_running(pg, tag)
        send_cancel(way.port, a.pid, a.key)
        assert a.outcome() == "57014"  # query_canceled
        a.query("select 2")
        assert a.outcome() == "ok"
    finally:
        a.close()
        b.close()


# ---- PROXY v2, limits ----------------------------------------------------------------------


class ProxyV2:
    """A TCP load balancer in miniature: prepends a PROXY v2 header naming `client`."""

    def __init__(self, target: int, client: str) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.target, self.client = target, client
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            upstream.sendall(proxy.build(self.client, 40000, "127.0.0.1", self.target))
            for source, sink in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=_copy, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self.server.close()


def _copy(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            end.close()


def test_source_ip_is_the_one_a_trusted_proxy_names(tls_stack: Stack, way: WayIn) -> None:
    balancer = ProxyV2(way.port, "203.0.113.9")
    try:
        after = last_seq(tls_stack)
        behind = WayIn("pg-listen", balancer.port, way.password, way.ca_file)
        with psycopg.connect(behind.dsn()) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        (start,) = [e for e in new_events(tls_stack, after, "session.start") if "decision" not in e]
        assert start["source"]["ip"] == "203.0.113.9"
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(behind.dsn(password="ghu_wrong"))
        fails = new_events(tls_stack, after, "auth.fail")
        assert [f["source"]["ip"] for f in fails if f["source"]["ip"] != "127.0.0.1"] == [
            "203.0.113.9"
        ]
    finally:
        balancer.close()


def fatal_from(sock: socket.socket) -> str:
    """The SQLSTATE of the FATAL ErrorResponse the listener sent before closing."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    assert data[:1] == b"E", data
    return pgm.parse_error_fields(data[5:]).sqlstate


def test_a_silent_connection_is_closed_at_the_handshake_deadline(way: WayIn) -> None:
    with socket.create_connection(("127.0.0.1", way.port), timeout=60) as sock:
        assert fatal_from(sock) == "08P01"


def test_an_oversized_startup_packet_is_refused(way: WayIn) -> None:
    with socket.create_connection(("127.0.0.1", way.port), timeout=30) as sock:
        sock.sendall(struct.pack("!ii", 20_000, 196608))
        assert fatal_from(sock) == "08P01"


def test_the_listener_holds_at_most_its_connections(way: WayIn) -> None:
    held = [socket.create_connection(("127.0.0.1", way.port)) for _ in range(MAX_CONNECTIONS)]
    try:
        # Each one is accepted (and waits for its handshake) before the next: the one beyond
        # the limit is refused at once, while the others are still waiting.
        for sock in held:
            sock.sendall(pgm.ssl_request())
            assert sock.recv(1) == b"S"
        with socket.create_connection(("127.0.0.1", way.port), timeout=30) as extra:
            assert fatal_from(extra) == "53300"
    finally:
        for sock in held:
            sock.close()


def pg_listen_metrics(stack: Stack) -> dict[str, float]:
    """The listener's lines of the control plane's /metrics (over HTTPS, trusting its CA)."""
    url = f"https://127.0.0.1:{stack.controlplane.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10, context=client_tls(stack)) as response:
        text = response.read().decode()
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines())
        if name.startswith("gatehouse_pg_listen_")
    }


def test_metrics_count_what_the_listener_took_holds_and_refused(
    tls_stack: Stack, way: WayIn
) -> None:
    before = pg_listen_metrics(tls_stack)
    plaintext = 'gatehouse_pg_listen_refused_total{reason="plaintext"}'
    with socket.create_connection(("127.0.0.1", way.port), timeout=30) as sock:
        sock.sendall(pgm.startup_message({"user": "x", "database": "pg"}))
        assert fatal_from(sock) == "28000"
    with socket.create_connection(("127.0.0.1", way.port), timeout=30) as held:
        held.sendall(pgm.ssl_request())
        assert held.recv(1) == b"S"  # accepted, starting up
        during = pg_listen_metrics(tls_stack)
    assert during["gatehouse_pg_listen_active"] >= 1
    assert during[plaintext] == before[plaintext] + 1
    taken = "gatehouse_pg_listen_connections_total"
    assert during[taken] >= before[taken] + 2
    assert {
        'gatehouse_pg_listen_refused_total{reason="limit"}',
        'gatehouse_pg_listen_refused_total{reason="timeout"}',
    } <= set(during)
