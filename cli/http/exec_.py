"""`gatehouse exec NAME -- METHOD /path?q=1 [-H 'K: V'] [-d TEXT|@FILE] [-v]` on an http
connection: one request, its body on stdout.

The request is HTTP/1.1 bytes on the session (the control plane reads them as a server
would); the response is read back with h11 and its body streamed to stdout as it comes. The
exit status is 0 for a 2xx answer and 1 otherwise (a refusal is a 403 naming its rule);
`-v` prints the status line and headers on stderr; `-o json` prints status, headers and
body as one document instead.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import h11
from h11 import Data, Response

from cli.errors import USAGE, CliError
from cli.output import Format, echo, emit_json
from cli.protocols import ExecRequest
from cli.session import Opened
from gatehouse.v1 import client_pb2

__all__ = ["Words", "build_request", "encode_request", "exchange", "execute", "read_words"]

METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass
class Words:
    """The words after `--`: METHOD /path, then the request's own options, curl-style."""

    method: str
    target: str
    headers: list[str] = field(default_factory=list)
    data: str | None = None
    verbose: bool = False
    json: bool = False


def read_words(args: list[str]) -> Words:
    """METHOD /path [-H 'K: V']... [-d TEXT|@FILE|@-] [-v] [-o json], curl's way: the words
    after `--` are the request's (`-o` may also come before it, where `exec` reads it)."""
    if len(args) < 2 or args[0].upper() not in METHODS or not args[1].startswith("/"):
        raise CliError(
            "an http request is METHOD /path, e.g. gatehouse exec api -- GET /v1/items?q=1",
            USAGE,
        )
    words = Words(args[0].upper(), args[1])
    rest = iter(args[2:])
    for word in rest:
        if word in ("-v", "--verbose"):
            words.verbose = True
            continue
        value = next(rest, None)
        if value is None or word not in ("-H", "--header", "-d", "--data", "-o", "--output"):
            raise CliError(f"after the path: {word!r} is not -H, -d, -v or -o", USAGE)
        if word in ("-H", "--header"):
            words.headers.append(value)
        elif word in ("-d", "--data"):
            words.data = value
        else:
            words.json = value == "json"
    return words


def build_request(words: Words) -> bytes:
    """The request's bytes."""
    fields: list[tuple[str, str]] = []
    for line in words.headers:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise CliError(f"-H {line!r}: a header is 'Name: value'", USAGE)
        fields.append((name.strip(), value.strip()))
    return encode_request(words.method, words.target, fields, _body(words.data))


def encode_request(
    method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
) -> bytes:
    """One HTTP/1.1 request (`body` None: none, and no content headers); h11 refuses what is
    not a valid request (a CliError)."""
    fields: list[tuple[str, str]] = [("host", "gatehouse"), ("user-agent", "gatehouse-cli")]
    fields += headers
    if body is not None:
        fields.append(("content-length", str(len(body))))
        if not any(k.lower() == "content-type" for k, _ in fields):
            fields.append(("content-type", "application/x-www-form-urlencoded"))
    conn = h11.Connection(h11.CLIENT)
    try:
        out = conn.send(h11.Request(method=method, target=target, headers=fields)) or b""
        if body:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError as exc:
        raise CliError(f"not a valid request: {exc}", USAGE) from None
    return out


async def exchange(
    opened: Opened, method: str, request: bytes
) -> AsyncGenerator[Response | Data, None]:
    """Send `request` on the session and read its response: the head, then the body's pieces
    as they come. The session is over after it (one request per `exec` session)."""
    call = opened.call
    await call.write(client_pb2.ClientFrame(data=request))
    await call.done_writing()
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    answered = False
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                frame = await call.read()
                conn.receive_data(frame.data if isinstance(frame, client_pb2.ServerFrame) else b"")
                continue
            if isinstance(event, Response):
                answered = True
                yield event
            elif isinstance(event, Data):
                yield event
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
    except h11.RemoteProtocolError as exc:
        raise CliError(f"the response is not valid HTTP: {exc}") from None
    finally:
        call.cancel()
    if not answered:
        raise CliError("the session ended before the response arrived")


def _body(data: str | None) -> bytes | None:
    if data is None:
        return None
    if data == "@-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        try:
            return Path(data[1:]).read_bytes()
        except OSError as exc:
            raise CliError(f"-d {data}: {exc.strerror}", USAGE) from None
    return data.encode()


async def execute(opened: Opened, asked: ExecRequest) -> int:
    """Send the request, stream the response's body to stdout; 0 for a 2xx status, else 1."""
    if asked.command is not None:
        opened.call.cancel()
        raise CliError(
            f"{asked.connection} is an http connection: give the request after --, e.g. "
            f"gatehouse exec {asked.connection} -- GET /v1/items",
            USAGE,
        )
    try:
        words = read_words(asked.args)
        request = build_request(words)
    except CliError:
        opened.call.cancel()
        raise
    verbose = words.verbose
    status = 0
    kept: list[tuple[str, str]] = []
    body = bytearray()
    as_json = asked.output is Format.json or words.json
    out = sys.stdout.buffer
    async for event in exchange(opened, words.method, request):
        if isinstance(event, Response):
            status = event.status_code
            kept = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
            if verbose:
                echo(f"HTTP/1.1 {status} {event.reason.decode('latin-1')}", err=True)
                for key, value in kept:
                    echo(f"{key}: {value}", err=True)
        elif as_json:
            body += event.data
        else:
            out.write(event.data)
            out.flush()
    if as_json:
        emit_json(
            {
                "status": status,
                "headers": kept,
                "body": _decoded(bytes(body)),
                "session_id": opened.session_id,
            }
        )
    return 0 if 200 <= status < 300 else 1


def _decoded(body: bytes) -> object:
    """The body as JSON when it is JSON, else as text."""
    text = body.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text
