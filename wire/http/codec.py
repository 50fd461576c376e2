"""HTTP/1.1 on h11, sans IO: whole requests out of a client's bytes, and the server side's answers.

Both ends of an `http` session read the client's side of the conversation as a server would:
the control plane to decide and record each request before it is forwarded, the agent to send
it on to the target. `ServerSide` wraps an `h11.Connection` in the server role and adds the
limits a gateway needs: a head larger than `max_head` is a 431, a body larger than `max_body`
a 413, anything h11 cannot parse a 400 (`ProtocolError` carries the status; nothing of such
a request is forwarded). A request comes out whole (`Request`: head and body), once its body
has ended, so that its event can carry the body's size and digest before it goes anywhere.

Requests are answered in order, one at a time (HTTP/1.1 has no other way): the next request
comes out of `next_request` only after the current one's response was sent through this
object (`respond`, `start`/`data`/`end`), or marked as sent by someone else (`responded`: the
control plane, which passes the agent's bytes on unchanged). Pipelined requests wait in h11's
buffer meanwhile. A `101 Switching Protocols` answer to an upgrade turns the rest of the
stream into opaque bytes (`switched`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

import h11

from wire import errors

__all__ = [
    "HOP_BY_HOP",
    "MAX_BODY",
    "MAX_HEAD",
    "METHOD_OVERRIDES",
    "Continue",
    "ProtocolError",
    "Request",
    "ServerSide",
    "encode_request",
]

MAX_HEAD: Final = 32 * 1024
"""Most bytes of a request head (request line and headers); more is a 431."""
MAX_BODY: Final = 16 * 1024 * 1024
"""Most bytes of a request body held before it is forwarded; more is a 413."""

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)
"""Headers about one hop's framing, never passed on as they came (RFC 9110 §7.6.1); the body
is re-framed with its own Content-Length."""


METHOD_OVERRIDES: Final = frozenset(
    {"x-http-method-override", "x-http-method", "x-method-override"}
)
"""Headers in which a client names the method a framework acts on instead of the request's
(a WSGI or CGI server reads `X_HTTP_Method_Override` as the same header)."""


class ProtocolError(errors.ProtocolError):
    """The client's bytes are not an acceptable HTTP/1.1 request: answer `status`, then close."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Request:
    """One whole request: its head as the client sent it and its body."""

    method: str
    target: str  # the request-target: origin form, e.g. /v1/items?q=1
    headers: tuple[tuple[str, str], ...]  # names lower-cased, in order
    body: bytes
    upgrade: str | None = None  # the protocol asked for with Connection: upgrade (websocket)
    version: str = "1.1"  # an HTTP/1.0 client's answers are framed by closing the connection

    @property
    def path(self) -> str:
        return target_path(self.target)

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str) -> str | None:
        """The first value of header `name` (lower case), or None."""
        return next((value for key, value in self.headers if key == name), None)

    @property
    def may_name_another_method(self) -> bool:
        """Whether a framework may act on another method than the request's: a header of
        `METHOD_OVERRIDES` (either spelling), or `_method` in the query or the body (escaped
        too: `%5Fmethod`, JSON's `\\u005fmethod`)."""
        target, body = self.target.lower(), self.body.lower()
        return (
            any(key.replace("_", "-") in METHOD_OVERRIDES for key, _ in self.headers)
            or any(name in target for name in ("_method", "%5fmethod"))
            or any(name in body for name in (b"_method", b"%5fmethod", b"\\u005fmethod"))
        )


