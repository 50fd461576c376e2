"""Request inspection for `http` sessions, on the control plane.

Each request the client sends is read whole (head and body, within the connection's limits:
a malformed head is a 400, a large head a 431, a large body a 413, and nothing of it goes on),
decided by the connection's HTTP guardrails (method and path, then the body's text, in every
reading an application may make of it: bodies.py), and recorded as `http.request` —
committed before it is forwarded in strict mode. A refused
request is answered here with a `403` whose JSON body names the rule; the agent never sees
it. The agent's answer streams back unchanged; its end is marked (`ResultMark`) with the
status, sizes and content type, which become `http.response`, committed before the last of
the response's bytes is passed on.

Requests are handled one at a time, as HTTP/1.1 answers them: pipelined requests wait in the
codec until the response before them has ended, so every answer of the gateway's own lands
in its place. A `101 Switching Protocols` (a WebSocket) turns the rest of the session into
bytes passed both ways and counted, recorded as `http.upgrade` when the session ends.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlsplit

from controlplane.audit.events import Draft, SessionContext, draft, draft_result
from controlplane.audit.writer import AuditUnavailable, AuditWriter
from controlplane.policy.document import HttpConnection
from controlplane.policy.guardrails import ALLOW, Decision
from controlplane.policy.requests import PATH_RULE, RequestGuard
from controlplane.relay.http.bodies import BODY_RULE, Unreadable, form_values, readings
from controlplane.relay.http.events import BODY_TEXT, described
from controlplane.relay.inspection import EndCause, Opening
from gatehouse.v1 import tunnel_pb2
from redact.detectors import DetectorSet
from wire.http.codec import (
    HOP_BY_HOP,
    MAX_BODY,
    METHOD_OVERRIDES,
    Continue,
    ProtocolError,
    Request,
    ServerSide,
    encode_request,
    target_path,
)
from wire.http.websocket import MessageCount, handshake_refusal, head_fields

log = logging.getLogger(__name__)

__all__ = ["HttpInspector", "open_inspector"]

Forward = Callable[[bytes], Awaitable[None]]
MODE_RULE = "(mode)"
"""The `rule` of a refusal for what the session's mode does not allow."""


@dataclass(slots=True)
class _InFlight:
    """A forwarded request whose response has not ended yet."""

    ref: int | asyncio.Future[int]
    started: float
    request_bytes: int
    upgrade: str | None
    headers: tuple[tuple[str, str], ...] = ()  # the request's, to check a 101 against


