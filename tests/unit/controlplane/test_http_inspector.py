"""HTTP inspection: a request is committed before it is forwarded, a denied one never is and
gets a 403 naming its rule, credentials stay out of the event, and the response's end becomes
http.response before its last bytes reach the client."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
from typing import Any

import pytest
from sqlmodel import col, select

from controlplane.audit.events import SessionContext
from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import Identity
from controlplane.policy.document import Guardrail
from controlplane.policy.requests import RequestGuard
from controlplane.relay.http import inspector as inspector_module
from controlplane.relay.http.inspector import HttpInspector, _method_parameters
from controlplane.store.database import Database
from controlplane.store.models import EventRow
from gatehouse.v1 import tunnel_pb2
from redact.detectors import DetectorSet
from wire.http.codec import Request
from wire.http.websocket import accept_key


def events(db: Database) -> list[dict[str, Any]]:
    with db.read_session() as session:
        rows = session.exec(select(EventRow.body).order_by(col(EventRow.seq)))
        return [json.loads(body) for body in rows]


class Harness:
    def __init__(
        self, db: Database, writer: AuditWriter, max_body: int = 1024, mode: str = "connect"
    ) -> None:
        self.db = db
        self.forwarded: list[tuple[bytes, int]] = []  # bytes, events committed by then
        self.sent = asyncio.Event()
        ctx = SessionContext(
            session_id="sess-1",
            identity=Identity("alice", email="alice@example.com", groups=("dev",)),
            connection={"name": "api", "type": "http", "agent": "vpc-1"},
            audit_mode="strict",
            source={"ip": "192.0.2.10"},
        )
        guard = RequestGuard(
            [
                Guardrail(
                    name="api-rules",
                    deny_requests=["DELETE /**", "GET /v1/secret/**", "MOVE /v1/secret/**"],
                    deny_patterns=["DROP TABLE"],
                )
            ]
        )

        async def forward(data: bytes) -> None:
            self.forwarded.append((data, len(events(db))))
            self.sent.set()

        self.inspector = HttpInspector(
            ctx,
            writer,
            lambda: None,
            guard=guard,
            detectors=DetectorSet({"secret", "email"}),
            forward=forward,
            max_body=max_body,
            mode=mode,
        )

    async def respond(self, status: int = 200) -> list[bytes]:
        body = b'{"ok":true}'
        data = (
            f"HTTP/1.1 {status} OK\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode() + body
        mark = tunnel_pb2.ResultMark(
            kind=tunnel_pb2.ResultMark.COMPLETE,
            end=len(data),
            command=str(status),
            rows=len(body),
            message="application/json",
        )
        return await self.inspector.from_agent(tunnel_pb2.Frame(data=data, marks=[mark]))


async def test_a_request_is_committed_before_it_is_forwarded(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer)
    sent = (
        b"POST /v1/items?api_key=abc&q=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer t0ken\r\n"
        b"Cookie: s=1\r\nContent-Type: application/json\r\nContent-Length: 31\r\n\r\n"
        b'{"mail": "bob@example.com", "n"'
    )
    assert await h.inspector.from_client(sent[:-1]) == b""
    assert h.forwarded == []
    task = asyncio.create_task(h.inspector.from_client(sent[-1:]))
    await h.sent.wait()
    data, committed = h.forwarded[0]
    assert committed == 1  # http.request was in the store before its bytes left
    assert data.startswith(b"POST /v1/items?api_key=abc&q=1 HTTP/1.1\r\n")
    assert b"content-length: 31" in data
    await h.respond()
    await task
    request, response = events(db)
    assert request["type"] == "http.request"
    assert request["request"]["query"] == "api_key=%5Bredacted%5D&q=1"
    headers = dict(request["request"]["headers"])
    assert headers["authorization"] == "[redacted]" and headers["cookie"] == "[redacted]"
    assert request["request"]["body"]["bytes"] == 31
    assert "bob@example.com" not in request["request"]["body"]["text"]
    assert response["type"] == "http.response" and response["ref"] == request["seq"]
    assert response["result"]["status"] == 200
    assert "t0ken" not in json.dumps(events(db))


async def test_a_denied_request_is_answered_403_and_never_forwarded(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer)
    task = asyncio.create_task(
        h.inspector.from_client(
            b"DELETE /v1/items/1 HTTP/1.1\r\nHost: gw\r\n\r\n"
            b"GET /v1/items HTTP/1.1\r\nHost: gw\r\n\r\n"
        )
    )
    await h.sent.wait()
    answer = b"".join(h.inspector.take_synthetic())  # due before the GET's answer
    await h.respond()
    await task
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["rule"] == "api-rules"
    assert [data.split(b" ", 2)[:2] for data, _ in h.forwarded] == [[b"GET", b"/v1/items"]]
    denied, allowed, _response = events(db)
    assert denied["decision"]["result"] == "deny" and allowed["decision"]["result"] == "allow"


async def test_a_body_past_the_limit_is_a_413_and_the_session_ends(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, max_body=10)
    await h.inspector.from_client(
        b"POST /x HTTP/1.1\r\nHost: gw\r\nContent-Length: 11\r\n\r\nhello world"
    )
    answer = b"".join(h.inspector.take_synthetic())
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert h.inspector.finished
    assert h.forwarded == [] and events(db) == []


async def test_a_response_that_never_ends_is_recorded_as_unknown(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer)
    task = asyncio.create_task(h.inspector.from_client(b"GET /slow HTTP/1.1\r\nHost: gw\r\n\r\n"))
    await h.sent.wait()
    await h.inspector.agent_lost()
    await task
    request, response = events(db)
    assert response["ref"] == request["seq"]
    assert response["result"]["error"] == "unknown"
    assert "status" not in response["result"]


@pytest.mark.parametrize("accept", [True, False])
async def test_only_a_101_that_takes_the_websocket_handshake_upgrades_the_session(
    db: Database, writer: AuditWriter, accept: bool
) -> None:
    """The agent's 101 is checked here too: one without the Sec-WebSocket-Accept of the
    request's key ends the session, and what the client sent after it is never passed on."""
    h = Harness(db, writer)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    task = asyncio.create_task(
        h.inspector.from_client(
            b"GET /ws HTTP/1.1\r\nHost: gw\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
            + f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n".encode()
            + b"POST /v1/admin HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\n\r\nx"
        )
    )
    await h.sent.wait()
    head = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
    if accept:
        head += f"sec-websocket-accept: {accept_key(key)}\r\n".encode()
    head += b"\r\n"
    mark = tunnel_pb2.ResultMark(
        kind=tunnel_pb2.ResultMark.COMPLETE, end=len(head), command="101", rows=0
    )
    passed = await h.inspector.from_agent(tunnel_pb2.Frame(data=head, marks=[mark]))
    rest = await task
    later = await h.inspector.from_agent(tunnel_pb2.Frame(data=b"more from the target"))
    _request, response = events(db)
    if accept:
        assert passed == [head] and later == [b"more from the target"]
        assert rest.startswith(b"POST /v1/admin")  # a WebSocket's bytes from here on
        assert "error" not in response["result"]
        return
    assert passed == [] and later == []
    assert rest == b""
    answer = b"".join(h.inspector.take_synthetic())
    assert answer.startswith(b"HTTP/1.1 502 ") and b"Sec-WebSocket-Accept" in answer
    assert h.inspector.finished
    assert len(h.forwarded) == 1  # the upgrade request only
    assert "Sec-WebSocket-Accept" in response["result"]["error"]


