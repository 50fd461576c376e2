"""Body patterns against the body as the application reads it: percent-escapes, JSON escapes,
Content-Encoding and charsets undone, not only its bytes as they came."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from controlplane.policy.document import Guardrail
from controlplane.policy.requests import RequestGuard
from controlplane.relay.http.bodies import Unreadable, readings
from wire.http.codec import Request

GUARD = RequestGuard([Guardrail(name="api-rules", deny_patterns=["DROP TABLE"])])


def denied(body: bytes, *headers: tuple[str, str]) -> bool:
    request = Request("POST", "/anything", tuple(headers), body)
    return any(not GUARD.check_body(text).allowed for text in readings(request, 1 << 20))


FORM = ("content-type", "application/x-www-form-urlencoded")
JSON = ("content-type", "application/json")


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"q=DROP TABLE users", [FORM]),
        (b"q=DROP%20TABLE+users", [FORM]),
        (b"q=DROP+TABLE+users", []),  # curl -d sends no type an application needs
        (b"q=%44ROP%20%54ABLE", [FORM]),
        (b'{"q": "\\u0044ROP TABLE users"}', [JSON]),
        (b'{"q": ["x", {"DROP\\u0020TABLE": 1}]}', [JSON]),
        (b'\xef\xbb\xbf{"q": "\\u0044ROP TABLE users"}', [JSON]),  # a UTF-8 BOM before it
        (b"payload=%7B%22q%22%3A%22%5Cu0044ROP%20TABLE%22%7D", [FORM]),
        (gzip.compress(b"q=DROP TABLE users"), [FORM, ("content-encoding", "gzip")]),
        (zlib.compress(b'{"q": "DROP TABLE"}'), [JSON, ("content-encoding", "deflate")]),
        (
            gzip.compress(gzip.compress(b"DROP TABLE")),
            [("content-encoding", "gzip"), ("content-encoding", "gzip")],
        ),
        ('{"q": "DROP TABLE"}'.encode("utf-16"), [JSON]),
        ('{"q": "DROP TABLE"}'.encode("utf-16-le"), [JSON]),
        ('{"q": "DROP TABLE"}'.encode("utf-32-be"), [JSON]),
        ("q=DROP TABLE".encode("utf-16-le"), [("content-type", "text/plain; charset=utf-16le")]),
        ("q=DROP TABLE".encode("cp500"), [("content-type", "text/plain; charset=cp500")]),
        (
            "q=DROP TABLE".encode("cp500"),
            [("content-type", "text/plain; charset=utf-8"), ("content-type", "x/y;charset=cp500")],
        ),
    ],
)
def test_a_denied_pattern_is_found_however_the_body_encodes_it(
    body: bytes, headers: list[tuple[str, str]]
) -> None:
    assert denied(body, *headers)


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"q=select+1", [FORM]),
        (json.dumps({"q": "DROP", "r": "TABLE"}).encode(), [JSON]),
        (gzip.compress(b"hello"), [("content-encoding", "gzip")]),
        (b"\x00\x01\x02binary", [("content-type", "application/octet-stream")]),
    ],
)
def test_a_body_without_the_pattern_is_allowed(body: bytes, headers: list[tuple[str, str]]) -> None:
    assert not denied(body, *headers)


@pytest.mark.parametrize(
    ("body", "headers", "why"),
    [
        (b"\x1b\x00", [("content-encoding", "br")], "br-encoded"),
        (b"not gzip", [("content-encoding", "gzip")], "not valid gzip"),
        (gzip.compress(b"x" * (2 << 20)), [("content-encoding", "gzip")], "past the connection"),
        (b"q=1", [("content-type", "text/plain; charset=klingon")], "unknown"),
        (b"q=1", [("content-type", "text/plain; charset=rot13")], "cannot be read"),
        (b"q=\xff", [("content-type", "text/plain; charset=idna")], "cannot be read"),
        (
            b"q=1",
            [
                (
                    "content-type",
                    "text/plain; " + "; ".join(f"charset=cp{n}" for n in (437, 850, 852, 855, 857)),
                )
            ],
            "more than 4 charsets",
        ),
        (b"a=%7B1&" * 10_001, [FORM], "may be JSON"),
    ],
)
def test_a_body_the_gateway_cannot_read_as_the_application_would_is_unreadable(
    body: bytes, headers: list[tuple[str, str]], why: str
) -> None:
    with pytest.raises(Unreadable, match=why):
        list(readings(Request("POST", "/x", tuple(headers), body), 1 << 20))