@dataclass(frozen=True, slots=True)
class Continue:
    """The client sent `Expect: 100-continue` and waits before its body: decide on the head."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]

    @property
    def path(self) -> str:
        return target_path(self.target)


def target_path(target: str) -> str:
    """The path of an origin-form request target, exactly as the target receives it: all
    before the `?`. (`urlsplit` reads `//admin/users` as host `admin` and path `/users`, so
    the event and the guard would see a path other than the one sent on.)"""
    return target.partition("?")[0] or "/"


def _text(value: bytes) -> str:
    return value.decode("latin-1")


class ServerSide:
    """The server's half of one client connection, with a gateway's limits."""

    def __init__(self, *, max_head: int = MAX_HEAD, max_body: int = MAX_BODY) -> None:
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
        self._max_body = max_body
        self._head: h11.Request | None = None
        self._body = bytearray()
        self._waiting = False  # a Continue was handed out for the current head
        self._switched = False

    @property
    def closed(self) -> bool:
        """The conversation is over: either side said close, or a protocol was switched."""
        return self._switched or self._conn.our_state in (h11.MUST_CLOSE, h11.CLOSED)

    @property
    def incomplete(self) -> bool:
        """The client stopped in the middle of a request."""
        return self._conn.their_state == h11.SEND_BODY or (
            self._conn.their_state == h11.IDLE and bool(self._conn.trailing_data[0])
        )

    def feed(self, data: bytes) -> None:
        """Bytes from the client (empty ones mean nothing: the end is the relay's to see)."""
        if data and not self._switched:
            self._conn.receive_data(data)

    def next_request(self) -> Request | Continue | None:
        """The next whole request, a head that waits for 100-continue, or None for more bytes.
        Raises ProtocolError for a request that must be refused as malformed or too large."""
        if self._switched or self._conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return None
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if "exceeds" in str(exc) or "maximum" in str(exc):
                    status = 431
                raise ProtocolError(f"malformed HTTP request: {exc}", status) from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if self._head is not None and not self._waiting and self._expects_continue():
                    self._waiting = True
                    return Continue(
                        _text(self._head.method), _text(self._head.target), self._headers()
                    )
                return None
            if isinstance(event, h11.Request):
                if not event.target.startswith(b"/") and event.target != b"*":
                    # A proxy's absolute form (or CONNECT's authority form) would name some
                    # other server: the target is the connection's, the request names a path.
                    raise ProtocolError(
                        f"the request target must be a path (/...), not "
                        f"{_text(event.target)[:100]!r}: this is not a proxy"
                    )
                if event.method == b"CONNECT":
                    # A tunnel to wherever the client names, once the target answers 2xx.
                    raise ProtocolError("CONNECT is refused: this is not a proxy", 405)
                if event.http_version not in (b"1.0", b"1.1"):
                    # `PRI * HTTP/2.0` (HTTP/2's preface) and the like: not HTTP/1.x.
                    raise ProtocolError(
                        f"HTTP/{_text(event.http_version)} is not supported: HTTP/1.1 only", 505
                    )
                if b"#" in event.target:
                    # A fragment is the client's own (RFC 9112 §3.2 has none in a request);
                    # the event records path and query, so nothing else may go on.
                    raise ProtocolError(
                        f"the request target must not carry a fragment (#): "
                        f"{_text(event.target)[:100]!r}"
                    )
                self._head, self._body, self._waiting = event, bytearray(), False
                declared = _content_length(event)
                if declared is not None and declared > self._max_body:
                    raise ProtocolError(
                        f"the request body ({declared} bytes) is larger than the gateway's "
                        f"limit of {self._max_body} bytes",
                        413,
                    )
            elif isinstance(event, h11.Data):
                if len(self._body) + len(event.data) > self._max_body:
                    raise ProtocolError(
                        f"the request body is larger than the gateway's limit of "
                        f"{self._max_body} bytes",
                        413,
                    )
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return self._whole()
            elif isinstance(event, h11.ConnectionClosed):
                return None

    def _expects_continue(self) -> bool:
        return bool(self._conn.they_are_waiting_for_100_continue)

    def _headers(self) -> tuple[tuple[str, str], ...]:
        assert self._head is not None
        return tuple((_text(k), _text(v)) for k, v in self._head.headers)

    def _whole(self) -> Request:
        head = self._head
        assert head is not None
        headers = self._headers()
        upgrade = None
        connection = ",".join(v for k, v in headers if k == "connection").lower()
        if "upgrade" in (token.strip() for token in connection.split(",")):
            upgrade = next((v for k, v in headers if k == "upgrade"), None)
            if upgrade is not None and upgrade.strip().lower() != "websocket":
                # Only WebSocket is relayed after a 101 (and recorded as http.upgrade): another
                # protocol (h2c) would carry requests the gateway never reads. The request goes
                # on as plain HTTP/1.1 without it (Upgrade is hop-by-hop: never passed on).
                upgrade = None
        return Request(
            _text(head.method),
            _text(head.target),
            headers,
            bytes(self._body),
            upgrade,
            _text(head.http_version),
        )

    # ---- answers -------------------------------------------------------------------------

    def send_continue(self) -> bytes:
        """`100 Continue`: the client may send its body now."""
        return self._send(h11.InformationalResponse(status_code=100, headers=[], reason="Continue"))

    def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        *,
        close: bool = False,
    ) -> bytes:
        """A whole response of the gateway's own (a refusal); `close` ends the conversation."""
        fields = list(headers or [])
        fields.append(("content-length", str(len(body))))
        if close:
            fields.append(("connection", "close"))
        out = self.start(status, fields)
        if body and not (self._head is not None and self._head.method == b"HEAD"):
            out += self.data(body)  # a HEAD's answer is its head alone (RFC 9110 §9.3.2)
        return out + self.end()

    def respond_json(self, status: int, document: object, *, close: bool = False) -> bytes:
        body = json.dumps(document, separators=(",", ":")).encode() + b"\n"
        return self.respond(status, body, [("content-type", "application/json")], close=close)

    def start(self, status: int, headers: list[tuple[str, str]], reason: str = "") -> bytes:
        """A response head; a 101 switches the stream to opaque bytes after it."""
        reason = reason or _phrase(status)
        if status == 101:
            out = self._send(
                h11.InformationalResponse(status_code=101, headers=headers, reason=reason)
            )
            self._switched = True
            return out
        return self._send(h11.Response(status_code=status, headers=headers, reason=reason))

    def data(self, data: bytes) -> bytes:
        return self._send(h11.Data(data=data)) if data else b""

    def end(self) -> bytes:
        """The end of the response: the next request may come out of `next_request`."""
        out = self._send(h11.EndOfMessage())
        self._next_cycle()
        return out

    def responded(self, status: int, *, close: bool = False) -> None:
        """Someone else sent this request's response (`status`): go on to the next request.
        A 101 switches the stream to opaque bytes; `close` ends the conversation."""
        if status == 101:
            self.start(101, [])
            return
        fields = [("content-length", "0")] + ([("connection", "close")] if close else [])
        self._send(h11.Response(status_code=status, headers=fields))
        self.end()

    def switched(self) -> bytes:
        """After a 101: the client's bytes already read past the upgrade request."""
        return bytes(self._conn.trailing_data[0])

    def _send(self, event: h11.Event) -> bytes:
        try:
            return self._conn.send(event) or b""
        except h11.LocalProtocolError as exc:
            raise ProtocolError(f"cannot answer this request: {exc}", 500) from None

    def _next_cycle(self) -> None:
        self._head, self._body, self._waiting = None, bytearray(), False
        if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _content_length(head: h11.Request) -> int | None:
    for key, value in head.headers:
        if key == b"content-length":
            return int(value)
    return None


def encode_request(
    method: str, target: str, headers: list[tuple[str, str]], body: bytes, version: str = "1.1"
) -> bytes:
    """One request as forwarded: `headers` as given (the caller dropped the hop-by-hop ones),
    the body framed by its length, in the client's HTTP version."""
    lines = [f"{method} {target} HTTP/{version}"]
    lines += [f"{key}: {value}" for key, value in headers]
    if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS", "TRACE"):
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