class HttpInspector:
    """One `http` session: the requests of one client connection, in order."""

    def __init__(
        self,
        ctx: SessionContext,
        audit: AuditWriter,
        wake: Callable[[], None],
        *,
        guard: RequestGuard,
        detectors: DetectorSet,
        forward: Forward,
        max_body: int = MAX_BODY,
        body_text: int = BODY_TEXT,
        mode: str = "connect",
    ) -> None:
        self.session = ctx
        self._mode = mode
        self._audit = audit
        self._wake = wake
        self._guard = guard
        self._detectors = detectors
        self._forward = forward
        self._body_text = body_text
        self._strict = ctx.audit_mode == "strict"
        self._side = ServerSide(max_body=max_body)
        self._max_body = max_body
        self._answer: list[bytes] = []  # the gateway's own answers, due to the client
        self._inflight: _InFlight | None = None
        self._idle = asyncio.Event()  # no response is awaited: the next request may go
        self._idle.set()
        self._upgraded: _InFlight | None = None
        self._upgrade_bytes = [0, 0]  # client → target, target → client after a 101
        self._messages: tuple[MessageCount, MessageCount] | None = None
        self._cut = False  # the target's bytes are no longer passed on
        self.finished = False
        # The agent ends the session once the response in flight has ended.
        self.drain_timeout: float | None = None
        self.end_on_client_eof = True
        self.statements = 0

    # ---- client → target ------------------------------------------------------------------

    @property
    def incomplete(self) -> bool:
        return self._upgraded is None and not self.finished and self._side.incomplete

    async def from_client(self, data: bytes) -> bytes:
        """Read whole requests; decide, record and forward each (this returns nothing: the
        requests are forwarded here, one at a time, each once the previous one's response
        has ended)."""
        if self._upgraded is not None:
            self._passed(0, data)
            return data
        if self.finished:
            return b""
        self._side.feed(data)
        while not self.finished and self._upgraded is None:
            await self._idle.wait()
            if self._upgraded is not None:
                # A WebSocket from here on: what came after the upgrade request goes on.
                rest = self._side.switched()
                self._passed(0, rest)
                return rest
            if self._side.closed:
                return b""  # the conversation ended (Connection: close); nothing more goes on
            try:
                item = self._side.next_request()
            except ProtocolError as exc:
                self._last_words(exc.status, str(exc))
                return b""
            if item is None:
                return b""
            if isinstance(item, Continue):
                await self._continue(item)
            else:
                await self._request(item)
        return b""

    def cancel_event(self) -> Draft | None:
        """HTTP has no cancel of its own: a client that gives up closes its connection."""
        return None

    async def _continue(self, head: Continue) -> None:
        """The client waits for `100 Continue`: refuse now what its head already decides,
        else let its body come."""
        decision = self._check_head(Request(head.method, head.target, head.headers, b""))
        if decision.allowed:
            self._answer.append(self._side.send_continue())
            self._wake()
            return
        request = Request(head.method, head.target, head.headers, b"")
        if await self._record(request, decision, body_read=False) is not None:
            self._last_words(403, decision.reason or "denied", rule=decision.rule)

    async def _request(self, request: Request) -> None:
        if len(request.body) > _THREADED_BODY:
            # Undoing a large body's encodings, and finding its `_method`, takes seconds: not
            # on the event loop, and not in the default executor, whose threads the store's
            # reads and writes need.
            loop = asyncio.get_running_loop()
            decision = await loop.run_in_executor(_BODY_READER, self._check_request, request)
        else:
            decision = self._check_request(request)
        ref = await self._record(request, decision)
        if ref is None:
            return
        if not decision.allowed:
            self._answer.append(self._side.respond_json(403, _refusal(decision), close=False))
            self._end_if_closed()
            self._wake()
            return
        self._inflight = _InFlight(
            ref, time.monotonic(), len(request.body), request.upgrade, request.headers
        )
        self._idle.clear()
        await self._forward(_forwarded(request))

    def _check_request(self, request: Request) -> Decision:
        """The mode, the method and path rules (`_check_head`), then the body patterns
        (`_check_body`)."""
        if self._mode == "exec" and request.upgrade is not None:
            # After its 101 a WebSocket is opaque bytes both ways that no rule reads: an
            # interactive session, the `connect` mode's, as a terminal is for ssh.
            return Decision(
                False,
                MODE_RULE,
                f"a {request.upgrade} upgrade is an interactive session and needs the connect "
                "mode (`gatehouse connect`); this session was opened for exec",
            )
        decision = self._check_head(request)
        if decision.allowed and self._guard.reads_body and request.body:
            decision = self._check_body(request)
        return decision

    def _check_head(self, request: Request) -> Decision:
        """The method and path rules, for every method and path the target may act on: a HEAD
        is served by the GET handler (and nginx's proxy cache sends it on as a GET), and
        frameworks take the method from `X-HTTP-Method-Override` (and its kin) or a `_method`
        parameter (Rails, Laravel, Symfony), and the path from `X-Original-URL` /
        `X-Rewrite-URL`; WebDAV's MOVE and COPY write to their `Destination`. Each must pass.
        (A head that waits for 100-continue has no body yet: its `_method` is decided with the
        whole request.)"""
        methods = [request.method]
        if request.method.upper() == "HEAD":
            methods.append("GET")
        # A WSGI or CGI server reads `X_HTTP_Method_Override` as the same header.
        headers = [(k.replace("_", "-"), v.strip()) for k, v in request.headers]
        methods += [v for k, v in headers if k in METHOD_OVERRIDES]
        methods += _method_parameters(request)
        try:
            paths = [request.path]
            paths += [_override_path(v) for k, v in headers if k in _PATH_OVERRIDES]
        except ValueError as exc:  # urlsplit: `http://[x/admin`
            return Decision(False, PATH_RULE, f"an X-Original-URL cannot be read: {exc}")
        for each_method in methods:
            for each_path in paths:
                decision = self._guard.check_head(each_method, each_path)
                if not decision.allowed:
                    return decision
        return ALLOW

    def _check_body(self, request: Request) -> Decision:
        """The body patterns, searched in every reading of the body an application may make
        (bodies.py): a body that cannot be read so is refused."""
        try:
            for text in readings(request, self._max_body):
                decision = self._guard.check_body(text)
                if not decision.allowed:
                    return decision
        except Unreadable as exc:
            return Decision(False, BODY_RULE, str(exc))
        return ALLOW

    async def _record(
        self, request: Request, decision: Decision, *, body_read: bool = True
    ) -> int | asyncio.Future[int] | None:
        """Commit (strict) or queue the request's event; None when the store refused it (the
        client is told, the session ends)."""
        event = draft(
            "http.request",
            session=self.session,
            request=described(request, self._detectors, self._body_text, body_read=body_read),
            decision=decision.as_event(),
        )
        try:
            ref: int | asyncio.Future[int]
            ref = (
                await self._audit.commit(event) if self._strict else await self._audit.submit(event)
            )
        except AuditUnavailable as exc:
            self._last_words(503, f"not forwarded: the audit store refused its record: {exc}")
            return None
        self.statements += 1
        return ref

    def _last_words(self, status: int, message: str, rule: str | None = None) -> None:
        """Answer `status` with `message` and close: the session is over."""
        document: dict[str, Any] = {"error": message}
        if rule is not None:
            document["rule"] = rule
        # A response under way cannot be followed by one: the client sees the connection close.
        with contextlib.suppress(ProtocolError):
            self._answer.append(self._side.respond_json(status, document, close=True))
        self.finished = True
        self._wake()

    # ---- target → client ------------------------------------------------------------------

    async def from_agent(self, frame: tunnel_pb2.Frame) -> list[bytes]:
        """Pass the target's answer on; at a response's end, record it first."""
        data = frame.data
        if self._cut:
            return []
        if self._upgraded is not None:
            self._passed(1, data)
            return [data] if data else []
        for mark in frame.marks:
            await self._response(mark, data[: mark.end])
            if self._cut:
                return []
        if self._upgraded is not None and frame.marks:
            self._passed(1, data[frame.marks[-1].end :])
        return [data] if data else []

    def _passed(self, direction: int, data: bytes) -> None:
        """WebSocket bytes going by: counted, and their messages (0: the client's)."""
        self._upgrade_bytes[direction] += len(data)
        if self._messages is not None:
            self._messages[direction].feed(data)

    async def _response(self, mark: tunnel_pb2.ResultMark, head: bytes) -> None:
        inflight = self._inflight
        if inflight is None:
            return
        self._inflight = None
        status = int(mark.command) if mark.command.isdigit() else 502
        result: dict[str, Any] = {
            "status": status,
            "duration_ms": round((time.monotonic() - inflight.started) * 1000, 3),
            "bytes": {"request": inflight.request_bytes, "response": max(mark.rows, 0)},
        }
        if mark.kind == tunnel_pb2.ResultMark.ERROR:
            result["error"] = mark.message or "the agent could not reach the target"
        elif mark.message:
            result["content_type"] = mark.message
        if mark.masked:
            result["masked"] = True
        refusal = None
        if status == 101 and inflight.upgrade is not None:
            refusal = handshake_refusal(inflight.headers, head_fields(head))
            if refusal is not None:
                result["error"] = f"the target answered 101 without taking the WebSocket: {refusal}"
        await self._result(inflight, result)
        if refusal is not None:
            # A 101 that is no WebSocket's (an application's status, its connection still
            # reading HTTP): the bytes after it would be requests nobody decided. Nothing more
            # goes either way.
            self._cut = True
            self._last_words(
                502, f"gatehouse: the target answered 101 without taking the WebSocket: {refusal}"
            )
            self._idle.set()
            return
        if status == 101 and inflight.upgrade is not None:
            self._upgraded = inflight
            # An extension (permessage-deflate) changes what a frame is: not read then.
            readable = b"sec-websocket-extensions" not in head.lower()
            self._messages = (
                MessageCount(from_client=True, readable=readable),
                MessageCount(from_client=False, readable=readable),
            )
        try:
            self._side.responded(status)
        except ProtocolError as exc:
            log.warning("session %s: %s", self.session.session_id, exc)
            self.finished = True
        self._end_if_closed()
        self._idle.set()

    def _end_if_closed(self) -> None:
        """The client asked to close (`Connection: close`, HTTP/1.0): once its answer is out,
        the session ends, and the client sees the connection close."""
        if self._upgraded is None and self._side.closed:
            self.finished = True

    async def _result(self, inflight: _InFlight, result: dict[str, Any]) -> None:
        try:
            ref = inflight.ref if isinstance(inflight.ref, int) else await inflight.ref
        except AuditUnavailable as exc:
            self._audit.result_lost(self.session.session_id, "http.response", exc)
            return
        event = draft_result("http.response", session=self.session, ref=ref, result=result)
        with contextlib.suppress(AuditUnavailable):  # the writer counts it, tells the watch
            await self._audit.commit(event)

    def take_synthetic(self) -> list[bytes]:
        answer, self._answer = self._answer, []
        return answer

    def closing(self) -> list[bytes]:
        """The agent's stream ended: answers of our own still due go out."""
        return self.take_synthetic()

    def fatal(self, message: str, cause: EndCause = EndCause.PROTOCOL) -> bytes:
        """The session's last words, when no response is under way: a status saying why (a
        response under way can only be cut off: the client sees the connection close)."""
        if self._inflight is not None or self._upgraded is not None:
            return b""
        status = _FATAL_STATUS[cause]
        try:
            return self._side.respond_json(status, {"error": f"gatehouse: {message}"}, close=True)
        except ProtocolError:
            return b""

    async def finish(self, reason: str) -> None:
        """A request whose response never ended gets a result saying its outcome is unknown;
        a WebSocket's bytes are recorded."""
        await self._unknown(f"the session ended before the response did: {reason}")
        upgraded, self._upgraded = self._upgraded, None
        if upgraded is not None:
            try:
                ref = upgraded.ref if isinstance(upgraded.ref, int) else await upgraded.ref
                await self._audit.commit(
                    draft_result(
                        "http.upgrade",
                        session=self.session,
                        ref=ref,
                        result={
                            "duration_ms": round((time.monotonic() - upgraded.started) * 1000, 3),
                            "bytes": {
                                "client": self._upgrade_bytes[0],
                                "target": self._upgrade_bytes[1],
                            },
                            "messages": _messages(self._messages),
                        },
                    )
                )
            except AuditUnavailable as exc:
                self._audit.result_lost(self.session.session_id, "http.upgrade", exc)

    async def agent_lost(self) -> None:
        await self._unknown("agent lost before the response ended")

    async def _unknown(self, why: str) -> None:
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await self._result(
                inflight,
                {
                    "error": "unknown",
                    "message": why,
                    "duration_ms": round((time.monotonic() - inflight.started) * 1000, 3),
                },
            )
        self._idle.set()


