"""The agent's http engine against a socket server that records what it received: the
client's credentials replaced by the connection's, Host set, each response's end marked, a
kept-alive connection the target closed opened again, an unreachable target a 502."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator

import pytest

from agent.engines import Cancel
from agent.http import engine
from gatehouse.v1 import agent_pb2, tunnel_pb2
from wire.http.codec import encode_request
from wire.http.websocket import accept_key


class Target:
    """Answers every request 200 with a JSON body; closes each connection after `per_conn`
    requests (as a server's keep-alive timeout does)."""

    def __init__(self, per_conn: int) -> None:
        self.per_conn = per_conn
        self.heads: list[bytes] = []
        self.connections = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        for _ in range(self.per_conn):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            self.heads.append(head)
            body = b'{"ok": true}'
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        writer.close()


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    served = Target(per_conn=1)
    server = await asyncio.start_server(served.handle, "127.0.0.1", 0)
    served.port = server.sockets[0].getsockname()[1]
    async with server:
        yield served


async def converse(
    port: int,
    requests: list[bytes],
    secret: dict[str, str],
    masking: dict[str, object] | None = None,
    idle: float = 0.0,
) -> list[tunnel_pb2.Frame]:
    """Run the engine on `requests` (each sent once the previous answer ended, and `idle`
    seconds more)."""
    frames: list[tunnel_pb2.Frame] = []
    pending = list(requests)
    answered = asyncio.Event()
    answered.set()

    async def receive() -> bytes | Cancel | None:
        await answered.wait()
        if not pending:
            return None
        if len(pending) < len(requests):
            await asyncio.sleep(idle)
        answered.clear()
        return pending.pop(0)

    async def send(frame: tunnel_pb2.Frame) -> None:
        frames.append(frame)
        if frame.marks:
            answered.set()

    spec = agent_pb2.ConnectionSpec(name="api", type="http", secret=secret)
    spec.target.update({"url": f"http://127.0.0.1:{port}/base"})
    if masking is not None:
        spec.masking.update(masking)
    await asyncio.wait_for(engine.run(spec, receive, send), 10)
    return frames


def request(target: str, *headers: tuple[str, str], method: str = "GET") -> bytes:
    body = b"{}" if method == "PUT" else b""
    return encode_request(method, target, [("host", "gateway"), *headers], body)


class Dropping:
    """Answers the first request of its first connection, keeps it open, reads the next
    request and closes without answering (a target that crashed while running it); answers
    every request of later connections."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.connections = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first = self.connections == 1
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            self.heads.append(head)
            if first and len(self.heads) == 2:
                break
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()


@pytest.fixture
async def dropping() -> AsyncIterator[Dropping]:
    served = Dropping()
    server = await asyncio.start_server(served.handle, "127.0.0.1", 0)
    served.port = server.sockets[0].getsockname()[1]
    async with server:
        yield served


async def test_credentials_are_replaced_and_a_closed_connection_is_opened_again(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("API_PW", "s3cret")
    frames = await converse(
        target.port,
        [request("/a", ("authorization", "Bearer caller")), request("/b?x=1")],
        {"basic": "env:API_PW", "basic_user": "alice"},
    )
    marks = [m for f in frames for m in f.marks]
    assert [(m.kind, m.command, m.rows) for m in marks] == [
        (tunnel_pb2.ResultMark.COMPLETE, "200", 12),
        (tunnel_pb2.ResultMark.COMPLETE, "200", 12),
    ]
    assert target.connections == 2  # the first was closed by the target, the second is new
    first, second = target.heads
    assert first.startswith(b"GET /base/a HTTP/1.1\r\n")
    assert second.startswith(b"GET /base/b?x=1 HTTP/1.1\r\n")
    expected = base64.b64encode(b"alice:s3cret")
    assert f"host: 127.0.0.1:{target.port}".encode() in first
    assert b"authorization: Basic " + expected in first
    assert b"caller" not in first


async def test_a_client_header_spelled_with_underscores_gives_way_to_the_credential(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`X_Api_Key` is `X-Api-Key` to a WSGI application: the client's must not reach it beside
    (or instead of) the connection's own."""
    monkeypatch.setenv("API_KEY", "the-connections")
    frames = await converse(
        target.port,
        [request("/a", ("x_api_key", "the-clients"), ("proxy_authorization", "Basic x"))],
        {"header:x-api-key": "env:API_KEY"},
    )
    assert [m.command for f in frames for m in f.marks] == ["200"]
    (head,) = target.heads
    assert b"x-api-key: the-connections" in head
    assert b"the-clients" not in head and b"proxy_authorization" not in head


async def test_an_unreachable_target_is_a_502_marked_as_an_error() -> None:
    frames = await converse(1, [request("/x")], {})
    (frame,) = frames
    assert frame.data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    (mark,) = frame.marks
    assert mark.kind == tunnel_pb2.ResultMark.ERROR and "cannot reach" in mark.message


async def test_an_unresolvable_secret_answers_every_request_with_why(target: Target) -> None:
    frames = await converse(target.port, [request("/x")], {"bearer": "env:GATEHOUSE_NOPE"})
    assert b"GATEHOUSE_NOPE is not set on the agent" in frames[0].data
    assert target.heads == []


async def test_masking_rules_the_agent_cannot_apply_send_nothing(target: Target) -> None:
    rules = {"rules": [{"name": "pii", "detectors": ["retina_scan"]}]}
    frames = await converse(target.port, [request("/x")], {}, masking=rules)
    assert frames[0].data.startswith(b"HTTP/1.1 502 ")
    assert b"retina_scan" in frames[0].data
    assert target.heads == []


def _methods(heads: list[bytes]) -> list[str]:
    return [head.split(b"\r\n")[0].decode() for head in heads]


@pytest.mark.parametrize(
    "second",
    [
        request("/items/1", method="PUT"),
        # Safe to HTTP, a DELETE to a framework that honours the override.
        request("/items/1", ("x-http-method-override", "DELETE")),
        request("/items/1?_method=DELETE"),
    ],
    ids=["put", "override-header", "method-parameter"],
)
async def test_a_request_the_target_took_and_dropped_is_not_sent_again(
    dropping: Dropping, second: bytes
) -> None:
    """The trail records the request once: sending it again could run it twice."""
    frames = await converse(dropping.port, [request("/a"), second], {})
    marks = [m for f in frames for m in f.marks]
    assert [(m.kind, m.command) for m in marks] == [
        (tunnel_pb2.ResultMark.COMPLETE, "200"),
        (tunnel_pb2.ResultMark.ERROR, "502"),
    ]
    assert "may have reached it and was not sent again" in marks[1].message
    assert len(dropping.heads) == 2 and b"/base/items/1" in dropping.heads[1]


async def test_a_safe_request_the_target_dropped_is_sent_once_more(dropping: Dropping) -> None:
    frames = await converse(dropping.port, [request("/a"), request("/b")], {})
    marks = [m for f in frames for m in f.marks]
    assert [m.command for m in marks] == ["200", "200"]
    assert _methods(dropping.heads) == [
        "GET /base/a HTTP/1.1",
        "GET /base/b HTTP/1.1",
        "GET /base/b HTTP/1.1",
    ]
    assert dropping.connections == 2


async def test_a_connection_the_target_closed_while_idle_is_not_used(target: Target) -> None:
    """The target's keep-alive timeout closed it: the PUT goes on a new one, once."""
    frames = await converse(
        target.port, [request("/a"), request("/items/1", method="PUT")], {}, idle=0.2
    )
    marks = [m for f in frames for m in f.marks]
    assert [m.command for m in marks] == ["200", "200"]
    assert _methods(target.heads) == ["GET /base/a HTTP/1.1", "PUT /base/items/1 HTTP/1.1"]
    assert target.connections == 2


class Switcher:
    """Answers an upgrade 101 — with the handshake's accept key, or without, as an application
    that answers 101 and goes on reading HTTP — and records what came after it on the same
    connection; any other request is answered 200 and recorded as a request of its own."""

    def __init__(self, *, accept: bool) -> None:
        self.accept = accept
        self.after = b""
        self.requests: list[bytes] = []
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        keys = [
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        ]
        if not keys:
            self.requests.append(head + await reader.read(65536))
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            writer.close()
            return
        answer = (
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
        )
        if self.accept:
            answer += f"sec-websocket-accept: {accept_key(keys[0])}\r\n".encode()
        writer.write(answer + b"\r\n")
        await writer.drain()
        with contextlib.suppress(OSError, TimeoutError):
            self.after += await asyncio.wait_for(reader.read(65536), 1)
        writer.close()


UPGRADE = encode_request(
    "GET",
    "/ws",
    [
        ("host", "gateway"),
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ],
    b"",
)


@pytest.mark.parametrize("accept", [True, False])
async def test_only_a_101_that_takes_the_websocket_handshake_switches(accept: bool) -> None:
    """A 101 without the key's Sec-WebSocket-Accept (nginx's `return 101`, an application's
    status) leaves the target reading HTTP: the bytes after it must not reach it."""
    switcher = Switcher(accept=accept)
    server = await asyncio.start_server(switcher.handle, "127.0.0.1", 0)
    switcher.port = server.sockets[0].getsockname()[1]
    smuggled = b"POST /admin/users HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\nx"
    async with server:
        frames = await converse(switcher.port, [UPGRADE, smuggled], {})
    marks = [m for f in frames for m in f.marks]
    if accept:
        assert [(m.kind, m.command) for m in marks] == [(tunnel_pb2.ResultMark.COMPLETE, "101")]
        assert switcher.after == smuggled  # a WebSocket's bytes, as far as anyone can tell
    else:
        assert [(m.kind, m.command) for m in marks] == [
            (tunnel_pb2.ResultMark.ERROR, "502"),
            (tunnel_pb2.ResultMark.COMPLETE, "200"),
        ]
        assert b"Sec-WebSocket-Accept" in marks[0].message.encode()
        assert not frames[0].data.startswith(b"HTTP/1.1 101")
        assert switcher.after == b""  # the switched connection was closed, nothing rode it
        # The next request went on a new connection, as a request (the control plane, which
        # ends the session on such a 101, would not even have sent it).
        assert [r.split(b" ", 2)[:2] for r in switcher.requests] == [
            [b"POST", b"/base/admin/users"]
        ]
