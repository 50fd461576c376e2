"""The HTTP/1.1 codec: whole requests however the bytes are cut, in order when pipelined, and
a clear refusal (nothing handed out) for what is malformed or too large."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.http.codec import Continue, ProtocolError, Request, ServerSide, encode_request

METHODS = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
PATHS = st.from_regex(r"/[a-z0-9/._~-]{0,40}(\?[a-z0-9=&]{0,20})?", fullmatch=True)
BODIES = st.binary(max_size=3000)


def _encoded(method: str, target: str, body: bytes, chunked: bool) -> bytes:
    """A request as an independent client (h11's own client side) writes it."""
    conn = h11.Connection(h11.CLIENT)
    headers = [("host", "example")]
    headers.append(
        ("transfer-encoding", "chunked") if chunked else ("content-length", str(len(body)))
    )
    out = conn.send(h11.Request(method=method, target=target, headers=headers)) or b""
    if body:
        if chunked:
            for start in range(0, len(body), 700):
                out += conn.send(h11.Data(data=body[start : start + 700])) or b""
        else:
            out += conn.send(h11.Data(data=body)) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


def _read_all(side: ServerSide, pieces: list[bytes]) -> list[Request]:
    """Feed the pieces; answer each request as the relay does (someone else's 200)."""
    out: list[Request] = []
    for piece in pieces:
        side.feed(piece)
        while (item := side.next_request()) is not None:
            assert isinstance(item, Request)
            out.append(item)
            side.responded(200)
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(METHODS, PATHS, BODIES, st.booleans()), min_size=1, max_size=5),
    st.lists(st.integers(min_value=0), max_size=12),
)
def test_pipelined_requests_come_out_whole_and_in_order_however_cut(
    requests: list[tuple[str, str, bytes, bool]], cuts: list[int]
) -> None:
    stream = b"".join(_encoded(m, p, b, c) for m, p, b, c in requests)
    got = _read_all(ServerSide(), _cut(stream, cuts))
    assert [(r.method, r.target, r.body) for r in got] == [(m, p, b) for m, p, b, _ in requests]


@settings(max_examples=100, deadline=None)
@given(METHODS, PATHS, BODIES)
def test_a_forwarded_request_reads_back_the_same(method: str, target: str, body: bytes) -> None:
    side = ServerSide()
    side.feed(encode_request(method, target, [("host", "t"), ("x-a", "1")], body))
    request = side.next_request()
    assert isinstance(request, Request)
    assert (request.method, request.target, request.body) == (method, target, body)
    assert request.header("x-a") == "1"


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_garbage_is_refused_or_waits_and_never_comes_out_as_a_request(junk: bytes) -> None:
    side = ServerSide()
    side.feed(b"\x00" + junk + b"\r\n\r\n")
    with pytest.raises(ProtocolError) as refused:
        side.next_request()
    assert refused.value.status in (400, 431)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"GET /x HTTP/1.1\r\nContent-Length: -1\r\nHost: a\r\n\r\n",
        b"GET /x HTTP/1.1\r\n\r\n",  # no Host
        b"GET  /x HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET http://elsewhere/x HTTP/1.1\r\nHost: a\r\n\r\n",  # a proxy request
        b"CONNECT elsewhere:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /x#/../admin HTTP/1.1\r\nHost: a\r\n\r\n",  # a fragment the event would lack
        b"GET /x?q=1#f HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
def test_malformed_heads_are_a_400(head: bytes) -> None:
    side = ServerSide()
    side.feed(head)
    with pytest.raises(ProtocolError) as refused:
        side.next_request()
    assert refused.value.status == 400