_THREADED_BODY: Final = 256 * 1024
"""A body larger than this is read for the body patterns in `_BODY_READER`."""
_BODY_READER: Final = ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-body")
"""One thread for large bodies, one at a time: many hostile bodies wait for each other, and
hold nothing else up."""

_PATH_OVERRIDES: Final = frozenset({"x-original-url", "x-rewrite-url", "destination"})
"""Headers in which a client names a path the target acts on besides the request's: the one a
framework routes instead (X-Original-URL), the one WebDAV's COPY and MOVE write to."""


_MULTIPART_METHOD: Final = re.compile(
    # The part's other header lines stop at another `_method` one, which is matched on its
    # own: each line is read for one match at most, not for every `_method` line before it.
    rb'name="?_method"?[^\r\n]*\r?\n(?:(?![^\r\n]*name="?_method)[^\r\n]+\r?\n)*'
    rb"\r?\n([^\r\n]*)",
    re.IGNORECASE,
)
"""The value of a multipart body's `_method` part (on the event loop, with every request: in
time linear in the body)."""


def _method_parameters(request: Request) -> list[str]:
    """The methods a `_method` parameter names: in the query, a form body or a multipart one."""
    found = [v for k, v in parse_qsl(request.query, keep_blank_values=True) if k == "_method"]
    if request.body:
        content_type = (request.header("content-type") or "").lower()
        if "multipart/" in content_type:
            found += [m.decode("latin-1") for m in _MULTIPART_METHOD.findall(request.body)]
        else:
            found += form_values(request.body.decode("latin-1"), _ANY, "_method")
        if "json" in content_type:
            found += _json_method(request.body)
    return [v.strip() for v in found if v.strip()]


