"""The agent's end of an `http` session: the client's requests sent on to `target.url`.

The control plane forwards each request whole, once it is recorded. Here it is read again
(wire/http), its credentials replaced — any `Authorization` or `Proxy-Authorization` the
client sent is dropped, the connection's own credential (`secret: bearer | basic | headers`,
resolved here, inside the agent's network) is added — `Host` set to the target's, and sent
on one kept-alive connection to the target (TLS against `tls.ca_file`, checked for
`tls.server_name`; opened again when the target closed it). The response streams back as it
comes, re-framed for the client by h11, its end marked with status, body size and content
type (`ResultMark`, kind COMPLETE; ERROR with a 502 when the target cannot be reached). A
response whose body the connection's masking applies to (JSON or text) is held, masked and
sent whole (agent/http/masking.py); any other streams in bounded pieces.

A `101 Switching Protocols` (a WebSocket) makes the rest of the session opaque bytes both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any, Final

import h11
from google.protobuf.json_format import MessageToDict

from agent.engines import Cancel, Engine, Receive, Refusal, SendFrame
from agent.http.masking import BodyMasker
from agent.http.target import READ_SIZE, StaleConnection, Target, TargetError, Upstream
from agent.masking import MaskingError
from agent.secrets import SecretError
from gatehouse.v1 import agent_pb2, tunnel_pb2
from wire.http.codec import HOP_BY_HOP, ProtocolError, Request, ServerSide
from wire.http.websocket import handshake_refusal

log = logging.getLogger(__name__)

__all__ = ["HttpEngine", "Target", "run"]

FRAME_BYTES: Final = 256 * 1024
"""Response bytes gathered into one frame at most (the tunnel's messages are bounded)."""
_DROPPED_REQUEST: Final = HOP_BY_HOP | {"host", "authorization", "proxy-authorization"}
_SAFE: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""Methods sent once more when a kept-alive connection closed unanswered (RFC 9110 §9.2.1:
no side effect is asked for, so running twice what was recorded once changes nothing)."""
_DROPPED_RESPONSE: Final = frozenset(
    {"connection", "keep-alive", "proxy-connection", "upgrade", "trailer", "te"}
)


class _Session:
    """One client connection's requests, in order, on at most one target connection."""

    def __init__(
        self, target: Target | None, failure: str, send: SendFrame, masker: BodyMasker | None
    ) -> None:
        self.target = target
        self.failure = failure  # why no request can be sent (a secret that did not resolve)
        self.send = send
        self.masker = masker
        self.side = ServerSide(max_body=1024 * 1024 * 1024)  # the control plane holds the limit
        self.upstream: Upstream | None = None
        self.streaming = False  # a response head went to the client: no 502 can follow

    async def connect(self) -> Upstream:
        target = self.target
        assert target is not None
        if self.upstream is not None and self.upstream.reusable:
            return self.upstream
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self.upstream = await target.open()
        return self.upstream

    async def exchange(self, request: Request) -> bool:
        """Send one request and stream its response back; True when a protocol was switched.
        A kept-alive connection the target closed while idle is left for a new one. When the
        target closes it just as the request goes out, nothing of an answer came, and the
        request may or may not have run: a safe one (GET, HEAD …, naming no other method in an
        override header or a `_method` parameter) is sent once more on a new connection; any
        other is answered 502, since sending it again could run twice what the trail records
        once (the client decides whether to retry, and is recorded)."""
        if self.target is None:
            await self.refuse(self.failure)
            return False
        self.streaming = False
        reused = self.upstream is not None and self.upstream.reusable
        while True:
            try:
                upstream = await self.connect()
                await self._send_request(upstream, request)
                return await self._relay_response(upstream, request)
            except (TargetError, h11.ProtocolError, OSError, TimeoutError) as exc:
                if self.upstream is not None:
                    self.upstream.close()
                    self.upstream = None
                if self.streaming:
                    raise
                stale = isinstance(exc, StaleConnection | ConnectionResetError | BrokenPipeError)
                if (
                    reused
                    and stale
                    and request.method in _SAFE
                    and not request.may_name_another_method
                ):
                    reused = False
                    continue
                if reused and stale:
                    await self.refuse(
                        f"the target closed its kept-alive connection without answering; the "
                        f"{request.method} may have reached it and was not sent again"
                    )
                    return False
                await self.refuse(str(exc) or "the target did not answer in time")
                return False

    async def _send_request(self, upstream: Upstream, request: Request) -> None:
        target = self.target
        assert target is not None
        # A WSGI or CGI application reads `X_Api_Key` as `X-Api-Key`: the client's header of
        # either spelling gives way to the one the gateway drops or adds.
        replaced = _DROPPED_REQUEST | {name for name, _ in target.headers}
        headers = [("host", target.host_header)]
        headers += [(k, v) for k, v in request.headers if k.replace("_", "-") not in replaced]
        headers += list(target.headers)
        if self.masker is not None:
            # A body the agent must mask has to arrive readable: no gzip, no br.
            headers = [(k, v) for k, v in headers if k != "accept-encoding"]
            headers.append(("accept-encoding", "identity"))
        if request.upgrade is not None:
            headers += [("connection", "upgrade"), ("upgrade", request.upgrade)]
        if request.body or request.method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            headers.append(("content-length", str(len(request.body))))
        out = (
            upstream.conn.send(
                h11.Request(
                    method=request.method,
                    target=_joined(target.prefix, request.target),
                    headers=headers,
                )
            )
            or b""
        )
        if request.body:
            out += upstream.conn.send(h11.Data(data=request.body)) or b""
        out += upstream.conn.send(h11.EndOfMessage()) or b""
        upstream.writer.write(out)
        await upstream.writer.drain()

    async def _relay_response(self, upstream: Upstream, request: Request) -> bool:
        while True:
            event = await upstream.next_event()
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101 and request.upgrade is not None:
                    fields = _response_headers(event.headers, upgrade=True)
                    why = handshake_refusal(request.headers, fields)
                    if why is not None:
                        # An application's 101 that goes on reading HTTP: what the client sent
                        # next would reach it as requests nobody decided nor recorded.
                        raise TargetError(
                            f"the target answered 101 without taking the WebSocket ({why}); "
                            "its connection was closed"
                        )
                    head = self.side.start(101, fields)
                    await self.send(_marked(head, _mark(101, 0, "")))
                    return True
                continue  # 100 Continue and the like were answered for this hop already
            if isinstance(event, h11.Response):
                break
            if isinstance(event, h11.ConnectionClosed):
                raise TargetError("the target closed the connection before it answered")
        content_type = _header(event.headers, b"content-type")
        headers = _response_headers(event.headers)
        masking = self.masker is not None and self.masker.applies(content_type)
        if masking and request.method != "HEAD":
            encoding = _header(event.headers, b"content-encoding").lower()
            if encoding not in ("", "identity"):
                raise TargetError(
                    f"the target sent a {encoding}-encoded body the agent cannot read to mask; "
                    "nothing of it was sent"
                )
            return await self._masked_response(upstream, event, headers, content_type)
        reason = event.reason.decode("latin-1")
        pending = bytearray(self.side.start(event.status_code, headers, reason))
        self.streaming = True
        size = 0
        while True:
            part = await upstream.next_event()
            if isinstance(part, h11.Data):
                size += len(part.data)
                pending += self.side.data(bytes(part.data))
                if len(pending) >= FRAME_BYTES:
                    await self.send(tunnel_pb2.Frame(data=bytes(pending)))
                    pending.clear()
            elif isinstance(part, h11.EndOfMessage):
                pending += self.side.end()
                mark = _mark(event.status_code, size, content_type)
                await self.send(_marked(bytes(pending), mark))
                self._next(upstream)
                return False
            elif isinstance(part, h11.ConnectionClosed):
                raise TargetError("the target closed the connection in the middle of a response")

    async def _masked_response(
        self,
        upstream: Upstream,
        head: h11.Response,
        headers: list[tuple[str, str]],
        content_type: str,
    ) -> bool:
        """Hold the body (within the masker's limit), mask it, send it whole."""
        assert self.masker is not None
        body = bytearray()
        while True:
            part = await upstream.next_event()
            if isinstance(part, h11.Data):
                body += part.data
                if len(body) > self.masker.limit:
                    raise TargetError(
                        f"the response is larger than {self.masker.limit} bytes, the most the "
                        "agent masks; nothing of it was sent"
                    )
            elif isinstance(part, h11.EndOfMessage):
                break
            elif isinstance(part, h11.ConnectionClosed):
                raise TargetError("the target closed the connection in the middle of a response")
        masked = self.masker.mask(bytes(body), content_type)
        out = masked if masked is not None else bytes(body)
        fields = [(k, v) for k, v in headers if k not in ("content-length", "transfer-encoding")]
        fields.append(("content-length", str(len(out))))
        data = self.side.start(head.status_code, fields, head.reason.decode("latin-1"))
        data += self.side.data(out) + self.side.end()
        mark = _mark(head.status_code, len(out), content_type, masked=masked is not None)
        await self.send(_marked(data, mark))
        self._next(upstream)
        return False

    def _next(self, upstream: Upstream) -> None:
        """The response ended: keep the connection for the next request, or drop it."""
        conn = upstream.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            upstream.close()
            self.upstream = None

    async def refuse(self, message: str) -> None:
        """The target is not reachable: a 502 naming why, marked as an error."""
        log.warning("http request not sent: %s", message)
        data = self.side.respond_json(502, {"error": f"gatehouse agent: {message}"})
        await self.send(_error_frame(data, message))


def _error_frame(data: bytes, message: str) -> tunnel_pb2.Frame:
    mark = _mark(502, 0, "application/json")
    mark.kind = tunnel_pb2.ResultMark.ERROR
    mark.message = message
    return _marked(data, mark)


def _marked(data: bytes, mark: tunnel_pb2.ResultMark) -> tunnel_pb2.Frame:
    """The frame that ends a response: the mark's `end` is just past it."""
    mark.end = len(data)
    return tunnel_pb2.Frame(data=data, marks=[mark])


_METHOD_LINE = re.compile(rb"[A-Z]{3,7} [/*]")


class HttpEngine(Engine):
    """`http` connections (agent/engines.py)."""

    async def run(self, spec: agent_pb2.ConnectionSpec, receive: Receive, send: SendFrame) -> str:
        return await run(spec, receive, send)

    def refusal(self, why: Refusal, message: str) -> tunnel_pb2.Frame:
        """A 502 that closes the connection: nothing of the session can be served."""
        body = json.dumps({"error": f"gatehouse agent: {message}"}).encode() + b"\n"
        head = (
            "HTTP/1.1 502 Bad Gateway\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        return _error_frame(head.encode() + body, message)

    def speaks(self, first: bytes) -> bool:
        """A request line opens with a method and a target."""
        return _METHOD_LINE.match(first) is not None


def _mark(
    status: int, size: int, content_type: str, *, masked: bool = False
) -> tunnel_pb2.ResultMark:
    """A response's end: COMPLETE, `command` the status, `rows` the body's bytes, `message`
    the content type (the control plane's http.response)."""
    return tunnel_pb2.ResultMark(
        kind=tunnel_pb2.ResultMark.COMPLETE,
        command=str(status),
        rows=size,
        message=content_type,
        masked=masked,
    )


def _joined(prefix: str, target: str) -> str:
    """The request's target under the URL's path (`OPTIONS *` stays `*`)."""
    return target if target == "*" else prefix + target


def _header(headers: Any, name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in headers if k == name), "")


def _response_headers(headers: Any, *, upgrade: bool = False) -> list[tuple[str, str]]:
    out = []
    for key, value in headers:
        name = key.decode("latin-1")
        if name in _DROPPED_RESPONSE and not (upgrade and name in ("connection", "upgrade")):
            continue
        out.append((name, value.decode("latin-1")))
    return out


async def run(connection: agent_pb2.ConnectionSpec, receive: Receive, send: SendFrame) -> str:
    """Serve one session until the client is done; returns why it ended. A connection whose
    secret, target or masking the agent cannot use answers every request 502 with why:
    nothing is sent without its credential, nothing comes back unmasked."""
    spec: Target | None = None
    masker: BodyMasker | None = None
    failure = ""
    try:
        masker = BodyMasker.from_spec(MessageToDict(connection.masking))
        spec = Target.from_spec(MessageToDict(connection.target), dict(connection.secret))
    except (SecretError, MaskingError) as exc:
        failure = str(exc)
    except (KeyError, ValueError) as exc:
        failure = f"the connection's target is not usable: {exc}"
    session = _Session(spec, failure, send, masker)
    try:
        while True:
            data = await receive()
            if data is None:
                return "closed"
            if isinstance(data, Cancel):
                continue
            session.side.feed(data)
            while (request := session.side.next_request()) is not None:
                if not isinstance(request, Request):
                    continue  # the control plane answered 100-continue; the body follows
                if await session.exchange(request):
                    return await _opaque(session, receive, send)
            if session.side.closed:
                return "closed by the client's request"
    except ProtocolError as exc:
        return f"protocol error: {exc}"
    finally:
        if session.upstream is not None:
            session.upstream.close()


async def _opaque(session: _Session, receive: Receive, send: SendFrame) -> str:
    """After a 101: bytes both ways, unchanged, until either side ends."""
    upstream = session.upstream
    assert upstream is not None
    early = session.side.switched()
    if early:
        upstream.writer.write(early)
    rest = bytes(upstream.conn.trailing_data[0])
    if rest:
        await send(tunnel_pb2.Frame(data=rest))

    async def up() -> None:
        while True:
            data = await receive()
            if data is None:
                return
            if isinstance(data, bytes):
                upstream.writer.write(data)
                await upstream.writer.drain()

    async def down() -> None:
        while data := await upstream.reader.read(READ_SIZE):
            await send(tunnel_pb2.Frame(data=data))

    tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
    return "upgraded connection closed"