def test_an_unknown_transfer_coding_is_a_501() -> None:
    side = ServerSide()
    side.feed(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n")
    with pytest.raises(ProtocolError) as refused:
        side.next_request()
    assert refused.value.status == 501


def test_a_head_past_the_limit_is_a_431_before_it_ends() -> None:
    side = ServerSide(max_head=1024)
    side.feed(b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 2000)
    with pytest.raises(ProtocolError) as refused:
        side.next_request()
    assert refused.value.status == 431


def test_a_body_past_the_limit_is_a_413_whether_announced_or_chunked() -> None:
    announced = ServerSide(max_body=10)
    announced.feed(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n")
    with pytest.raises(ProtocolError) as refused:
        announced.next_request()
    assert refused.value.status == 413
    chunked = ServerSide(max_body=10)
    chunked.feed(_encoded("POST", "/x", b"y" * 11, chunked=True))
    with pytest.raises(ProtocolError) as refused:
        chunked.next_request()
    assert refused.value.status == 413


def test_expect_100_continue_is_handed_out_once_then_the_request() -> None:
    side = ServerSide()
    side.feed(b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    head = side.next_request()
    assert isinstance(head, Continue) and head.method == "PUT"
    assert side.next_request() is None  # still waiting for its body
    assert side.send_continue().startswith(b"HTTP/1.1 100 Continue\r\n")
    side.feed(b"abc")
    request = side.next_request()
    assert isinstance(request, Request) and request.body == b"abc"


def test_a_refusal_keeps_the_connection_for_the_next_request() -> None:
    side = ServerSide()
    side.feed(b"DELETE /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    first = side.next_request()
    assert isinstance(first, Request)
    answer = side.respond_json(403, {"rule": "r"})
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n") and answer.endswith(b'{"rule":"r"}\n')
    second = side.next_request()
    assert isinstance(second, Request) and second.target == "/b"


def test_connection_close_ends_the_conversation() -> None:
    side = ServerSide()
    side.feed(b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n")
    assert isinstance(side.next_request(), Request)
    side.responded(200)
    assert side.closed
    assert side.next_request() is None


def test_an_upgrade_switches_to_opaque_bytes_after_a_101() -> None:
    side = ServerSide()
    side.feed(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00"
    )
    request = side.next_request()
    assert isinstance(request, Request) and request.upgrade == "websocket"
    side.responded(101)
    assert side.closed and side.switched() == b"\x81\x00"


def _request(raw: bytes) -> Request | None:
    side = ServerSide()
    side.feed(raw)
    request = side.next_request()
    assert request is None or isinstance(request, Request)
    return request


def test_a_target_opening_with_two_slashes_is_all_path() -> None:
    request = _request(b"POST //admin/users?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(request, Request)
    assert (request.path, request.query) == ("//admin/users", "x=1")


def test_an_upgrade_to_anything_but_websocket_goes_on_as_plain_http() -> None:
    """h2c after a 101 would carry HTTP/2 requests the gateway never reads: the Upgrade is
    not passed on (it is hop-by-hop), the request is an ordinary one."""
    request = _request(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
    )
    assert isinstance(request, Request) and request.upgrade is None


def test_a_refusal_of_a_head_request_is_its_head_alone() -> None:
    """A HEAD's answer has no body (its length is the GET's): a 403 of the gateway's own to a
    denied HEAD used to raise instead of answering, and ended the session."""
    side = ServerSide()
    side.feed(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\n\r\n")
    assert isinstance(side.next_request(), Request)
    answer = side.respond_json(403, {"error": "denied"})
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ") and b"content-length: 19" in head.lower()
    assert body == b""
    after = side.next_request()
    assert isinstance(after, Request) and after.target == "/y"


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n", 405),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        (b"GET /x HTTP/1.2\r\nHost: a\r\n\r\n", 505),
    ],
)
def test_a_tunnel_or_another_protocol_is_refused(head: bytes, status: int) -> None:
    """CONNECT (even to a path: a 2xx would make the connection a tunnel) and anything but
    HTTP/1.0 and 1.1 are refused before they are decided or forwarded."""
    side = ServerSide()
    side.feed(head)
    with pytest.raises(ProtocolError) as raised:
        side.next_request()
    assert raised.value.status == status


@pytest.mark.parametrize(
    ("target", "headers", "body", "names"),
    [
        ("/items", [], b"", False),
        ("/items?method=x", [("x-request-id", "1")], b'{"method": "x"}', False),
        ("/items", [("x-http-method-override", "DELETE")], b"", True),
        ("/items", [("x_http_method", "DELETE")], b"", True),
        ("/items?_method=DELETE", [], b"", True),
        ("/items?%5Fmethod=DELETE", [], b"", True),
        ("/items", [], b"_method=DELETE", True),
        ("/items", [], b'{"\\u005Fmethod": "DELETE"}', True),
    ],
)
def test_a_request_that_may_name_another_method(
    target: str, headers: list[tuple[str, str]], body: bytes, names: bool
) -> None:
    """Whether a framework may act on another method: such a request is never sent twice."""
    request = Request("GET", target, tuple(headers), body)
    assert request.may_name_another_method is names