async def test_an_exec_session_cannot_upgrade_to_a_websocket(
    db: Database, writer: AuditWriter
) -> None:
    """`exec` grants requests: a WebSocket's bytes after its 101 are an interactive channel no
    guardrail reads, which only the `connect` mode grants (as a terminal does for ssh)."""
    h = Harness(db, writer, mode="exec")
    rest = await h.inspector.from_client(
        b"GET /ws HTTP/1.1\r\nHost: gw\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    assert rest == b"" and h.forwarded == []
    answer = b"".join(h.inspector.take_synthetic())
    assert answer.startswith(b"HTTP/1.1 403 ") and b"connect" in answer
    (request,) = events(db)
    assert request["decision"]["result"] == "deny" and request["decision"]["rule"] == "(mode)"


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"q=DROP%20TABLE+users", b"Content-Type: application/x-www-form-urlencoded\r\n"),
        (b'{"q":"\\u0044ROP TABLE users"}', b"Content-Type: application/json\r\n"),
        (gzip.compress(b"DROP TABLE users"), b"Content-Encoding: gzip\r\n"),
        (b"\x1b\x00", b"Content-Encoding: br\r\n"),  # a coding the gateway cannot read
    ],
    ids=["form", "json-escape", "gzip", "br"],
)
async def test_a_body_pattern_is_not_evaded_by_an_encoding_the_application_undoes(
    db: Database, writer: AuditWriter, body: bytes, headers: bytes
) -> None:
    h = Harness(db, writer)
    await h.inspector.from_client(
        b"POST /v1/query HTTP/1.1\r\nHost: gw\r\n"
        + headers
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answer = b"".join(h.inspector.take_synthetic())
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert h.forwarded == []
    (request,) = events(db)
    assert request["decision"]["result"] == "deny"


@pytest.mark.parametrize(
    "head",
    [
        b"HEAD /v1/secret/x HTTP/1.1\r\nHost: gw\r\n\r\n",  # the GET handler serves it
        b"POST /v1/items HTTP/1.1\r\nHost: gw\r\nX-HTTP-Method-Override: DELETE\r\n"
        b"Content-Length: 0\r\n\r\n",
        b"PUT /v1/items HTTP/1.1\r\nHost: gw\r\nX-Method-Override: delete\r\n"
        b"Content-Length: 0\r\n\r\n",
        b"GET /v1/items HTTP/1.1\r\nHost: gw\r\nX-Original-URL: /v1/secret/x?y=1\r\n\r\n",
        b"GET /v1/items HTTP/1.1\r\nHost: gw\r\nX-Rewrite-URL: http://gw/v1/secret/x\r\n\r\n",
        b"POST /v1/items HTTP/1.1\r\nHost: gw\r\nX_HTTP_Method_Override: DELETE\r\n"
        b"Content-Length: 0\r\n\r\n",
        b"POST /v1/items?_method=DELETE HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n",
        b"POST /v1/items HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded"
        b"\r\nContent-Length: 18\r\n\r\na=1&_method=delete",
        b"POST /v1/items HTTP/1.1\r\nHost: gw\r\nContent-Type: multipart/form-data; boundary=b"
        b"\r\nContent-Length: 70\r\n\r\n"
        b'--b\r\nContent-Disposition: form-data; name="_method"\r\n\r\nDELETE\r\n--b--\r\n',
        b"POST /v1/items HTTP/1.1\r\nHost: gw\r\nContent-Length: 22\r\n\r\na=1;%5Fm%65thod=DELETE",
        b"GET /v1/items HTTP/1.1\r\nHost: gw\r\nX-Original-URL: http://[gw/v1/secret\r\n\r\n",
        b"MOVE /v1/public/x HTTP/1.1\r\nHost: gw\r\nDestination: http://gw/v1/secret/x\r\n\r\n",
        b"POST /v1/items HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b'Content-Length: 25\r\n\r\n{"\\u005fmethod":"DELETE"}',
    ],
    ids=[
        "head-as-get",
        "method-override",
        "method-override-lower",
        "original-url",
        "rewrite-url",
        "underscored-header",
        "query-_method",
        "form-_method",
        "multipart-_method",
        "escaped-form-_method",
        "unreadable-original-url",
        "webdav-destination",
        "json-_method",
    ],
)
async def test_a_method_or_path_the_application_takes_from_elsewhere_is_decided_too(
    db: Database, writer: AuditWriter, head: bytes
) -> None:
    h = Harness(db, writer)
    await h.inspector.from_client(head)
    answer = b"".join(h.inspector.take_synthetic())
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert h.forwarded == []
    (request,) = events(db)
    assert request["decision"]["result"] == "deny"


async def test_a_large_body_is_read_for_the_patterns_off_the_event_loop(
    db: Database, writer: AuditWriter
) -> None:
    h = Harness(db, writer, max_body=1 << 20)
    body = b"a=1&" * 100_000 + b"q=DROP%20TABLE"
    await h.inspector.from_client(
        b"POST /v1/query HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded"
        + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert b"".join(h.inspector.take_synthetic()).startswith(b"HTTP/1.1 403 ")
    assert h.forwarded == []


def test_a_multipart_method_is_found_in_time_linear_in_the_body() -> None:
    # Every `name=_method` line used to be read on to the body's end, on the event loop.
    lines = b'Content-Disposition: form-data; name="_method"\r\n' * 20_000
    headers = (("content-type", "multipart/form-data; boundary=b"),)
    started = time.monotonic()
    assert _method_parameters(Request("POST", "/v1/items", headers, lines)) == []
    found = _method_parameters(Request("POST", "/v1/items", headers, lines + b"\r\nDELETE\r\n"))
    assert found == ["DELETE"]
    assert time.monotonic() - started < 2


async def test_a_large_body_s_method_parameter_is_found_off_the_event_loop(
    db: Database, writer: AuditWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reading every field of 16 MB for a `_method` takes more than a second.
    threads: list[str] = []
    found = inspector_module._method_parameters

    def watched(request: Request) -> list[str]:
        threads.append(threading.current_thread().name)
        return found(request)

    monkeypatch.setattr(inspector_module, "_method_parameters", watched)
    h = Harness(db, writer, max_body=1 << 20)
    body = b"a=1&" * 100_000 + b"_method=DELETE"
    await h.inspector.from_client(
        b"POST /v1/items HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded"
        + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert b"".join(h.inspector.take_synthetic()).startswith(b"HTTP/1.1 403 ")
    assert threads and all(name.startswith("http-body") for name in threads)