def _json_method(body: bytes) -> list[str]:
    """The `_method` member of a JSON object body: Laravel reads a JSON body's members as the
    request's parameters, `_method` too. (Its name may be escaped: `"\\u005fmethod"`.)"""
    if b"_method" not in body and b"\\u" not in body:
        return []
    try:
        document = json.loads(body.removeprefix(codecs.BOM_UTF8))
    except (ValueError, RecursionError):
        return []
    method = document.get("_method") if isinstance(document, dict) else None
    return [method] if isinstance(method, str) else []


_ANY: Final = re.compile("")


def _override_path(value: str) -> str:
    """The path an `X-Original-URL` names (a path, or a whole URL)."""
    value = value.strip()
    return target_path(value) if value.startswith("/") else urlsplit(value).path or "/"


_FATAL_STATUS: Final = {
    EndCause.PROTOCOL: 400,
    EndCause.SHUTDOWN: 403,  # its token stopped working, or its agent was revoked
    EndCause.AUDIT: 503,
    EndCause.AGENT_LOST: 502,
}


def open_inspector(opening: Opening) -> HttpInspector:
    """An `http` session's inspector, with its connection's request guardrails, the detectors
    that mask what its events keep, and its body limits."""
    connection = opening.connection
    assert isinstance(connection, HttpConnection)
    return HttpInspector(
        opening.session,
        opening.audit,
        opening.tunnel.wake,
        guard=opening.policy.request_guard(connection),
        detectors=opening.policy.parameter_detectors(connection),
        forward=opening.forward,
        max_body=connection.target.max_body,
        body_text=connection.target.record_body,
        mode=opening.mode,
    )


def _messages(counts: tuple[MessageCount, MessageCount] | None) -> dict[str, int | None]:
    """Messages each way (None: not readable, e.g. compressed with permessage-deflate)."""
    if counts is None:
        return {"client": None, "target": None}
    return {"client": counts[0].as_event(), "target": counts[1].as_event()}


def _refusal(decision: Decision) -> dict[str, Any]:
    return {
        "error": "denied by guardrail",
        "rule": decision.rule,
        "reason": decision.reason,
    }


def _forwarded(request: Request) -> bytes:
    """The request as the agent gets it: hop-by-hop headers dropped (an upgrade keeps its
    own), the body framed by its length."""
    headers = [(k, v) for k, v in request.headers if k not in HOP_BY_HOP]
    if request.upgrade is not None:
        headers += [("connection", "upgrade"), ("upgrade", request.upgrade)]
    return encode_request(request.method, request.target, headers, request.body, request.version)
